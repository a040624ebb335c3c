"""Security properties of the engine, against real servers with ``log_statement = all``.

- no generated password ever reaches the server log, only SCRAM verifiers do;
- the configured SCRAM iteration count is what PostgreSQL stores, and such a verifier logs in;
- admin connections pin ``search_path``, so functions planted in ``public`` are never called;
- TLS to the server is verified (and a wrong CA is reported as such);
- the admin can authenticate with a client certificate, and users can be provisioned for
  client-certificate logins (no password at all).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import re
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from psycopg import sql

from enginekit import new_engine
from pgjit.core.credentials import scram_sha256_verifier
from pgjit.core.naming import postgres_username
from pgjit.engine import Engine, EngineError, RetryPolicy, ServerConfig
from pgjit.vocabulary import Reason

LOG_DEADLINE = 10.0


def _require_ssl(server) -> None:
    assert server.supports_ssl, (
        f"{server.source} is built without OpenSSL: run tests/setup/system-packages.sh")


async def _wait_for_log(kit, marker: str) -> str:
    """Log a marker statement and wait (bounded) until the server wrote it: then everything
    the engine sent before it is in the log too."""
    await kit.su(sql.SQL("SELECT {}").format(sql.Literal(marker)))
    deadline = time.monotonic() + LOG_DEADLINE
    while True:
        text = kit.server.log_path.read_text(errors="replace")
        if marker in text:
            return text
        assert time.monotonic() < deadline, f"marker not in {kit.server.log_path} after {LOG_DEADLINE}s"
        await asyncio.sleep(0.02)


async def _rolpassword(kit, name: str) -> str | None:
    rows = await kit.su("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [name])
    assert rows, f"role {name} does not exist"
    return rows[0][0]


async def _logs_in(kit, identity: str, session: str, *, wrong: bool = False) -> bool:
    """Whether the session's generated password (or a corrupted copy) logs in; takes the session
    id, not the password, so a failing assertion never prints a password."""
    password = kit.passwords[session]
    if wrong:
        password = password[:-1] + ("A" if password[-1] != "A" else "B")
    return await kit.can_login(identity, password)


def _write_client_cert(directory: Path, cert_pem: bytes, key_pem: bytes) -> tuple[str, str]:
    directory.mkdir(parents=True)
    cert, key = directory / "client.crt", directory / "client.key"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    key.chmod(0o600)  # libpq refuses a key others can read
    return str(cert), str(key)


def _cert_conninfo(server, user: str, cert_files: tuple[str, str]) -> str:
    cert, key = cert_files
    return server.conninfo(user, host=server.cert_host, sslmode="verify-full",
                           sslrootcert=str(server.server_ca_path), sslcert=cert, sslkey=key,
                           connect_timeout=10)


async def _can_connect(conninfo: str) -> bool:
    try:
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    except psycopg.OperationalError:
        return False
    await conn.close()
    return True


def _unrelated_ca_pem() -> bytes:
    """A self-signed CA that signed nothing the server presents."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not the server's CA")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


# -- passwords never reach the log ---------------------------------------------------------------


async def test_statement_log_shows_verifiers_never_passwords(kit):
    reader, writer = await kit.make_roles("reader", "writer")
    alice, bob = kit.name("alice"), kit.name("bob")
    # A new user, a shared one, ended; then re-activated (ALTER ROLE … PASSWORD) and dropped.
    await kit.engine.activate(kit.request("s1", alice, [reader]))
    await kit.engine.activate(kit.request("s2", alice, [reader]))  # shared: password unchanged
    assert await _logs_in(kit, alice, "s1")
    await kit.engine.end(alice, "s1")
    await kit.engine.end(alice, "s2", mode="keep")
    await kit.engine.activate(kit.request("s3", alice, [writer]))  # re-activation
    assert await _logs_in(kit, alice, "s3")
    await kit.engine.end(alice, "s3", mode="best_effort_drop")
    await kit.engine.activate(kit.request("s4", bob, [reader], mode="best_effort_drop"))
    assert await _logs_in(kit, bob, "s4")
    await kit.engine.end(bob, "s4")

    log = await _wait_for_log(kit, f"pgjit-log-marker-{kit.suffix}")
    assert all(kit.passwords.values()) and len(kit.passwords) == 4
    # Sessions whose password is in the log (ids only: an assertion must not print a password).
    leaked = [session for session, password in kit.passwords.items() if password in log]
    assert not leaked, "generated passwords are in the server log"
    # The statements were logged, with the verifier in place of the password.
    for verb, name in (("CREATE ROLE", alice), ("ALTER ROLE", alice), ("CREATE ROLE", bob)):
        pattern = (re.escape(f'{verb} "{name}" LOGIN PASSWORD ') + r"'SCRAM-SHA-256\$4096:")
        assert re.search(pattern, log), f"no logged {verb} of {name} with a SCRAM verifier"


# -- SCRAM iterations ----------------------------------------------------------------------------


@pytest.mark.parametrize("iterations", [4096, 1])
async def test_configured_scram_iterations_are_stored_and_log_in(kit, iterations):
    engine = new_engine(kit.server, kit.managed_role, scram_iterations=iterations)
    try:
        alice = kit.name("alice")
        await engine.activate(kit.request("s1", alice))
        stored = await _rolpassword(kit, alice)
        match = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$[^:]+:.+", stored or "")
        assert match and int(match.group(1)) == iterations
        # The stored verifier is the one for the generated password, not some other one.
        salt = base64.b64decode(match.group(2))
        expected = scram_sha256_verifier(kit.passwords["s1"], iterations, salt)
        assert expected == stored
        assert await _logs_in(kit, alice, "s1")
        assert not await _logs_in(kit, alice, "s1", wrong=True)

        # Re-activation sets a new verifier with the same iteration count.
        await engine.end(alice, "s1", mode="keep")
        await engine.activate(kit.request("s2", alice))
        stored = await _rolpassword(kit, alice)
        assert stored.startswith(f"SCRAM-SHA-256${iterations}:")
        assert await _logs_in(kit, alice, "s2")
        assert not await _logs_in(kit, alice, "s1")
        await engine.end(alice, "s2", mode="best_effort_drop")
    finally:
        await engine.close()


# -- search_path ---------------------------------------------------------------------------------

# Catalog functions pgjit calls, shadowed in public by functions that record the call and then
# behave like the real one (as a careful attacker's would). The (integer) and (oid, text) variants
# are *better* matches than the catalog's own for the arguments pgjit passes (a small integer
# literal, an unknown-typed string literal), so they win under an ordinary search_path; the
# exact-signature variants would win with public listed before pg_catalog.
_SHADOWS = {
    "pg_advisory_xact_lock(bigint)": ("void", "pg_advisory_xact_lock($1)"),
    "pg_advisory_xact_lock(integer)": ("void", "pg_advisory_xact_lock($1::bigint)"),
    "shobj_description(oid, name)": ("text", "shobj_description($1, $2)"),
    "shobj_description(oid, text)": ("text", "shobj_description($1, $2::name)"),
    "pg_terminate_backend(integer)": ("boolean", "pg_terminate_backend($1)"),
    "pg_has_role(name, oid, text)": ("boolean", "pg_has_role($1, $2, $3)"),
    "current_setting(text)": ("text", "current_setting($1)"),
}


async def _plant_shadows(kit, db: str) -> None:
    async with await kit.superuser(db) as conn:
        # A sequence, not a table: nextval() is not undone when the caller's transaction rolls
        # back, so a call is recorded even if the engine's transaction failed afterwards.
        await conn.execute("CREATE SEQUENCE public.shadow_calls")
        for signature, (returns, real_call) in _SHADOWS.items():
            # Signatures, types and bodies are the constants above, not input.
            body = f"SELECT nextval('public.shadow_calls'); SELECT pg_catalog.{real_call};"
            await conn.execute(sql.SQL(
                f"CREATE FUNCTION public.{signature} RETURNS {returns} LANGUAGE sql "
                "SECURITY DEFINER SET search_path = pg_catalog AS {}").format(sql.Literal(body)))
        await conn.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO PUBLIC")


async def _shadow_calls(kit, db: str) -> bool:
    rows = await kit.su("SELECT is_called FROM public.shadow_calls", dbname=db)
    return rows[0][0]


async def _search_path(conn) -> tuple[list[str], list[str]]:
    """search_path as set (whitespace-normalised) and the schemas it resolves to."""
    cur = await conn.execute("SELECT current_setting('search_path'), current_schemas(true)::text[]")
    setting, effective = await cur.fetchone()
    return [part.strip() for part in setting.split(",")], effective


async def test_admin_connections_pin_search_path(kit):
    db = await kit.make_database("other")
    pinned = (["pg_catalog", "pg_temp"], ["pg_catalog"])  # no temp schema exists yet
    async with kit.engine._conns.connection() as conn:
        assert await _search_path(conn) == pinned
    async with kit.engine._conns.connection(db) as conn:
        assert await _search_path(conn) == pinned
    conn = await kit.engine._conns.connect()  # preflight's own connection
    try:
        assert await _search_path(conn) == pinned
    finally:
        await conn.close()


async def test_functions_planted_in_public_are_never_called(kit):
    # The admin database is a fresh one, so the planted functions affect no other test.
    db = await kit.make_database("shadowed")
    await _plant_shadows(kit, db)
    reader, = await kit.make_roles("reader")
    engine = new_engine(kit.server, kit.managed_role, admin_database=db)
    try:
        await engine.preflight(databases=[db], roles=[reader])
        alice, bob = kit.name("alice"), kit.name("bob")
        await engine.activate(kit.request("s1", alice, [reader], database=db))
        await engine.activate(kit.request("s2", alice, [reader], database=db))
        conn = await kit.login(alice, kit.passwords["s1"], db)
        await engine.end(alice, "s1")
        await engine.end(alice, "s2", mode="best_effort_drop")  # terminates conn, then drops
        await conn.close()
        await engine.activate(kit.request("s3", bob, [reader], database=db))
        await engine.end(bob, "s3", mode="keep")
        await engine.activate(kit.request("s4", bob, [reader], database=db))  # re-activation
        await engine.sweep(set())
        assert not (await kit.role(alice)).exists and not (await kit.role(bob)).can_login
    finally:
        await engine.close()
    assert not await _shadow_calls(kit, db), "a function planted in public was called"

    # The trap is live: the same calls on a connection without the pinned search_path hit it.
    async with await psycopg.AsyncConnection.connect(kit.server.admin_conninfo(db),
                                                     autocommit=True) as admin:
        await admin.execute("SELECT pg_advisory_xact_lock(1)")
        await admin.execute("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles LIMIT 1")
    assert await _shadow_calls(kit, db)


# -- TLS -----------------------------------------------------------------------------------------


async def _ssl_in_use(engine: Engine) -> bool:
    async with engine._conns.connection() as conn:
        cur = await conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        return (await cur.fetchone())[0]


async def test_verify_full_with_the_server_ca(kit):
    _require_ssl(kit.server)
    engine = new_engine(kit.server, kit.managed_role, sslmode="verify-full",
                        ca_pem=kit.server.server_ca_path.read_bytes())
    try:
        assert kit.server.host == "127.0.0.1"  # covered by an IP SAN of the server certificate
        await engine.preflight()
        alice = kit.name("alice")
        await engine.activate(kit.request("s1", alice))
        assert await _ssl_in_use(engine)
        assert await _logs_in(kit, alice, "s1")
        assert (await engine.end(alice, "s1", mode="best_effort_drop")).action == "Dropped"
    finally:
        await engine.close()


async def test_wrong_ca_is_reported_as_a_certificate_failure(kit):
    _require_ssl(kit.server)
    engine = new_engine(kit.server, kit.managed_role, sslmode="verify-full",
                        ca_pem=_unrelated_ca_pem(), connect_timeout=1)
    engine.retry = RetryPolicy(attempts=1)
    try:
        # Preflight opens its own connection, so it reports libpq's own reason.
        with pytest.raises(EngineError) as caught:
            await engine.preflight()
        assert caught.value.reason == Reason.UNREACHABLE
        assert "certificate verify failed" in caught.value.message
        # Activation goes through the pool, which reports only that no connection came up.
        with pytest.raises(EngineError) as caught:
            await engine.activate(kit.request("s1", kit.name("alice")))
        assert caught.value.reason == Reason.UNREACHABLE
        assert not (await kit.role(kit.name("alice"))).exists
    finally:
        await engine.close()


async def test_sslmode_require_needs_no_ca(kit):
    _require_ssl(kit.server)
    engine = new_engine(kit.server, kit.managed_role, sslmode="require")
    try:
        alice = kit.name("alice")
        await engine.activate(kit.request("s1", alice))
        assert await _ssl_in_use(engine)
        await engine.end(alice, "s1", mode="best_effort_drop")
        assert not (await kit.role(alice)).exists
    finally:
        await engine.close()


# -- client certificates -------------------------------------------------------------------------


async def test_admin_authenticates_with_a_client_certificate(kit, monkeypatch, tmp_path):
    """The admin's key reaches libpq without a file on disk, so no crash can leave it behind."""
    _require_ssl(kit.server)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    server = kit.server
    cert_pem, key_pem = server.issue_client_certificate(server.admin_user)
    # ::1 is where pg_hba.conf says "hostssl … cert"; the server certificate has an IP SAN for
    # it, so verify-full checks the host name too.
    config = ServerConfig(host=server.cert_host, port=server.port, admin_user=server.admin_user,
                          admin_cert_pem=cert_pem, admin_key_pem=key_pem, sslmode="verify-full",
                          ca_pem=server.server_ca_path.read_bytes(), managed_role=kit.managed_role)
    assert config.admin_password is None
    engine = Engine(config)
    key_path = engine._conns._tls["sslkey"]
    try:
        assert list(tmp_path.iterdir()) == []
        assert Path(key_path).read_bytes() == key_pem
        assert os.stat(key_path).st_mode & 0o077 == 0
        async with engine._conns.connection() as conn:
            cur = await conn.execute(
                "SELECT current_user, s.ssl, s.client_dn, inet_client_addr()::text "
                "FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()")
            user, ssl, client_dn, client_addr = await cur.fetchone()
        assert (user, ssl, client_dn) == (server.admin_user, True, f"/CN={server.admin_user}")
        assert client_addr.split("/")[0] == "::1"
        reader, = await kit.make_roles("reader")
        alice = kit.name("alice")
        result = await engine.activate(kit.request("s1", alice, [reader]))
        assert result.created and result.password_set
        assert await _logs_in(kit, alice, "s1")
        assert (await engine.end(alice, "s1", mode="keep")).action == "Locked"
        assert not await _logs_in(kit, alice, "s1")
        assert (await engine.end(alice, None, mode="best_effort_drop")).action == "Dropped"
        assert not (await kit.role(alice)).exists
    finally:
        await engine.close()
    assert not os.path.exists(key_path) or Path(key_path).read_bytes() != key_pem
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", ["keep", "best_effort_drop"])
async def test_certificate_users_log_in_with_their_certificate_until_the_end(kit, tmp_path, mode):
    _require_ssl(kit.server)
    reader, = await kit.make_roles("reader")
    alice = kit.name("alice")
    name = postgres_username(alice)
    result = await kit.engine.activate(kit.request("s1", alice, [reader], mode=mode,
                                                   password=None))
    assert result.created and not result.password_set
    assert await _rolpassword(kit, name) is None
    mine = _write_client_cert(tmp_path / "mine", *kit.server.issue_client_certificate(name))
    theirs = _write_client_cert(tmp_path / "theirs",
                                *kit.server.issue_client_certificate(kit.name("mallory")))
    async with await psycopg.AsyncConnection.connect(_cert_conninfo(kit.server, name, mine),
                                                     autocommit=True) as conn:
        cur = await conn.execute(sql.SQL("SELECT current_user, pg_has_role({}, 'MEMBER')").format(
            sql.Literal(reader)))
        assert await cur.fetchone() == (name, True)
    assert not await _can_connect(_cert_conninfo(kit.server, name, theirs))
    # No password exists, so no password logs in over the password route.
    assert not await kit.can_login(alice, "anything")

    ended = await kit.engine.end(alice, "s1")
    assert ended.action == ("Locked" if mode == "keep" else "Dropped")
    assert not await _can_connect(_cert_conninfo(kit.server, name, mine))
