"""RDS IAM authentication, wired for real where it can be without AWS.

No AWS here: botocore signs with fixed credentials and a frozen clock, which makes its token
deterministic, and the test sets that token (as a SCRAM verifier, so not even the test's own
statement logs it) as the password of an admin role on a real server with TLS and an ``rds_iam``
role. The engine must then log in with the token it signs itself, over TLS; a new connection
after the token's lifetime must sign a fresh one; and no token may appear in the engine's log,
its errors or the server log (``log_statement = all``). The token is botocore's, not a copy of
its algorithm.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

import botocore.auth
import psycopg
import pytest
from psycopg import sql

from enginekit import ID
from pgjit.core.credentials import scram_sha256_verifier
from pgjit.core.naming import postgres_username
from pgjit.engine import Engine, EngineError, ServerConfig
from pgjit.vocabulary import Reason
from pgjit.engine.iam import TOKEN_LIFETIME_SECONDS, IamTokens

REGION = "eu-central-1"
# AWS's documented example key pair: signs, but opens nothing anywhere.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
               "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
               # Never ask the instance metadata service (it is not on loopback).
               "AWS_EC2_METADATA_DISABLED": "true",
               "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


@pytest.fixture
def clock(monkeypatch):
    """botocore's clock, frozen; ``clock["now"]`` moves it."""
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    state = {"now": dt.datetime(2026, 12, 1, 9, 0, 0)}
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: state["now"])
    return state


async def iam_admin(kit, token: str) -> str:
    """A LOGIN CREATEROLE admin whose password is ``token``, holding rds_iam WITH ADMIN
    OPTION, as the admin-setup docs tell RDS users."""
    admin = kit.name("iam_admin")
    await kit.su("DO $$ BEGIN CREATE ROLE rds_iam; EXCEPTION WHEN duplicate_object THEN "
                 "NULL; END $$")
    await kit.su(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
        ID(admin), sql.Literal(scram_sha256_verifier(token, 4096))))
    await kit.su(sql.SQL("GRANT rds_iam TO {a} WITH ADMIN OPTION; GRANT pg_signal_backend TO "
                         "{a}").format(a=ID(admin)))
    return admin


async def set_password(kit, role: str, token: str) -> None:
    await kit.su(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
        ID(role), sql.Literal(scram_sha256_verifier(token, 4096))))


def iam_engine(kit, admin: str, **overrides) -> Engine:
    return Engine(ServerConfig(host=kit.server.host, port=kit.server.port, admin_user=admin,
                               sslmode="require", aws_iam=(REGION, None),
                               managed_role=kit.managed_role, **overrides))


async def server_log_after(kit, marker: str) -> str:
    await kit.su(sql.SQL("SELECT {}").format(sql.Literal(marker)))
    deadline = time.monotonic() + 10
    while marker not in (text := kit.server.log_path.read_text(errors="replace")):
        assert time.monotonic() < deadline, "the marker never reached the server log"
        await asyncio.sleep(0.02)
    return text


async def test_the_admin_logs_in_with_a_fresh_token_over_tls(kit, clock, caplog):
    caplog.set_level(logging.DEBUG)
    first = IamTokens(REGION).token(kit.server.host, kit.server.port, kit.name("iam_admin"))
    assert first.startswith(f"{kit.server.host}:{kit.server.port}/?Action=connect")
    admin = await iam_admin(kit, first)
    engine = iam_engine(kit, admin)
    try:
        pre = await engine.preflight()
        assert pre.ok, pre.summary()
        # A pooled connection, and what the server says about it: TLS, as the admin.
        await engine.ensure_managed_role()
        rows = await kit.su("""SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s
                                 USING (pid) WHERE a.usename = %s""", [admin])
        assert rows and all(ssl for ssl, in rows), rows

        # Past the token's lifetime a new connection signs anew: the old token no longer
        # works as the password, so the refusal proves a different token was sent.
        clock["now"] += dt.timedelta(seconds=TOKEN_LIFETIME_SECONDS + 60)
        second = IamTokens(REGION).token(kit.server.host, kit.server.port, admin)
        assert second != first
        with pytest.raises(EngineError) as caught:
            await engine.preflight()
        assert caught.value.reason == Reason.AUTHENTICATION_FAILED
        await set_password(kit, admin, second)
        assert (await engine.preflight()).ok
    finally:
        await engine.close()

    log = await server_log_after(kit, f"iam-marker-{kit.suffix}")
    for token in (first, second):
        assert token not in log, "a token reached the server log"
        assert token not in caplog.text, "a token reached the engine's log"
        assert token not in str(caught.value)
    assert "X-Amz-Signature" not in caplog.text


async def test_iam_users_get_rds_iam_and_no_password(kit, clock):
    token = IamTokens(REGION).token(kit.server.host, kit.server.port, kit.name("iam_admin"))
    admin = await iam_admin(kit, token)
    engine = iam_engine(kit, admin, implicit_roles=("rds_iam",))
    alice = kit.name("alice")
    name = postgres_username(alice)
    reader, = await kit.make_roles("reader")
    await kit.su(sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(ID(reader), ID(admin)))
    try:
        request = kit.request("s1", alice, [reader], password=None)
        activation = await engine.activate(request)
        assert set(activation.roles) == {reader, "rds_iam"}
        rows = await kit.su("SELECT rolpassword IS NULL, rolcanlogin FROM pg_authid "
                            "WHERE rolname = %s", [name])
        assert rows == [(True, True)], "an IAM user must have no password"
        assert "rds_iam" in (await kit.role(alice)).memberships
        teardown = await engine.end(alice, "s1", mode="keep")
        assert teardown.action == "Locked"
        assert (await kit.role(alice)).memberships == {kit.managed_role}
    finally:
        await engine.close()


async def test_preflight_names_the_rds_grants_as_the_seed_writes_them(kit, clock):
    token = IamTokens(REGION).token(kit.server.host, kit.server.port, kit.name("iam_admin"))
    admin = await iam_admin(kit, token)
    await kit.su(sql.SQL("REVOKE rds_iam FROM {}").format(ID(admin)))
    await kit.su("DO $$ BEGIN CREATE ROLE rds_superuser; EXCEPTION WHEN duplicate_object THEN "
                 "NULL; END $$")
    engine = iam_engine(kit, admin, implicit_roles=("rds_iam",))
    try:
        pre = await engine.preflight(roles=["rds_superuser"])
    finally:
        await engine.close()
    fixes = [s.fix for s in pre.shortfalls]
    if int(kit.server.major) >= 16:
        assert f'GRANT rds_iam TO "{admin}" WITH ADMIN OPTION;' in fixes, fixes
    else:
        # 15: CREATEROLE may grant any non-superuser role (RDS adds its own rule on top).
        assert not fixes, fixes
    assert [s.fix for s in pre.role_shortfalls] == [f'GRANT rds_superuser TO "{admin}";']


async def test_rds_superuser_is_a_hard_refusal(kit):
    await kit.su("DO $$ BEGIN CREATE ROLE rds_superuser; EXCEPTION WHEN duplicate_object THEN "
                 "NULL; END $$")
    if int(kit.server.major) >= 16:
        await kit.su(sql.SQL("GRANT rds_superuser TO {} WITH ADMIN OPTION").format(
            ID(kit.server.admin_user)))
    with pytest.raises(EngineError) as caught:
        await kit.engine.activate(kit.request("s1", kit.name("alice"), ["rds_superuser"]))
    assert caught.value.reason == Reason.PRIVILEGED_ROLE
    assert "RDS's superuser role" in caught.value.message
    assert not (await kit.role(kit.name("alice"))).exists


def test_iam_needs_tls_and_one_admin_method():
    with pytest.raises(EngineError, match="sslmode require"):
        ServerConfig(host="h", admin_user="a", aws_iam=(REGION, None), sslmode="prefer").validate()
    with pytest.raises(EngineError, match="not several"):
        ServerConfig(host="h", admin_user="a", aws_iam=(REGION, None), admin_password="x",
                     sslmode="require").validate()
    assert "region='eu-central-1'" in repr(IamTokens(REGION))


async def test_a_user_logs_in_with_its_own_token(kit, clock):
    """What pgjit connect does for an awsIAM session: sign with the person's identity and use
    the token as the password, over TLS."""
    admin_token = IamTokens(REGION).token(kit.server.host, kit.server.port,
                                          kit.name("iam_admin"))
    admin = await iam_admin(kit, admin_token)
    engine = iam_engine(kit, admin, implicit_roles=("rds_iam",))
    alice = kit.name("alice")
    try:
        await engine.activate(kit.request("s1", alice, password=None))
    finally:
        await engine.close()
    name = postgres_username(alice)
    token = IamTokens(REGION).token(kit.server.host, kit.server.port, name)
    # The emulation's part: on RDS, rds_iam makes the server ask AWS; here the test plays AWS.
    await set_password(kit, name, token)
    async with await psycopg.AsyncConnection.connect(
            kit.server.conninfo(name, token, "postgres") + " sslmode=require") as conn:
        cur = await conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert await cur.fetchone() == (True,)
