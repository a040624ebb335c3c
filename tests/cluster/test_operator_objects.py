"""Objects chosen by labels, through the operator: ObjectLabelRules and the Roles that match by
them, and conflicts between rules reported on the later rule's status."""

from __future__ import annotations

import pytest
from psycopg import sql

from operatorkit import Env, condition_of, make_env, token, wait_for


@pytest.fixture
def env(kube_api, namespace, postgres16, operator) -> Env:
    return make_env(kube_api, namespace, postgres16, operator)


def _tables(env: Env, *names: str) -> None:
    with env.superuser("app") as su:
        for name in names:
            su.execute(sql.SQL("CREATE TABLE {} (x int)").format(sql.Identifier("public", name)))
            su.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(
                sql.Identifier("public", name), sql.Identifier(env.server.admin_user)))


def _label_rule(env: Env, name: str, *entries: tuple[dict, dict]) -> None:
    env.create("ObjectLabelRule", name, {
        "databaseSelector": {"matchLabels": {"env": "test"}},
        "rules": [{"match": match, "labels": labels} for match, labels in entries]})


def test_a_session_gets_the_tables_labelled_for_it(env):
    suffix = token()
    _tables(env, f"orders_{suffix}", f"customer_{suffix}")
    _label_rule(env, "pii", ({"schema": "public", "name": f"orders_{suffix}"}, {"pii": "false"}),
                ({"schema": "public", "name": f"customer_{suffix}"}, {"pii": "true"}))
    env.wait_ready("ObjectLabelRule", "pii", "True", "Valid")
    env.create("Role", "no-pii", {
        "subjects": [{"kind": "Group", "name": "analysts"}], "userProvisioning": "keep",
        "allow": {"databaseSelector": {"matchLabels": {"env": "test"}}, "databaseNames": ["app"],
                  "permissions": [{"match": {"labels": {"matchLabels": {"pii": "false"}}},
                                   "privileges": ["SELECT"]}]}})
    user = f"lab-{token()}"
    creds = env.open_session("s1", user)
    session = env.get("DatabaseSession", "s1")
    assert session["status"]["permissions"] == "SELECT on 1 table"
    with env.login(creds) as conn:
        conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(f"orders_{suffix}")))
        with pytest.raises(Exception, match="permission denied"):
            conn.execute(sql.SQL("SELECT * FROM {}").format(
                sql.Identifier(f"customer_{suffix}")))


def test_rules_that_disagree_are_reported_on_the_later_rule(env):
    _label_rule(env, "first", ({"schema": "public", "name": "orders*"}, {"pii": "false"}))
    env.wait_ready("ObjectLabelRule", "first", "True", "Valid")
    _label_rule(env, "second", ({"schema": "public", "name": "*"}, {"pii": "true"}))
    second = env.wait_ready("ObjectLabelRule", "second", "False", "LabelConflict")
    assert condition_of(second, "Stalled")["status"] == "True"
    assert 'ObjectLabelRule first' in condition_of(second)["message"]
    assert second["status"]["conflicts"] == [
        {"rule": "first", "label": "pii", "values": ["true", "false"],
         "objects": "table public.*"}]
    assert condition_of(env.get("ObjectLabelRule", "first"))["reason"] == "Valid"
    # The earlier rule goes away: the later one's conflict clears.
    env.delete("ObjectLabelRule", "first")
    wait_for("the conflict cleared", lambda: not (
        env.get("ObjectLabelRule", "second").get("status", {}).get("conflicts")), timeout=30)


def test_explain_objects_lists_what_a_session_would_get(env, kube_api):
    from pgjit.client.explaining import ExplainOptions, explain

    suffix = token()
    _tables(env, f"orders_{suffix}", f"customer_{suffix}")
    _label_rule(env, "pii", ({"schema": "public", "name": f"orders_{suffix}"}, {"pii": "false"}))
    env.create("Role", "no-pii", {
        "subjects": [{"kind": "Group", "name": "analysts"}], "userProvisioning": "keep",
        "allow": {"databaseSelector": {"matchLabels": {"env": "test"}}, "databaseNames": ["app"],
                  "permissions": [{"match": {"labels": {"matchLabels": {"pii": "false"}}},
                                   "privileges": ["SELECT"]}]}})
    text, allowed = explain(kube_api, ExplainOptions(
        database="db", namespace=env.namespace, user="someone", groups=("analysts",),
        database_name="app", objects_conninfo=env.server.superuser_conninfo()))
    assert allowed
    assert f"  table public.orders_{suffix}: SELECT" in text
    assert f"customer_{suffix}" not in text
    assert "  schema public: USAGE" in text
