"""The fault layer's parts: a control plane and PostgreSQL of each test's own (they get
restarted), operator "pods" (processes restarted when they exit, as the kubelet would), a burst
of sessions opening and ending, and the end-state checks every fault test shares.

Parts are started and restarted from the test's main thread: etcd, kube-apiserver and
PostgreSQL die with the thread that started them (PR_SET_PDEATHSIG), so the burst is what runs
in a thread of its own.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import psycopg
from psycopg import sql
from kubernetes.client.rest import ApiException

from forwarder import Forwarder
from operatorkit import (HEALTH_SECONDS, REVALIDATE_SECONDS, SESSION_LABEL, Env, _install_crds,
                         make_env, token, wait_for)
from pgjit.devstack.controlplane import ControlPlane
from pgjit.devstack.kube_binaries import ensure_kube_binaries
from pgjit.devstack.ports import free_ports
from pgjit.devstack.postgres import start_postgres
from pgjit.devstack.stack import prepare_demo_postgres

#: controller-runtime's defaults, which the chart ships.
DEFAULT_TIMINGS = {"lease": 15.0, "renew": 10.0, "retry": 2.0}
#: For tests that do not measure the default timing: a leader gone is noticed in seconds.
FAST_TIMINGS = {"lease": 4.0, "renew": 3.0, "retry": 1.0}
#: The issue's smallest burst: 50 sessions opening and ending.
BURST = 50
SETTLE_TIMEOUT = 180.0
RELEASE_NS = "pgjit-system"


# --------------------------------------------------------------------------------------------
# Operator pods


class OperatorPod:
    """``pgjit run`` with leader election, restarted whenever it exits (restartPolicy Always).

    Its readiness and liveness ports stay the same across restarts, as a pod's do: a standby
    that asks the leader's port then meets the restarted process, another identity.
    """

    def __init__(self, name: str, kubeconfig: Path, workdir: Path, *,
                 timings: dict[str, float] | None = None, lease: str = "pgjit",
                 extra_env: dict[str, str] | None = None) -> None:
        self.name, self.kubeconfig = name, kubeconfig
        self.log_path = workdir / f"{name}.log"
        self.readiness_port, self.liveness_port = free_ports(2)
        timings = timings or DEFAULT_TIMINGS
        self.env = {
            "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1", "POD_NAME": name,
            "PGJIT_NAMESPACE": RELEASE_NS, "PGJIT_LEADER_ELECTION_LEASE": lease,
            "PGJIT_LEADER_ELECTION_LEASE_DURATION": str(timings["lease"]),
            "PGJIT_LEADER_ELECTION_RENEW_DEADLINE": str(timings["renew"]),
            "PGJIT_LEADER_ELECTION_RETRY_PERIOD": str(timings["retry"]),
            "PGJIT_HEALTH_SECONDS": HEALTH_SECONDS, "PGJIT_REVALIDATE_SECONDS": REVALIDATE_SECONDS,
            **(extra_env or {})}
        self.proc: subprocess.Popen | None = None
        #: (monotonic time, exit code) of every exit the supervisor saw.
        self.exits: list[tuple[float, int]] = []
        self.starts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._supervisor: threading.Thread | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._spawn()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True,
                                            name=f"supervise-{self.name}")
        self._supervisor.start()

    def _spawn(self) -> None:
        with self._lock:
            self.starts += 1
            with open(self.log_path, "a") as log:
                log.write(f"--- {self.name} start {self.starts} at "
                          f"{time.strftime('%H:%M:%S')} ---\n")
                log.flush()
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "pgjit.cli", "run", "-A",
                     f"--readiness=http://127.0.0.1:{self.readiness_port}/readyz",
                     f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz"],
                    env=dict(os.environ, **self.env), stdout=log, stderr=subprocess.STDOUT)

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            proc = self.proc
            assert proc is not None
            code = proc.wait()
            if self._stopping.is_set():
                return
            self.exits.append((time.monotonic(), code))
            # The kubelet restarts a crashed container at once the first time.
            time.sleep(0.5)
            if not self._stopping.is_set():
                self._spawn()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self) -> None:
        """SIGTERM, as the kubelet stops a pod; no restart."""
        self._stopping.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def readiness(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.readiness_port}/readyz",
                                        timeout=2) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            return json.loads(error.read())
        except (OSError, ValueError):
            return None

    def role(self) -> str | None:
        return (self.readiness() or {}).get("role")

    def mark(self, text: str) -> int:
        """A line in the pod's log; returns the offset after it (see ``log_since``)."""
        with open(self.log_path, "a") as log:
            log.write(f"--- {text} ---\n")
            return log.tell()

    def log_since(self, offset: int) -> str:
        with open(self.log_path, errors="replace") as log:
            log.seek(offset)
            return log.read()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class Pods:
    """The replicas of one release, seen together (what Env wants of "the operator")."""

    def __init__(self, pods: list[OperatorPod]) -> None:
        self.pods = pods

    @property
    def running(self) -> bool:
        return any(pod.running for pod in self.pods)

    def leaders(self) -> list[OperatorPod]:
        return [pod for pod in self.pods if pod.role() == "leader"]

    def wait_leader(self, timeout: float = 60.0) -> OperatorPod:
        def one_leader():
            leaders = self.leaders()
            standbys = [p for p in self.pods if p.role() == "standby"]
            return leaders[0] if len(leaders) == 1 and len(standbys) == len(self.pods) - 1 \
                else None
        return wait_for("one leader and the others standing by", one_leader, timeout,
                        interval=0.2)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(f"=== {pod.name} ===\n{pod.log_tail(lines)}" for pod in self.pods)

    def stop(self) -> None:
        for pod in self.pods:
            pod.stop()


# --------------------------------------------------------------------------------------------
# A test's own stack


@dataclass
class Stack:
    """A control plane, PostgreSQL 16 and operator pods of one test's own."""

    workdir: Path
    control_plane: ControlPlane
    server: Any
    api: kubernetes.client.ApiClient
    pods: Pods = field(default_factory=lambda: Pods([]))

    def add_pods(self, count: int = 2, **options) -> Pods:
        pods = [OperatorPod(f"pod-{len(self.pods.pods) + i}", self.control_plane.kubeconfig(),
                            self.workdir, **options) for i in range(count)]
        for pod in pods:
            pod.start()
            # The first one leads: the others find its Lease already there.
            if pod is pods[0]:
                wait_for(f"{pod.name} to lead", lambda: pod.role() == "leader", 60,
                         interval=0.1)
        self.pods.pods.extend(pods)
        return Pods(pods)

    def namespace(self) -> str:
        name = f"f-{token()}"
        kubernetes.client.CoreV1Api(self.api).create_namespace(
            kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=name)))
        return name

    def env(self, *, database_spec: dict | None = None) -> Env:
        """A namespace of its own with a Ready Database on this stack's PostgreSQL."""
        return make_env(self.api, self.namespace(), self.server, self.pods,
                        database_spec=database_spec)


def start_stack(workdir: Path) -> Stack:
    """Everything a fault test restarts, its own: failing, never skipping, when it cannot."""
    import pytest

    try:
        binaries = ensure_kube_binaries()
    except Exception as error:
        pytest.fail(f"cannot build the control-plane binaries: {error}", pytrace=False)
    control_plane = ControlPlane(binaries, workdir=workdir / "controlplane")
    try:
        control_plane.start()
        _install_crds(control_plane)
    except Exception as error:
        control_plane.stop()
        pytest.fail(f"cannot start the control plane: {error}", pytrace=False)
    pg_dir = Path(tempfile.mkdtemp(prefix="pgjit-faults-pg-"))
    os.chmod(pg_dir, 0o755)
    try:
        server = start_postgres("16", pg_dir / "pg16")
        prepare_demo_postgres(server, dbname="app", table="items")
    except Exception as error:
        control_plane.stop()
        pytest.fail(f"cannot start PostgreSQL 16: {error}", pytrace=False)
    api = kubernetes.config.new_client_from_config(
        config_file=str(control_plane.kubeconfig()), persist_config=False)
    kubernetes.client.CoreV1Api(api).create_namespace(
        kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=RELEASE_NS)))
    return Stack(workdir, control_plane, server, api)


def stop_stack(stack: Stack) -> None:
    stack.pods.stop()
    stack.api.close()
    stack.server.stop()
    stack.control_plane.stop()


# --------------------------------------------------------------------------------------------
# The burst


def _retrying(call: Callable[[], Any], *, ok_statuses: tuple[int, ...] = (),
              timeout: float = 120.0) -> Any:
    """An API call as a persistent client makes it: again after errors, until a deadline.
    ``ok_statuses`` are answers that mean the call's effect is there (a create retried after
    it went through answers 409)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except ApiException as error:
            if error.status in ok_statuses:
                return None
            if error.status and error.status < 500 and error.status != 429:
                raise
            failure: Exception = error
        except Exception as error:  # noqa: BLE001 - connection refused while it restarts
            failure = error
        if time.monotonic() > deadline:
            raise AssertionError(f"the API server did not come back: {failure}")
        time.sleep(0.2)


class Burst:
    """``count`` sessions created at a steady pace from a thread; after every fifth create an
    earlier one is deleted, so sessions end while others open; ``half`` is set half-way, for
    the test to inject its fault."""

    def __init__(self, env: Env, count: int = BURST, *, pace: float = 0.08,
                 duration: str | None = None, group: str = "analysts",
                 database: str = "db") -> None:
        self.env, self.count, self.pace = env, count, pace
        self.duration, self.group, self.database = duration, group, database
        self.suffix = token()
        self.created: dict[str, str] = {}  # name -> user
        self.deleted: set[str] = set()
        #: monotonic time each create returned, by session name.
        self.created_at: dict[str, float] = {}
        self.half = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="burst")

    def user(self, index: int) -> str:
        # Every tenth session shares its user with the one five before: a shared login.
        base = index - 5 if index % 10 == 7 else index
        return f"f{base:03d}-{self.suffix}"

    @staticmethod
    def name(index: int) -> str:
        return f"b{index:03d}"

    def start(self) -> Burst:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for index in range(self.count):
                name, user = self.name(index), self.user(index)
                extra = {"duration": self.duration} if self.duration else {}
                spec = self.env.session_spec(user, groups=[self.group], database=self.database,
                                             **extra)
                _retrying(lambda: self.env.create("DatabaseSession", name, spec),
                          ok_statuses=(409,))
                self.created[name], self.created_at[name] = user, time.monotonic()
                if index % 5 == 4:
                    victim = self.name(index - 3)
                    _retrying(lambda: self.env.delete("DatabaseSession", victim),
                              ok_statuses=(404,))
                    self.deleted.add(victim)
                if index == self.count // 2:
                    self.half.set()
                time.sleep(self.pace)
        except BaseException as error:  # noqa: BLE001 - reported by join()
            self.error = error
            self.half.set()

    def wait_half(self, timeout: float = 120.0) -> None:
        assert self.half.wait(timeout), "the burst did not get half-way"
        if self.error:
            raise self.error

    def join(self, timeout: float = 180.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the burst did not finish"
        if self.error:
            raise self.error

    @property
    def remaining(self) -> dict[str, str]:
        return {name: user for name, user in self.created.items() if name not in self.deleted}


def phases(env: Env) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for session in env.list("DatabaseSession"):
        phase = (session.get("status") or {}).get("phase")
        found.setdefault(str(phase), []).append(session["metadata"]["name"])
    return {phase: sorted(names)[:12] for phase, names in found.items()}


def settle(env: Env, burst: Burst, *, timeout: float = SETTLE_TIMEOUT,
           ended: frozenset[str] = frozenset({"Active"})) -> float:
    """Every remaining session in one of ``ended`` phases and every deleted one gone; return
    the seconds it took."""
    began = time.monotonic()
    expected = set(burst.remaining)

    def settled():
        sessions = {s["metadata"]["name"]: s for s in env.list("DatabaseSession")}
        return set(sessions) == expected and all(
            (s.get("status") or {}).get("phase") in ended for s in sessions.values())
    try:
        wait_for("every remaining session settled and every deleted one gone",
                 lambda: _retrying(settled), timeout, interval=0.5)
    except AssertionError as error:
        odd = [(s["metadata"]["name"], (s.get("status") or {}).get("conditions"))
               for s in env.list("DatabaseSession")
               if (s.get("status") or {}).get("phase") not in ended][:5]
        raise AssertionError(f"{error}\nphases: {phases(env)}\nunsettled: {odd}\n"
                             f"{env.operator.log_tail(30)}") from None
    return time.monotonic() - began


def check_no_leaks(env: Env, burst: Burst) -> None:
    """What must hold once a burst settled: one Secret per Active session and none other, the
    Active sessions' logins working and no other managed login able to log in; then, with
    every session ended, no Secret and no login at all."""
    sessions = {s["metadata"]["name"]: s for s in env.list("DatabaseSession")}
    active = {name for name, s in sessions.items() if s["status"]["phase"] == "Active"}
    expected = {f"{name}-credentials" for name in active}
    try:
        wait_for("exactly the Active sessions' Secrets",
                 lambda: set(env.session_secrets()) == expected, 30, interval=0.5)
    except AssertionError as error:
        found = set(env.session_secrets())
        raise AssertionError(f"{error}\norphaned: {sorted(found - expected)}\n"
                             f"missing: {sorted(expected - found)}") from None
    for secret in env.session_secrets().values():
        assert secret.metadata.labels[SESSION_LABEL] == secret.metadata.name.removesuffix(
            "-credentials")
    # The grants on them likewise (credential access is on): one Role and one RoleBinding
    # per Active session, none for a session that ended.
    grants = {(kind, name) for name in expected for kind in ("Role", "RoleBinding")}
    wait_for("exactly the Active sessions' Roles and RoleBindings",
             lambda: env.session_access_objects() == grants, 30, interval=0.5)
    usernames = {sessions[name]["status"]["username"] for name in active}
    try:
        wait_for("login-capable managed users == the Active sessions' users",
                 lambda: env.login_capable_managed_users() == usernames, 30, interval=0.5)
    except AssertionError as error:
        capable = env.login_capable_managed_users()
        raise AssertionError(f"{error}\nwithout a live session: {sorted(capable - usernames)}\n"
                             f"live but locked: {sorted(usernames - capable)}") from None
    for name in random.sample(sorted(active), min(8, len(active))):
        with env.login(env.secret(f"{name}-credentials")) as conn:
            assert conn.execute("SELECT count(*) FROM public.items").fetchone() == (2,)
    # End everything: nothing may be left behind.
    for name in sessions:
        _retrying(lambda: env.delete("DatabaseSession", name), ok_statuses=(404,))
    wait_for("every session gone", lambda: not env.list("DatabaseSession"), 120, interval=0.5)
    wait_for("no Secret left", lambda: not env.session_secrets(), 30, interval=0.5)
    wait_for("no Role or RoleBinding left", lambda: not env.session_access_objects(), 30,
             interval=0.5)
    assert env.login_capable_managed_users() == set()


def fault_burst(env: Env, fault: Callable[[Burst], Any], *, ended: frozenset[str] = frozenset(
        {"Active"}), **burst_options) -> tuple[Burst, Any, float]:
    """A Role, a burst with ``fault(burst)`` run half-way (in this thread), the burst settled;
    returns the burst, what the fault returned, and the seconds from the fault to settled."""
    env.role("analysts", "best_effort_drop")
    burst = Burst(env, **burst_options).start()
    burst.wait_half()
    began = time.monotonic()
    result = fault(burst)
    burst.join()
    settle(env, burst, ended=ended)
    return burst, result, time.monotonic() - began


# --------------------------------------------------------------------------------------------
# A connection that can be cut: a Database's server unreachable


def Cuttable(target_port: int) -> Forwarder:
    """A forwarder to PostgreSQL on 127.0.0.1 that ``cut()`` takes down and ``restore()``
    brings back on the same port (forwarder.py)."""
    return Forwarder(("127.0.0.1", target_port))


def direct_login(server, creds: dict[str, str]) -> psycopg.Connection:
    """A session's credentials used on the real server, past any forwarder."""
    return psycopg.connect(host=server.host, port=server.port, user=creds["username"],
                           password=creds["password"], dbname=creds["dbname"],
                           connect_timeout=5, autocommit=True)


def rotate_admin_password(env: Env, secret: str = "admin") -> str:
    """What a DBA rotating the admin's password does: a new password in PostgreSQL and in the
    Database's Secret, and the admin's existing connections ended (as a restart or a pooler's
    recycling would), so that only the new password opens new ones."""
    password = secrets.token_urlsafe(24)
    server = env.server
    with env.superuser() as conn:
        verifier = conn.pgconn.encrypt_password(password.encode(), server.admin_user.encode(),
                                                b"scram-sha-256").decode()
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(server.admin_user), sql.Literal(verifier)))
    body = env.core.read_namespaced_secret(secret, env.namespace)
    body.data = None
    body.string_data = {"password": password}
    env.core.replace_namespaced_secret(secret, env.namespace, body)
    with env.superuser() as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                     [server.admin_user])
    server.admin_password = password
    return password
