"""Build kube-apiserver, etcd, kubectl and helm from the Go modules in tests/controlplane.

No container engine runs on our machines, so the cluster test layer runs the real Kubernetes
servers as local processes (see shared/reference/test-beds.md). Building them from their Go
modules, pinned by go.mod and go.sum, gives reproducible binaries without any download outside
the Go module proxy.

Each binary lands in ``<repo>/.cache/bin/`` with the pinned version in its file name
(``kube-apiserver-v1.37.2``), so bumping a version in a go.mod rebuilds and a warm cache costs
one ``stat`` per binary.
"""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Measured on the 2-core build machine from empty Go build caches: one build after another
# took 461s, all three at once 548s. Go already compiles on every core, and in sequence etcd
# and helm reuse what the kubernetes build compiled (the standard library, shared modules at
# equal versions); concurrent processes compile those twice. Kubernetes goes first as the
# biggest and most shared.
BUILD_IN_PARALLEL = False

LOG_TAIL_LINES = 60


class KubeBinariesError(RuntimeError):
    """A control-plane binary could not be built; the message carries the build log tail."""


@dataclass(frozen=True)
class KubeBinaries:
    """Paths of the built control-plane binaries."""

    kube_apiserver: Path
    etcd: Path
    kubectl: Path
    helm: Path
    kube_controller_manager: Path


@dataclass(frozen=True)
class NodeBinaries:
    """Paths of the node's binaries: the same module and version as kube-apiserver."""

    kubelet: Path
    kube_controller_manager: Path
    kube_scheduler: Path


@dataclass(frozen=True)
class _GoBuild:
    """One ``go build`` invocation: main packages of one Go module that share one version.

    kube-apiserver and kubectl come from the same module and share most packages
    (client-go, apimachinery), so one invocation compiles those packages once.
    """

    name: str
    module_dir: str  # relative to tests/controlplane
    version_module: str  # the required module whose version names the binaries
    binaries: dict[str, str]  # binary name -> main package
    version_stamps: Callable[[str], list[str]]  # -X linker flags for a version

    def version(self, controlplane_dir: Path) -> str:
        return _required_version(controlplane_dir / self.module_dir / "go.mod", self.version_module)

    def ldflags(self, version: str) -> str:
        return " ".join(["-s", "-w", *self.version_stamps(version)])


def _kubernetes_version_stamps(version: str) -> list[str]:
    # Without these kube-apiserver and kubectl report the placeholder v0.0.0-master compiled
    # into the source, which breaks version checks in tests, kubectl and helm charts.
    major, minor = version.removeprefix("v").split(".")[:2]
    stamps = {"gitVersion": version, "gitMajor": major, "gitMinor": minor, "gitTreeState": "clean"}
    return [
        f"-X {package}.{key}={value}"
        for package in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version")
        for key, value in stamps.items()
    ]


def _helm_version_stamps(version: str) -> list[str]:
    # helm otherwise reports only its minor version ("v4.3").
    return [f"-X helm.sh/helm/v4/internal/version.version={version}"]


def _no_version_stamps(version: str) -> list[str]:
    # etcd's version is a constant in go.etcd.io/etcd/api/v3/version.
    return []


_BUILDS = (
    _GoBuild(
        name="kubernetes",
        module_dir=".",
        version_module="k8s.io/kubernetes",
        binaries={
            "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
            "kubectl": "k8s.io/kubernetes/cmd/kubectl",
            # Its garbage collector runs with every control plane: objects owned by a deleted
            # one go as they do on any real cluster (pgjit leaves a deleted session's Secret
            # to it).
            "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
        },
        version_stamps=_kubernetes_version_stamps,
    ),
    _GoBuild(
        name="etcd",
        module_dir="etcd",
        version_module="go.etcd.io/etcd/server/v3",
        binaries={"etcd": "go.etcd.io/etcd/server/v3"},
        version_stamps=_no_version_stamps,
    ),
    _GoBuild(
        name="helm",
        module_dir="helm",
        version_module="helm.sh/helm/v4",
        binaries={"helm": "helm.sh/helm/v4/cmd/helm"},
        version_stamps=_helm_version_stamps,
    ),
)

# The node layer's binaries, a build of their own so that the layers without a kubelet never
# wait for it. Same module directory as kube-apiserver, so kubelet, kube-apiserver and kubectl
# share one dependency set (a kubelet newer or older than its API server is a skew the project
# never tests).
_NODE_BUILDS = (
    _GoBuild(
        name="kubernetes-node",
        module_dir=".",
        version_module="k8s.io/kubernetes",
        binaries={
            "kubelet": "k8s.io/kubernetes/cmd/kubelet",
            "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
        },
        version_stamps=_kubernetes_version_stamps,
    ),
)


def find_repo_root(start: Path | None = None) -> Path:
    """Return the nearest directory above ``start`` that holds pyproject.toml."""
    here = (start or Path(__file__)).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "pyproject.toml").is_file():
            return candidate
    raise KubeBinariesError(
        f"no pyproject.toml above {here}; pass repo_root (an editable install is expected)"
    )


def _required_version(go_mod: Path, module: str) -> str:
    match = re.search(
        rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", go_mod.read_text(), re.MULTILINE
    )
    if match is None:
        raise KubeBinariesError(f"{go_mod} does not require {module}")
    return match.group(1)


def go_executable() -> str:
    go = shutil.which("go") or next(
        (p for p in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go") if os.access(p, os.X_OK)), None
    )
    if go is None:
        raise KubeBinariesError(
            "the Go toolchain (`go`) is not on PATH; it builds the control plane"
        )
    return go


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Serialise builds across processes (pytest-xdist workers, a Makefile run)."""
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _log_tail(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines()
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _start_build(
    build: _GoBuild, version: str, controlplane_dir: Path, staging: Path, log: Path
) -> subprocess.Popen[bytes]:
    """Start ``go build`` writing into ``staging``; return the Popen."""
    packages = list(build.binaries.values())
    # With several packages `-o` must name a directory; the binaries take the package's last
    # path element as their name, which for these packages equals the keys of `binaries`.
    output = str(staging / next(iter(build.binaries))) if len(packages) == 1 else f"{staging}/"
    command = [
        go_executable(), "build",
        "-trimpath",
        # The module dir sits in pgjit's git checkout; stamping VCS data of that checkout
        # would make builds depend on git state and fail on a dubious-ownership checkout.
        "-buildvcs=false",
        f"-ldflags={build.ldflags(version)}",
        "-o", output,
        *packages,
    ]  # fmt: skip
    env = {**os.environ, "CGO_ENABLED": "0"}
    with open(log, "w") as log_handle:
        log_handle.write(f"$ cd {controlplane_dir / build.module_dir} && {shlex.join(command)}\n")
        log_handle.flush()
        return subprocess.Popen(
            command,
            cwd=controlplane_dir / build.module_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
        )


def _run_builds(pending: list[tuple[_GoBuild, str]], controlplane_dir: Path, bin_dir: Path) -> None:
    log_dir = bin_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=bin_dir))
    batches = [pending] if BUILD_IN_PARALLEL else [[item] for item in pending]
    try:
        for batch in batches:
            running = []
            try:
                for build, version in batch:
                    log = log_dir / f"{build.name}-{version}.log"
                    began = time.monotonic()
                    running.append(
                        (
                            build,
                            version,
                            log,
                            began,
                            _start_build(build, version, controlplane_dir, staging, log),
                        )
                    )
                failures = [
                    failure
                    for build, version, log, began, process in running
                    if (
                        failure := _finish_build(
                            build, version, log, began, process, staging, bin_dir
                        )
                    )
                ]
            finally:
                # An interrupted run (Ctrl-C, a failed sibling) must not leave compilers behind.
                for *_, process in running:
                    if process.poll() is None:
                        process.kill()
                        process.wait()
            if failures:
                raise KubeBinariesError("\n\n".join(failures))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _finish_build(
    build: _GoBuild,
    version: str,
    log: Path,
    began: float,
    process: subprocess.Popen[bytes],
    staging: Path,
    bin_dir: Path,
) -> str | None:
    """Wait for one build; move its binaries into place, or return the failure message."""
    returncode = process.wait()
    with open(log, "a") as handle:
        handle.write(f"# exit {returncode} after {time.monotonic() - began:.1f}s\n")
    if returncode != 0:
        return (
            f"go build of {build.name} {version} failed (exit {returncode}); "
            f"log {log}:\n{_log_tail(log)}"
        )
    # Rename into place only after a successful build, so an interrupted build never leaves
    # a truncated binary under the final, versioned name.
    for binary in build.binaries:
        os.replace(staging / binary, bin_dir / f"{binary}-{version}")
    return None


def _ensure(builds: tuple[_GoBuild, ...], repo_root: Path | None) -> dict[str, Path]:
    """Build what is missing of ``builds``; return binary name -> path."""
    root = repo_root or find_repo_root()
    controlplane_dir = root / "tests" / "controlplane"
    bin_dir = root / ".cache" / "bin"
    versions = {build.name: build.version(controlplane_dir) for build in builds}
    paths = {
        binary: bin_dir / f"{binary}-{versions[build.name]}"
        for build in builds
        for binary in build.binaries
    }

    def missing() -> list[tuple[_GoBuild, str]]:
        return [
            (build, versions[build.name])
            for build in builds
            if not all(os.access(paths[binary], os.X_OK) for binary in build.binaries)
        ]

    if missing():
        bin_dir.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(bin_dir / ".build.lock"):
            # Another process may have finished the build while this one waited for the lock.
            if pending := missing():
                _run_builds(pending, controlplane_dir, bin_dir)
    return paths


def ensure_kube_binaries(repo_root: Path | None = None) -> KubeBinaries:
    """Return the control-plane binaries, building the missing ones first.

    Raises KubeBinariesError with the build log tail when a build fails.
    """
    paths = _ensure(_BUILDS, repo_root)
    return KubeBinaries(
        kube_apiserver=paths["kube-apiserver"],
        etcd=paths["etcd"],
        kubectl=paths["kubectl"],
        helm=paths["helm"],
        kube_controller_manager=paths["kube-controller-manager"],
    )


def ensure_node_binaries(repo_root: Path | None = None) -> NodeBinaries:
    """Return kubelet, kube-controller-manager and kube-scheduler, building them if missing."""
    paths = _ensure(_NODE_BUILDS, repo_root)
    return NodeBinaries(
        kubelet=paths["kubelet"],
        kube_controller_manager=ensure_kube_binaries(repo_root).kube_controller_manager,
        kube_scheduler=paths["kube-scheduler"],
    )


def main() -> int:
    """Build what is missing and print ``NAME=path`` lines a Makefile or shell can consume."""
    began = time.monotonic()
    try:
        groups: list[KubeBinaries | NodeBinaries] = [ensure_kube_binaries()]
        if "--node" in sys.argv[1:]:
            groups.append(ensure_node_binaries())
    except KubeBinariesError as error:
        print(error, file=sys.stderr)
        return 1
    for binaries in groups:
        for field, path in vars(binaries).items():
            print(f"{field.upper()}={path}")
    print(f"# ready in {time.monotonic() - began:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
