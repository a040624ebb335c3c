"""Fixtures for end-to-end operator tests: real control plane, real PostgreSQL 16, and the
operator running as a separate process (`pgjit run`), exactly as a user would run it locally.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import kubernetes
import psycopg
from kubernetes.client.rest import ApiException

from pgjit.devstack.kube_binaries import find_repo_root
from pgjit.devstack.postgres import start_postgres
from pgjit.devstack.stack import prepare_demo_postgres

GROUP, VERSION = "pgjit.dev", "v1alpha1"
PLURALS = {"Database": "databases", "Role": "roles", "DatabaseSession": "databasesessions",
           "ObjectLabelRule": "objectlabelrules", "DatabaseSessionReview": "databasesessionreviews"}
SESSION_LABEL = "pgjit.dev/session"
#: The operator's Database health/sweep interval in tests (production default: 60 s).
HEALTH_SECONDS = "3"
#: How often a session daemon re-checks that Roles still allow it (production default: 30 s).
REVALIDATE_SECONDS = "1"

# The shared parts of a layer (one PostgreSQL, one operator process: two operators watching the
# same objects would fight), started by the first fixture that asks and stopped when the last
# user is done; the fixtures themselves are in the layers' conftest.py.
_SHARED: dict[str, list] = {}


@contextlib.contextmanager
def _shared(key: str, start: Callable[[], Any], stop: Callable[[Any], None]) -> Iterator[Any]:
    if key not in _SHARED:
        _SHARED[key] = [start(), 0]
    entry = _SHARED[key]
    entry[1] += 1
    try:
        yield entry[0]
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            del _SHARED[key]
            stop(entry[0])


def token(length: int = 3) -> str:
    """A short random suffix for server-wide names (roles, databases) so tests never collide."""
    return secrets.token_hex(length)


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


def shared_crds(control_plane):
    """The CRDs installed once for every test process sharing ``control_plane``."""
    return _shared("crds", lambda: _install_crds(control_plane), lambda _: None)


def _install_crds(control_plane) -> bool:
    root = find_repo_root()
    kubectl = [str(control_plane.binaries.kubectl), f"--kubeconfig={control_plane.kubeconfig()}"]
    subprocess.run([*kubectl, "apply", "--server-side", "--force-conflicts", "-f",
                    str(root / "crds")], check=True, capture_output=True)
    subprocess.run([*kubectl, "wait", "--for=condition=Established", "--timeout=60s",
                    *(f"crd/{p}.{GROUP}" for p in PLURALS.values())], check=True,
                   capture_output=True)
    control_plane.refresh_garbage_collector()
    return True


def shared_postgres16():
    """One PostgreSQL 16 for every test process of the layer (see _shared)."""
    return _shared("postgres16", _start_postgres16, lambda server: server.stop())


def _start_postgres16():
    workdir = Path(tempfile.mkdtemp(prefix="pgjit-cluster-pg-"))
    os.chmod(workdir, 0o755)
    # Every test's Database keeps its own admin connections (the namespaces are never
    # deleted: the test bed runs no namespace controller), and two operators share this
    # server; 100, the default, ran out once a layer held some 150 Databases.
    server = start_postgres("16", workdir / "pg16", settings={"max_connections": "400"})
    prepare_demo_postgres(server, dbname="app", table="items")
    return server


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log_path: Path, extra_env: dict | None = None):
        self.kubeconfig, self.log_path = kubeconfig, log_path
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), PYTHONUNBUFFERED="1",
                   PGJIT_REVALIDATE_SECONDS=REVALIDATE_SECONDS, PGJIT_HEALTH_SECONDS=HEALTH_SECONDS,
                   **self.extra_env)
        with open(self.log_path, "a") as log:
            log.write(f"--- operator started at {time.strftime('%H:%M:%S')} ---\n")
            log.flush()
            # PGJIT_TEST_VERBOSE=1 logs Kopf's debug lines too (every patch, every cause).
            verbose = ["-v"] if os.environ.get("PGJIT_TEST_VERBOSE") else []
            self.proc = subprocess.Popen([sys.executable, "-m", "pgjit.cli", "run", "-A", *verbose],
                                         env=env, stdout=log, stderr=subprocess.STDOUT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

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


def shared_operator(control_plane, tmp_path_factory):
    """One operator process for every test process sharing ``control_plane``."""
    def start() -> OperatorProcess:
        proc = OperatorProcess(control_plane.kubeconfig("admin"),
                               tmp_path_factory.mktemp("operator") / "operator.log")
        proc.start()
        return proc
    return _shared("operator", start, lambda proc: proc.stop())


@dataclass
class Env:
    """One test's namespace with a Database (Ready) and helpers to drive and inspect it."""

    api: kubernetes.client.ApiClient
    namespace: str
    server: Any
    operator: OperatorProcess
    managed_role: str = ""
    _tmpdir: Path | None = field(default=None, init=False, repr=False)

    @property
    def tmpdir(self) -> Path:
        """Where certificate logins write their key pairs. Made on the first such login, since
        most tests never make one, and removed with this Env: the key files are live
        credentials until the session ends."""
        if self._tmpdir is None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="pgjit-login-"))
            weakref.finalize(self, shutil.rmtree, self._tmpdir, ignore_errors=True)
        return self._tmpdir

    @property
    def custom(self):
        return kubernetes.client.CustomObjectsApi(self.api)

    @property
    def core(self):
        return kubernetes.client.CoreV1Api(self.api)

    # -- objects -------------------------------------------------------------------------------

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

    def list(self, kind: str) -> list[dict]:
        return self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                         PLURALS[kind])["items"]

    def delete(self, kind: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                    PLURALS[kind], name)

    def condition(self, kind: str, name: str, type_: str = "Ready") -> dict | None:
        obj = self.get(kind, name) or {}
        return condition_of(obj, type_)

    def _with_log(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        try:
            return wait_for(what, check, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- operator log ---\n{self.operator.log_tail()}") \
                from None

    def wait_phase(self, name: str, *phases: str, timeout: float = 30.0) -> dict:
        def check():
            obj = self.get("DatabaseSession", name)
            return obj if obj and obj.get("status", {}).get("phase") in phases else None
        return self._with_log(f"session {name} in {phases}", check, timeout)

    def wait_ready(self, kind: str, name: str, status: str, reason: str | None = None,
                   timeout: float = 30.0) -> dict:
        """Wait until the object's Ready condition has ``status`` (and ``reason``)."""
        def check():
            obj = self.get(kind, name)
            ready = condition_of(obj or {}, "Ready") or {}
            if ready.get("status") == status and reason in (None, ready.get("reason")):
                return obj
            return None
        return self._with_log(f"{kind} {name} Ready={status} {reason or ''}", check, timeout)

    def wait_gone(self, kind: str, name: str, timeout: float = 30.0) -> None:
        self._with_log(f"{kind} {name} deleted", lambda: self.get(kind, name) is None, timeout)

    def secret(self, name: str) -> dict[str, str] | None:
        try:
            data = self.core.read_namespaced_secret(name, self.namespace).data or {}
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    def secret_object(self, name: str):
        return self.core.read_namespaced_secret(name, self.namespace)

    def session_secrets(self) -> dict[str, Any]:
        """Every Secret in the namespace carrying the ``pgjit.dev/session`` label, by name."""
        items = self.core.list_namespaced_secret(self.namespace,
                                                 label_selector=SESSION_LABEL).items
        return {s.metadata.name: s for s in items}

    def session_access_objects(self) -> set[tuple[str, str]]:
        """Every (kind, name) of the Roles and RoleBindings in the namespace carrying the
        ``pgjit.dev/session`` label: the grants on sessions' Secrets."""
        rbac = kubernetes.client.RbacAuthorizationV1Api(self.api)
        roles = rbac.list_namespaced_role(self.namespace, label_selector=SESSION_LABEL).items
        bindings = rbac.list_namespaced_role_binding(self.namespace,
                                                     label_selector=SESSION_LABEL).items
        return {("Role", r.metadata.name) for r in roles} | \
            {("RoleBinding", b.metadata.name) for b in bindings}

    def create_secret(self, name: str, data: dict[str, str | bytes],
                      type_: str = "Opaque") -> None:
        self.core.create_namespaced_secret(self.namespace, kubernetes.client.V1Secret(
            metadata=kubernetes.client.V1ObjectMeta(name=name), type=type_,
            string_data={k: v.decode() if isinstance(v, bytes) else v for k, v in data.items()}))

    def events(self, involved_name: str | None = None) -> list:
        items = self.core.list_namespaced_event(self.namespace).items
        return [e for e in items
                if involved_name is None or e.involved_object.name == involved_name]

    def wait_event(self, name: str, reason: str, type_: str | None = None,
                   timeout: float = 30.0):
        def check():
            return next((e for e in self.events(name) if e.reason == reason
                         and type_ in (None, e.type)), None)
        return self._with_log(f"event {reason} on {name}", check, timeout)

    # -- PostgreSQL ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def superuser(self, dbname: str = "postgres") -> Iterator[psycopg.Connection]:
        with psycopg.connect(self.server.superuser_conninfo(dbname), autocommit=True) as conn:
            yield conn

    def role_state(self, username: str) -> tuple[bool, bool, frozenset[str]] | None:
        with self.superuser() as conn:
            row = conn.execute("""
                SELECT r.rolcanlogin, ARRAY(SELECT g.rolname::text FROM pg_auth_members m
                       JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid)
                  FROM pg_roles r WHERE r.rolname = %s""", [username]).fetchone()
        return None if row is None else (True, row[0], frozenset(row[1]))

    def role_row(self, username: str) -> dict | None:
        """Everything about a role that pgjit could change, for before/after comparisons."""
        with self.superuser() as conn:
            cur = conn.execute("""
                SELECT a.rolcanlogin, a.rolpassword, a.rolvaliduntil, a.rolsuper,
                       a.rolcreaterole, a.rolconnlimit,
                       shobj_description(a.oid, 'pg_authid') AS comment,
                       ARRAY(SELECT g.rolname::text FROM pg_auth_members m
                             JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = a.oid
                             ORDER BY 1) AS member_of
                  FROM pg_authid a WHERE a.rolname = %s""", [username])
            row = cur.fetchone()
            return None if row is None else dict(zip([d.name for d in cur.description], row))

    def login_capable_managed_users(self) -> set[str]:
        """Members of this Database's managedRole that can log in.

        The admin is left out: PostgreSQL 16 makes the creator of a role a member of it WITH
        ADMIN OPTION, which is how the admin grants the managed role, not a managed user.
        """
        with self.superuser() as conn:
            rows = conn.execute("""
                SELECT r.rolname FROM pg_roles r
                  JOIN pg_auth_members m ON m.member = r.oid
                  JOIN pg_roles g ON g.oid = m.roleid
                 WHERE g.rolname = %s AND r.rolcanlogin AND r.rolname <> %s
                   AND NOT m.admin_option""",
                [self.managed_role, self.server.admin_user]).fetchall()
        return {r[0] for r in rows}

    def login(self, creds: dict[str, str], **extra) -> psycopg.Connection:
        """Log in with a session's Secret exactly as a client would (its ``uri``).

        Certificate Secrets: the key pair is written to files (libpq reads only files) and the
        host is the server's certificate-auth address (pg_hba's ``hostssl … cert`` line), since
        the Secret's host is the Database's (password-auth) host.
        """
        if "tls.key" in creds:
            directory = Path(tempfile.mkdtemp(dir=self.tmpdir))
            for key, filename in (("tls.crt", "client.crt"), ("tls.key", "client.key"),
                                  ("ca.crt", "ca.crt")):
                path = directory / filename
                path.write_text(creds[key])
                path.chmod(0o600)
            params = {"host": self.server.cert_host, "sslcert": str(directory / "client.crt"),
                      "sslkey": str(directory / "client.key"),
                      "sslrootcert": str(directory / "ca.crt"), "connect_timeout": 10}
            params.update(extra)
            return psycopg.connect(creds["uri"], autocommit=True, **params)
        return psycopg.connect(creds["uri"], autocommit=True, connect_timeout=10, **extra)

    def login_refused(self, creds: dict[str, str]) -> bool:
        try:
            self.login(creds).close()
        except psycopg.OperationalError:
            return True
        return False

    def session_spec(self, user: str, *, groups=("analysts",), database="db", dbname="app",
                     **extra) -> dict:
        return {"user": user, "groups": list(groups), "databaseRef": {"name": database},
                "databaseName": dbname, **extra}

    def open_session(self, name: str, user: str, **spec) -> dict[str, str]:
        """Create a session for ``user``, wait until it is Active, return its credentials."""
        self.create("DatabaseSession", name, self.session_spec(user, **spec))
        self.wait_phase(name, "Active")
        return self.secret(f"{name}-credentials")

    def role(self, name: str, mode: str, roles=("reader",), *, group: str = "analysts",
             **extra) -> dict:
        """A Role granting ``roles`` on database app of every Database labelled env=test."""
        spec = {"subjects": [{"kind": "Group", "name": group}], "userProvisioning": mode,
                "allow": {"databaseSelector": {"matchLabels": {"env": "test"}},
                          "databaseNames": ["app"], "databaseRoles": list(roles)}}
        spec.update(extra)
        return self.create("Role", name, spec)


def condition_of(obj: dict, type_: str = "Ready") -> dict | None:
    return next((c for c in obj.get("status", {}).get("conditions") or ()
                 if c["type"] == type_), None)


def make_env(kube_api, namespace, postgres16, operator, *, database_spec: dict | None = None,
             managed_role: str | None = None, name: str = "db", wait_ready: bool = True,
             admin_secret: bool = True) -> Env:
    assert operator.running, f"the operator is not running\n{operator.log_tail()}"
    managed_role = managed_role or f"pgjit-{namespace}"[:63]
    env = Env(kube_api, namespace, postgres16, operator, managed_role)
    if admin_secret:
        env.create_secret("admin", {"password": postgres16.admin_password})
    spec = {"host": postgres16.host, "port": postgres16.port, "databases": ["app"],
            "admin": {"username": postgres16.admin_user,
                      "passwordSecretRef": {"name": "admin", "key": "password"}},
            "managedRole": managed_role,
            "credentials": {"scramIterations": 1}}
    spec.update(database_spec or {})
    env.create("Database", name, spec, labels={"env": "test"})
    if wait_ready:
        env.wait_ready("Database", name, "True")
    return env
