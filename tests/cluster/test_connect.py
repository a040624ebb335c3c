"""`pgjit connect` end to end, in a real terminal: the CLI as alice, the operator, PostgreSQL 16.

alice's RBAC is what a cluster would give a person: sessions (create/get/list/watch/delete) and
reading Databases and Roles in the namespace, no Secrets; the operator grants her `get` on her
own session's Secret. The PostgreSQL user is "alice" on a server the whole test process shares,
so every Role here is best_effort_drop (the user is dropped when its session ends) and the
fixture ends whatever a failed test left.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from clikit import (PROMPT, TIMEOUT, USER, child_pids, finish, grant_cli_access, run_cli,
                    spawn_connect)
from operatorkit import Env, make_env, wait_for

def only_session(env: Env) -> dict:
    return wait_for("the session pgjit connect created", lambda: next(iter(env.list(
        "DatabaseSession")), None), TIMEOUT)


def alice_backends(env: Env) -> list[tuple[int, str, str]]:
    with env.superuser() as conn:
        return conn.execute("SELECT pid, state, query FROM pg_stat_activity WHERE usename = %s",
                            [USER]).fetchall()


@pytest.fixture
def env(kube_api, namespace, postgres16, operator):
    env = make_env(kube_api, namespace, postgres16, operator)
    env.role("analysts", "best_effort_drop")
    grant_cli_access(kube_api, namespace)
    yield env
    # A failed test may leave sessions; "alice" must not stay behind on the shared server.
    for session in env.list("DatabaseSession"):
        env.delete("DatabaseSession", session["metadata"]["name"])
    wait_for("the test's sessions gone", lambda: not env.list("DatabaseSession"), TIMEOUT)


# --------------------------------------------------------------------------------------------
# The terminal stories


def test_psql_runs_as_the_provisioned_user_and_quitting_ends_the_session(control_plane, env):
    child = spawn_connect(control_plane, env.namespace)
    child.expect(PROMPT)
    session = only_session(env)
    name = session["metadata"]["name"]
    assert name.startswith("alice-db-")
    assert session["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "pgjit-cli"
    assert session["spec"]["user"] == USER
    assert sorted(session["spec"]["groups"]) == ["analysts", "system:authenticated"]
    creds = env.secret(f"{name}-credentials")

    child.sendline("select current_user, current_database();")
    child.expect(r"alice\s+\|\s+app")
    child.expect(PROMPT)
    # The private files: where psql finds them and their modes.
    child.sendline('\\! stat -c "%a %n" "$(dirname "$PGSERVICEFILE")" "$PGSERVICEFILE"'
                   ' "$PGPASSFILE"; echo done')
    child.expect(r"(\d+) (\S*pgjit-connect-\S*)\r\n(\d+) (\S+)\r\n(\d+) (\S+)\r\ndone")
    modes = child.match.groups()
    assert modes[0::2] == ("700", "600", "600"), modes
    directory = Path(modes[1])
    assert directory.exists()
    # Nothing secret on psql's command line or in its environment (a \! shell inherits it).
    (psql_pid,) = child_pids(child.pid)
    for part in ("cmdline", "environ"):
        assert creds["password"].encode() not in Path(f"/proc/{psql_pid}/{part}").read_bytes()
    child.expect(PROMPT)

    child.sendline(r"\q")
    assert finish(child) == 0
    transcript = child.transcript.getvalue()
    assert f"session {name} is Active: PostgreSQL user alice, granted reader" in transcript
    assert f"session {name} ended: access revoked" in transcript
    assert creds["password"] not in transcript
    # "psql exited" means "access revoked": nothing left to wait for.
    assert env.get("DatabaseSession", name) is None
    assert env.login_refused(creds)
    assert not directory.exists()


def test_ctrl_c_cancels_the_query_not_the_session(control_plane, env):
    child = spawn_connect(control_plane, env.namespace)
    child.expect(PROMPT)
    name = only_session(env)["metadata"]["name"]
    creds = env.secret(f"{name}-credentials")

    child.sendline("select pg_sleep(30);")
    wait_for("the query running", lambda: any(state == "active" and "pg_sleep" in query
                                              for _, state, query in alice_backends(env)),
             TIMEOUT)
    child.sendintr()
    child.expect("canceling statement due to user request")
    child.expect(PROMPT)
    assert env.get("DatabaseSession", name)["status"]["phase"] == "Active"
    child.sendline("select 'still here';")
    child.expect("still here")
    child.expect(PROMPT)

    child.sendline(r"\q")
    assert finish(child) == 0
    assert env.get("DatabaseSession", name) is None
    assert env.login_refused(creds)


def test_ctrl_c_while_waiting_deletes_the_session(control_plane, env):
    child = spawn_connect(control_plane, env.namespace, database="not-there-yet")
    child.expect(r"Pending \(DatabaseNotReady: Database \"not-there-yet\" does not exist")
    name = only_session(env)["metadata"]["name"]
    child.sendintr()
    assert finish(child) == 130
    assert "interrupted" in child.transcript.getvalue()
    assert env.get("DatabaseSession", name) is None


def test_sigterm_ends_psql_and_the_session(control_plane, env):
    child = spawn_connect(control_plane, env.namespace)
    child.expect(PROMPT)
    name = only_session(env)["metadata"]["name"]
    creds = env.secret(f"{name}-credentials")
    psql_pids = child_pids(child.pid)
    assert len(psql_pids) == 1 and Path(f"/proc/{psql_pids[0]}/exe").resolve().name == "psql"
    assert alice_backends(env)

    os.kill(child.pid, signal.SIGTERM)
    assert finish(child) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in child.transcript.getvalue()
    assert not Path(f"/proc/{psql_pids[0]}").exists()
    assert env.get("DatabaseSession", name) is None
    assert env.login_refused(creds)
    assert alice_backends(env) == []


def test_sigkill_leaves_the_session_until_its_expiry(control_plane, env, tmp_path):
    # 5s: short enough to wait for, long enough to see the session outlive pgjit.
    child = spawn_connect(control_plane, env.namespace, "--duration", "5s", runtime_dir=tmp_path)
    child.expect(PROMPT)
    name = only_session(env)["metadata"]["name"]
    creds = env.secret(f"{name}-credentials")

    os.kill(child.pid, signal.SIGKILL)
    assert finish(child) == 128 + signal.SIGKILL
    session = env.get("DatabaseSession", name)
    assert session is not None and session["status"]["phase"] == "Active"
    # Nothing could remove the private directory; its password works until the expiry.
    (left,) = tmp_path.glob("pgjit-connect-*")
    assert creds["password"] in (left / "pgpass").read_text()

    env.wait_phase(name, "Expired", timeout=TIMEOUT)
    assert env.login_refused(creds)
    env.delete("DatabaseSession", name)

    # The next run removes what the killed one left.
    child = spawn_connect(control_plane, env.namespace, runtime_dir=tmp_path)
    child.expect(PROMPT)
    assert not left.exists()
    child.sendline(r"\q")
    assert finish(child) == 0
    assert list(tmp_path.glob("pgjit-connect-*")) == []


def test_client_certificate_session(control_plane, kube_api, namespace, postgres16, operator):
    """Certificate sessions: tls.crt/tls.key/ca.crt go into the private directory and psql
    verifies the server (verify-full). --host reaches the server's certificate-auth listener,
    which is not the Database's (password) host on the test server."""
    assert postgres16.supports_ssl, "the test server has no TLS; certificate logins cannot work"
    kit = Env(kube_api, namespace, postgres16, operator)
    kit.create_secret("client-ca", {"tls.crt": postgres16.client_ca_cert_path.read_bytes(),
                                    "tls.key": postgres16.client_ca_key_path.read_bytes()},
                      type_="kubernetes.io/tls")
    kit.create_secret("server-ca", {"ca.crt": postgres16.server_ca_path.read_bytes()})
    env = make_env(kube_api, namespace, postgres16, operator, database_spec={
        "credentials": {"type": "clientCertificate", "clientCASecretRef": {"name": "client-ca"}},
        "tls": {"sslMode": "verify-full", "caSecretRef": {"name": "server-ca", "key": "ca.crt"}}})
    env.role("analysts", "best_effort_drop")
    grant_cli_access(kube_api, namespace)
    try:
        child = spawn_connect(control_plane, namespace, "--host", postgres16.cert_host)
        child.expect(PROMPT)
        name = only_session(env)["metadata"]["name"]
        creds = env.secret(f"{name}-credentials")
        assert "tls.key" in creds and "password" not in creds
        child.sendline("select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid();")
        child.expect(r"alice\s+\|\s+t")
        child.expect(PROMPT)
        child.sendline(r"\q")
        assert finish(child) == 0
        assert creds["tls.key"] not in child.transcript.getvalue()
        assert env.get("DatabaseSession", name) is None
        assert env.login_refused(creds)
    finally:
        for session in env.list("DatabaseSession"):
            env.delete("DatabaseSession", session["metadata"]["name"])
        wait_for("the test's sessions gone", lambda: not env.list("DatabaseSession"), TIMEOUT)


# --------------------------------------------------------------------------------------------
# Without a terminal: exit codes, --keep-session and disconnect


def test_psql_exit_code_is_pgjits_and_the_session_still_ends(control_plane, env):
    result = run_cli(control_plane, "connect", "db", "--db-name", "app", "-n", env.namespace,
                     "--", "-v", "ON_ERROR_STOP=1", "-c", "select 1/0")
    assert result.returncode == 1, result.stderr
    assert "division by zero" in result.stderr
    assert "ended: access revoked" in result.stderr
    assert env.list("DatabaseSession") == []


def test_keep_session_then_disconnect_all(control_plane, env):
    # Someone else's session, also created by pgjit connect: disconnect --all must leave it.
    env.create("DatabaseSession", "other", env.session_spec("carol", groups=()),
               labels={"app.kubernetes.io/managed-by": "pgjit-cli"})
    result = run_cli(control_plane, "connect", "db", "--db-name", "app", "-n", env.namespace,
                     "--keep-session", "--", "-A", "-t", "-c", "select current_user")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == USER
    kept = [s for s in env.list("DatabaseSession") if s["spec"]["user"] == USER]
    assert len(kept) == 1 and kept[0]["status"]["phase"] == "Active"
    name = kept[0]["metadata"]["name"]
    assert f"pgjit disconnect -n {env.namespace} {name}" in result.stderr
    creds = env.secret(f"{name}-credentials")
    env.login(creds).close()

    result = run_cli(control_plane, "disconnect", "--all", "-n", env.namespace)
    assert result.returncode == 0, result.stderr
    assert f"session {name} ended: access revoked" in result.stderr
    assert env.get("DatabaseSession", name) is None
    assert env.get("DatabaseSession", "other") is not None
    assert env.login_refused(creds)

    missing = run_cli(control_plane, "disconnect", "-n", env.namespace, "no-such-session")
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_a_refused_session_fails_with_the_operators_message(control_plane, env):
    result = run_cli(control_plane, "connect", "db", "--db-name", "app", "-n", env.namespace,
                     "--db-roles", "writer")
    assert result.returncode == 1
    assert 'AccessDenied: access to database role "writer" denied' in result.stderr
    assert env.list("DatabaseSession") == []


def test_a_missing_psql_is_reported_before_anything_is_created(control_plane, env):
    result = run_cli(control_plane, "connect", "db", "--db-name", "app", "-n", env.namespace,
                     "--psql", "/nonexistent/psql")
    assert result.returncode == 1 and "--psql" in result.stderr
    assert env.list("DatabaseSession") == []
