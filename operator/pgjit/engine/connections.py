"""Admin connections to one PostgreSQL server: bounded, pinned, TLS-aware.

This is the one place that opens connections. Every admin connection:
- is autocommit, so transactions are explicit and can be pipelined (``transactions``);
- says whose it is in ``application_name`` (``pgjit team-a/orders``; a transaction adds its
  purpose, ``pgjit/activate team-a/orders``);
- pins ``search_path`` to ``pg_catalog, pg_temp`` so no user-created function or operator can
  shadow a catalog one while the admin runs pgjit's statements;
- uses client-side binding, because CREATE/ALTER ROLE, GRANT and COMMENT are utility statements
  that cannot take server-side parameters: psycopg quotes every value (see ``statements``), pgjit
  never formats one into SQL itself;
- has lock and idle-transaction timeouts, so a stuck peer or a crashed operator cannot hold the
  per-user lock for long.

At most ``max_connections`` admin connections are in use at once per server, however many
sessions and databases there are: one semaphore is shared by the pools of all databases.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from . import statements as S
from .config import ServerConfig
from .errors import EngineError, classify
from ..vocabulary import Reason
from .iam import IamTokens
from .transactions import application_name

#: How long a refused admin login makes calls fail at once, before a login is tried again.
REFUSAL_SECONDS = 5.0

_SESSION_OPTIONS = ("-c search_path=pg_catalog,pg_temp -c lock_timeout=10s "
                    "-c statement_timeout=60s -c idle_in_transaction_session_timeout=60s")


class _PrivateFiles:
    """PEM material for libpq, which reads only files, readable by this process only.

    Where Linux allows, each is an anonymous memory file (``memfd``) that libpq opens by its
    ``/proc/self/fd`` path: it is never on a disk and goes with the process, however that
    ends. A directory would outlive a SIGKILL or an out-of-memory kill, and the chart's /tmp
    is an emptyDir that outlives the container, so every crash would leave the admin's key
    behind. Elsewhere, a private directory removed on close.
    """

    def __init__(self) -> None:
        self._dir: tempfile.TemporaryDirectory | None = None
        self._fds: list[int] = []

    def write(self, name: str, data: bytes) -> str:
        if _IN_MEMORY:
            try:
                return self._write_in_memory(name, data)
            except OSError:  # a seccomp profile may refuse memfd_create
                pass
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="pgjit-tls-")
            os.chmod(self._dir.name, 0o700)
        path = Path(self._dir.name) / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return str(path)

    def _write_in_memory(self, name: str, data: bytes) -> str:
        fd = os.memfd_create(f"pgjit-{name}")  # close-on-exec: no child process inherits it
        try:
            os.fchmod(fd, 0o600)  # libpq refuses a key that others could read
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError:
            os.close(fd)
            raise
        self._fds.append(fd)
        return f"/proc/self/fd/{fd}"

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


_IN_MEMORY = hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


class AdminConnections:
    def __init__(self, config: ServerConfig):
        config.validate()
        self.config = config
        self._files = _PrivateFiles()
        self._pools: dict[str, AsyncConnectionPool] = {}
        #: Databases a pooled connection has been obtained for since the pools were made.
        self._reachable: set[str] = set()
        self._slots = asyncio.Semaphore(config.max_connections)
        self._tls = self._tls_params()
        self._iam = IamTokens(*config.aws_iam) if config.aws_iam is not None else None
        self._closed = False
        #: The server's refusal of the admin's login, while it holds (see ``_raise_refusal``).
        self.refused: EngineError | None = None
        self._refused_until = 0.0

    def _tls_params(self) -> dict[str, str]:
        params: dict[str, str] = {"sslmode": self.config.sslmode}
        if self.config.ca_pem is not None:
            params["sslrootcert"] = self._files.write("ca.crt", self.config.ca_pem)
        if self.config.admin_cert_pem is not None and self.config.admin_key_pem is not None:
            params["sslcert"] = self._files.write("admin.crt", self.config.admin_cert_pem)
            params["sslkey"] = self._files.write("admin.key", self.config.admin_key_pem)
        return params

    def conninfo(self, dbname: str) -> str:
        extra = dict(self._tls)
        if self.config.admin_password is not None:
            extra["password"] = self.config.admin_password
        return make_conninfo(host=self.config.host, port=str(self.config.port),
                             user=self.config.admin_user, dbname=dbname,
                             application_name=application_name("", self.config.label),
                             options=_SESSION_OPTIONS,
                             connect_timeout=str(max(1, int(self.config.connect_timeout))),
                             **extra)

    async def _connect_kwargs(self) -> dict:
        """What every new connection is opened with; with IAM, a freshly signed token as its
        password (tokens live 15 minutes: a pooled connection outlives its token, a new
        connection never reuses an old one)."""
        kwargs: dict = {"autocommit": True, "cursor_factory": psycopg.AsyncClientCursor}
        if self._iam is not None:
            kwargs["password"] = await asyncio.to_thread(
                self._iam.token, self.config.host, self.config.port, self.config.admin_user)
        return kwargs

    async def connect(self, dbname: str | None = None) -> psycopg.AsyncConnection:
        """A single connection outside the pools: preflight uses it to see the real error."""
        return await psycopg.AsyncConnection.connect(
            self.conninfo(dbname or self.config.admin_database), **await self._connect_kwargs())

    @staticmethod
    async def _prepare(conn: psycopg.AsyncConnection) -> None:
        """Prepare the state reads on a new connection, outside any transaction.

        With a generic plan: PostgreSQL would otherwise plan each EXECUTE afresh for its
        parameters (its first five runs, and for good when the generic plan looks costlier),
        which is the planning preparing is meant to save. These reads look roles up by name
        in small catalogs; the generic plan is the same plan.
        """
        await conn.execute(S.GENERIC_PLANS)
        for statement in S.PREPARED:
            await conn.execute(statement.prepare_for(conn.info.server_version))

    def _pool(self, dbname: str) -> AsyncConnectionPool:
        pool = self._pools.get(dbname)
        if pool is None:
            is_admin_db = dbname == self.config.admin_database
            pool = AsyncConnectionPool(
                self.conninfo(dbname), open=False, name=f"pgjit-{dbname}",
                min_size=1 if is_admin_db else 0, max_size=self.config.max_connections,
                max_idle=300 if is_admin_db else 60, timeout=self.config.connect_timeout,
                kwargs=self._connect_kwargs,
                configure=self._prepare if self.config.prepared_statements else None)
            self._pools[dbname] = pool
        return pool

    @asynccontextmanager
    async def connection(self, dbname: str | None = None) -> AsyncIterator[psycopg.AsyncConnection]:
        dbname = dbname or self.config.admin_database
        self._check_open()
        if self.refused is not None and time.monotonic() < self._refused_until:
            raise EngineError(self.refused.reason, self.refused.message, transient=True)
        pool = self._pool(dbname)
        async with self._slots:
            self._check_open()  # closed while this call waited for a slot
            if pool.closed:
                await pool.open(wait=False)
            if dbname not in self._reachable:
                # A pool retries a refused login quietly until its timeout; the first time,
                # ask the server directly so a refusal shows at once, with its cause.
                await self._raise_refusal(dbname)
            try:
                conn = await pool.getconn()
            except PoolTimeout:
                await self._raise_refusal(dbname)
                raise
            self.refused = None
            self._reachable.add(dbname)
            try:
                yield conn
            finally:
                await pool.putconn(conn)

    def _check_open(self) -> None:
        if self._closed:
            # Replaced (new credentials: a rotated admin password): a call still in flight must
            # not reopen pools with what no longer works and wait out their timeouts, but give
            # way at once to a retry on the new engine.
            raise EngineError(Reason.UNREACHABLE, "the admin connections were replaced (the Database or "
                              "its Secrets changed); retrying", transient=True)

    async def _raise_refusal(self, dbname: str) -> None:
        """Raise the reason the server refuses the admin's logins to ``dbname``, if it does.

        A pool retries a refused login quietly and only ever times out, and libpq reports no
        SQLSTATE for a refused connection (messages are no option: servers speak German). So
        one direct attempt tells whether a login works, and when it does not, the catalog, read
        on the admin database, tells why: a missing database or a missing CONNECT privilege is
        raised as such, with the fix, instead of being waited out as an unreachable server.
        """
        try:
            conn = await self.connect(dbname)
        except psycopg.Error as exc:
            if dbname == self.config.admin_database:
                refusal = classify(exc, doing="connecting as the admin")
                if refusal.reason == Reason.AUTHENTICATION_FAILED:
                    # The admin's password changed (rotated in PostgreSQL first, in the Secret
                    # a moment later). Every call would otherwise wait out the pool's timeout,
                    # retried eight times: more than a minute per call. Fail fast instead, for a
                    # few seconds at a time, retriably: the registry then re-reads the Secret
                    # (kube/engines.py) and preflight says what is wrong.
                    self.refused = EngineError(Reason.AUTHENTICATION_FAILED, refusal.message,
                                               transient=True)
                    self._refused_until = time.monotonic() + REFUSAL_SECONDS
                    raise self.refused from exc
                return  # preflight explains the admin database's other refusals
            cause = await self._refusal_cause(dbname)
            if cause is not None:
                raise cause from exc
            return
        self.refused = None
        await conn.close()

    async def _refusal_cause(self, dbname: str) -> EngineError | None:
        try:
            conn = await self.connect()
        except psycopg.Error:
            return None  # the server itself is not answering: waiting is right
        try:
            cur = await conn.execute(
                "SELECT datallowconn, has_database_privilege(oid, 'CONNECT')"
                " FROM pg_database WHERE datname = %s", [dbname])
            row = await cur.fetchone()
        finally:
            await conn.close()
        database = dbname.replace('"', '""')
        if row is None:
            return EngineError(Reason.DATABASE_NOT_FOUND, f'database "{database}" does not exist on '
                               f"server {self.config.host}:{self.config.port}")
        allows_connections, may_connect = row
        if not allows_connections:
            return EngineError(Reason.INSUFFICIENT_PRIVILEGE, f'database "{database}" does not allow '
                               "connections (pg_database.datallowconn is false)")
        if not may_connect:
            admin = self.config.admin_user.replace('"', '""')
            return EngineError(Reason.INSUFFICIENT_PRIVILEGE,
                               f'the admin lacks CONNECT on database "{database}"; run as a '
                               f'superuser: GRANT CONNECT ON DATABASE "{database}" TO "{admin}";')
        return None

    async def close(self) -> None:
        self._closed = True
        pools, self._pools = list(self._pools.values()), {}
        self._reachable.clear()
        for pool in pools:
            await pool.close()
        self._files.close()
