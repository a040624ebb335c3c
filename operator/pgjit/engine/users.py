"""User lifecycle: activate, end and sweep managed PostgreSQL users.

Each operation is a short series of transactions on the admin database, each serialized per user
name with a transaction-scoped advisory lock, and pipelined so a typical activation costs two
round trips: (lock + read state) and (DDL + COMMIT). Every step re-reads the state it acts on
under the lock, so repeating an operation after a crash or a retry is safe.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Container
from typing import Any
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import psycopg
from psycopg import sql

from ..core.boundaries import (PRIVILEGED_PREDEFINED_ROLES, PrivilegedPath, privileged_path,
                               refusal_message, refusals)
from ..core.credentials import scram_sha256_verifier
from ..core.leases import DROPPING_MODES, MODE_DROP, MODE_KEEP, MODE_REASSIGN, Lease, Ledger
from ..core.naming import postgres_username
from ..core.stewards import steward_index, steward_prefix, steward_role
from ..core.permissions import DbObject
from . import statements as S
from .connections import AdminConnections
from .transactions import (Statement, Transaction, locked_transaction, rollback_unless_idle,
                           run_script)
from .errors import EngineError, classify
from ..vocabulary import Reason
from .results import (ABSENT, DEACTIVATED, DROPPED, LOCKED, NOT_MANAGED, RELEASED, Activation,
                      ActivationRequest, DriftCorrection, Teardown)

BACKEND_EXIT_DEADLINE = 5.0


def lock_key(username: str) -> int:
    """A stable signed 64-bit advisory-lock key for a user name (any version, any replica)."""
    digest = hashlib.sha256(b"pgjit-user:" + username.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class ManagedRoleMissing(Exception):
    """The bookkeeping role must be created (under its own lock) before this activation."""


class StewardNotReady(Exception):
    """The user's steward must be made, or given what it administers, before this operation
    (under the steward's own lock, as the admin)."""

    def __init__(self, steward: str, roles: tuple[str, ...]):
        super().__init__(steward)
        self.steward = steward
        self.roles = roles


@dataclass(frozen=True)
class UserState:
    exists: bool
    can_login: bool
    managed_role_exists: bool
    is_managed: bool
    memberships: frozenset[str]
    ledger: Ledger
    missing_roles: tuple[str, ...]
    ungrantable_roles: tuple[str, ...]
    backends: int
    role_oid: int | None = None
    #: CREATEROLE, CREATEDB, REPLICATION, BYPASSRLS: attributes a managed user must not have.
    attributes: tuple[str, ...] = ()
    #: pg_database.datallowconn of the session's database; None when it does not exist.
    database_allows: bool | None = None
    privileged: tuple[PrivilegedPath, ...] = ()
    #: The steward that administers (or will create) the user; None: the admin itself.
    steward: str | None = None
    steward_ready: bool = False
    #: The memberships the steward granted, and those anyone else did (a role can be in both).
    granted_by_steward: frozenset[str] = frozenset()
    granted_by_others: frozenset[str] = frozenset()

    @classmethod
    def from_row(cls, row, privileged_rows=()) -> "UserState":
        (exists, can_login, managed_exists, is_managed, memberships, comment, missing,
         ungrantable, backends, role_oid, attributes, database_allows, steward,
         steward_ready, by_steward, by_others) = row
        privileged = tuple(
            privileged_path(wanted, role, depth, is_admin=is_admin, is_managed=is_managed_role,
                            attributes=[a for a, held in zip(
                                ("SUPERUSER", "CREATEROLE", "CREATEDB", "REPLICATION",
                                 "BYPASSRLS"), flags) if held],
                            predefined=PRIVILEGED_PREDEFINED_ROLES.get(role) if predefined else None)
            for wanted, role, depth, is_admin, is_managed_role, *flags, predefined in privileged_rows)
        return cls(exists, can_login, managed_exists, is_managed, frozenset(memberships or ()),
                   Ledger.parse(comment), tuple(missing or ()), tuple(ungrantable or ()),
                   backends, role_oid, tuple(attributes or ()), database_allows, privileged,
                   steward, bool(steward_ready), frozenset(by_steward or ()),
                   frozenset(by_others or ()))

    def acting(self, wanted: tuple[str, ...] = ()) -> str | None:
        """The steward to SET ROLE to for this user's statements, None for the admin itself.

        :raises StewardNotReady: the steward is missing or lacks what it must administer.
        """
        if self.steward is not None and not self.steward_ready:
            raise StewardNotReady(self.steward, wanted)
        return self.steward

    def revoke(self, batch: "Batch", role: str, name: str) -> None:
        """Revoke ``role`` from the user as each role that granted it: the steward for its own
        grants, the admin for everyone else's (verified where it matters, since a REVOKE of a
        grant the admin may not revoke only warns)."""
        if role in self.granted_by_steward:
            batch.add(S.revoke_role(role, name))
        if role in self.granted_by_others or role not in self.granted_by_steward:
            batch.add(S.revoke_role(role, name), as_admin=True)


@dataclass
class Batch:
    """Statements to send in one transaction, as the user's steward when it has one.

    Only attribute changes run as the admin: a steward has CREATEROLE alone, and PostgreSQL
    lets a role clear CREATEDB, REPLICATION or BYPASSRLS only when it holds that attribute.
    """

    steward: str | None = None
    statements: list[tuple[sql.Composed | sql.SQL, bool]] = field(default_factory=list)

    def add(self, statement: sql.Composed | sql.SQL, *, as_admin: bool = False) -> None:
        self.statements.append((statement, as_admin))

    def script(self) -> list[Statement]:
        """The statements, each run of the steward's between SET LOCAL ROLE and RESET ROLE, so
        whatever follows in the transaction (a verifying read) runs as the admin again."""
        script: list[Statement] = []
        acting = False
        for statement, as_admin in self.statements:
            if self.steward is not None and acting == as_admin:
                script.append((S.RESET_ROLE, None) if acting else (S.act_as(self.steward), None))
                acting = not acting
            script.append((statement, None))
        if acting:
            script.append((S.RESET_ROLE, None))
        return script


def _admin_name_sql(admin: str, *names: str) -> tuple[str, str]:
    """The role names and the admin as SQL identifiers, for messages that show a GRANT."""
    quoted = lambda n: '"' + n.replace('"', '""') + '"'  # noqa: E731 - display text only
    return ", ".join(quoted(n) for n in names), quoted(admin)


def _row(row: tuple[object, ...] | None) -> tuple[object, ...]:
    """The row of a query that always returns one."""
    if row is None:
        raise RuntimeError("a single-row query returned no row")
    return row


def _count(row: tuple[int, ...] | None) -> int:
    """The number a count query returns (always one row)."""
    if row is None:
        raise RuntimeError("a count query returned no row")
    return int(row[0])


#: Engine._retrying: runs an operation again after transient errors.
Retrying = Callable[[str, Callable[[], Awaitable[list[Teardown]]]], Awaitable[list[Teardown]]]


class SweepIncomplete(EngineError):
    """Some users could not be swept; the others were. Carries both."""

    def __init__(self, teardowns: list[Teardown], failures: list[EngineError]):
        super().__init__(failures[0].reason, "; ".join(f.message for f in failures),
                         transient=all(f.transient for f in failures))
        self.teardowns = teardowns
        self.failures = failures


class UserLifecycle:
    def __init__(self, conns: AdminConnections, stats):
        self.conns = conns
        self.config = conns.config
        self.stats = stats
        self._steward_prefix = steward_prefix(self.config.managed_role)

    # -- reading -------------------------------------------------------------------------------

    def _state_params(self, conn: psycopg.AsyncConnection, name: str,
                      wanted: tuple[str, ...] = (), database: str | None = None) -> dict:
        stewarded = conn.info.server_version >= 160000
        count = self.config.steward_roles
        return {"name": name, "managed": self.config.managed_role, "wanted": list(wanted),
                "wanted_and_managed": list(wanted) + [self.config.managed_role],
                "database": database, "predefined": list(PRIVILEGED_PREDEFINED_ROLES),
                "steward": (steward_role(self.config.managed_role, steward_index(name, count))
                            if stewarded and count else None),
                "steward_prefix": self._steward_prefix if stewarded else None}

    async def _begin_locked(self, tx: Transaction, name: str,
                            wanted: tuple[str, ...] = (), *,
                            database: str | None = None) -> UserState:
        """BEGIN, take the user's lock and read its state: one round trip.

        With ``wanted`` roles, the same round trip reads which of them lead to a privileged
        role, so the hard refusals are judged under the lock that the activation acts under.
        """
        params = self._state_params(tx.conn, name, wanted, database)
        reads = [S.PREPARED_USER_STATE, *([S.PREPARED_PRIVILEGED_MEMBERSHIPS] if wanted else [])]
        cur = await run_script(tx.conn, [*tx.begin_statements(lock_key(name)),
                                         *((self._statement(tx.conn, read), params)
                                           for read in reads)])
        cur.nextset()  # past BEGIN
        cur.nextset()  # past the lock
        row = await cur.fetchone()
        privileged_rows: list[Any] = []
        if wanted:
            cur.nextset()
            privileged_rows = await cur.fetchall()
        self.stats.round_trips += 1
        return UserState.from_row(row, privileged_rows)

    def _statement(self, conn: psycopg.AsyncConnection, statement: S.Prepared
                   ) -> sql.Composed | sql.SQL:
        """EXECUTE of the statement each admin connection prepared when it opened (planning
        these joins cost more server CPU than running them, README Performance), or the plain
        query when that is turned off."""
        if self.config.prepared_statements:
            return statement.execute
        return statement.query_for(conn.info.server_version)

    async def _read(self, conn: psycopg.AsyncConnection, statement: S.Prepared, params: Any
                    ) -> psycopg.AsyncCursor:
        return await conn.execute(self._statement(conn, statement), params)

    async def _run(self, tx: Transaction, batch: Batch, *, commit: bool) -> None:
        statements = [*batch.script(), *([(S.COMMIT, None)] if commit else [])]
        if statements:
            await run_script(tx.conn, statements)
        self.stats.round_trips += 1

    # -- activation ----------------------------------------------------------------------------

    async def _stewarded(self, operation: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``operation``; when it finds the user's steward not ready, make it ready and run
        the operation again. ``operation`` is one step that reads the state under the user's
        lock and raises before it writes anything, so running it again repeats nothing."""
        try:
            return await operation()
        except StewardNotReady as missing:
            await self._prepare_steward(missing.steward, missing.roles)
            return await operation()

    async def _prepare_steward(self, steward: str, roles: tuple[str, ...]) -> None:
        """Create the steward if missing, let the admin SET ROLE to it, and give it ADMIN
        OPTION on the managed role and ``roles``: idempotent, under the steward's lock.

        :raises EngineError: a role of the steward's name exists that pgjit did not make.
        """
        managed, admin = self.config.managed_role, self.config.admin_user
        mark = S.steward_mark(managed)
        async with self.conns.connection() as conn, \
                locked_transaction(conn, "steward", self.config.label) as tx:
            cur = await run_script(conn, [*tx.begin_statements(lock_key(steward)),
                                          (S.STEWARD_STATE, {"steward": steward, "mark": mark})])
            cur.nextset()  # past BEGIN
            cur.nextset()  # past the lock
            exists, marked, administered = _row(await cur.fetchone())
            self.stats.round_trips += 1
            if exists and not (marked and administered):
                raise EngineError(Reason.USER_CONFLICT, (
                    f'a PostgreSQL role named "{steward}" already exists and pgjit did not '
                    "create it; pgjit needs that name for a steward role of "
                    f'"{managed}" (docs/admin-setup.md) and will not modify the role. Rename or '
                    "drop it, or set PGJIT_STEWARD_ROLES=0"))
            statements: list[Statement] = []
            if not exists:
                statements += [(S.create_steward(steward), None),
                               (S.comment_on_role(steward, mark), None)]
            statements.append((S.let_admin_act_as(steward, admin), None))
            statements += [(S.entrust_to_steward(role, steward), None)
                           for role in sorted({managed, *roles})]
            await run_script(conn, [*statements, (S.COMMIT, None)])
            self.stats.round_trips += 1

    async def activate(self, request: ActivationRequest) -> Activation:
        return await self._stewarded(lambda: self._activate(request))

    async def _activate(self, request: ActivationRequest) -> Activation:
        name = postgres_username(request.identity)
        wanted = tuple(sorted(set(request.roles) | set(self.config.implicit_roles)))
        verifier = None
        if request.password is not None:
            # PBKDF2 is CPU work: off the event loop, and before the lock is taken.
            verifier = await asyncio.to_thread(scram_sha256_verifier, request.password,
                                               self.config.scram_iterations)
        async with self.conns.connection() as conn, \
                locked_transaction(conn, "activate", self.config.label) as tx:
            state = await self._begin_locked(tx, name, wanted,
                                             database=request.database)
            result, batch, verify = self._plan_activation(name, wanted, request, verifier,
                                                          state)
            if isinstance(result, EngineError):
                if batch.statements:  # the session's own stale lease steps back
                    await self._run(tx, batch, commit=True)
                raise result
            await self._run(tx, batch, commit=not verify)
            if verify:
                await self._verify_memberships(conn, name, wanted)
                await tx.commit()
                self.stats.round_trips += 1
            return result

    def _plan_activation(self, name: str, wanted: tuple[str, ...], request: ActivationRequest,
                         verifier: str | None, state: UserState
                         ) -> tuple[Activation | EngineError, Batch, bool]:
        managed = self.config.managed_role
        now = datetime.now(timezone.utc)
        server = f"{self.config.host}:{self.config.port}"
        if state.database_allows is None:
            database = request.database.replace('"', '""')
            raise EngineError(Reason.DATABASE_NOT_FOUND, (
                f'database "{database}" does not exist on server {server}; correct the '
                "session's spec.databaseName (or create the database)"))
        if not state.database_allows:
            database = request.database.replace('"', '""')
            raise EngineError(Reason.INSUFFICIENT_PRIVILEGE, (
                f'database "{database}" on server {server} does not allow connections '
                "(pg_database.datallowconn is false)"))
        if state.exists and not state.is_managed:
            raise EngineError(Reason.USER_CONFLICT, (
                f'a PostgreSQL role named "{name}" already exists and is not managed by pgjit '
                f'(not a member of "{managed}"); pgjit will not modify it. Rename or drop that '
                f'role, or GRANT "{managed}" TO it if pgjit should take it over'))
        if state.ledger.identity not in (None, request.identity):
            raise EngineError(Reason.USER_CONFLICT, (
                f'the PostgreSQL user "{name}" belongs to the identity '
                f'"{state.ledger.identity}", not "{request.identity}"'))
        if state.missing_roles:
            raise EngineError(Reason.MISSING_DATABASE_ROLE, (
                "database role(s) " + ", ".join(f'"{r}"' for r in state.missing_roles) +
                " do not exist on the server; create them or remove them from the Role"))
        refused = refusals(state.privileged, request.grantable_by_name)
        if refused:
            raise EngineError(Reason.PRIVILEGED_ROLE, refusal_message(
                refused, request.database_object or f"server {server}"))
        ungrantable = [r for r in state.ungrantable_roles
                       if r in wanted or (r == managed and state.managed_role_exists)]
        if ungrantable:
            roles, admin = _admin_name_sql(self.config.admin_user, *ungrantable)
            raise EngineError(Reason.INSUFFICIENT_PRIVILEGE, (
                f"the admin {admin} cannot grant {roles}; run as a superuser: "
                f"GRANT {roles} TO {admin} WITH ADMIN OPTION;"))

        lease = Lease(request.session_id, request.expires_at, wanted, request.database,
                      bool(request.permissions),
                      request.permissions.digest() if request.permissions else None)
        others = state.ledger.live(now, excluding=request.session_id)
        if not state.managed_role_exists:
            raise ManagedRoleMissing()
        batch = Batch(steward=state.acting(wanted))
        ledger = Ledger(identity=request.identity, mode=state.ledger.mode,
                        leases={lease.session_id: lease for lease in others})
        ledger = ledger.with_lease(lease, _stronger_mode(request.mode, others, state.ledger.mode))
        valid_until = max([request.expires_at] + [o.expires_at for o in others])
        verify = False
        # What the catalog holds and no lease granted (granted out of band, while the user was
        # locked or shared): stripped on every activation, sharing included.
        drift: list[str] = []

        if not state.exists:
            batch.add(S.create_user(name, managed, verifier, valid_until))
            for role in wanted:
                batch.add(S.grant_role(role, name))
            shared, created, password_set = False, True, verifier is not None
        elif others:
            changed = [o for o in others if set(o.roles) != set(wanted)]
            if changed:
                raise EngineError(Reason.ROLES_CHANGED, (
                    f'"{name}" is in use by {len(others)} other live session(s) with database '
                    f"roles [{', '.join(changed[0].roles)}], not [{', '.join(wanted)}]; end "
                    "those sessions or request the same roles, then retry"))
            if not request.shared_password_known:
                return self._plan_step_back(name, request, state)
            # Sharing: roles already match; the password stays, so live credentials keep working.
            if not state.can_login:
                batch.add(S.enable_login(name, None, valid_until))
            else:
                batch.add(S.set_valid_until(name, valid_until))
            verify = self._replace_memberships(batch, name, state, wanted, drift)
            shared, created, password_set = True, False, False
        else:
            # Re-activation: replace roles (never merge) and strip what a crash left behind.
            batch.add(S.enable_login(name, verifier, valid_until))
            verify = self._replace_memberships(batch, name, state, wanted, drift)
            shared, created, password_set = False, False, verifier is not None
        if state.exists and state.attributes:
            batch.add(S.strip_attributes(name, state.attributes), as_admin=True)
            drift.extend(state.attributes)
        batch.add(S.comment_on_role(name, ledger.render()))
        return (Activation(name, wanted, created, shared, password_set, valid_until,
                           drift=tuple(drift)), batch, verify)

    @staticmethod
    def _plan_step_back(name: str, request: ActivationRequest, state: UserState
                        ) -> tuple[EngineError, Batch, bool]:
        """Refuse to share a user whose password the caller cannot hand out; nothing changes
        but the removal of the session's own lease from an earlier attempt, should it hold one
        (two such sessions would otherwise each wait for the other to hand out a password)."""
        batch = Batch(steward=state.acting())
        if request.session_id in state.ledger.leases:
            batch.add(S.comment_on_role(
                name, state.ledger.without({request.session_id}).render()))
        return EngineError(Reason.USER_SHARED, (
            f'PostgreSQL user "{name}" is being activated by another session of the same '
            "user; retrying"), transient=True), batch, False

    @staticmethod
    def _replace_memberships(batch: Batch, name: str, state: UserState,
                             wanted: tuple[str, ...], drift: list[str]) -> bool:
        """Make the memberships exactly ``wanted`` (the managed role aside); True when a REVOKE
        was added, whose effect must be verified (a REVOKE of someone else's grant only warns)."""
        leftovers = sorted(state.memberships - set(wanted))
        for role in leftovers:
            state.revoke(batch, role, name)
        for role in sorted(set(wanted) - state.memberships):
            batch.add(S.grant_role(role, name))
        drift.extend(f'membership in "{role}"' for role in leftovers)
        return bool(leftovers)

    async def _verify_memberships(self, conn, name: str, wanted: tuple[str, ...]) -> None:
        """A REVOKE of a membership granted by someone else only warns; check it took effect."""
        cur = await self._read(conn, S.PREPARED_USER_STATE, self._state_params(conn, name))
        state = UserState.from_row(await cur.fetchone())
        self.stats.round_trips += 1
        left = sorted(state.memberships - set(wanted))
        if left:
            quoted = lambda n: '"' + n.replace('"', '""') + '"'  # noqa: E731 - advice text only
            revokes = " ".join(f"REVOKE {quoted(r)} FROM {quoted(name)};" for r in left)
            raise EngineError(Reason.INSUFFICIENT_PRIVILEGE, (
                f'memberships of "{name}" in ' + ", ".join(f'"{r}"' for r in left) +
                " were granted by another role and the admin cannot revoke them; no session "
                f"can use this user until a superuser runs: {revokes}"))

    # -- end -----------------------------------------------------------------------------------

    async def end(self, identity: str, session_id: str | None, *, mode: str | None,
                  terminate_connections: bool,
                  revoke_permissions=None) -> Teardown:
        """End one lease; lock, strip or drop the user when it was the last live one.

        ``revoke_permissions(username, database)`` is awaited between locking and dropping when
        the lease held object permissions and no other live lease uses that database.
        """
        return await self.end_username(postgres_username(identity), session_id, mode=mode,
                                       terminate_connections=terminate_connections,
                                       revoke_permissions=revoke_permissions)

    async def end_username(self, name: str, session_id: str | None, *, mode: str | None,
                           terminate_connections: bool, revoke_permissions=None,
                           purpose: str = "end") -> Teardown:
        return await self._stewarded(lambda: self._end_username(
            name, session_id, mode=mode, terminate_connections=terminate_connections,
            revoke_permissions=revoke_permissions, purpose=purpose))

    async def _end_username(self, name: str, session_id: str | None, *, mode: str | None,
                            terminate_connections: bool, revoke_permissions,
                            purpose: str) -> Teardown:
        now = datetime.now(timezone.utc)
        # Whatever needs another admin connection (revoking object permissions, terminating
        # backends) runs after this one is given back: holding a slot while waiting for a second
        # deadlocks as soon as max_connections ends run at once (a burst of deletes).
        released: Teardown | None = None
        dropped: Teardown | None = None
        async with self.conns.connection() as conn, \
                locked_transaction(conn, purpose, self.config.label) as tx:
            state = await self._begin_locked(tx, name)
            if not state.exists:
                await self._run(tx, Batch(), commit=True)
                return Teardown(name, ABSENT, f'user "{name}" does not exist; nothing to end')
            if not state.is_managed:
                await self._run(tx, Batch(), commit=True)
                return Teardown(name, NOT_MANAGED,
                                f'role "{name}" is not managed by pgjit; left untouched')
            lease = state.ledger.leases.get(session_id) if session_id else None
            others = state.ledger.live(now, excluding=session_id)
            ledger = state.ledger.without({session_id} if session_id else set())
            mode = mode or state.ledger.mode
            batch = Batch(steward=state.acting())
            oid = state.role_oid
            if others:
                batch.add(S.set_valid_until(name, max(o.expires_at for o in others)))
                batch.add(S.comment_on_role(name, ledger.render()))
                await self._run(tx, batch, commit=True)
                released = Teardown(name, RELEASED, (
                    f"{len(others)} other live session(s) still use this user; "
                    "it stays enabled for them"))
            elif (mode in DROPPING_MODES and not state.backends
                    and not (lease is not None and lease.has_permissions)):
                dropped = await self._drop_at_once(tx, name, batch.steward,
                                                   oid if terminate_connections else None)
                if dropped is None:
                    # The refused drop rolled back and released the lock: look again.
                    state = await self._begin_locked(tx, name)
                    others = state.ledger.live(now, excluding=session_id)
                    ledger = state.ledger.without({session_id} if session_id else set())
                    if others:
                        batch.add(S.comment_on_role(name, ledger.render()))
                        await self._run(tx, batch, commit=True)
                        released = Teardown(name, RELEASED, "a new session took over the "
                                            "user before it could be dropped")
            if released is None and dropped is None:
                # The last lease: lock the user first and commit that on its own, so no new
                # login can start while the rest of the teardown runs.
                ledger = replace(ledger, leases={}, mode=mode)
                batch.add(S.disable_login(name))
                if mode not in DROPPING_MODES:
                    for role in sorted(state.memberships):
                        state.revoke(batch, role, name)
                batch.add(S.comment_on_role(name, ledger.render()))
                await self._run(tx, batch, commit=True)

        if released is not None:
            needs_revoke = lease is not None and lease.has_permissions and not any(
                o.database == lease.database and o.has_permissions for o in others)
            if needs_revoke and lease is not None and revoke_permissions is not None:
                await revoke_permissions(name, lease.database)
            return released
        if dropped is not None:
            if dropped.terminated_backends:
                await self._wait_for_backends(oid)
            return dropped

        if lease is not None and lease.has_permissions and revoke_permissions is not None:
            await revoke_permissions(name, lease.database)
        terminated = 0
        if terminate_connections:
            terminated = await self._terminate_backends(oid)
        if mode in DROPPING_MODES:
            return await self._drop(name, terminated, reassign=mode == MODE_REASSIGN)
        return Teardown(name, LOCKED, "login disabled and database roles revoked; the user is "
                        "kept with the objects it owns", terminated_backends=terminated)

    async def _drop_at_once(self, tx: Transaction, name: str, steward: str | None,
                            terminate_oid: int | None) -> Teardown | None:
        """Drop in the transaction that read the state, when nothing is connected.

        The common best_effort_drop end then costs two round trips instead of five. With
        ``terminate_oid`` the same script, once the drop is committed, ends any connection the
        user opened since the state was read: dropping a role does not end its sessions, and
        after the commit no new one can start. None when PostgreSQL refuses (2BP01): the
        caller continues with the lock-first teardown, which reports what blocks the drop.
        """
        drop = Batch(steward=steward)
        drop.add(S.drop_role(name))
        # The steward's SET LOCAL ends with the COMMIT: the termination runs as the admin.
        statements: list[Statement] = [*drop.script(), (S.COMMIT, None)]
        if terminate_oid is not None:
            statements.append((S.TERMINATE_BACKENDS, [terminate_oid]))
        try:
            cur = await run_script(tx.conn, statements)
        except psycopg.errors.DependentObjectsStillExist:
            await rollback_unless_idle(tx.conn)
            return None
        finally:
            self.stats.round_trips += 1
        terminated = 0
        if terminate_oid is not None:
            for _ in statements[1:]:  # past the drop's and the COMMIT's
                cur.nextset()
            terminated = _count(await cur.fetchone())
        return Teardown(name, DROPPED, "user dropped", terminated_backends=terminated)

    async def _terminate_backends(self, role_oid: int | None) -> int:
        """End the user's connections and wait, bounded, until they are gone (edge case 32)."""
        if role_oid is None:
            return 0
        async with self.conns.connection() as conn:
            cur = await conn.execute(S.TERMINATE_BACKENDS, [role_oid])
            terminated = _count(await cur.fetchone())
            self.stats.round_trips += 1
        if terminated:
            await self._wait_for_backends(role_oid)
        return terminated

    async def _wait_for_backends(self, role_oid: int | None) -> None:
        """Wait, bounded, until the terminated connections of a role are gone."""
        deadline = time.monotonic() + BACKEND_EXIT_DEADLINE
        delay = 0.01
        async with self.conns.connection() as conn:
            while time.monotonic() < deadline:
                cur = await conn.execute(S.COUNT_BACKENDS, [role_oid])
                if _count(await cur.fetchone()) == 0:
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)

    async def _drop(self, name: str, terminated: int, *, reassign: bool = False) -> Teardown:
        """Drop the locked user; with ``reassign``, a drop refused because the user owns objects
        hands them to the objects inheritor first and tries again. Whatever still blocks the
        drop then (privileges it holds, a missing inheritor) leaves the user locked, with the
        reason."""
        # Each step reads the state under its own lock: a steward found not ready there is made
        # ready and that step alone runs again, after the end's first commit as before it.
        teardown = await self._stewarded(lambda: self._drop_once(
            name, terminated, lock_on_refusal=not reassign))
        if teardown is not None:
            return teardown
        reassigned, problem = await self._stewarded(lambda: self._reassign(name))
        teardown = await self._stewarded(lambda: self._drop_once(
            name, terminated, lock_on_refusal=True))
        assert teardown is not None
        if problem:
            teardown = replace(teardown, reason=f"{teardown.reason}; {problem}")
        return replace(teardown, reassigned=reassigned)

    async def _reassign(self, name: str) -> tuple[tuple[tuple[str, int], ...], str | None]:
        """REASSIGN OWNED BY the user TO the objects inheritor in every database where it owns
        something; never DROP OWNED. Returns what was reassigned and, if it stopped, why."""
        inheritor = self.config.objects_inheritor
        if not inheritor:
            return (), "no objectsInheritor is set on the Database"
        admin = self.config.admin_user
        granted = False
        async with self.conns.connection() as conn, \
                locked_transaction(conn, "reassign", self.config.label) as tx:
            state = await self._begin_locked(tx, name)
            if not state.exists or not state.is_managed or \
                    state.ledger.live(datetime.now(timezone.utc)):
                await self._run(tx, Batch(), commit=True)
                return (), None
            # PostgreSQL grants the admin the user's privileges only from the role that holds
            # ADMIN OPTION on the user: its steward, when it has one.
            acting = Batch(steward=state.acting())
            owned = await (await conn.execute(S.OWNED_PER_DATABASE, {
                "name": name, "admin_db": self.config.admin_database})).fetchall()
            row = await (await conn.execute(S.CAN_ACT_FOR, [inheritor])).fetchone()
            problem = None
            if row is None:
                problem = f'objectsInheritor "{inheritor}" does not exist on the server'
            elif not row[0]:
                problem = (f'the admin cannot act for objectsInheritor "{inheritor}"; run as'
                           f' a superuser: GRANT "{inheritor}" TO "{admin}";')
            elif not _row(await (await conn.execute(S.CAN_ACT_FOR, [name])).fetchone())[0]:
                acting.add(S.act_for(name, admin, int(conn.info.server_version)))
                await run_script(conn, acting.script())
                granted = True
            await tx.commit()
            self.stats.round_trips += 1
        if problem:
            return (), problem
        reassigned: list[tuple[str, int]] = []
        try:
            for database, count in owned:
                try:
                    hazards = await self._reassign_in(database, name, inheritor)
                except psycopg.Error as exc:
                    return tuple(reassigned), (
                        f'REASSIGN OWNED in database "{database}" failed: '
                        f"{exc.diag.message_primary} (SQLSTATE {exc.sqlstate})")
                if hazards:
                    return tuple(reassigned), (
                        f'nothing of database "{database}" was reassigned: the user owns '
                        "objects that would run with the objects inheritor's rights ("
                        + "; ".join(hazards) + "); a DBA must review them")
                reassigned.append((database, count))
            return tuple(reassigned), None
        finally:
            if granted:
                stop = Batch(steward=acting.steward)
                stop.add(S.stop_acting_for(name, admin))
                async with self.conns.connection() as conn:
                    await run_script(conn, [(S.BEGIN, None), *stop.script(), (S.COMMIT, None)])

    async def _reassign_in(self, database: str, name: str, inheritor: str) -> list[str]:
        """In one transaction of ``database``: refuse (returning why) if the user owns something
        that runs with its owner's rights, else take everyone else's privileges on what it owns
        and REASSIGN OWNED. All or nothing per database."""
        async with self.conns.connection(database) as conn, \
                locked_transaction(conn, "reassign", self.config.label) as tx:
            async with conn.pipeline():
                # The lock the grants of this user in this database are changed under.
                await tx.begin(lock_key(database + "\x00" + name))
                hazards_cur = await conn.execute(S.OWNER_RIGHTS_HAZARDS, {"name": name})
                others_cur = await conn.execute(S.OTHERS_ON_OWNED, {"name": name})
                hazards = [row[0] for row in await hazards_cur.fetchall()]
                others = await others_cur.fetchall()
            if hazards:
                return hazards  # rolled back by locked_transaction: nothing was changed
            async with conn.pipeline():
                for kind, schema, obj, args, grantee in sorted(others, key=str):
                    await conn.execute(S.revoke_all_from(
                        DbObject(kind, schema, obj, tuple(tuple(a) for a in args or ())),
                        grantee))
                await conn.execute(S.reassign_owned(name, inheritor))
                await tx.commit()
            self.stats.round_trips += 2
            return []

    async def _drop_once(self, name: str, terminated: int, *, lock_on_refusal: bool
                         ) -> Teardown | None:
        async with self.conns.connection() as conn, \
                locked_transaction(conn, "drop", self.config.label) as tx:
            state = await self._begin_locked(tx, name)
            if not state.exists:
                await self._run(tx, Batch(), commit=True)
                return Teardown(name, DROPPED, "user dropped", terminated_backends=terminated)
            if not state.is_managed or state.ledger.live(datetime.now(timezone.utc)):
                # Re-activated by a new session while this teardown ran: leave it.
                await self._run(tx, Batch(), commit=True)
                return Teardown(name, RELEASED, "a new session took over the user before it "
                                "could be dropped", terminated_backends=terminated)
            if state.backends:
                return await self._deactivate(tx, name, state, terminated, (
                    f"the user still has {state.backends} open connection(s); it was "
                    "locked instead of dropped",))
            if await self._drop_at_once(tx, name, state.acting(), None) is None:
                # locked and terminated before
                if not lock_on_refusal:
                    return None
                state = await self._begin_locked(tx, name)
                blockers = await self._drop_blockers(conn, name)
                return await self._deactivate(tx, name, state, terminated, blockers)
            return Teardown(name, DROPPED, "user dropped", terminated_backends=terminated)

    async def _drop_blockers(self, conn, name: str) -> tuple[str, ...]:
        cur = await conn.execute(S.DROP_BLOCKERS, [name])
        self.stats.round_trips += 1
        return tuple(f"{relation} {count} object{'s' if count != 1 else ''} in database "
                     f'"{database}"' for database, relation, count in await cur.fetchall())

    async def _deactivate(self, tx: Transaction, name: str, state: UserState, terminated: int,
                          blockers: tuple[str, ...]) -> Teardown:
        batch = Batch(steward=state.acting())
        batch.add(S.disable_login(name))
        for role in sorted(state.memberships):
            state.revoke(batch, role, name)
        await self._run(tx, batch, commit=True)
        return Teardown(name, DEACTIVATED, "could not drop the user, locked it instead: "
                        + "; ".join(blockers or ("dependent objects exist",)),
                        terminated_backends=terminated, blockers=blockers)

    # -- sweep ---------------------------------------------------------------------------------

    async def sweep(self, live_session_ids: Container[str], *, terminate_connections: bool,
                    revoke_permissions=None, retrying: Retrying | None = None) -> list[Teardown]:
        """End every lease not in ``live_session_ids``, and lock managed users without leases.

        Each user is swept on its own (through ``retrying``, when given): one that fails does not
        keep the others from being swept.

        :raises SweepIncomplete: some users could not be swept; it carries, besides one error
            per such user, the teardowns of the users that were.
        """
        async with self.conns.connection() as conn:
            cur = await conn.execute(S.LEDGER_AND_MEMBERS, {"managed": self.config.managed_role})
            rows = await cur.fetchall()
            self.stats.round_trips += 1
        results: list[Teardown] = []
        failures: list[EngineError] = []
        now = datetime.now(timezone.utc)
        for name, can_login, comment, _memberships in rows:
            async def sweep_user(name: str = name, can_login: bool = can_login,
                                 comment: str | None = comment) -> list[Teardown]:
                ledger = Ledger.parse(comment)
                done: list[Teardown] = []
                dead = [sid for sid in ledger.leases if sid not in live_session_ids]
                for sid in dead:
                    done.append(replace(await self.end_username(
                        name, sid, mode=None, terminate_connections=terminate_connections,
                        revoke_permissions=revoke_permissions, purpose="sweep"), session_id=sid))
                live = [lease for lease in ledger.leases.values()
                        if lease.session_id in live_session_ids and lease.live_at(now)]
                if can_login and not live and not dead:
                    done.append(await self.end_username(
                        name, None, mode=None, terminate_connections=terminate_connections,
                        revoke_permissions=revoke_permissions, purpose="sweep"))
                return done

            doing = f'sweeping user "{name}"'
            try:
                results += await (retrying(doing, sweep_user) if retrying else sweep_user())
            except (psycopg.Error, OSError, TimeoutError, EngineError) as exc:
                failures.append(classify(exc, doing=doing))
        if failures:
            raise SweepIncomplete(results, failures)
        return results


    async def correct_drift(self, live_session_ids) -> list[DriftCorrection]:
        """Strip memberships no live lease granted from users that live sessions hold.

        Runs after the sweep, so that drift on a user in use lives at most one health period.
        Each user is corrected under its lock, from state re-read there; a user whose drift the
        admin cannot revoke (PostgreSQL 16+, granted by someone else) does not stop the others:
        its error is collected and raised once all were looked at.
        """
        async with self.conns.connection() as conn:
            cur = await conn.execute(S.LEDGER_AND_MEMBERS, {"managed": self.config.managed_role})
            rows = await cur.fetchall()
            self.stats.round_trips += 1
        now = datetime.now(timezone.utc)
        implicit = set(self.config.implicit_roles)
        corrections: list[DriftCorrection] = []
        failures: list[EngineError] = []
        for name, _can_login, comment, memberships in rows:
            live = [lease for lease in Ledger.parse(comment).live(now)
                    if lease.session_id in live_session_ids]
            granted = {role for lease in live for role in lease.roles} | implicit
            if not live or not set(memberships) - granted:
                continue
            try:
                correction = await self._correct_user(name, live_session_ids)
            except EngineError as error:
                failures.append(error)
                continue
            if correction is not None:
                corrections.append(correction)
        if failures:
            raise EngineError(failures[0].reason, "; ".join(f.message for f in failures),
                              transient=all(f.transient for f in failures))
        return corrections

    async def _correct_user(self, name: str, live_session_ids) -> DriftCorrection | None:
        return await self._stewarded(lambda: self._correct_user_once(name, live_session_ids))

    async def _correct_user_once(self, name: str, live_session_ids
                                 ) -> DriftCorrection | None:
        async with self.conns.connection() as conn, \
                locked_transaction(conn, "drift", self.config.label) as tx:
            state = await self._begin_locked(tx, name)
            now = datetime.now(timezone.utc)
            live = [lease for lease in state.ledger.live(now)
                    if lease.session_id in live_session_ids]
            granted = tuple(sorted({r for lease in live for r in lease.roles}
                                   | set(self.config.implicit_roles)))
            if not state.is_managed or not live or not state.memberships - set(granted):
                await self._run(tx, Batch(), commit=True)
                return None
            batch = Batch(steward=state.acting(granted))
            drift: list[str] = []
            self._replace_memberships(batch, name, state, granted, drift)
            await self._run(tx, batch, commit=False)
            await self._verify_memberships(conn, name, granted)
            await tx.commit()
            self.stats.round_trips += 1
            return DriftCorrection(name, tuple(drift),
                                   tuple(sorted(lease.session_id for lease in live)))


def _stronger_mode(requested: str, others: list[Lease], current: str) -> str:
    """The mode recorded for the user: the strongest asked for by a live session."""
    order: dict[str, int] = {MODE_KEEP: 1, MODE_DROP: 2, MODE_REASSIGN: 3}
    if not others:
        return requested
    return max((requested, current), key=lambda m: order.get(m, 0))
