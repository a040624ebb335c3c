"""Real PostgreSQL servers for the postgres test layer.

Every test that takes ``pg_server`` runs once per server: PostgreSQL 15, 16 and 18, plus a
German-messages variant of every version whose build translates messages. Only PostgreSQL 15
(Debian, built with NLS) does: the 16 and 18 builds here (npm zonky builds and the PyPI wheels)
are built without NLS, so a pg16-de/pg18-de server would answer in English and prove nothing.

Servers start lazily, once per session, the first time a test needs one, and all stop at session
end. They run with ``log_statement = all`` so tests can read what pgjit sent (and check that no
password ever reaches the log). Missing binaries fail the tests: a skipped layer proves nothing.

``PGJIT_TEST_SERVERS=pg16,pg15-de`` restricts the run to some servers for fast local iteration.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from enginekit import engine_kit
from pgjit.devstack.postgres import PostgresServer, start_postgres


@dataclass(frozen=True)
class ServerSpec:
    major: str
    lc_messages: str | None = None


SERVER_SPECS = {
    "pg15": ServerSpec("15"),
    "pg15-de": ServerSpec("15", lc_messages="de_DE.UTF-8"),
    "pg16": ServerSpec("16"),
    "pg18": ServerSpec("18"),
}

SESSION_SETTINGS = {"log_statement": "all"}

SELECT_ENV = "PGJIT_TEST_SERVERS"


def _selected_server_ids() -> list[str]:
    raw = os.environ.get(SELECT_ENV, "").strip()
    if not raw:
        return list(SERVER_SPECS)
    ids = [part.strip() for part in raw.split(",") if part.strip()]
    unknown = [server_id for server_id in ids if server_id not in SERVER_SPECS]
    if unknown:
        raise pytest.UsageError(
            f"{SELECT_ENV}: unknown server ids {unknown}; known: {', '.join(SERVER_SPECS)}"
        )
    return ids


SELECTED_SERVER_IDS = _selected_server_ids()

_HERE = Path(__file__).parent


class ServerPool:
    """Starts each server on first use and keeps it for the session.

    Session-scoped parametrized fixtures are torn down whenever pytest switches to another
    parameter, which would restart servers when tests interleave; the pool outlives that.
    """

    def __init__(self) -> None:
        # Under /tmp, not pytest's tmp_path: the postgres OS user cannot enter root's 0700
        # /tmp/pytest-of-root.
        self.root = Path(tempfile.mkdtemp(prefix="pgjit-pytest-"))
        # Searchable, not listable: each server's own work dir is 0700 and owned by that user.
        self.root.chmod(0o711)
        self.servers: dict[str, PostgresServer] = {}
        self.start_seconds: dict[str, float] = {}
        self._failures: dict[str, BaseException] = {}

    def get(self, server_id: str) -> PostgresServer:
        if server_id in self.servers:
            return self.servers[server_id]
        if server_id not in self._failures:
            spec = SERVER_SPECS[server_id]
            started = time.monotonic()
            try:
                self.servers[server_id] = start_postgres(
                    spec.major,
                    self.root / server_id,
                    lc_messages=spec.lc_messages,
                    settings=SESSION_SETTINGS,
                )
                self.start_seconds[server_id] = time.monotonic() - started
                return self.servers[server_id]
            except Exception as exc:
                # Remembered: one failed start is enough, don't pay for it in every test.
                self._failures[server_id] = exc
        pytest.fail(f"{server_id} failed to start: {self._failures[server_id]}", pytrace=False)

    def stop_all(self) -> None:
        for server in self.servers.values():
            server.stop()


_pool_key = pytest.StashKey[ServerPool]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees every collected item, not only this directory's.
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def pg_server_pool(request: pytest.FixtureRequest) -> Iterator[ServerPool]:
    pool = ServerPool()
    request.config.stash[_pool_key] = pool
    yield pool
    pool.stop_all()
    if request.session.testsfailed:
        # Keep the server logs of a failed run for inspection.
        print(f"\npgjit: PostgreSQL work dirs kept in {pool.root}")
    else:
        shutil.rmtree(pool.root, ignore_errors=True)


@pytest.fixture(scope="session", params=SELECTED_SERVER_IDS)
def pg_server(request: pytest.FixtureRequest, pg_server_pool: ServerPool) -> PostgresServer:
    """A running server, one per id in SERVER_SPECS (pg15, pg15-de, pg16, pg18)."""
    return pg_server_pool.get(request.param)


@pytest.fixture(scope="session")
def pg_lifecycle_major() -> str:
    """Major version for tests that start and kill their own server: the first selected one."""
    return SERVER_SPECS[SELECTED_SERVER_IDS[0]].major


@pytest.fixture
async def pg_superuser(pg_server: PostgresServer) -> AsyncIterator[psycopg.AsyncConnection]:
    """Superuser connection to database postgres, autocommit: for arranging and inspecting."""
    async with await psycopg.AsyncConnection.connect(
        pg_server.superuser_conninfo(), autocommit=True
    ) as conn:
        yield conn


@pytest.fixture
async def pg_admin(pg_server: PostgresServer) -> AsyncIterator[psycopg.AsyncConnection]:
    """Connection as the non-superuser LOGIN CREATEROLE admin that pgjit runs as, autocommit."""
    async with await psycopg.AsyncConnection.connect(
        pg_server.admin_conninfo(), autocommit=True
    ) as conn:
        yield conn


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    pool = config.stash.get(_pool_key, None)
    if pool is None or not pool.servers:
        return
    terminalreporter.section("pgjit PostgreSQL servers")
    for server_id, server in pool.servers.items():
        terminalreporter.write_line(
            f"{server_id}: PostgreSQL {server.server_version} from {server.source}, "
            f"ssl={'on' if server.supports_ssl else 'off'}, "
            f"started in {pool.start_seconds[server_id]:.2f}s"
        )


@pytest.fixture
async def kit(pg_server):
    async with engine_kit(pg_server) as made:
        yield made
