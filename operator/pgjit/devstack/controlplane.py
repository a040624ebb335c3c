"""A real Kubernetes control plane (etcd + kube-apiserver) as local processes on loopback.

This is pgjit's envtest: the API server enforces schemas, CEL rules, admission policies, the
status subresource, RBAC and impersonation exactly as a cluster does, without a container
engine. There is no kubelet, scheduler or controller-manager, so pods never run and namespace
deletion and garbage collection never finish (see shared/reference/test-beds.md).

Identities come from a static token file so tests can exercise RBAC as different users:

=========  ==========================================
identity   groups (plus ``system:authenticated``)
=========  ==========================================
admin      ``system:masters``
alice      ``analysts``
bob        (none)
robot      ``pgjit-session-admins``
carol      ``dba``
=========  ==========================================
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import ipaddress
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pgjit.devstack.kube_binaries import KubeBinaries, ensure_kube_binaries
from pgjit.devstack.ports import free_port, free_ports

IDENTITY_GROUPS: dict[str, tuple[str, ...]] = {
    "admin": ("system:masters",),
    "alice": ("analysts",),
    "bob": (),
    "robot": ("pgjit-session-admins",),
    "carol": ("dba",),
}

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.02
PORT_RETRIES = 3
LOG_TAIL_LINES = 40

_PR_SET_PDEATHSIG = 1


class ControlPlaneError(RuntimeError):
    """The control plane failed to start; the message carries the server log tail."""


class _PortTaken(ControlPlaneError):
    """A free port picked before start was taken by someone else in the meantime."""


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """Return a preexec_fn that makes the child get SIGKILL when this process dies.

    Runs between fork and exec. PR_SET_PDEATHSIG survives exec for ordinary binaries, so
    etcd and kube-apiserver cannot outlive a Python process that is killed with SIGKILL or
    crashes before stop() runs.
    """
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(121)
        # The parent may have died between fork and prctl; the signal would never come.
        if os.getppid() != parent_pid:
            os._exit(122)

    return preexec


def _write_private(path: Path, data: bytes | str) -> None:
    """Write a file only the owner can read: keys, tokens and kubeconfigs are credentials."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_pki(pki: Path) -> None:
    """Create a CA, a serving certificate for 127.0.0.1 and the service-account key pair.

    Our own CA rather than --cert-dir self-signing: the CA file exists before the server
    starts and the certificate carries exactly the names clients use. P-256 keys because
    generating them takes microseconds where RSA takes tens of milliseconds per key.
    """
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=30)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pgjit-test-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip

    serving_key = ec.generate_private_key(ec.SECP256R1())
    # The in-cluster names let tests that mimic in-cluster clients (and the kubernetes
    # Service's first IP) verify the certificate too.
    alt_names = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address(str(
            next(ipaddress.ip_network(SERVICE_CLUSTER_IP_RANGE).hosts())))),
        *(
            x509.DNSName(name)
            for name in ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                         "kubernetes.default.svc.cluster.local")
        ),
    ]  # fmt: skip
    serving_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(serving_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    service_account_key = ec.generate_private_key(ec.SECP256R1())

    pki.mkdir(mode=0o700, parents=True, exist_ok=True)
    (pki / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (pki / "apiserver.crt").write_bytes(serving_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(pki / "apiserver.key", _pem_key(serving_key))
    _write_private(pki / "sa.key", _pem_key(service_account_key))
    (pki / "sa.pub").write_bytes(
        service_account_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


class _Server:
    """One child process with its log file."""

    def __init__(self, name: str, command: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        self.command = command
        with open(log, "ab") as log_handle:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C aimed at the test run reaches Python only, which then
                # stops kube-apiserver before etcd instead of both dying at once.
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )

    def log_tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-LOG_TAIL_LINES:])

    def check_running(self) -> None:
        """Raise with the log tail if the process has exited."""
        returncode = self.process.poll()
        if returncode is None:
            return
        tail = self.log_tail()
        error = _PortTaken if "address already in use" in tail else ControlPlaneError
        raise error(f"{self.name} exited with {returncode}; log {self.log}:\n{tail}")

    def stop(self, timeout: float) -> None:
        """SIGTERM the process group, SIGKILL it if it outlives ``timeout``."""
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait()

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)


class StartStop:
    """Servers a test starts and must stop whatever happens: ``with`` calls start() and, on
    the way out (an exception included), stop()."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class ControlPlane(StartStop):
    """etcd and kube-apiserver on free loopback ports, with one kubeconfig per identity.

    Use as a context manager, or call start() and stop(). ``workdir`` defaults to a fresh
    temporary directory that stop() removes; a workdir passed in is left in place so its logs
    survive for inspection. The servers die with the Python process that started them (from
    the thread that started them, a PR_SET_PDEATHSIG rule: start from a long-lived thread).
    """

    def __init__(self, binaries: KubeBinaries | None = None, workdir: Path | None = None, *,
                 garbage_collector: bool = False) -> None:
        self.binaries = binaries or ensure_kube_binaries()
        #: kube-controller-manager running its garbage collector alone, for the tests that need
        #: one (the node bed runs a whole controller-manager of its own). Off by default: with
        #: it in the shared cluster bed, a Database's deletion there never completed in 3 of 8
        #: runs, cause not found yet (README, Performance, session 6).
        self.garbage_collector = garbage_collector
        self._owns_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="pgjit-controlplane-")).resolve()
        self.log_dir = self.workdir / "logs"
        self.ca_file = self.workdir / "pki" / "ca.crt"
        self.url = ""
        self.startup_seconds: float | None = None
        self._tokens: dict[str, str] = {}
        self._servers: list[_Server] = []

    def token(self, identity: str) -> str:
        """Return the bearer token of a static identity (admin, alice, bob, robot)."""
        if not self._tokens:
            raise ControlPlaneError("the control plane has not been started")
        try:
            return self._tokens[identity]
        except KeyError:
            raise KeyError(
                f"unknown identity {identity!r}; known: {sorted(IDENTITY_GROUPS)}"
            ) from None

    def kubeconfig(self, identity: str = "admin") -> Path:
        """Return the kubeconfig file that authenticates as ``identity``."""
        self.token(identity)  # reject unknown identities with the list of known ones
        return self.workdir / "kubeconfigs" / f"{identity}.yaml"

    def restart(self, name: str, *, down_seconds: float = 0.0, stop_timeout: float = STOP_TIMEOUT,
                after_stop: Callable[[], None] | None = None) -> float:
        """Stop one server (``etcd`` or ``kube-apiserver``) gracefully and start it again with
        the same command, ports and data; return the seconds it took until it served again.

        For fault tests: clients see their connections drop and requests fail in between.
        ``down_seconds`` keeps it stopped that long; ``after_stop`` runs while it is down. A
        server still shutting down after ``stop_timeout`` is killed (kube-apiserver with open
        watches takes more than 10 s to stop gracefully).
        """
        index = next(i for i, server in enumerate(self._servers) if server.name == name)
        old = self._servers[index]
        began = time.monotonic()
        old.stop(stop_timeout)
        if after_stop is not None:
            after_stop()
        if down_seconds:
            time.sleep(down_seconds)
        # Append to the same log: one file tells the server's whole story.
        server = _Server(name, old.command, old.log)
        self._servers[index] = server
        deadline = time.monotonic() + START_TIMEOUT
        if name == "etcd":
            client_url = next(arg.split("=", 1)[1] for arg in old.command
                              if arg.startswith("--listen-client-urls="))
            self._wait_etcd(server, client_url, deadline)
            # kube-apiserver reconnects on its own; it serves again once /readyz says so.
            apiserver = next(s for s in self._servers if s.name == "kube-apiserver")
            self._wait_ready(apiserver, deadline)
        else:
            self._wait_ready(server, deadline)
        return time.monotonic() - began

    def refresh_garbage_collector(self) -> None:
        """Restart the garbage collector, so that it collects what the CRDs installed since it
        started own at once: on its own it finds new kinds on a discovery resync, which took
        40-45 s here, and collects nothing they own until then."""
        if any(server.name == "kube-controller-manager" for server in self._servers):
            self.restart("kube-controller-manager")

    @contextlib.contextmanager
    def garbage_collector_paused(self) -> Iterator[None]:
        """Hold the garbage collector stopped (SIGSTOP) for a while, e.g. so that a benchmark
        counts one client's requests alone; it catches up once resumed, as after an outage."""
        collector = next((s for s in self._servers if s.name == "kube-controller-manager"), None)
        if collector is None:
            yield  # none runs: nothing to hold
            return
        collector._signal(signal.SIGSTOP)
        try:
            yield
        finally:
            collector._signal(signal.SIGCONT)

    def pids(self) -> dict[str, int]:
        """The running servers' process ids by name (etcd, kube-apiserver), e.g. to read their
        CPU time from /proc in a benchmark."""
        return {server.name: server.process.pid for server in self._servers}

    def start(self) -> None:
        """Start etcd and kube-apiserver and return once /readyz answers ok."""
        if self._servers:
            raise ControlPlaneError("control plane already started")
        began = time.monotonic()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        _write_pki(self.workdir / "pki")
        self._write_token_file()
        for attempt in range(1, PORT_RETRIES + 1):
            try:
                self._start_servers(deadline=time.monotonic() + START_TIMEOUT)
                break
            except _PortTaken:
                self._stop_servers()
                if attempt == PORT_RETRIES:
                    raise
            except BaseException:
                self._stop_servers()
                raise
        self._write_kubeconfigs()
        if self.garbage_collector:
            self._start_garbage_collector()
        self.startup_seconds = time.monotonic() - began

    def _start_garbage_collector(self) -> None:
        """Objects whose owners are gone are deleted, as on every real cluster. It needs no
        port of its own and is not waited for: it picks up the CRDs installed later on its own
        discovery resync (every 30 s), so what they own is collected from then on."""
        admin = str(self.kubeconfig("admin"))
        self._servers.append(_Server("kube-controller-manager", [
            str(self.binaries.kube_controller_manager),
            f"--kubeconfig={admin}",
            "--controllers=garbagecollector",
            "--leader-elect=false",
            "--secure-port=0",
            "--profiling=false",
        ], self.log_dir / "kube-controller-manager.log"))  # fmt: skip

    def stop(self) -> None:
        """Stop kube-apiserver, then etcd; remove the workdir if this object created it."""
        self._stop_servers()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _stop_servers(self) -> None:
        # Reverse start order: kube-apiserver shuts down cleanly only while etcd still answers.
        while self._servers:
            self._servers.pop().stop(STOP_TIMEOUT)

    def _write_token_file(self) -> None:
        self._tokens = {identity: secrets.token_urlsafe(32) for identity in IDENTITY_GROUPS}
        # The groups column is optional; an empty "" would make a group named "".
        rows = [
            f"{self._tokens[identity]},{identity},{identity}"
            + (f',"{",".join(groups)}"' if groups else "")
            for identity, groups in IDENTITY_GROUPS.items()
        ]
        _write_private(self.workdir / "tokens.csv", "\n".join(rows) + "\n")

    def _start_servers(self, deadline: float) -> None:
        etcd_url = self._start_etcd(deadline)
        port = free_port()  # not reserved: startup retries on a lost race
        self.url = f"https://127.0.0.1:{port}"
        pki = self.workdir / "pki"
        apiserver = _Server(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # Endpoints may not point at loopback, and with no pods nothing needs the
                # kubernetes Service to have endpoints (envtest does the same).
                "--endpoint-reconciler-type=none",
                f"--secure-port={port}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--service-account-issuer={self.url}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                f"--token-auth-file={self.workdir / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                "--profiling=false",
            ],
            self.log_dir / "kube-apiserver.log",
        )
        self._servers.append(apiserver)
        self._wait_ready(apiserver, deadline)

    def _start_etcd(self, deadline: float) -> str:
        client_port, peer_port = free_ports(2)
        client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        data_dir = self.workdir / "etcd"
        shutil.rmtree(data_dir, ignore_errors=True)  # a previous port-retry attempt's data
        etcd = _Server(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=default",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync=true",
                # A lone member still waits a randomised election timeout (1s default) before
                # it leads and serves; 100ms cuts etcd's start from ~0.5s to ~0.05s. There are
                # no peers whose heartbeats a short interval could starve.
                "--heartbeat-interval=10",
                "--election-timeout=100",
                "--log-level=warn",
            ],
            self.log_dir / "etcd.log",
        )
        self._servers.append(etcd)
        self._wait_etcd(etcd, client_url, deadline)
        return client_url

    def _wait_etcd(self, etcd: _Server, client_url: str, deadline: float) -> None:
        # kube-apiserver would retry a missing etcd with gRPC backoff (seconds); waiting here
        # for etcd's /health costs tens of milliseconds.
        while True:
            etcd.check_running()
            try:
                with urllib.request.urlopen(f"{client_url}/health", timeout=1) as response:
                    if b'"health":"true"' in response.read():
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            self._check_deadline(deadline, etcd, "etcd /health")
            time.sleep(POLL_INTERVAL)

    def _wait_ready(self, apiserver: _Server, deadline: float) -> None:
        context = ssl.create_default_context(cafile=self.ca_file)
        request = urllib.request.Request(
            f"{self.url}/readyz", headers={"Authorization": f"Bearer {self.token('admin')}"}
        )
        while True:
            apiserver.check_running()
            try:
                with urllib.request.urlopen(request, timeout=2, context=context) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
                pass  # not listening yet, or 500 while post-start hooks still run
            self._check_deadline(deadline, apiserver, "kube-apiserver /readyz")
            time.sleep(POLL_INTERVAL)

    @staticmethod
    def _check_deadline(deadline: float, server: _Server, what: str) -> None:
        if time.monotonic() > deadline:
            raise ControlPlaneError(
                f"{what} not ready after {START_TIMEOUT:.0f}s; "
                f"log {server.log}:\n{server.log_tail()}"
            )

    def _write_kubeconfigs(self) -> None:
        directory = self.workdir / "kubeconfigs"
        directory.mkdir(mode=0o700, exist_ok=True)
        for identity in IDENTITY_GROUPS:
            config = {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "pgjit-test",
                        "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)},
                    }
                ],
                "users": [{"name": identity, "user": {"token": self.token(identity)}}],
                "contexts": [
                    {
                        "name": identity,
                        "context": {
                            "cluster": "pgjit-test",
                            "user": identity,
                            "namespace": "default",
                        },
                    }
                ],
                "current-context": identity,
            }
            _write_private(self.kubeconfig(identity), yaml.safe_dump(config, sort_keys=False))


def main() -> int:
    """Run a control plane until Ctrl-C or SIGTERM, for poking at it with kubectl."""

    def raise_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM takes the same path as Ctrl-C so the finally below stops both servers.
    signal.signal(signal.SIGTERM, raise_interrupt)
    control_plane = ControlPlane()
    try:
        control_plane.start()
        print(
            f"control plane at {control_plane.url}, ready in {control_plane.startup_seconds:.2f}s",
            file=sys.stderr,
        )
        print(
            f"logs in {control_plane.log_dir}; identities: {', '.join(IDENTITY_GROUPS)}",
            file=sys.stderr,
        )
        serve_until_interrupted(control_plane.kubeconfig("admin"))
    finally:
        control_plane.stop()
    return 0


def serve_until_interrupted(kubeconfig: Path) -> None:
    """Print the admin kubeconfig for the caller to use, then keep the servers up until Ctrl-C
    (the servers die with this process, so it must stay)."""
    print(kubeconfig, flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
