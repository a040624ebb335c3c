"""examples/ and the steps of docs/kind.md against the real API server, and the examples working.

kind itself cannot run here (no container engine), so what can be checked without pods is: the
commands of the guide are admitted by a real kube-apiserver as written, under the chart's own
RBAC and identity binding; and the PostgreSQL set-up SQL of examples/postgres.yaml, run on a
real PostgreSQL 16, gives an admin with which the example Database, Role and session work.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest
import yaml

from operatorkit import Env, token, wait_for
from pgjit.api.database import Database
from pgjit.api.role import Role
from pgjit.api.session import DatabaseSession
from pgjit.devstack.kube_binaries import find_repo_root
from pgjit.devstack.postgres import start_postgres

ROOT = find_repo_root()
EXAMPLES = ROOT / "examples"
SESSION_EXAMPLE = EXAMPLES / "sessions" / "alice-orders.yaml"
CHART = ROOT / "charts" / "pgjit"
CRD_NAMES = ("databases.pgjit.dev", "databasesessions.pgjit.dev", "roles.pgjit.dev")
GUIDE = ROOT / "docs" / "kind.md"


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def example(kind: str) -> dict:
    paths = sorted(EXAMPLES.glob("*.yaml")) + [SESSION_EXAMPLE]
    return next(doc for path in paths for doc in documents(path) if doc["kind"] == kind)


def guide_command(start: str) -> str:
    """The one command line of docs/kind.md that starts with ``start``."""
    blocks = re.findall(r"```sh\n(.*?)```", GUIDE.read_text(), re.DOTALL)
    lines = [line for block in blocks for line in block.splitlines() if line.startswith(start)]
    assert len(lines) == 1, f"docs/kind.md has {len(lines)} commands starting {start!r}"
    return lines[0]


def test_crds_apply_server_side_as_the_guide_says(control_plane, installed_crds, kubectl,
                                                  tmp_path):
    # Over the CRDs the test session installed: the guide's step must be repeatable, since
    # users run it again on every upgrade.
    command = guide_command("kubectl apply --server-side -f crds/")
    for _ in range(2):
        done = _guide_shell(control_plane, tmp_path, command)
        assert done.returncode == 0, done.stderr
        for name in CRD_NAMES:
            assert f"customresourcedefinition.apiextensions.k8s.io/{name} serverside-applied" \
                in done.stdout, done.stdout
    established = kubectl("wait", "--for=condition=Established", "--timeout=30s",
                          *(f"crd/{name}" for name in CRD_NAMES))
    assert established.returncode == 0, established.stderr


def test_example_objects_are_valid_models():
    database = Database.model_validate(example("Database"))
    assert database.spec.admin.password_secret_ref.name == "orders-admin"
    role = Role.model_validate(example("Role"))
    assert role.spec.allow.database_selector.matches(example("Database")["metadata"]["labels"])
    session = DatabaseSession.model_validate(example("DatabaseSession"))
    assert session.spec.database_ref.name == database.metadata.name
    assert session.spec.user == "alice@example.com"
    # The admin the SQL of postgres.yaml creates is the one the Database logs in as.
    init_sql = example("ConfigMap")["data"]["10-pgjit.sql"]
    assert f"CREATE ROLE {database.spec.admin.username} LOGIN CREATEROLE" in init_sql
    statefulset = example("StatefulSet")
    env = {e["name"]: e for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PGJIT_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "orders-admin", "key": "password"}


def _guide_shell(control_plane, workdir: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run guide commands in bash from the repository root, ``kubectl`` being the control
    plane's (as admin; the guide's ``--as`` flags impersonate from there)."""
    bindir = workdir / "bin"
    bindir.mkdir(exist_ok=True)
    link = bindir / "kubectl"
    if not link.exists():
        link.symlink_to(control_plane.binaries.kubectl)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(workdir),
           "KUBECONFIG": str(control_plane.kubeconfig("admin"))}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def _chart_manifests(helm, release: str, *templates: str) -> list[dict]:
    shown = [arg for template in templates for arg in ("--show-only", template)]
    done = helm("template", release, str(CHART), "--set", "userRoles.create=true", *shown)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def test_examples_are_admitted_as_the_guide_says(control_plane, installed_crds, kubectl, helm,
                                                 namespace, tmp_path):
    def run_guide(start: str) -> subprocess.CompletedProcess[str]:
        command = guide_command(start).replace("-n demo ", f"-n {namespace} ")
        assert namespace in command
        return _guide_shell(control_plane, tmp_path, command)

    # The guide's Secrets: generated, piped, never on a command line.
    for secret in ("orders-pg-superuser", "orders-admin"):
        made = run_guide(f"openssl rand -hex 16 | tr -d '\\n' | kubectl -n demo create secret "
                         f"generic {secret} ")
        assert made.returncode == 0, made.stderr
    password = json.loads(kubectl("get", "secret", "orders-admin", "-n", namespace, "-o", "json",
                                  check=True).stdout)["data"]["password"]
    assert len(password) == 44  # base64 of 32 hex digits, without a newline

    # The chart's session-user ClusterRole (release "pgjit", as the guide installs it), and its
    # identity binding, bound to this namespace only: the policy is cluster-wide and the other
    # tests of this control plane rightly open sessions for others as admin.
    cluster_role = _chart_manifests(helm, "pgjit", "templates/user-clusterroles.yaml")
    # Left in place afterwards only if a chart install of this control plane already made them.
    ours = [doc for doc in cluster_role if kubectl(
        "get", "clusterrole", doc["metadata"]["name"]).returncode != 0]
    release = f"ex-{token()}"
    policy = _chart_manifests(helm, release, "templates/identity-binding.yaml")
    binding = next(doc for doc in policy if doc["kind"] == "ValidatingAdmissionPolicyBinding")
    binding["spec"]["matchResources"] = {"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": namespace}}}
    applied = kubectl("apply", "--server-side", "--field-manager=pgjit-examples-test", "-f", "-",
                      input=json.dumps({"apiVersion": "v1", "kind": "List",
                                        "items": cluster_role + policy}))
    assert applied.returncode == 0, applied.stderr
    try:
        refused = wait_for("the identity binding to refuse admin's session for alice", lambda: (
            r := kubectl("create", "--dry-run=server", "-n", namespace, "-f",
                         str(SESSION_EXAMPLE))).returncode != 0 and r)
        assert "spec.user must be your own Kubernetes user name" in refused.stderr, \
            refused.stderr

        applied = run_guide("kubectl -n demo apply -f examples/")
        assert applied.returncode == 0, applied.stderr
        for created in ("configmap/orders-pg-init", "service/orders-pg",
                        "statefulset.apps/orders-pg", "database.pgjit.dev/orders",
                        "role.pgjit.dev/analysts",
                        "rolebinding.rbac.authorization.k8s.io/analysts-open-sessions"):
            assert f"{created} created" in applied.stdout, applied.stdout
        assert "databasesession" not in applied.stdout  # examples/sessions/ is not applied here

        opened = run_guide("kubectl -n demo create -f examples/sessions/ --as alice@example.com")
        assert opened.returncode == 0, opened.stderr
        assert "databasesession.pgjit.dev/alice-orders created" in opened.stdout

        listed = kubectl("get", "pgjit", "-n", namespace, "-o", "name")
        assert sorted(listed.stdout.split()) == ["database.pgjit.dev/orders",
                                                 "databasesession.pgjit.dev/alice-orders",
                                                 "role.pgjit.dev/analysts"], listed.stderr
    finally:
        kubectl("delete", "-f", "-", "--ignore-not-found", input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": policy + ours}))
        # The example Database points at a server that only exists in kind, so the operator
        # would retry it (and the session waiting for it) for the rest of the run. The session
        # never held a user: delete it and drop pgjit's finalizer (the documented manual
        # recovery; in this order, or the operator would put the finalizer back).
        kubectl("delete", "-n", namespace, "--wait=false", "--ignore-not-found",
                "databasesession/alice-orders", "database.pgjit.dev/orders")
        kubectl("patch", "-n", namespace, "databasesession/alice-orders", "--type=merge",
                "-p", '{"metadata":{"finalizers":null}}')


@pytest.fixture
def demo_postgres():
    """A fresh PostgreSQL 16 set up by examples/postgres.yaml's SQL, as the image would run it:
    psql as the superuser, the admin's password in the environment only."""
    workdir = Path(tempfile.mkdtemp(prefix="pgjit-examples-pg-"))
    os.chmod(workdir, 0o755)
    server = start_postgres("16", workdir / "pg16")
    try:
        with psycopg.connect(server.superuser_conninfo(), autocommit=True) as su:
            su.execute("DROP ROLE pgjit_admin")  # start_postgres's own admin; the SQL makes it
        admin_password = token(16)
        done = subprocess.run(
            [str(server.psql_path), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", server.host,
             "-p", str(server.port), "-U", server.superuser, "-d", "postgres", "-f", "-"],
            input=example("ConfigMap")["data"]["10-pgjit.sql"], capture_output=True, text=True,
            env={"PATH": "/usr/bin:/bin", "PGPASSWORD": server.superuser_password,
                 "PGJIT_ADMIN_PASSWORD": admin_password}, timeout=60)
        assert done.returncode == 0, done.stderr
        yield server, admin_password
    finally:
        server.stop()


def test_examples_open_a_working_session(kube_api, namespace, operator, demo_postgres):
    server, admin_password = demo_postgres
    env = Env(kube_api, namespace, server, operator)
    env.create_secret("orders-admin", {"password": admin_password})
    # Only the address differs from examples/: here PostgreSQL is a local process.
    database = example("Database")
    database["spec"].update(host=server.host, port=server.port)
    for body in (database, example("Role"), example("DatabaseSession")):
        env.custom.create_namespaced_custom_object(
            "pgjit.dev", "v1alpha1", namespace,
            {"Database": "databases", "Role": "roles",
             "DatabaseSession": "databasesessions"}[body["kind"]], body)
    env.wait_ready("Database", "orders", "True", "Connected")
    session = env.wait_phase("alice-orders", "Active")
    assert session["status"]["databaseRoles"] == ["reader"]

    creds = env.secret("alice-orders-credentials")
    with env.login(creds) as conn:
        assert conn.execute("SELECT current_user, count(*) FROM public.orders "
                            "GROUP BY 1").fetchone() == ("alice@example.com", 2)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO public.orders (item) VALUES ('cake')")

    env.delete("DatabaseSession", "alice-orders")
    env.wait_gone("DatabaseSession", "alice-orders")
    assert env.login_refused(creds)
    env.delete("Database", "orders")
    env.wait_gone("Database", "orders")
