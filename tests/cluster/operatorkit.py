"""Fixtures for end-to-end operator tests: real control plane, real PostgreSQL 16, and the
operator running as a separate process (`pgjit run`), exactly as a user would run it locally.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import kubernetes
import psycopg
import pytest
from kubernetes.client.rest import ApiException
from psycopg import sql

from pgjit.devstack.kube_binaries import find_repo_root
from pgjit.devstack.postgres import start_postgres

GROUP, VERSION = "pgjit.dev", "v1alpha1"
PLURALS = {"Database": "databases", "Role": "roles", "DatabaseSession": "databasesessions"}


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05):
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}")


@pytest.fixture(scope="session")
def installed_crds(control_plane):
    root = find_repo_root()
    kubectl = [str(control_plane.binaries.kubectl), f"--kubeconfig={control_plane.kubeconfig()}"]
    subprocess.run([*kubectl, "apply", "--server-side", "--force-conflicts", "-f",
                    str(root / "crds")], check=True, capture_output=True)
    subprocess.run([*kubectl, "wait", "--for=condition=Established", "--timeout=60s",
                    *(f"crd/{p}.{GROUP}" for p in PLURALS.values())], check=True,
                   capture_output=True)


@pytest.fixture(scope="session")
def postgres16():
    workdir = Path(tempfile.mkdtemp(prefix="pgjit-cluster-pg-"))
    os.chmod(workdir, 0o755)
    server = start_postgres("16", workdir / "pg16")
    with psycopg.connect(server.superuser_conninfo(), autocommit=True) as conn:
        admin = sql.Identifier(server.admin_user)
        conn.execute("CREATE ROLE reader NOLOGIN; CREATE ROLE writer NOLOGIN")
        conn.execute(sql.SQL("GRANT reader, writer TO {} WITH ADMIN OPTION").format(admin))
        conn.execute(sql.SQL("GRANT pg_signal_backend TO {}").format(admin))
        conn.execute(sql.SQL("CREATE DATABASE app OWNER {}").format(admin))
    with psycopg.connect(server.superuser_conninfo("app"), autocommit=True) as conn:
        conn.execute("CREATE TABLE public.items(id int)")
        conn.execute("INSERT INTO public.items VALUES (1), (2)")
        conn.execute("GRANT SELECT ON public.items TO reader")
        conn.execute("GRANT INSERT ON public.items TO writer")
    yield server
    server.stop()


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log_path: Path, extra_env: dict | None = None):
        self.kubeconfig, self.log_path = kubeconfig, log_path
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), PGJIT_REVALIDATE_SECONDS="1",
                   **self.extra_env)
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "pgjit.cli", "run", "-A"], env=env,
                                     stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        """SIGKILL: the crash case, no cleanup of any kind."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def operator(control_plane, installed_crds, tmp_path_factory):
    proc = OperatorProcess(control_plane.kubeconfig("admin"),
                           tmp_path_factory.mktemp("operator") / "operator.log")
    proc.start()
    yield proc
    proc.stop()


@dataclass
class Env:
    """One test's namespace with a Database (Ready) and helpers to drive and inspect it."""

    api: kubernetes.client.ApiClient
    namespace: str
    server: Any
    operator: OperatorProcess

    @property
    def custom(self):
        return kubernetes.client.CustomObjectsApi(self.api)

    @property
    def core(self):
        return kubernetes.client.CoreV1Api(self.api)

    def create(self, kind: str, name: str, spec: dict, labels: dict | None = None) -> dict:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind,
                "metadata": {"name": name, "labels": labels or {}}, "spec": spec}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                           PLURALS[kind], body)

    def get(self, kind: str, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                            PLURALS[kind], name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete(self, kind: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                    PLURALS[kind], name)

    def condition(self, kind: str, name: str, type_: str = "Ready") -> dict | None:
        obj = self.get(kind, name) or {}
        return next((c for c in obj.get("status", {}).get("conditions") or ()
                     if c["type"] == type_), None)

    def wait_phase(self, name: str, *phases: str, timeout: float = 30.0) -> dict:
        def check():
            obj = self.get("DatabaseSession", name)
            return obj if obj and obj.get("status", {}).get("phase") in phases else None
        try:
            return wait_for(f"session {name} in {phases}", check, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- operator log ---\n{self.operator.log_tail()}")

    def wait_gone(self, kind: str, name: str, timeout: float = 30.0) -> None:
        wait_for(f"{kind} {name} deleted", lambda: self.get(kind, name) is None, timeout)

    def secret(self, name: str) -> dict[str, str] | None:
        try:
            data = self.core.read_namespaced_secret(name, self.namespace).data or {}
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    def role_state(self, username: str) -> tuple[bool, bool, frozenset[str]] | None:
        with psycopg.connect(self.server.superuser_conninfo(), autocommit=True) as conn:
            row = conn.execute("""
                SELECT r.rolcanlogin, ARRAY(SELECT g.rolname::text FROM pg_auth_members m
                       JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid)
                  FROM pg_roles r WHERE r.rolname = %s""", [username]).fetchone()
        return None if row is None else (True, row[0], frozenset(row[1]))

    def session_spec(self, user: str, *, groups=("analysts",), database="db", dbname="app",
                     **extra) -> dict:
        return {"user": user, "groups": list(groups), "databaseRef": {"name": database},
                "databaseName": dbname, **extra}


def make_env(kube_api, namespace, postgres16, operator, *, database_spec: dict | None = None,
             managed_role: str | None = None) -> Env:
    env = Env(kube_api, namespace, postgres16, operator)
    env.core.create_namespaced_secret(namespace, kubernetes.client.V1Secret(
        metadata=kubernetes.client.V1ObjectMeta(name="admin"),
        string_data={"password": postgres16.admin_password}))
    spec = {"host": postgres16.host, "port": postgres16.port, "databases": ["app"],
            "admin": {"username": postgres16.admin_user,
                      "passwordSecretRef": {"name": "admin", "key": "password"}},
            "managedRole": managed_role or f"pgjit-{namespace}"[:63],
            "credentials": {"scramIterations": 1}}
    spec.update(database_spec or {})
    env.create("Database", "db", spec, labels={"env": "test"})
    wait_for("Database db Ready", lambda: (env.condition("Database", "db") or {}).get("status")
             == "True", 30)
    return env
