"""A real Kubernetes node on this machine: containerd + runc, kubelet, kube-controller-manager
and kube-scheduler, joined to a ``ControlPlane``, so the chart's Deployment runs as a Pod.

What shapes it (shared/reference/test-beds.md, "A real node"):

- The host is cgroup v1 (hybrid): kubelet runs with ``failCgroupV1: false`` and the cgroupfs
  driver; the host's cgroup mounts are never changed.
- kubelet wants ``vm.overcommit_memory=1``, ``kernel.panic=10``, ``kernel.panic_on_oops=1``
  and must never write them: ``protectKernelDefaults: true``, and containerd and kubelet run in
  one private mount namespace in which read-only files with those values are bind-mounted over
  the three ``/proc/sys`` entries. The host's settings stay as they are.
- Network: host-network pods only. containerd's CNI directory holds a loopback config alone
  (the node reports a ready network and no address is created); every listener binds
  127.0.0.1; the pod's resolv.conf names 127.0.0.1. Nothing here sends traffic elsewhere.
- One node per machine (kubelet always uses ``/var/lib/kubelet/device-plugins``): a file lock
  in ``/run/lock`` serialises nodes across worktrees and CI. Everything the daemons leave
  outside their own directories is removed on stop (and, under the lock, before start, in case
  an earlier run was killed).

State of a run (configs, containerd's state, kubelet's root, pod logs, daemon logs) lives in
``workdir``, under the repository's ``.cache/node/``; containerd's content store and snapshots
in ``~/.cache/pgjit/containerd-root``, so a warm run imports nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import kubernetes
import yaml

from pgjit.devstack.controlplane import (
    StartStop,
    serve_until_interrupted,
    ControlPlane,
    _die_with_parent,
    _Server,
)
from pgjit.devstack.kube_binaries import NodeBinaries, ensure_node_binaries, find_repo_root
from pgjit.devstack.node_image import Image, cache_home
from pgjit.devstack.ports import free_port, free_ports

NODE_NAME = "pgjit-node"
LOCK_FILE = Path("/run/lock/pgjit-node.lock")
LOCK_TIMEOUT = 1800.0
START_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
POLL_INTERVAL = 0.1
CNI_BIN_DIR = "/usr/lib/cni"
RUNC = shutil.which("runc") or "/usr/sbin/runc"
# The kernel settings kubelet checks and would otherwise write (protectKernelDefaults).
KERNEL_DEFAULTS = {
    "/proc/sys/vm/overcommit_memory": "1",
    "/proc/sys/kernel/panic": "10",
    "/proc/sys/kernel/panic_on_oops": "1",
}
# What the daemons create outside workdir, removed on stop.
LEFTOVER_DIRS = (
    "/var/lib/kubelet",
    "/var/log/containers",
    "/run/containerd",
    "/run/runc",
    "/var/lib/cni",
    "/var/lib/containers",
)
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Other sessions on this machine may have network namespaces of their own in /run/netns: only
# the ones containerd's CNI code names (cni-<uuid>) are this node's.
NETNS_DIR = Path("/run/netns")


class NodeError(RuntimeError):
    """The node failed to start; the message carries the relevant log tail."""


@contextlib.contextmanager
def _machine_lock(timeout: float):
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    handle.seek(0)
                    raise NodeError(
                        f"another node holds {LOCK_FILE} for more than {timeout:.0f}s "
                        f"({handle.read().strip() or 'unknown holder'})"
                    ) from None
                time.sleep(1.0)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_leftovers() -> list[str]:
    """Remove what an earlier node left outside its workdir; return what was removed.

    Only safe while holding the machine lock (no other node is running).
    """
    removed = []
    for path in map(Path, LEFTOVER_DIRS):
        if path.exists():
            # kubelet and containerd leave bind mounts only inside their own (private) mount
            # namespace, so plain removal suffices here.
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    if NETNS_DIR.is_dir():
        for entry in NETNS_DIR.glob("cni-*"):
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(str(entry))
    for hierarchy in CGROUP_ROOT.iterdir() if CGROUP_ROOT.is_dir() else ():
        kubepods = hierarchy / "kubepods"
        if kubepods.is_dir():
            # Depth first: a cgroup directory can only go once it has no children.
            for directory in sorted(
                (p for p in kubepods.rglob("*") if p.is_dir()),
                key=lambda p: len(p.parts), reverse=True,
            ):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            with contextlib.suppress(OSError):
                kubepods.rmdir()
                removed.append(str(kubepods))
    return removed


class Node(StartStop):
    """containerd, kubelet, kube-controller-manager and kube-scheduler for ``control_plane``.

    ``images`` are imported into containerd before kubelet starts (the pause image first: its
    ref becomes containerd's sandbox image); more can follow with ``import_image``.
    """

    def __init__(
        self,
        control_plane: ControlPlane,
        pause: Image,
        images: Sequence[Image] = (),
        *,
        binaries: NodeBinaries | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.control_plane = control_plane
        self.binaries = binaries or ensure_node_binaries()
        self.pause = pause
        self.images = list(images)
        base = find_repo_root() / ".cache" / "node"
        base.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="run-", dir=base)).resolve()
        self.log_dir = self.workdir / "logs"
        self.socket = self.workdir / "containerd" / "containerd.sock"
        # containerd's content store and snapshots outlive a run (one node per machine at a
        # time, so one root serves every worktree): an image imported once, unpacked once, is
        # there for the next run. Containers never outlive a run (see start and stop).
        self.containerd_root = cache_home() / "containerd-root"
        self.kubelet_port = 0
        self.startup_seconds: float | None = None
        self.timings: dict[str, float] = {}
        self._servers: list[_Server] = []
        self._holder: subprocess.Popen[bytes] | None = None
        self._lock: contextlib.ExitStack | None = None
        self._kubelet_started = 0.0

    # -- start ----------------------------------------------------------------------------

    def start(self) -> None:
        began = time.monotonic()
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(_machine_lock(LOCK_TIMEOUT))
        self.timings["lock"] = time.monotonic() - began
        try:
            remove_leftovers()
            # Earlier runs' workdirs (logs, kubelet's pod directories) would pile up; the
            # newest other one stays for its logs.
            earlier = sorted((p for p in self.workdir.parent.glob("run-*")
                              if p != self.workdir), key=lambda p: p.stat().st_mtime)
            for stale in earlier[:-1]:
                shutil.rmtree(stale, ignore_errors=True)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._write_configs()
            self._start_namespace_holder()
            self._start_containerd()
            # A run killed before its stop leaves containers in the persistent root; kubelet
            # must not find sandboxes of pods from a control plane that is gone.
            self._remove_all_containers()
            for image in [self.pause, *self.images]:
                self.import_image(image)
            self._prune_images()
            self._start_control_loops()
            self._start_kubelet()
            self._wait_node_ready(time.monotonic() + START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    def _write_configs(self) -> None:
        wd = self.workdir
        self.containerd_root.mkdir(parents=True, exist_ok=True)
        for sub in ("containerd/state", "cni/net.d", "kubelet", "pods-logs",
                    "kcm", "scheduler", "flex", "sysctl"):
            (wd / sub).mkdir(parents=True, exist_ok=True)
        (wd / "cni/net.d/10-loopback.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "pgjit-loopback", "plugins": [{"type": "loopback"}],
        }))
        cri = '[plugins."io.containerd.grpc.v1.cri"'
        (wd / "containerd/config.toml").write_text(f"""\
version = 2
root = "{self.containerd_root}"
state = "{wd / 'containerd/state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{wd / 'containerd/ttrpc.sock'}"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{wd / 'containerd/opt'}"
{cri}]
  sandbox_image = "{self.pause.ref}"
  # The host's root cannot raise scores above its own; without this sandboxes fail to start.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
{cri}.containerd.runtimes.runc.options]
  BinaryName = "{RUNC}"
  SystemdCgroup = false
{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{wd / 'cni/net.d'}"
{cri}.registry]
  config_path = "{wd / 'containerd/certs.d'}"
""")
        (wd / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        self.kubelet_port, healthz_port = free_ports(2)
        (wd / "kubelet/config.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz_port,
            # `kubectl logs` and the probe metrics the tests read, on loopback only.
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "failSwapOn": False,
            "protectKernelDefaults": True,
            "resolvConf": str(wd / "resolv.conf"),
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "podLogsDir": str(wd / "pods-logs"),
            # The images are imported, never pulled: garbage collection must not drop them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "2%",
                             "imagefs.available": "2%"},
            "registerNode": True,
            "nodeStatusUpdateFrequency": "2s",
            "syncFrequency": "5s",
        }))
        for path, value in KERNEL_DEFAULTS.items():
            (wd / "sysctl" / Path(path).name).write_text(value + "\n")

    def _start_namespace_holder(self) -> None:
        """A process owning the private mount namespace that containerd and kubelet share."""
        ready = self.workdir / "sysctl" / ".mounted"
        mounts = " && ".join(
            f"mount --bind -o ro {self.workdir / 'sysctl' / Path(path).name} {path}"
            for path in KERNEL_DEFAULTS
        )
        with open(self.log_dir / "mount-namespace.log", "ab") as log:
            self._holder = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                 f"{mounts} && touch {ready} && exec sleep infinity"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent(os.getpid()),
            )  # fmt: skip
        deadline = time.monotonic() + 10
        while not ready.exists():
            if self._holder.poll() is not None or time.monotonic() > deadline:
                raise NodeError(
                    "could not set up the private mount namespace: "
                    + (self.log_dir / "mount-namespace.log").read_text(errors="replace")
                )
            time.sleep(0.02)

    def _in_namespace(self, command: list[str]) -> list[str]:
        assert self._holder is not None
        return ["nsenter", f"--mount=/proc/{self._holder.pid}/ns/mnt", "--", *command]

    def _start(self, name: str, command: list[str]) -> _Server:
        server = _Server(name, command, self.log_dir / f"{name}.log")
        self._servers.append(server)
        return server

    def _start_containerd(self) -> None:
        began = time.monotonic()
        server = self._start("containerd", self._in_namespace(
            ["containerd", "--config", str(self.workdir / "containerd/config.toml")]))
        self._poll(lambda: self._ctr("version", check=False).returncode == 0,
                   server, "containerd answering", time.monotonic() + 30)
        self.timings["containerd"] = time.monotonic() - began

    def _ctr(self, *args: str, check: bool = True, timeout: float = 120
             ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and result.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def _image_refs(self) -> set[str]:
        return set(self._ctr("images", "ls", "-q").stdout.split())

    def import_image(self, image: Image) -> None:
        """Make ``image`` present on the node, as if pulled (pods use IfNotPresent)."""
        began = time.monotonic()
        if image.ref not in self._image_refs():
            self._ctr("images", "import", str(image.archive), timeout=300)
            if image.ref not in self._image_refs():
                raise NodeError(f"{image.archive} did not import as {image.ref}")
        self.timings[f"import {image.ref}"] = time.monotonic() - began

    def _prune_images(self) -> None:
        """Drop images whose tarball left the image cache (each build of the operator is a
        new image; node_image keeps the newest few tarballs, and so the node keeps those).

        The CRI plugin adds a ``sha256:<id>`` name to every image it has used; an image goes
        only with all of its names, so names are grouped by the manifest digest they point at.
        """
        cached = {archive.stem.rpartition("-")[2]
                  for archive in (cache_home() / "images").glob("*.tar")}
        keep = {self.pause.ref, *(i.ref for i in self.images)}
        by_digest: dict[str, set[str]] = {}
        for line in self._ctr("images", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3:
                by_digest.setdefault(fields[2], set()).add(fields[0])
        stale = sorted(
            ref for refs in by_digest.values()
            if not refs & keep and not any(ref.rpartition(":")[2] in cached for ref in refs)
            for ref in refs
        )
        if stale:
            # --sync: content and snapshots go now, not at some later garbage collection.
            self._ctr("images", "rm", "--sync", *stale, check=False)

    def _start_control_loops(self) -> None:
        admin = str(self.control_plane.kubeconfig("admin"))
        pki = self.control_plane.workdir / "pki"
        common = [
            f"--kubeconfig={admin}",
            f"--authentication-kubeconfig={admin}",
            f"--authorization-kubeconfig={admin}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
        ]
        self._start("kube-controller-manager", [
            str(self.binaries.kube_controller_manager), *common,
            f"--secure-port={free_port()}",
            f"--cert-dir={self.workdir / 'kcm'}",
            # Publishes kube-root-ca.crt, which every projected ServiceAccount token volume needs.
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--flex-volume-plugin-dir={self.workdir / 'flex'}",
            "--profiling=false",
        ])  # fmt: skip
        self._start("kube-scheduler", [
            str(self.binaries.kube_scheduler), *common,
            f"--secure-port={free_port()}",
            f"--cert-dir={self.workdir / 'scheduler'}",
            "--profiling=false",
        ])  # fmt: skip

    def _start_kubelet(self) -> None:
        self._kubelet_started = time.monotonic()
        self._start("kubelet", self._in_namespace([
            str(self.binaries.kubelet),
            f"--config={self.workdir / 'kubelet/config.yaml'}",
            f"--kubeconfig={self.control_plane.kubeconfig('admin')}",
            f"--root-dir={self.workdir / 'kubelet'}",
            f"--cert-dir={self.workdir / 'kubelet/pki'}",
            f"--hostname-override={NODE_NAME}",
            "--v=1",
        ]))  # fmt: skip

    def core(self) -> kubernetes.client.CoreV1Api:
        client = kubernetes.config.new_client_from_config(
            config_file=str(self.control_plane.kubeconfig("admin")), persist_config=False)
        return kubernetes.client.CoreV1Api(client)

    def _wait_node_ready(self, deadline: float) -> None:
        core = self.core()

        def ready() -> bool:
            try:
                node = core.read_node(NODE_NAME)
            except kubernetes.client.ApiException:
                return False
            return any(c.type == "Ready" and c.status == "True"
                       for c in node.status.conditions or ())

        self._poll(ready, self._servers[-1], f"node {NODE_NAME} Ready", deadline)
        self.timings["kubelet to Ready"] = time.monotonic() - self._kubelet_started
        core.api_client.close()

    def _poll(self, check, server: _Server, what: str, deadline: float) -> None:
        while not check():
            for each in self._servers:
                each.check_running()
            if time.monotonic() > deadline:
                raise NodeError(f"{what}: timed out; log {server.log}:\n{server.log_tail()}")
            time.sleep(POLL_INTERVAL)

    # -- what tests look at ---------------------------------------------------------------

    def task_pid(self, container_id: str) -> int:
        """The host PID of a container's main process (``containerd://<id>`` or ``<id>``)."""
        cid = container_id.removeprefix("containerd://")
        for line in self._ctr("tasks", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == cid:
                return int(fields[1])
        raise NodeError(f"no running task for container {cid}")

    def exec_in(self, container_id: str, *command: str) -> subprocess.CompletedProcess[str]:
        """Run ``command`` in a running container with its process spec (user, caps, seccomp)."""
        cid = container_id.removeprefix("containerd://")
        return self._ctr("tasks", "exec", "--exec-id", f"probe-{os.getpid()}-{time.monotonic_ns()}",
                         cid, *command, check=False, timeout=60)

    def kubelet_get(self, path: str) -> str:
        """GET from kubelet's API on loopback (anonymous, AlwaysAllow; self-signed cert)."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with urllib.request.urlopen(f"https://127.0.0.1:{self.kubelet_port}{path}",
                                    timeout=10, context=context) as response:
            return response.read().decode()

    def container_log(self, namespace: str, pod: str, container: str) -> str:
        """Every log file of a container (all restarts), oldest first, read from the node."""
        files = sorted(self.workdir.glob(f"pods-logs/{namespace}_{pod}_*/{container}/*.log"),
                       key=lambda p: int(p.stem) if p.stem.isdigit() else 0)
        return "".join(p.read_text(errors="replace") for p in files)

    # -- stop -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop kubelet, every container, the control loops and containerd; remove leftovers."""
        kubelet = [s for s in self._servers if s.name == "kubelet"]
        for server in kubelet:
            server.stop(STOP_TIMEOUT)
        if any(s.name == "containerd" and s.process.poll() is None for s in self._servers):
            self._remove_all_containers()
        while self._servers:
            self._servers.pop().stop(STOP_TIMEOUT)
        self._kill_shims()
        if self._holder is not None and self._holder.poll() is None:
            self._holder.kill()
            self._holder.wait()
        self._holder = None
        if self._lock is not None:
            try:
                remove_leftovers()
            finally:
                self._lock.close()
                self._lock = None

    def _remove_all_containers(self) -> None:
        listing = self._ctr("tasks", "ls", "-q", check=False).stdout.split()
        for cid in listing:
            self._ctr("tasks", "kill", "--signal", "SIGKILL", cid, check=False)
        deadline = time.monotonic() + STOP_TIMEOUT
        for cid in listing:
            while (self._ctr("tasks", "delete", cid, check=False).returncode != 0
                   and time.monotonic() < deadline):
                time.sleep(POLL_INTERVAL)
        for cid in self._ctr("containers", "ls", "-q", check=False).stdout.split():
            self._ctr("containers", "delete", cid, check=False)

    def _kill_shims(self) -> None:
        """SIGKILL the runc shims this node's containerd started (they outlive containerd)."""
        marker = str(self.socket).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmdline and marker in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(proc.name), signal.SIGKILL)


def main() -> int:
    """Start a control plane and a node with the operator image, until Ctrl-C."""
    from pgjit.devstack.node_image import ImageBuilder

    def raise_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, raise_interrupt)
    builder = ImageBuilder()
    images = [builder.ensure_operator()]
    control_plane = ControlPlane(garbage_collector=False)  # the node runs its own
    control_plane.start()
    node = Node(control_plane, builder.ensure_pause(), images)
    try:
        node.start()
        print(f"node {NODE_NAME} Ready in {node.startup_seconds:.1f}s ({node.timings}); "
              f"image {images[0].ref}; logs in {node.log_dir}", file=sys.stderr)
        serve_until_interrupted(control_plane.kubeconfig("admin"))
    finally:
        node.stop()
        control_plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
