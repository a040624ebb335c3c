"""The test bed itself: each server is the version, set-up and configuration the other tests assume."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pgjit.devstack.postgres import PostgresServer, start_postgres


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


async def test_server_version_matches_major(pg_server: PostgresServer, pg_superuser) -> None:
    version_num = int((await (await pg_superuser.execute("SHOW server_version_num")).fetchone())[0])
    assert version_num // 10000 == int(pg_server.major)
    assert pg_server.server_version.split(".")[0] == pg_server.major


async def test_admin_is_not_superuser(pg_server: PostgresServer, pg_superuser) -> None:
    cur = await pg_superuser.execute(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolcanlogin"
        " FROM pg_roles WHERE rolname = %s",
        [pg_server.admin_user],
    )
    assert await cur.fetchone() == (False, True, False, False, False, True)


async def test_admin_creates_and_drops_role(pg_server: PostgresServer, pg_admin) -> None:
    role = _unique("smoke")
    await pg_admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        if int(pg_server.major) >= 16:
            # 16+: CREATEROLE no longer means "administer every role"; the creator gets ADMIN
            # OPTION on what it created, and only that.
            cur = await pg_admin.execute(
                "SELECT m.admin_option FROM pg_auth_members m"
                " WHERE m.roleid = %s::regrole AND m.member = %s::regrole",
                [role, pg_server.admin_user],
            )
            assert await cur.fetchall() == [(True,)]
    finally:
        await pg_admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    cur = await pg_admin.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", [role])
    assert await cur.fetchone() == (0,)


async def test_tls_verify_full(pg_server: PostgresServer) -> None:
    assert pg_server.supports_ssl, (
        f"{pg_server.source} is built without OpenSSL: run tests/setup/system-packages.sh"
    )
    conninfo = pg_server.conninfo(
        pg_server.admin_user, pg_server.admin_password,
        sslmode="verify-full", sslrootcert=str(pg_server.server_ca_path),
    )
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        cur = await conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert await cur.fetchone() == (True,)


def _cert_conninfo(server: PostgresServer, role: str, cert_dir: Path | None) -> str:
    extra: dict[str, str] = {
        "host": server.cert_host,
        "sslmode": "verify-full",
        "sslrootcert": str(server.server_ca_path),
        "connect_timeout": "10",
    }
    if cert_dir is not None:
        extra |= {"sslcert": str(cert_dir / "client.crt"), "sslkey": str(cert_dir / "client.key")}
    return server.conninfo(role, **extra)


def _write_client_cert(directory: Path, cert_pem: bytes, key_pem: bytes) -> Path:
    directory.mkdir()
    (directory / "client.crt").write_bytes(cert_pem)
    key = directory / "client.key"
    key.write_bytes(key_pem)
    key.chmod(0o600)
    return directory


async def test_certificate_login(pg_server: PostgresServer, pg_superuser, tmp_path: Path) -> None:
    assert pg_server.supports_ssl, (
        f"{pg_server.source} is built without OpenSSL: run tests/setup/system-packages.sh"
    )
    role = _unique("certuser")
    await pg_superuser.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        valid = _write_client_cert(tmp_path / "valid", *pg_server.issue_client_certificate(role))
        async with await psycopg.AsyncConnection.connect(
            _cert_conninfo(pg_server, role, valid)
        ) as conn:
            cur = await conn.execute("SELECT current_user")
            assert await cur.fetchone() == (role,)

        with pytest.raises(psycopg.OperationalError):
            await psycopg.AsyncConnection.connect(_cert_conninfo(pg_server, role, None))

        other = _write_client_cert(
            tmp_path / "other", *pg_server.issue_client_certificate(_unique("someone_else"))
        )
        with pytest.raises(psycopg.OperationalError):
            await psycopg.AsyncConnection.connect(_cert_conninfo(pg_server, role, other))

        yesterday = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
        expired = _write_client_cert(
            tmp_path / "expired", *pg_server.issue_client_certificate(role, yesterday)
        )
        with pytest.raises(psycopg.OperationalError):
            await psycopg.AsyncConnection.connect(_cert_conninfo(pg_server, role, expired))
    finally:
        await pg_superuser.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


async def test_error_language_and_sqlstate(pg_server: PostgresServer, pg_admin) -> None:
    with pytest.raises(psycopg.errors.DivisionByZero) as caught:
        await pg_admin.execute("SELECT 1/0")
    assert caught.value.sqlstate == "22012"
    message = caught.value.diag.message_primary
    if pg_server.lc_messages and pg_server.lc_messages.startswith("de_"):
        assert pg_server.translates_messages, f"{pg_server.source} has no German messages"
        assert message == "Division durch Null"
    else:
        assert message == "division by zero"


async def test_settings_reach_postgresql_conf(pg_server: PostgresServer, pg_admin) -> None:
    assert pg_server.settings.get("log_statement") == "all"
    cur = await pg_admin.execute("SHOW log_statement")
    assert await cur.fetchone() == ("all",)
    marker = _unique("marker")
    await pg_admin.execute(sql.SQL("SELECT {}").format(sql.Literal(marker)))
    # The server writes its log asynchronously to us: poll, with a deadline.
    deadline = time.monotonic() + 10
    while marker not in pg_server.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{marker} not in {pg_server.log_path}"
        await asyncio.sleep(0.02)


def _process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # A zombie (state Z) has exited; it only waits for its new parent to reap it.
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait_gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not _process_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_stop_leaves_no_process(pg_lifecycle_major: str) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="pgjit-stop-"))
    try:
        with start_postgres(pg_lifecycle_major, workdir) as server:
            pid = server.pid
            assert pid is not None
            conn = psycopg.connect(server.superuser_conninfo(), autocommit=True)
            try:
                backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
                server.stop()
                assert _wait_gone(pid) and _wait_gone(backend)
            finally:
                conn.close()
        assert not server.is_running()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_postmaster_dies_with_its_parent(pg_lifecycle_major: str) -> None:
    """A SIGKILLed test process (no atexit, no finally) must not leave a postmaster behind."""
    workdir = Path(tempfile.mkdtemp(prefix="pgjit-orphan-"))
    try:
        child = subprocess.Popen(
            [
                sys.executable, "-c",
                "import sys, signal, pathlib\n"
                "from pgjit.devstack.postgres import start_postgres\n"
                "server = start_postgres(sys.argv[1], pathlib.Path(sys.argv[2]))\n"
                "print(server.pid, flush=True)\n"
                "signal.pause()\n",
                pg_lifecycle_major, str(workdir),
            ],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line.strip().isdigit(), "the child failed to start a server (see its stderr)"
            pid = int(line)
            assert not _process_gone(pid)
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            if child.stdout is not None:
                child.stdout.close()
        assert _wait_gone(pid), f"postmaster {pid} outlived its parent"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
