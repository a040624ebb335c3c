"""Privilege boundaries through the operator: what a hostile Role author tries, as objects.

The engine's refusals are tested on every PostgreSQL version in tests/postgres; here the same
attacks come through the API server (a Role, a trait, a Database bound) and the status, Events
and Database report must say what happened.
"""

from __future__ import annotations

import pytest
from psycopg import sql

from operatorkit import Env, condition_of, make_env, token, wait_for


@pytest.fixture
def env(kube_api, namespace, postgres16, operator) -> Env:
    return make_env(kube_api, namespace, postgres16, operator)


def _patch_database(env: Env, spec: dict) -> None:
    """Change the Database and wait until the operator has seen the change (sessions are
    decided from its cached copy)."""
    patched = env.custom.patch_namespaced_custom_object(
        "pgjit.dev", "v1alpha1", env.namespace, "databases", "db", {"spec": spec})
    generation = patched["metadata"]["generation"]
    wait_for("the operator to observe the Database change", lambda: (
        env.get("Database", "db").get("status", {}).get("observedGeneration") == generation),
        timeout=30)


def test_a_role_naming_the_admin_fails_the_session_and_changes_nothing(env):
    admin = env.server.admin_user
    env.role("analysts", "keep", roles=(admin,))
    user = f"mal-{token()}"
    env.create("DatabaseSession", "s1", env.session_spec(user))
    failed = env.wait_phase("s1", "Failed")
    ready = condition_of(failed)
    assert ready["reason"] == "PrivilegedRole"
    assert f'"{admin}" is the admin role pgjit logs in as' in ready["message"]
    assert condition_of(failed, "Stalled")["status"] == "True"
    assert env.role_row(user) is None, "a refused session created its user"
    assert env.secret("s1-credentials") is None


def test_a_trait_cannot_smuggle_server_program_execution(env):
    env.role("analysts", "keep", roles=("{{external.db_roles}}",))
    user = f"tr-{token()}"
    env.create("DatabaseSession", "s1", env.session_spec(
        user, extra={"db_roles": ["pg_execute_server_program"]}))
    ready = condition_of(env.wait_phase("s1", "Failed"))
    assert ready["reason"] == "PrivilegedRole"
    assert "runs programs on the server" in ready["message"]
    assert env.role_row(user) is None


def test_the_database_bound_refuses_and_reports_roles_outside_it(env):
    with env.superuser() as su:
        su.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier("auditor")))
        su.execute(sql.SQL("GRANT auditor TO {} WITH ADMIN OPTION").format(
            sql.Identifier(env.server.admin_user)))
    env.role("analysts", "keep", roles=("reader",))
    env.role("auditors", "keep", roles=("auditor",))
    _patch_database(env, {"grantableRoles": ["read*"]})

    def violations():
        db = env.get("Database", "db")
        return db.get("status", {}).get("policyViolations") or None
    found = wait_for("policyViolations on the Database", violations, timeout=30)
    assert [(v["role"], v["kind"], v["name"]) for v in found] == [
        ("auditors", "databaseRole", "auditor")]
    assert condition_of(env.get("Database", "db"))["status"] == "True", \
        "a violation made the Database not Ready"

    user = f"bo-{token()}"
    env.create("DatabaseSession", "s1", env.session_spec(user))
    ready = condition_of(env.wait_phase("s1", "Failed"))
    assert ready["reason"] == "AccessDenied"
    assert '"auditor"' in ready["message"] and "grantableRoles" in ready["message"]
    # Inside the bound: works.
    creds = env.open_session("s2", f"ok-{token()}", databaseRoles=["reader"])
    env.login(creds).close()

    # Removing the bound removes the refusal and the report.
    _patch_database(env, {"grantableRoles": None})
    wait_for("policyViolations cleared", lambda: violations() is None, timeout=30)
    env.open_session("s3", f"fr-{token()}")


def test_a_session_database_that_does_not_exist_fails_with_database_not_found(env):
    _patch_database(env, {"databases": None})
    env.role("anything", "keep")
    patched = env.custom.patch_namespaced_custom_object(
        "pgjit.dev", "v1alpha1", env.namespace, "roles", "anything",
        {"spec": {"allow": {"databaseNames": ["*"]}}})
    # Sessions are decided from the operator's copy of the Roles: wait until it has this one
    # (its validation runs after the index took the change), or the session may meet the old.
    wait_for("the operator to observe the Role change", lambda: (
        env.get("Role", "anything").get("status", {}).get("observedGeneration")
        == patched["metadata"]["generation"]), timeout=30)
    user = f"nd-{token()}"
    env.create("DatabaseSession", "s1", env.session_spec(user, dbname="no_such_db"))
    ready = condition_of(env.wait_phase("s1", "Failed"))
    assert ready["reason"] == "DatabaseNotFound"
    assert '"no_such_db" does not exist on server' in ready["message"]
    assert env.role_row(user) is None


def test_drift_on_a_shared_user_is_corrected_with_an_event(env):
    env.role("analysts", "keep")
    user = f"dr-{token()}"
    env.open_session("s1", user)
    with env.superuser() as su:
        su.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(f"extra_{user}")))
    with env.superuser() as su:
        su.execute(sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
            sql.Identifier(f"extra_{user}"), sql.Identifier(env.server.admin_user)))
    # Granted by hand, as the admin (so the admin may take it back on 16+ too).
    with env.superuser() as su:
        su.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(env.server.admin_user)))
        su.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(f"extra_{user}"),
                                                    sql.Identifier(user)))
    # The health check (every 3 s here) strips it from the user in use.
    event = env.wait_event("s1", "DriftCorrected", "Normal", timeout=30)
    assert f'membership in "extra_{user}"' in event.message
    wait_for("the extra membership stripped",
             lambda: f"extra_{user}" not in env.role_state(user)[2], timeout=10)
    assert env.role_state(user)[1], "the user in use was locked"
