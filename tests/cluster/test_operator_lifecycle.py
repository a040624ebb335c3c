"""Revocation, deletion order and Events."""

from __future__ import annotations

import psycopg
import pytest

from forwarder import Forwarder
from operatorkit import GROUP, VERSION, Env, condition_of, make_env, token, wait_for


@pytest.fixture
def env(kube_api, namespace, postgres16, operator) -> Env:
    return make_env(kube_api, namespace, postgres16, operator)


def test_deleting_the_role_ends_the_session_with_access_revoked(env):
    env.role("analysts", "keep")
    user = f"jane-{token()}@example.com"
    creds = env.open_session("s1", user)
    conn = env.login(creds)

    env.delete("Role", "analysts")
    session = env.wait_phase("s1", "Ended", timeout=20)
    ready = condition_of(session)
    assert ready["status"] == "False" and ready["reason"] == "AccessRevoked"
    assert "no Role allows" in ready["message"]
    assert condition_of(session, "Stalled")["reason"] == "AccessRevoked"
    status = session["status"]
    assert status["teardown"]["action"] == "Locked" and status["endedAt"]
    assert env.secret("s1-credentials") is None
    row = env.role_row(user)
    assert row["rolcanlogin"] is False and row["member_of"] == [env.managed_role]
    assert env.login_refused(creds)
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    env.wait_event("s1", "AccessRevoked")

    # Putting the Role back does not bring an ended session back: it stays Ended.
    env.role("analysts", "keep")
    env.create("DatabaseSession", "probe", env.session_spec(user))
    env.wait_phase("probe", "Active")
    assert env.get("DatabaseSession", "s1")["status"]["phase"] == "Ended"


def test_database_with_an_active_session_is_deleted_after_the_session(env):
    env.role("analysts", "best_effort_drop")
    user = f"karl-{token()}"
    creds = env.open_session("s1", user)

    env.delete("Database", "db")

    def waiting():
        database = env.get("Database", "db")
        ready = condition_of(database or {}) or {}
        return database if ready.get("reason") == "SessionsActive" else None
    database = env._with_log("the Database to say why it waits", waiting, 20)
    assert database["metadata"]["deletionTimestamp"]
    message = condition_of(database)["message"]
    assert "1 DatabaseSession(s) still use this Database" in message, message
    assert database["status"]["activeSessions"] == 1
    env.wait_event("db", "SessionsActive")
    # The session is untouched meanwhile, and new ones are refused.
    assert env.get("DatabaseSession", "s1")["status"]["phase"] == "Active"
    with env.login(creds) as conn:
        assert conn.execute("SELECT count(*) FROM public.items").fetchone() == (2,)
    env.create("DatabaseSession", "late", env.session_spec(f"late-{token()}"))
    late = env.wait_phase("late", "Failed")
    assert condition_of(late)["reason"] == "DatabaseNotReady"
    assert "being deleted" in condition_of(late)["message"]
    assert env.get("Database", "db") is not None

    env.delete("DatabaseSession", "s1")
    env.wait_gone("DatabaseSession", "s1")
    assert env.role_row(user) is None  # ended through the Database it was opened on
    env.wait_gone("Database", "db", timeout=30)
    assert env.login_refused(creds)


def test_a_database_is_deleted_at_once_while_its_health_check_hangs(env):
    """A server that stops answering (a hung host, a dropped route) leaves the health check
    waiting on a connection. Deleting the Database must not wait for it: the check is given up
    and the Database is gone in seconds, not after the check's connect timeouts and retries
    (80 s), nor never (Kopf waited for a patch that changed nothing, once the check ended)."""
    gate = Forwarder((env.server.host, env.server.port))
    gate.restore()
    try:
        spec = dict(env.get("Database", "db")["spec"], host="127.0.0.1", port=gate.port)
        env.create("Database", "gated", spec)
        env.wait_ready("Database", "gated", "True")
        gate.hold()
        # Only the health check opens a new connection now (the preflight's own, each period):
        # once one is held, the check is in flight, waiting on it.
        wait_for("the health check to hang on the gate", lambda: gate.held, 30)
        env.delete("Database", "gated")
        env.wait_gone("Database", "gated", timeout=15)
    finally:
        gate.cut()


def test_a_database_on_a_server_that_never_answers_says_so_and_can_be_deleted(env):
    """Each connection attempt waits out the connect timeout (10 s); retried eight times
    inline, the first word on the Database came after 85 s, and its deletion waited as long."""
    gate = Forwarder((env.server.host, env.server.port))
    gate.restore()
    gate.hold()
    try:
        spec = dict(env.get("Database", "db")["spec"], host="127.0.0.1", port=gate.port)
        env.create("Database", "silent", spec)
        database = env.wait_ready("Database", "silent", "False", "Unreachable", timeout=30)
        assert "timeout" in condition_of(database)["message"], condition_of(database)
        env.delete("Database", "silent")
        env.wait_gone("Database", "silent", timeout=30)
    finally:
        gate.cut()


def test_events_on_transitions_never_carry_the_password(env, kubectl):
    env.role("analysts", "keep")
    user = f"lena-{token()}@example.com"
    env.create("DatabaseSession", "ok", env.session_spec(user))
    env.wait_phase("ok", "Active")
    password = env.secret("ok-credentials")["password"]
    env.create("DatabaseSession", "denied", env.session_spec(user, databaseRoles=["writer"]))
    env.wait_phase("denied", "Failed")
    # A second session of the same user hands out the same password: still not in any Event.
    env.create("DatabaseSession", "twin", env.session_spec(user))
    env.wait_phase("twin", "Active")
    assert env.secret("twin-credentials")["password"] == password

    active = env.wait_event("ok", "Active", "Normal")
    assert user in active.message
    assert active.involved_object.kind == "DatabaseSession"
    assert active.involved_object.uid == env.get("DatabaseSession", "ok")["metadata"]["uid"]
    warning = env.wait_event("denied", "AccessDenied", "Warning")
    assert 'access to database role "writer" denied' in warning.message
    env.wait_event("db", "Connected", "Normal")

    env.delete("DatabaseSession", "ok")
    env.delete("DatabaseSession", "twin")
    env.wait_gone("DatabaseSession", "ok")
    env.wait_gone("DatabaseSession", "twin")

    assert not env.session_secrets()
    events = env.events()
    assert {"Active", "AccessDenied", "Connected"} <= {e.reason for e in events}
    for event in events:
        assert password not in f"{event.reason} {event.message}"
    # What a person would look at: kubectl, in both Event APIs.
    for resource in ("events", "events.events.k8s.io"):
        shown = kubectl("get", resource, "-n", env.namespace, "-o", "json", check=True).stdout
        assert '"Active"' in shown and "AccessDenied" in shown
        assert password not in shown
    # Nor in any status, nor in the operator's log.
    for session in env.list("DatabaseSession"):
        assert password not in str(session)
    assert password not in env.operator.log_path.read_text(errors="replace")


def test_role_selection_follows_databases_and_roles_carry_no_finalizer(env, postgres16):
    env.role("analysts", "keep")

    def selected(names):
        def check():
            role = env.get("Role", "analysts") or {}
            got = role.get("status", {}).get("selectedDatabases")
            return role if got == names else None
        return env._with_log(f"Role analysts to select {names}", check, 20)

    selected(["db"])
    # A second Database with the selected label is picked up without touching the Role...
    env.create("Database", "db2", {
        "host": postgres16.host, "port": postgres16.port, "databases": ["app"],
        "admin": {"username": postgres16.admin_user,
                  "passwordSecretRef": {"name": "admin", "key": "password"}},
        "managedRole": env.managed_role, "credentials": {"scramIterations": 1}},
        labels={"env": "test"})
    role = selected(["db", "db2"])
    assert condition_of(role)["message"] == "selects 2 Database(s)"
    # ...and dropped when it is relabelled away or deleted.
    env.custom.patch_namespaced_custom_object(GROUP, VERSION, env.namespace, "databases", "db2",
                                              {"metadata": {"labels": {"env": "other"}}})
    selected(["db"])
    env.custom.patch_namespaced_custom_object(GROUP, VERSION, env.namespace, "databases", "db2",
                                              {"metadata": {"labels": {"env": "test"}}})
    selected(["db", "db2"])
    env.delete("Database", "db2")
    env.wait_gone("Database", "db2")
    selected(["db"])
    # Nothing in a Role needs the operator at deletion, so it carries no finalizer that would
    # hold it (and its namespace) while the operator is away.
    assert not env.get("Role", "analysts")["metadata"].get("finalizers")
