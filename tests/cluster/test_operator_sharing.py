"""Several live sessions of one user share its PostgreSQL login."""

from __future__ import annotations

import subprocess

import psycopg
import pytest

from operatorkit import Env, condition_of, make_env, token, wait_for


@pytest.fixture
def env(kube_api, namespace, postgres16, operator) -> Env:
    return make_env(kube_api, namespace, postgres16, operator)


def test_two_sessions_share_the_login_until_the_last_one_ends(env):
    env.role("analysts", "keep", roles=("reader", "writer"))
    user = f"bob-{token()}@example.com"
    env.create("DatabaseSession", "s1", env.session_spec(user, databaseRoles=["reader"]))
    first = env.wait_phase("s1", "Active")["status"]
    env.create("DatabaseSession", "s2", env.session_spec(user, databaseRoles=["reader"]))
    second = env.wait_phase("s2", "Active")["status"]
    assert first["username"] == second["username"] == user
    creds1, creds2 = env.secret("s1-credentials"), env.secret("s2-credentials")
    # One PostgreSQL role has one password: the second session hands out the first one's.
    assert creds1["password"] == creds2["password"]
    for creds in (creds1, creds2):
        with env.login(creds) as conn:
            assert conn.execute("SELECT count(*) FROM public.items").fetchone() == (2,)

    # Different roles while the user is shared: refused, and the live sessions are untouched.
    env.create("DatabaseSession", "s3", env.session_spec(user, databaseRoles=["reader", "writer"]))
    third = env.wait_phase("s3", "Failed")
    ready = condition_of(third)
    assert ready["reason"] == "RolesChanged" and ready["status"] == "False"
    assert "reader" in ready["message"] and "writer" in ready["message"]
    assert env.secret("s3-credentials") is None
    assert env.role_row(user)["member_of"] == sorted(["reader", env.managed_role])
    env.delete("DatabaseSession", "s3")
    env.wait_gone("DatabaseSession", "s3")

    # Ending one of two sessions leaves the login enabled, and live connections alive.
    conn = env.login(creds2)
    env.delete("DatabaseSession", "s1")
    env.wait_gone("DatabaseSession", "s1")
    assert env.secret("s1-credentials") is None
    assert env.role_row(user)["rolcanlogin"] is True
    assert conn.execute("SELECT count(*) FROM public.items").fetchone() == (2,)
    with env.login(creds2) as again:
        assert again.execute("SELECT 1").fetchone() == (1,)

    # Ending the last one disables the login and terminates the connection still open.
    env.delete("DatabaseSession", "s2")
    env.wait_gone("DatabaseSession", "s2")
    row = env.role_row(user)
    assert row["rolcanlogin"] is False and row["member_of"] == [env.managed_role]
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    assert env.login_refused(creds2)
    with env.superuser() as su:
        assert su.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s",
                          [user]).fetchone() == (0,)

    # With no live session left, the other set of roles is fine again.
    env.create("DatabaseSession", "s4", env.session_spec(user, databaseRoles=["reader", "writer"]))
    fourth = env.wait_phase("s4", "Active")["status"]
    assert fourth["databaseRoles"] == ["reader", "writer"]
    creds4 = env.secret("s4-credentials")
    assert creds4["password"] != creds2["password"]
    with env.login(creds4) as conn4:
        conn4.execute("INSERT INTO public.items VALUES (3)")  # writer may insert
    with env.superuser("app") as su:
        su.execute("DELETE FROM public.items WHERE id = 3")
    env.delete("DatabaseSession", "s4")
    env.wait_gone("DatabaseSession", "s4")
    assert env.login_refused(creds4)


def test_psql_session_is_killed_when_the_last_session_ends(env):
    """A real psql client (not only psycopg) loses its connection when the session ends."""
    env.role("analysts", "best_effort_drop")
    user = f"carl-{token()}"
    creds = env.open_session("s1", user)
    psql = subprocess.Popen([str(env.server.psql_path), creds["uri"], "-X", "-q", "-A", "-t", "-v",
                             "ON_ERROR_STOP=1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        psql.stdin.write("SELECT 'ready';\n")
        psql.stdin.flush()
        assert psql.stdout.readline().strip() == "ready"
        with env.superuser() as su:
            assert su.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s",
                              [user]).fetchone() == (1,)
        env.delete("DatabaseSession", "s1")
        env.wait_gone("DatabaseSession", "s1")
        # The backend is gone: psql's next statement fails and psql exits with an error.
        psql.stdin.write("SELECT 'still here';\n")
        psql.stdin.flush()
        psql.stdin.close()
        wait_for("psql to exit", lambda: psql.poll() is not None, 20)
        assert psql.returncode != 0, psql.stderr.read()
        assert "still here" not in psql.stdout.read()
    finally:
        if psql.poll() is None:
            psql.kill()
            psql.wait()
        for stream in (psql.stdout, psql.stderr):
            stream.close()
    # best_effort_drop: with no connection left the user could be dropped.
    assert env.role_row(user) is None
