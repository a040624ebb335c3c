"""Helpers for the engine tests: a per-test engine on a shared server, and catalog probes.

Each test gets its own managed role, its own database roles and its own identities (all with a
per-test suffix), so tests share the session's servers without seeing each other's users, and a
sweep only ever finds the test's own users.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import psycopg
from psycopg import sql

from pgjit.core.credentials import generate_password
from pgjit.core.naming import postgres_username
from pgjit.engine import ActivationRequest, Engine, ServerConfig

ID = sql.Identifier


def soon(hours: float = 1.0) -> datetime:
    return datetime.now(timezone.utc) + timedelta(hours=hours)


@dataclass
class RoleInfo:
    exists: bool
    can_login: bool = False
    memberships: frozenset[str] = frozenset()
    valid_until: datetime | None = None
    comment: str | None = None


@dataclass
class Kit:
    server: object
    suffix: str
    managed_role: str
    engine: Engine
    passwords: dict = field(default_factory=dict)

    # -- naming ---------------------------------------------------------------------------------
    def name(self, base: str) -> str:
        return f"{base}-{self.suffix}"

    # -- arranging ------------------------------------------------------------------------------
    async def superuser(self, dbname: str = "postgres") -> psycopg.AsyncConnection:
        return await psycopg.AsyncConnection.connect(self.server.superuser_conninfo(dbname),
                                                     autocommit=True)

    async def su(self, statement, params=None, dbname: str = "postgres"):
        async with await self.superuser(dbname) as conn:
            cur = await conn.execute(statement, params)
            return await cur.fetchall() if cur.description else None

    async def make_roles(self, *bases: str, admin_option: bool = True) -> list[str]:
        names = [self.name(b) for b in bases]
        async with await self.superuser() as conn:
            for name in names:
                await conn.execute(sql.SQL("CREATE ROLE {}").format(ID(name)))
                if admin_option:
                    await conn.execute(sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
                        ID(name), ID(self.server.admin_user)))
        return names

    async def make_database(self, base: str = "db") -> str:
        name = self.name(base)
        async with await self.superuser() as conn:
            await conn.execute(sql.SQL("CREATE DATABASE {}").format(ID(name)))
        return name

    def request(self, session: str, identity: str, roles=(), *, database="postgres",
                mode="keep", expires_at=None, permissions=None, password=True):
        from pgjit.core.permissions import PermissionRules
        pw = generate_password() if password is True else password
        self.passwords[session] = pw
        return ActivationRequest(session_id=session, identity=identity, database=database,
                                 roles=tuple(roles), expires_at=expires_at or soon(),
                                 mode=mode, permissions=permissions or PermissionRules(),
                                 password=pw)

    # -- probing --------------------------------------------------------------------------------
    async def role(self, identity_or_name: str, *, mapped: bool = True) -> RoleInfo:
        name = postgres_username(identity_or_name) if mapped else identity_or_name
        rows = await self.su("""
            SELECT r.rolcanlogin, r.rolvaliduntil,
                   ARRAY(SELECT DISTINCT g.rolname::text FROM pg_auth_members m
                          JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid),
                   shobj_description(r.oid, 'pg_authid')
              FROM pg_roles r WHERE r.rolname = %s""", [name])
        if not rows:
            return RoleInfo(False)
        can_login, valid_until, members, comment = rows[0]
        return RoleInfo(True, can_login, frozenset(members), valid_until, comment)

    async def login(self, identity: str, password: str, dbname: str = "postgres"):
        """Log in as the provisioned user; returns the open connection."""
        return await psycopg.AsyncConnection.connect(
            self.server.conninfo(postgres_username(identity), password, dbname), autocommit=True)

    async def can_login(self, identity: str, password: str, dbname: str = "postgres") -> bool:
        try:
            conn = await self.login(identity, password, dbname)
        except psycopg.OperationalError:
            return False
        await conn.close()
        return True


def new_engine(server, managed_role: str, **overrides) -> Engine:
    config = ServerConfig(host=server.host, port=server.port, admin_user=server.admin_user,
                          admin_password=server.admin_password, managed_role=managed_role,
                          **overrides)
    return Engine(config)


_prepared: set[int] = set()


@contextlib.asynccontextmanager
async def engine_kit(pg_server):
    """A Kit on ``pg_server`` with its own managed role and engine (the ``kit`` fixture)."""
    if pg_server.port not in _prepared:
        # What the docs tell users to grant besides LOGIN CREATEROLE: terminating ended users'
        # connections needs pg_signal_backend.
        async with await psycopg.AsyncConnection.connect(pg_server.superuser_conninfo(),
                                                         autocommit=True) as conn:
            await conn.execute(sql.SQL("GRANT pg_signal_backend TO {}").format(
                ID(pg_server.admin_user)))
        _prepared.add(pg_server.port)
    suffix = secrets.token_hex(4)
    managed = f"pgjit-auto-{suffix}"
    engine = new_engine(pg_server, managed)
    try:
        yield Kit(pg_server, suffix, managed, engine)
    finally:
        await engine.close()
