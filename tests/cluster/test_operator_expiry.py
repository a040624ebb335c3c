"""Expiry: the operator ends a session at expiresAt; VALID UNTIL is the backstop without it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from operatorkit import Env, condition_of, make_env, token, wait_for

#: How late after expiresAt the operator may end a session (the daemon wakes at expiresAt;
#: creationTimestamp has whole seconds, the rest is one end and two API round trips).
LATENESS = timedelta(seconds=4)


@pytest.fixture
def env(kube_api, namespace, postgres16, operator) -> Env:
    return make_env(kube_api, namespace, postgres16, operator)


def now() -> datetime:
    return datetime.now(timezone.utc)


def parse_ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_expiry_ends_the_session_on_time(env):
    env.role("analysts", "keep")
    user = f"dora-{token()}@example.com"
    env.create("DatabaseSession", "s1", env.session_spec(user, duration="5s"))
    session = env.wait_phase("s1", "Active")
    expires_at = parse_ts(session["status"]["expiresAt"])
    assert expires_at - parse_ts(session["metadata"]["creationTimestamp"]) == timedelta(seconds=5)
    creds = env.secret("s1-credentials")
    conn = env.login(creds)
    assert conn.execute("SELECT count(*) FROM public.items").fetchone() == (2,)

    session = env.wait_phase("s1", "Expired", timeout=30)
    seen_at = now()
    status = session["status"]
    assert seen_at <= expires_at + LATENESS + timedelta(seconds=1)
    assert expires_at <= parse_ts(status["endedAt"]) <= expires_at + LATENESS
    assert status["teardown"]["action"] == "Locked"
    assert "Expired" in status["teardown"]["reason"]
    ready = condition_of(session)
    assert ready["status"] == "False" and ready["reason"] == "Expired"
    # Nothing will change until someone replaces it: Stalled (kstatus Failed), not Reconciling.
    assert condition_of(session, "Stalled")["reason"] == "Expired"
    assert condition_of(session, "Reconciling") is None
    assert env.secret("s1-credentials") is None
    assert env.login_refused(creds)
    assert conn.closed or _broken(conn)
    row = env.role_row(user)
    assert row["rolcanlogin"] is False and row["member_of"] == [env.managed_role]
    env.wait_event("s1", "Expired", "Normal")

    # Deleting an expired session is immediate and changes nothing in PostgreSQL.
    env.delete("DatabaseSession", "s1")
    env.wait_gone("DatabaseSession", "s1")
    assert env.role_row(user) == row


def _broken(conn) -> bool:
    try:
        conn.execute("SELECT 1")
    except Exception:
        return True
    return False


def test_valid_until_refuses_the_login_while_the_operator_is_down(env, operator):
    env.role("analysts", "keep")
    user = f"emil-{token()}@example.com"
    env.create("DatabaseSession", "s1", env.session_spec(user, duration="8s"))
    session = env.wait_phase("s1", "Active")
    expires_at = parse_ts(session["status"]["expiresAt"])
    creds = env.secret("s1-credentials")
    operator.kill()
    try:
        assert now() < expires_at - timedelta(seconds=2), "the operator stopped too late"
        with env.login(creds) as conn:  # still valid: nothing ended it early
            assert conn.execute("SELECT 1").fetchone() == (1,)
        wait_for("the login to be refused", lambda: env.login_refused(creds), timeout=30,
                 interval=0.2)
        assert now() >= expires_at - timedelta(seconds=1)
        # Nobody changed the role: PostgreSQL refused on its own, because of VALID UNTIL.
        row = env.role_row(user)
        assert row["rolcanlogin"] is True and row["rolvaliduntil"] <= now()
        assert env.get("DatabaseSession", "s1")["status"]["phase"] == "Active"
    finally:
        operator.start()

    # Back up: the operator notices the expiry it missed and ends the session properly.
    session = env.wait_phase("s1", "Expired", timeout=60)
    assert session["status"]["teardown"]["action"] == "Locked"
    assert condition_of(session)["reason"] == "Expired"
    assert env.secret("s1-credentials") is None
    assert env.role_row(user)["rolcanlogin"] is False
    assert env.login_refused(creds)
