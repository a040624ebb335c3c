"""The local stack behind ``make dev`` and ``pgjit dev``: a control plane, PostgreSQL 16, the
CRDs, the operator and example objects, all on loopback, all stopped by Ctrl-C.

Nothing here is for production: it exists so a newcomer can go from a clone to a psql prompt as
a provisioned user without a cluster.
"""

from __future__ import annotations

import os
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
from .postgres import start_postgres

NAMESPACE = "demo"


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
    return [secret, database, role]


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    root = find_repo_root()
    workdir = Path(tempfile.mkdtemp(prefix="pgjit-dev-"))
    os.chmod(workdir, 0o755)  # the postgres OS user must reach its data directory below
    operator = None
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
            log = open(workdir / "operator.log", "w")
            operator = subprocess.Popen([sys.executable, "-m", "pgjit.cli", "run", "-n",
                                         NAMESPACE, "--metrics-port", "9464"],
                                        env=env, stdout=log, stderr=subprocess.STDOUT)
            kubeconfig = cp.kubeconfig("admin")
            print(f"""
pgjit local stack is up (Ctrl-C stops everything).
  control plane : {cp.url}
  PostgreSQL 16 : {server.host}:{server.port} (database "orders", roles reader/writer)
  operator log  : {workdir / 'operator.log'}   metrics: http://127.0.0.1:9464/metrics

Try it:
  export KUBECONFIG={kubeconfig}
  export PATH={cp.binaries.kubectl.parent}:$PATH   # kubectl is {cp.binaries.kubectl.name}
  {cp.binaries.kubectl} -n {NAMESPACE} get pgjit
  {cp.binaries.kubectl} -n {NAMESPACE} create -f - <<'YAML'
apiVersion: pgjit.dev/v1alpha1
kind: DatabaseSession
metadata: {{name: alice-orders}}
spec: {{user: alice, groups: [analysts], databaseRef: {{name: orders}}, databaseName: orders, duration: 1h}}
YAML
  {cp.binaries.kubectl} -n {NAMESPACE} wait --for=condition=Ready dbsession/alice-orders
  psql "$({cp.binaries.kubectl} -n {NAMESPACE} get secret alice-orders-credentials -o jsonpath='{{.data.uri}}' | base64 -d)"
""", flush=True)
            operator.wait()
            print(f"the operator exited ({operator.returncode}); see {workdir / 'operator.log'}")
            return 1
        except KeyboardInterrupt:
            return 0
        finally:
            if operator is not None and operator.poll() is None:
                operator.terminate()
                try:
                    operator.wait(15)
                except subprocess.TimeoutExpired:
                    operator.kill()


if __name__ == "__main__":
    sys.exit(main())
