"""`pgjit explain` against the real API server: the operator's policy, rendered for people, and
checked against what the operator actually grants."""

from __future__ import annotations

import os
import subprocess
import sys

import kubernetes
import psycopg
from psycopg import sql

from operatorkit import GROUP, VERSION, make_env
from clikit import grant_cli_access, run_cli


def _create(api, namespace, plural, kind, name, spec, labels=None):
    kubernetes.client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, plural,
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind,
         "metadata": {"name": name, "labels": labels or {}}, "spec": spec})


def explain(control_plane, namespace, *args, identity="admin"):
    env = dict(os.environ, KUBECONFIG=str(control_plane.kubeconfig(identity)))
    return subprocess.run([sys.executable, "-m", "pgjit.cli", "explain", "-n", namespace, *args],
                          env=env, capture_output=True, text=True, timeout=60)


def test_explain_shows_allowing_and_denying_roles(control_plane, installed_crds, kube_api,
                                                  namespace):
    _create(kube_api, namespace, "databases", "Database", "orders",
            {"host": "db.example", "admin": {"username": "admin",
                                             "passwordSecretRef": {"name": "a"}}},
            labels={"env": "prod"})
    _create(kube_api, namespace, "roles", "Role", "analysts", {
        "subjects": [{"kind": "Group", "name": "analysts"}], "userProvisioning": "keep",
        "maxSessionDuration": "2h",
        "allow": {"databaseSelector": {"matchLabels": {"env": "prod"}},
                  "databaseNames": ["orders"], "databaseRoles": ["reader", "writer"]}})
    _create(kube_api, namespace, "roles", "Role", "no-writes", {
        "subjects": [{"kind": "Group", "name": "analysts"}],
        "deny": {"databaseRoles": ["writer"]}})

    allowed = explain(control_plane, namespace, "orders", "--user", "alice", "--group",
                      "analysts", "--db-name", "orders")
    assert allowed.returncode == 0, allowed.stderr
    for expected in ("analysts", "no-writes", "keep", "reader", "writer", "2h"):
        assert expected in allowed.stdout, (expected, allowed.stdout)

    refused = explain(control_plane, namespace, "orders", "--user", "alice", "--group",
                      "analysts", "--db-name", "orders", "--db-roles", "writer")
    assert refused.returncode == 1
    assert 'access to database role "writer" denied' in refused.stdout

    stranger = explain(control_plane, namespace, "orders", "--user", "bob", "--db-name", "orders")
    assert stranger.returncode == 1 and "AccessDenied" in stranger.stdout


def test_explain_names_a_missing_database(control_plane, installed_crds, namespace):
    result = explain(control_plane, namespace, "nosuch", "--user", "alice")
    # 2, not 1: "could not tell" must not read as "refused" in scripts.
    assert result.returncode == 2 and '"nosuch"' in result.stderr and result.stdout == ""


def _line(text: str, label: str) -> str:
    """The value after ``label`` on its line, e.g. _line(text, "granted:") -> "reader"."""
    return next(line.split(label, 1)[1].strip() for line in text.splitlines() if label in line)


def test_explain_defaults_to_you(control_plane, installed_crds, kube_api, namespace):
    """Without --user: alice as the API server knows her, with the groups connect would send."""
    grant_cli_access(kube_api, namespace)
    _create(kube_api, namespace, "databases", "Database", "orders",
            {"host": "db.example", "databases": ["orders"],
             "admin": {"username": "admin", "passwordSecretRef": {"name": "a"}}})
    _create(kube_api, namespace, "roles", "Role", "everyone", {
        "subjects": [{"kind": "Group", "name": "system:authenticated"}],
        "userProvisioning": "keep",
        "allow": {"databaseSelector": {}, "databaseNames": ["*"], "databaseRoles": ["reader"]}})

    result = explain(control_plane, namespace, "orders", identity="alice")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "User:     alice (groups: analysts, system:authenticated)" in result.stdout
    assert "SelfSubjectReview" in _line(result.stdout, "Identity:")
    assert 'database name "orders"' in result.stdout  # the Database's only offered name
    assert _line(result.stdout, "granted:") == "reader"

    # bob has no group but system:authenticated, and no permission to read Databases here.
    result = explain(control_plane, namespace, "orders", identity="bob")
    assert result.returncode == 2 and "403" in result.stderr


def test_explain_reads_internal_traits_from_the_configmap(control_plane, installed_crds,
                                                          kube_api, namespace):
    kubernetes.client.CoreV1Api(kube_api).create_namespaced_config_map(namespace, {
        "metadata": {"name": "traits"}, "data": {"alice": "db_roles: [auditor]\n"}})
    _create(kube_api, namespace, "databases", "Database", "orders",
            {"host": "db.example", "admin": {"username": "a", "passwordSecretRef": {"name": "a"}}})
    _create(kube_api, namespace, "roles", "Role", "templated", {
        "subjects": [{"kind": "User", "name": "alice"}], "userProvisioning": "keep",
        "allow": {"databaseSelector": {}, "databaseNames": ["*"],
                  "databaseRoles": ["{{internal.db_roles}}", "{{external.teams}}"]}})

    result = explain(control_plane, namespace, "orders", "--user", "alice", "--db-name", "x",
                     "--extra", "teams=finance", "--traits-configmap", f"{namespace}/traits")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _line(result.stdout, "granted:") == "auditor, finance"
    assert f"ConfigMap {namespace}/traits (an entry for alice)" in result.stdout

    # Without the ConfigMap the template expands to nothing, and the report says so.
    result = explain(control_plane, namespace, "orders", "--user", "alice", "--db-name", "x")
    assert _line(result.stdout, "granted:") == "none"
    assert "{{internal.db_roles}} expanded to nothing" in result.stdout


def test_explain_predicts_what_the_operator_grants(control_plane, kube_api, namespace,
                                                   postgres16, operator):
    """The same decision twice: explain's for alice, and a real session the operator activated
    for her through pgjit connect."""
    env = make_env(kube_api, namespace, postgres16, operator)
    grant_cli_access(kube_api, namespace)
    env.role("analysts", "best_effort_drop", roles=("reader", "writer"), maxSessionDuration="2h")
    env.create("Role", "no-writes", {"subjects": [{"kind": "Group", "name": "analysts"}],
                                     "deny": {"databaseRoles": ["writer"]}})

    explained = explain(control_plane, namespace, "db", "--db-name", "app", identity="alice")
    assert explained.returncode == 0, explained.stdout + explained.stderr
    assert "writer (by Role no-writes)" in _line(explained.stdout, "denied:")

    status = _session_status(control_plane, env)
    assert ", ".join(status["databaseRoles"]) == _line(explained.stdout, "granted:") == "reader"
    assert status["userProvisioning"] in _line(explained.stdout, "Mode:")
    assert status["matchedRoles"] == ["analysts"]


def test_explain_predicts_the_operators_object_permissions(control_plane, kube_api, namespace,
                                                           postgres16, operator):
    env = make_env(kube_api, namespace, postgres16, operator)
    grant_cli_access(kube_api, namespace)
    with psycopg.connect(postgres16.superuser_conninfo("app"), autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT SELECT, INSERT ON public.items TO {} WITH GRANT OPTION")
                     .format(sql.Identifier(postgres16.admin_user)))
    env.create("Role", "tables", {
        "subjects": [{"kind": "Group", "name": "analysts"}], "userProvisioning": "best_effort_drop",
        "allow": {"databaseSelector": {"matchLabels": {"env": "test"}}, "databaseNames": ["app"],
                  "permissions": [{"match": {"schema": "public", "name": "*"},
                                   "privileges": ["SELECT", "INSERT"]}]},
        "deny": {"permissions": [{"match": {"schema": "public", "name": "*"},
                                  "privileges": ["INSERT"]}]}})

    explained = explain(control_plane, namespace, "db", "--db-name", "app", identity="alice")
    assert explained.returncode == 0, explained.stdout + explained.stderr
    permission_rows = [line.split() for line in explained.stdout.splitlines()
                       if line.strip().startswith(("allow ", "deny "))]
    assert permission_rows == [["allow", "SELECT,", "INSERT", "on", "table", "public.*", "tables"],
                               ["deny", "INSERT", "on", "table", "public.*", "tables"]]

    status = _session_status(control_plane, env)
    # What is left after the deny: SELECT on the one table there is.
    assert status["permissions"] == "SELECT on 1 table"
    assert status.get("databaseRoles") in (None, [])


def _session_status(control_plane, env) -> dict:
    """Open a session as alice with pgjit connect, keep it, read its status, end it."""
    opened = run_cli(control_plane, "connect", "db", "--db-name", "app", "-n", env.namespace,
                     "--keep-session", "--", "-c", "select 1")
    assert opened.returncode == 0, opened.stderr
    (session,) = env.list("DatabaseSession")
    ended = run_cli(control_plane, "disconnect", "--all", "-n", env.namespace)
    assert ended.returncode == 0, ended.stderr
    assert env.list("DatabaseSession") == []
    return session["status"]
