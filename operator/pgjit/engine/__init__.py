"""The provisioning engine: PostgreSQL users for sessions, and nothing about Kubernetes.

``Engine`` is the one entry point. It owns the admin connections of one server, validates
requests before touching the database, retries transient failures with jittered backoff (every
operation is idempotent), and leaves nothing half-done when a later step of an activation fails.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Awaitable, Callable, Container, Iterable, TypeVar

import psycopg

from ..core.leases import MODE_DROP, MODE_KEEP, MODE_REASSIGN, MODES
from ..core.naming import postgres_username
from .config import ServerConfig
from .connections import AdminConnections
from .errors import EngineError, classify
from ..vocabulary import Reason
from .grants import ObjectGrants
from .preflight import Preflight, run_preflight
from .results import Activation, ActivationRequest, DriftCorrection, Teardown
from .transactions import locked_transaction
from .users import ManagedRoleMissing, SweepIncomplete, UserLifecycle, lock_key
from . import statements as S

__all__ = ["Engine", "ServerConfig", "ActivationRequest", "Activation", "Teardown", "Preflight",
           "DriftCorrection", "SweepIncomplete",
           "EngineError", "RetryPolicy"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    base_delay: float = 0.05
    max_delay: float = 1.0
    #: No attempt starts this many seconds after the first: retries are for failures that come
    #: fast (a refused connection, a serialization failure). A server that stopped answering
    #: fails each attempt only at the connect timeout, and eight of those kept a handler, and
    #: the deletion of its Database behind it, waiting for 85 s; Kopf retries the handler later.
    budget: float = 5.0

    def delay(self, attempt: int) -> float:
        # Full jitter: concurrent writers that collided do not collide again in lockstep.
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** attempt))


@dataclass
class EngineStats:
    round_trips: int = 0
    retries: int = 0
    counters: dict = field(default_factory=dict)


class Engine:
    def __init__(self, config: ServerConfig, *, retry: RetryPolicy = RetryPolicy()):
        self.config = config
        self.retry = retry
        self.stats = EngineStats()
        self._conns = AdminConnections(config)
        self._users = UserLifecycle(self._conns, self.stats)
        self._grants = ObjectGrants(self._conns, self.stats)

    async def close(self) -> None:
        await self._conns.close()

    @property
    def admin_refused(self) -> bool:
        """Whether the server refused the admin's last login attempt (a rotated password)."""
        return self._conns.refused is not None

    async def __aenter__(self) -> "Engine":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _retrying(self, doing: str, operation: Callable[[], Awaitable[T]]) -> T:
        started = time.monotonic()
        for attempt in range(self.retry.attempts):
            try:
                return await operation()
            except SweepIncomplete:
                raise  # each failed user was retried already, on its own
            except (psycopg.Error, OSError, TimeoutError, EngineError) as exc:
                error = classify(exc, doing=doing)
                if (not error.transient or attempt == self.retry.attempts - 1
                        or time.monotonic() - started >= self.retry.budget):
                    if error is exc:
                        raise
                    raise error from exc
                self.stats.retries += 1
                log.debug("Retrying %s after a transient error (%s)", doing, error.sqlstate)
                await asyncio.sleep(self.retry.delay(attempt))
        raise AssertionError("unreachable")

    # -- server ------------------------------------------------------------------------------

    async def preflight(self, databases: Iterable[str] = (), roles: Iterable[str] = (),
                        *, terminate_connections: bool = True) -> Preflight:
        """Inspect the server on a fresh connection, so a refused login shows its real cause.

        :raises EngineError: the server cannot be reached or refuses the admin (Unreachable,
            AuthenticationFailed, …), after retrying transient failures. What the admin lacks
            is not an error: it is in the returned :class:`Preflight`.
        """
        async def run() -> Preflight:
            conn = await self._conns.connect()
            try:
                return await run_preflight(
                    conn, admin_user=self.config.admin_user, managed_role=self.config.managed_role,
                    databases=tuple(databases), roles=tuple(roles),
                    required_roles=self.config.implicit_roles,
                    objects_inheritor=self.config.objects_inheritor,
                    terminate_connections=terminate_connections)
            finally:
                await conn.close()
        return await self._retrying("preflight", run)

    async def ensure_managed_role(self) -> bool:
        """Create the bookkeeping role if missing; True when it was created.

        :raises EngineError: InsufficientPrivilege (no CREATEROLE), ReadOnly, Unreachable, …
        """
        async def run() -> bool:
            async with self._conns.connection() as conn:
                try:
                    async with locked_transaction(conn, "managed-role",
                                                  self.config.label) as tx:
                        async with conn.pipeline():
                            await tx.begin(lock_key(self.config.managed_role))
                            cur = await conn.execute(S.MANAGED_ROLE_EXISTS,
                                                     [self.config.managed_role])
                            exists = await cur.fetchone() is not None
                        if not exists:
                            await conn.execute(S.create_managed_role(self.config.managed_role))
                        await tx.commit()
                        return not exists
                except psycopg.errors.DuplicateObject:
                    # Created at this moment by something that does not take pgjit's lock.
                    return False
        return await self._retrying("ensuring the managed role", run)

    # -- sessions ----------------------------------------------------------------------------

    def _validate(self, request: ActivationRequest) -> None:
        if request.mode not in MODES or request.mode not in (MODE_KEEP, MODE_DROP,
                                                             MODE_REASSIGN):
            raise EngineError(Reason.INVALID_REQUEST, f'user provisioning mode "{request.mode}" does not '
                              "create users; use keep, best_effort_drop or "
                              "best_effort_reassign_and_drop")
        if request.roles and request.permissions:
            raise EngineError(Reason.INVALID_REQUEST, (
                "fine-grained database permissions and database roles are mutually exclusive, "
                "yet both were provided"))
        if request.expires_at <= datetime.now(timezone.utc):
            raise EngineError(Reason.INVALID_REQUEST, "the session's expiry is in the past")
        postgres_username(request.identity)  # raises on identities PostgreSQL cannot hold

    async def activate(self, request: ActivationRequest) -> Activation:
        """Create or re-activate the user for one session and grant what it may use.

        :raises EngineError: InvalidRequest (a bad request, before any database work),
            UserConflict (a role of that name that pgjit does not manage), RolesChanged (other
            live sessions hold the user with other roles or permissions), PrivilegedRole,
            MissingDatabaseRole, InsufficientPrivilege, DatabaseNotFound, ReadOnly, Unreachable.
            Transient ones only after retrying; nothing is left half-done.
        """
        self._validate(request)

        async def activate_user() -> Activation:
            try:
                return await self._users.activate(request)
            except ManagedRoleMissing:
                await self.ensure_managed_role()
                return await self._users.activate(request)
        if request.permissions and request.database != self.config.admin_database:
            # The permissions are applied in the session's database after the user is active;
            # make sure the admin can get in there first, so a refusal leaves nothing behind.
            await self._retrying("connecting to the session's database",
                                 self._can_connect(request.database))
        activation = await self._retrying("activating the user", activate_user)
        if not request.permissions:
            return activation
        try:
            summary, drift = await self._retrying(
                "granting object permissions", lambda: self._grants.apply(
                    activation.username, request.database, request.permissions,
                    request.session_id))
        except EngineError:
            # Nothing half-done: release this session's hold before reporting the failure.
            await self.end(request.identity, request.session_id, mode=request.mode,
                           terminate_connections=False)
            raise
        return replace(activation, permissions_summary=summary,
                       drift=activation.drift + drift)

    def _can_connect(self, dbname: str):
        async def check() -> None:
            async with self._conns.connection(dbname):
                pass
        return check

    async def end(self, identity: str, session_id: str | None, *, mode: str | None = None,
                  terminate_connections: bool = True) -> Teardown:
        """End one session's hold on its user; idempotent, including for vanished users.

        :raises EngineError: the server cannot be reached, or the admin may not change the
            user (InsufficientPrivilege), after retrying transient failures; ending again
            later finishes what was started.
        """
        return await self._retrying("ending the session", lambda: self._users.end(
            identity, session_id, mode=mode, terminate_connections=terminate_connections,
            revoke_permissions=self._revoke))

    async def _revoke(self, name: str, database: str) -> None:
        await self._retrying("revoking object permissions",
                             lambda: self._grants.revoke(name, database))

    async def sweep(self, live_session_ids: Iterable[str] | Container[str], *,
                    terminate_connections: bool = True) -> list[Teardown]:
        """End the leases of sessions that no longer exist, and lock users left enabled.

        ``live_session_ids`` may be a live view (any container): it is asked about each lease
        only after the leases were read, so a session opened while the sweep runs is not
        mistaken for a dead one.

        :raises SweepIncomplete: some users could not be swept (each retried on its own); it
            carries the teardowns of those that were.
        :raises EngineError: the managed users could not be read at all.
        """
        live = live_session_ids if isinstance(live_session_ids, Container) \
            else set(live_session_ids)
        # Retried per user (inside), not as a whole: a retry of the whole sweep would forget
        # the users already swept, and with them the Secrets their sessions left behind.
        return await self._retrying("sweeping managed users", lambda: self._users.sweep(
            live, terminate_connections=terminate_connections, revoke_permissions=self._revoke,
            retrying=self._retrying))

    async def correct_drift(self, live_session_ids: Container[str]) -> list[DriftCorrection]:
        """Strip, from users live sessions hold, memberships no lease granted (see users.py).

        :raises EngineError: for the users whose drift could not be removed, once every user
            was looked at (one error, naming each).
        """
        return await self._retrying("correcting drift", lambda: self._users.correct_drift(
            live_session_ids))

    async def check_writable(self) -> None:
        """:raises EngineError: ReadOnly on a standby or reader endpoint, or what
        :meth:`preflight` raises."""
        pre = await self.preflight()
        if pre.read_only:
            raise EngineError(Reason.READ_ONLY, "the server is read-only (a standby or a reader endpoint);"
                              " point the Database at the primary")
