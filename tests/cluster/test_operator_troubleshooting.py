"""The seed troubleshooting cases: each produces the documented condition and message.

Teleport's troubleshooting guide lists what goes wrong when auto-provisioning meets a real
server; here each case is set up for real and the status must say what to do about it.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from operatorkit import Env, condition_of, make_env, token


@pytest.fixture
def env(kube_api, namespace, postgres16, operator) -> Env:
    return make_env(kube_api, namespace, postgres16, operator)


def test_missing_connect_on_a_listed_database(kube_api, namespace, postgres16, operator):
    dbname = f"restricted_{token()}"
    with psycopg.connect(postgres16.superuser_conninfo(), autocommit=True) as su:
        su.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        su.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC")
                   .format(sql.Identifier(dbname)))
    env = make_env(kube_api, namespace, postgres16, operator,
                   database_spec={"databases": ["app", dbname]}, wait_ready=False)
    database = env.wait_ready("Database", "db", "False", "InsufficientPrivilege")
    ready = condition_of(database)
    grant = f'GRANT CONNECT ON DATABASE "{dbname}" TO "{postgres16.admin_user}";'
    assert grant in ready["message"], ready["message"]
    assert condition_of(database, "Stalled")["status"] == "True"
    env.wait_event("db", "InsufficientPrivilege", "Warning")

    # Sessions wait for the Database instead of failing one by one with the same cause.
    env.role("analysts", "keep")
    env.create("DatabaseSession", "s1", env.session_spec(f"fay-{token()}"))
    pending = env.wait_phase("s1", "Pending")
    assert condition_of(pending)["reason"] == "DatabaseNotReady"
    assert "InsufficientPrivilege" in condition_of(pending)["message"]

    # The DBA runs exactly the statement from the message; the next health check sees it.
    with psycopg.connect(postgres16.superuser_conninfo(), autocommit=True) as su:
        su.execute(grant)
    env.wait_ready("Database", "db", "True", "Connected")
    env.wait_phase("s1", "Active", timeout=45)


def test_read_only_endpoint(kube_api, namespace, postgres16, operator):
    admin = f"ro_admin_{token()}"
    password = token(12)
    with psycopg.connect(postgres16.superuser_conninfo(), autocommit=True) as su:
        su.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}")
                   .format(sql.Identifier(admin), sql.Literal(password)))
        su.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on")
                   .format(sql.Identifier(admin)))
    kit = Env(kube_api, namespace, postgres16, operator)
    kit.create_secret("ro-admin", {"password": password})
    env = make_env(kube_api, namespace, postgres16, operator, wait_ready=False, database_spec={
        "admin": {"username": admin, "passwordSecretRef": {"name": "ro-admin", "key": "password"}}})
    database = env.wait_ready("Database", "db", "False", "ReadOnly")
    assert database["status"]["readOnly"] is True
    assert "read-only" in condition_of(database)["message"]
    assert condition_of(database, "Stalled")["status"] == "True"

    env.role("analysts", "keep")
    user = f"gus-{token()}"
    env.create("DatabaseSession", "s1", env.session_spec(user))
    pending = env.wait_phase("s1", "Pending")
    assert condition_of(pending)["reason"] == "DatabaseNotReady"
    assert "ReadOnly" in condition_of(pending)["message"]
    assert env.role_row(user) is None


def test_admin_without_admin_option_on_a_requested_role(env):
    auditor = f"auditor_{token()}"
    with env.superuser() as su:
        su.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(auditor)))
    env.role("auditors", "keep", roles=(auditor,))
    user = f"hana-{token()}"
    env.create("DatabaseSession", "s1", env.session_spec(user))
    session = env.wait_phase("s1", "Failed")
    ready = condition_of(session)
    assert ready["reason"] == "InsufficientPrivilege" and ready["status"] == "False"
    grant = f'GRANT "{auditor}" TO "{env.server.admin_user}" WITH ADMIN OPTION;'
    assert grant in ready["message"], ready["message"]
    assert condition_of(session, "Stalled")["status"] == "True"
    env.wait_event("s1", "InsufficientPrivilege", "Warning")
    assert env.role_row(user) is None  # nothing half-done
    assert env.secret("s1-credentials") is None

    # The Database's health check shows it too, for a DBA to see before anyone asks; the
    # Database stays Ready, since sessions without that role are unaffected.
    def admin_privileges(expected):
        def check():
            database = env.get("Database", "db")
            privileges = database.get("status", {}).get("adminPrivileges") or {}
            return database if privileges.get("rolesWithoutAdminOption") == expected else None
        return env._with_log(f"Database adminPrivileges.rolesWithoutAdminOption {expected}",
                             check, 20)
    database = admin_privileges([auditor])
    assert grant in database["status"]["adminPrivileges"]["summary"]
    assert condition_of(database)["status"] == "True"

    # After the DBA's GRANT, the Database says so and a new session works.
    with env.superuser() as su:
        su.execute(grant)
    admin_privileges([])
    env.create("DatabaseSession", "s2", env.session_spec(user))
    status = env.wait_phase("s2", "Active")["status"]
    assert status["databaseRoles"] == [auditor]
    assert auditor in env.role_row(user)["member_of"]


def test_name_conflict_with_an_unmanaged_user(env):
    user = f"ivan_{token()}"
    with env.superuser() as su:
        su.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'theirs' VALID UNTIL '2100-01-01'")
                   .format(sql.Identifier(user)))
        su.execute(sql.SQL("GRANT writer TO {}").format(sql.Identifier(user)))
    before = env.role_row(user)
    env.role("analysts", "best_effort_drop")
    env.create("DatabaseSession", "s1", env.session_spec(user))
    session = env.wait_phase("s1", "Failed")
    ready = condition_of(session)
    assert ready["reason"] == "UserConflict"
    assert f'"{user}"' in ready["message"] and "not managed by pgjit" in ready["message"]
    assert env.role_row(user) == before
    assert env.secret("s1-credentials") is None

    # Deleting the failed session leaves the role alone too, login and all.
    env.delete("DatabaseSession", "s1")
    env.wait_gone("DatabaseSession", "s1")
    assert env.role_row(user) == before
    with psycopg.connect(env.server.conninfo(user, "theirs", "app")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (user,)
