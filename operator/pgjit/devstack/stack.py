"""The local stack behind ``make dev`` and ``pgjit dev``: a control plane, PostgreSQL 16, the
CRDs, the operator and example objects, all on loopback, all stopped by Ctrl-C.

Nothing here is for production: it exists so a newcomer can go from a clone to a psql prompt as
a provisioned user without a cluster.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import yaml
from psycopg import sql

from .controlplane import ControlPlane
from .kube_binaries import find_repo_root
from .ports import free_port
from .postgres import start_postgres

NAMESPACE = "demo"

#: Where the stack's kubeconfigs go, relative to the checkout (fixed, so the README can say it).
DEV_DIR = Path(".cache") / "dev"


def _kubectl(cp: ControlPlane, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run([str(cp.binaries.kubectl), "--kubeconfig", str(cp.kubeconfig("admin")),
                             *args], input=stdin, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def prepare_demo_postgres(server, dbname: str = "orders", table: str = "orders") -> None:
    """What the docs tell a DBA to set up: roles to hand out (reader, writer), the admin's
    extra grants, and a database owned by the admin with one table the roles can use."""
    with psycopg.connect(server.superuser_conninfo(), autocommit=True) as conn:
        admin = sql.Identifier(server.admin_user)
        conn.execute("CREATE ROLE reader NOLOGIN")
        conn.execute("CREATE ROLE writer NOLOGIN")
        conn.execute(sql.SQL("GRANT reader, writer TO {} WITH ADMIN OPTION").format(admin))
        conn.execute(sql.SQL("GRANT pg_signal_backend TO {}").format(admin))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(dbname), admin))
    with psycopg.connect(server.superuser_conninfo(dbname), autocommit=True) as conn:
        relation = sql.Identifier("public", table)
        conn.execute(sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, item text)").format(relation))
        conn.execute(sql.SQL("INSERT INTO {} (item) VALUES ('coffee'), ('tea')").format(relation))
        conn.execute(sql.SQL("GRANT SELECT ON {} TO reader").format(relation))
        conn.execute(sql.SQL("GRANT INSERT, UPDATE ON {} TO writer").format(relation))
        conn.execute(sql.SQL("GRANT USAGE ON SEQUENCE {} TO writer").format(
            sql.Identifier("public", f"{table}_id_seq")))


def _example_objects(server) -> list[dict]:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "orders-admin"},
              "type": "Opaque", "stringData": {"password": server.admin_password}}
    database = {
        "apiVersion": "pgjit.dev/v1alpha1", "kind": "Database",
        "metadata": {"name": "orders", "labels": {"env": "dev"}},
        "spec": {"host": server.host, "port": server.port, "databases": ["orders"],
                 "admin": {"username": server.admin_user,
                           "passwordSecretRef": {"name": "orders-admin", "key": "password"}},
                 "tls": {"sslMode": "prefer"}}}
    role = {
        "apiVersion": "pgjit.dev/v1alpha1", "kind": "Role", "metadata": {"name": "developers"},
        "spec": {"subjects": [{"kind": "Group", "name": "analysts"},
                              {"kind": "User", "name": "alice"}],
                 "userProvisioning": "best_effort_drop", "maxSessionDuration": "8h",
                 "allow": {"databaseSelector": {"matchLabels": {"env": "dev"}},
                           "databaseNames": ["orders"], "databaseRoles": ["reader"]}}}
    # What a cluster administrator grants people who open sessions (the chart's
    # pgjit-session-user ClusterRole, bound in one namespace): sessions, and reading the
    # Databases and Roles that explain them. No Secrets: the operator grants each user
    # their own session's Secret.
    session_user = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "pgjit-session-user"},
        "rules": [{"apiGroups": ["pgjit.dev"], "resources": ["databasesessions"],
                   "verbs": ["create", "get", "list", "watch", "delete"]},
                  {"apiGroups": ["pgjit.dev"], "resources": ["databases", "roles"],
                   "verbs": ["get", "list", "watch"]}]}
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "analysts-open-sessions"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "pgjit-session-user"},
        "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io",
                      "name": "analysts"}]}
    return [secret, database, role, session_user, binding]


def write_dev_kubeconfigs(cp: ControlPlane, directory: Path) -> dict[str, Path]:
    """The control plane's kubeconfigs at a fixed place, defaulting to the demo namespace.

    A fixed path lets the README show the exact commands to type, and the namespace default
    lets them leave out ``-n``. Each file holds a bearer token: private to the user.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for identity in ("admin", "alice", "bob"):
        config = yaml.safe_load(cp.kubeconfig(identity).read_text())
        for context in config["contexts"]:
            context["context"]["namespace"] = NAMESPACE
        path = directory / f"{identity}.kubeconfig"
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        written[identity] = path
    return written


def _next_steps(cp: ControlPlane, server, operator_log: Path, metrics_port: int,
                kubeconfigs: dict[str, Path]) -> str:
    """What to run next, with the paths of this machine's binaries and kubeconfigs."""
    pgjit = Path(sys.executable).parent / "pgjit"
    kubectl = f"{cp.binaries.kubectl} --kubeconfig {kubeconfigs['admin']}"
    return f"""
pgjit local stack is up (Ctrl-C stops everything).
  control plane : {cp.url}
  PostgreSQL 16 : {server.host}:{server.port} (database "orders", roles reader/writer)
  operator log  : {operator_log}   metrics: http://127.0.0.1:{metrics_port}/metrics

In another terminal, connect as alice (group analysts), the way a user of a real cluster does:
  export KUBECONFIG={kubeconfigs['alice']}
  {pgjit} explain orders --db-name orders    # what alice may get, and why
  {pgjit} connect orders --db-name orders

psql opens as PostgreSQL user "alice" with role reader (try: SELECT * FROM orders;). When psql
exits, the session ends and the user "alice" is dropped.

Look around as the cluster admin:
  {kubectl} get pgjit    # Databases, Roles and DatabaseSessions
"""


def _stop_on(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(state_dir: Path | None = None) -> int:
    """Run the stack until Ctrl-C, SIGTERM or SIGHUP (a closed terminal); then stop everything
    it started and remove its files, so nothing is left running or lying around."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop_on)
    root = find_repo_root()
    state_dir = state_dir or root / DEV_DIR
    workdir = Path(tempfile.mkdtemp(prefix="pgjit-dev-"))
    os.chmod(workdir, 0o755)  # the postgres OS user must reach its data directory below
    operator = None
    try:
        with ControlPlane() as cp, start_postgres("16", workdir / "pg16") as server:
            try:
                prepare_demo_postgres(server)
                _kubectl(cp, "apply", "--server-side", "-f", str(root / "crds"))
                _kubectl(cp, "wait", "--for=condition=Established", "--timeout=60s",
                         "crd/databases.pgjit.dev", "crd/roles.pgjit.dev",
                         "crd/databasesessions.pgjit.dev")
                _kubectl(cp, "create", "namespace", NAMESPACE)
                _kubectl(cp, "apply", "-n", NAMESPACE, "-f", "-",
                         stdin=yaml.safe_dump_all(_example_objects(server)))
                env = dict(os.environ, KUBECONFIG=str(cp.kubeconfig("admin")))
                metrics_port = free_port()
                log_path = workdir / "operator.log"
                with open(log_path, "w") as log:
                    operator = subprocess.Popen(
                        [sys.executable, "-m", "pgjit.cli", "run", "-n", NAMESPACE,
                         "--metrics-port", str(metrics_port)],
                        env=env, stdout=log, stderr=subprocess.STDOUT)
                kubeconfigs = write_dev_kubeconfigs(cp, state_dir)
                print(_next_steps(cp, server, log_path, metrics_port, kubeconfigs), flush=True)
                operator.wait()
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
                print(f"the operator exited ({operator.returncode}); its last lines:\n{tail}",
                      file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                print("stopping the local stack", file=sys.stderr, flush=True)
                return 0
            finally:
                if operator is not None and operator.poll() is None:
                    operator.terminate()
                    try:
                        operator.wait(15)
                    except subprocess.TimeoutExpired:
                        operator.kill()
                        operator.wait()
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
