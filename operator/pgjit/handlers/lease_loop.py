"""Each Database's lease loop: expiry, revocation, and the Database's session count."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime

import kopf

from .. import GROUP, VERSION
from ..api.database import Database, DatabaseStatus
from ..api.session import DatabaseSession, DatabaseSessionStatus
from ..core.traits import user_traits
from ..vocabulary import Reason, SessionPhase
from .decisions import (Outcome, database_for, decide, load_traits_data, ready_condition,
                        set_session_conditions, ts, utc_now)
from .approvals import poke_expired_requests
from .ending import end_lease
from .indexes import ActiveSession, body_of, database_in, valid_roles
from .queue import QueuePokes
from .status import written

log = logging.getLogger(__name__)


async def supervise_leases(namespace: str, database_name: str, memo, stopped,
                           active_sessions_by_database, databases_by_name,
                           roles_by_namespace, *, live_sessions_by_database,
                           awaiting_approval=None, unopened_sessions=None,
                           queued_sessions=None) -> None:
    """End a Database's Active sessions at expiresAt, or when no Role allows them any more, and
    keep the Database's ``activeSessions`` (the SESSIONS column) following its sessions; poke
    its sessions whose access request expired while they waited for approval (approvals.py).

    One loop per Database rather than one Kopf daemon per session: the work per tick is a
    pass over the Database's Active sessions in the index, and memory does not grow with a
    task, a stopper and a logger per session. No object can end the loop: one that does not
    parse is skipped (its own status says why), the others go on.
    """
    ending: dict[str, asyncio.Task] = {}
    last_revalidation = time.monotonic()
    allowed = _StillAllowed()
    count = _SessionCount(namespace, database_name)
    pokes = QueuePokes(namespace, database_name)
    while not stopped:
        now = utc_now()
        revalidate = time.monotonic() - last_revalidation >= memo.settings.revalidate_seconds
        traits_data = await load_traits_data(memo) if revalidate else {}
        active: list[ActiveSession] = list(
            active_sessions_by_database.get((namespace, database_name), ()))
        if revalidate:
            allowed.decide_against(database_in(databases_by_name, namespace, database_name),
                                   valid_roles(roles_by_namespace, namespace), traits_data)
        for record in active:
            if record.name in ending:
                continue
            end = _expiry(record, now)
            if end is None and revalidate and not allowed.known(record):
                still_allowed, end = _revalidated(record.parsed(), namespace, databases_by_name,
                                                  roles_by_namespace, traits_data)
                if still_allowed:
                    allowed.remember(record)
            if end is not None:
                ending[record.name] = asyncio.create_task(_finish(
                    record.parsed(), namespace, memo, stopped, databases_by_name, *end))
        if revalidate:
            allowed.keep_only(active)
            last_revalidation = time.monotonic()
        # Forget a finished end only once the index no longer shows the session Active, so
        # one end is never started twice for the same session.
        still_active = {record.name for record in active}
        for name in [n for n, task in ending.items() if task.done() and n not in still_active]:
            ending.pop(name)
        await count.follow(memo, databases_by_name, live_sessions_by_database)
        if queued_sessions is not None:
            await _poke_queued(memo, pokes, queued_sessions)
        if awaiting_approval is not None:
            await _poke_expired_requests(memo, namespace, database_name, awaiting_approval,
                                         unopened_sessions or {}, now)
        await stopped.wait(memo.settings.expiry_tick_seconds)


async def _poke_expired_requests(memo, namespace, database_name, awaiting_approval,
                                 unopened_sessions, now) -> None:
    try:
        await poke_expired_requests(memo, namespace, database_name, awaiting_approval,
                                    unopened_sessions, now)
    except Exception as error:  # noqa: BLE001 - the API server may be away; the next tick retries
        log.warning("[%s/%s] poking sessions whose access request expired failed: %s",
                    namespace, database_name, error)


async def _poke_queued(memo, pokes: QueuePokes, queued_sessions) -> None:
    try:
        await pokes.poke(memo, queued_sessions)
    except Exception as error:  # noqa: BLE001 - the API server may be away; the next tick retries
        log.warning("[%s/%s] handing queued sessions back failed: %s", *pokes.key, error)


class _SessionCount:
    """Writes a Database's ``activeSessions`` when its live sessions change.

    The health check writes it too, but only every health period: a session that ended would
    stay in ``kubectl get pgdb`` for up to a minute. The index says at once; this writes the
    count on the next tick, and only when the Database's status shows another number.
    """

    def __init__(self, namespace: str, database_name: str):
        self.namespace, self.database_name = namespace, database_name
        #: What this loop wrote last, until the Database's status shows it: the watch event
        #: of our own patch arrives a moment later, and until then the index's body is stale.
        self._written: int | None = None

    async def follow(self, memo, databases_by_name, live_sessions_by_database) -> None:
        key = (self.namespace, self.database_name)
        database = database_in(databases_by_name, *key)
        if not isinstance(database, Database):
            return
        live = len(set(live_sessions_by_database.get(key, ())))
        shown = database.status.active_sessions
        if shown == self._written:
            self._written = None  # caught up
        if live == (shown if self._written is None else self._written):
            return
        await memo.kube.patch_status(GROUP, VERSION, Database.plural, self.namespace,
                                     self.database_name,
                                     written(DatabaseStatus, active_sessions=live))
        self._written = live


class _StillAllowed:
    """The Active sessions a revalidation found still allowed, and what they were decided on.

    A decision is a function of the session (whose spec cannot change), its Database, the
    namespace's Roles and the traits ConfigMap, nothing else: no clock. The indexes put a new
    object in place on every change of a Database, a Role or a session (its status included),
    so while the very same objects are there (for the Database, the same of what a decision
    reads of it: ``_decided_on``) a session found allowed is allowed still, and parsing and
    deciding it again (0.075-0.15 ms; at 10,000 Active sessions, 0.75-1.5 s of CPU on every
    revalidation) is skipped. Any other change, even to a Role's status, decides everyone
    again. The objects are held rather than their ids, so a freed object's id never passes for
    a new one.
    Only an allowed session is remembered: one whose decision was not final is decided again.
    """

    def __init__(self) -> None:
        self._inputs: tuple | None = None
        self._sessions: dict[str, ActiveSession] = {}

    def decide_against(self, database, roles: list, traits_data: dict[str, str]) -> None:
        inputs = (database, roles, traits_data)
        if self._inputs is None or not _same_inputs(self._inputs, inputs):
            self._sessions = {}
        self._inputs = inputs

    def known(self, record: ActiveSession) -> bool:
        return self._sessions.get(record.name) is record

    def remember(self, record: ActiveSession) -> None:
        self._sessions[record.name] = record

    def keep_only(self, active: list[ActiveSession]) -> None:
        names = {record.name for record in active}
        self._sessions = {name: record for name, record in self._sessions.items()
                          if name in names}


def _same_inputs(before: tuple, after: tuple) -> bool:
    (database, roles, traits), (database_now, roles_now, traits_now) = before, after
    return (_decided_on(database) == _decided_on(database_now)
            and len(roles) == len(roles_now)
            and all(a is b for a, b in zip(roles, roles_now)) and traits == traits_now)


def _decided_on(database) -> object:
    """What of a Database a revalidation reads (decisions.database_for and decide, the policy
    core): its name, labels, deletion, spec and Ready condition. Not the rest of its status:
    this loop writes ``activeSessions`` on every tick of a burst, and each write put a new
    object in the index, so every revalidation during a burst of 10,000 parsed and decided all
    the Active sessions again (about 1 s of CPU each time). A Database that is missing or does
    not parse decides nothing final, so it is compared as it is."""
    if not isinstance(database, Database):
        return database
    ready = ready_condition(database)
    metadata = database.metadata
    return (metadata.name, metadata.labels, metadata.deletion_timestamp, database.spec,
            None if ready is None else (ready.status, ready.reason))


def _expiry(record: ActiveSession, now: datetime) -> tuple[str, str, str] | None:
    expires_at = record.expires_at
    if expires_at is not None and expires_at <= now:
        return (SessionPhase.EXPIRED, Reason.EXPIRED, f"the session expired at {ts(expires_at)}")
    return None


def _revalidated(session: DatabaseSession, namespace, databases_by_name, roles_by_namespace,
                 traits_data) -> tuple[bool, tuple[str, str, str] | None]:
    """Whether an Active session is still allowed, and how it ends if no Role allows it any
    more. A decision that is not final (neither) leaves it Active and is made again."""
    try:
        # A Database being deleted waits for its sessions; it does not end them.
        database = database_for(databases_by_name, namespace, session.spec.database_ref.name,
                                opening=False)
        decide(session, database, roles_by_namespace, namespace,
               user_traits(traits_data, session.spec.user))
    except Outcome as outcome:
        if outcome.terminal:
            return False, (SessionPhase.ENDED, Reason.ACCESS_REVOKED,
                           f"access was revoked: {outcome.message}")
        return False, None
    return True, None


async def _finish(session: DatabaseSession, namespace, memo, stopped, databases_by_name, phase,
                  reason, message):
    body = body_of(session)
    name, uid = body["metadata"]["name"], body["metadata"]["uid"]
    attempt = 0
    while True:
        try:
            status = await end_lease(body, namespace, name, uid, memo, databases_by_name,
                                     reason=reason)
            break
        except kopf.TemporaryError as error:
            kopf.warn(body, reason=Reason.END_FAILED, message=str(error))
            await stopped.wait(min(60, 2 ** min(attempt, 6)))
            attempt += 1
            if stopped:
                return  # the operator is stopping; the daemon starts again with it
    status.update(written(DatabaseSessionStatus, phase=phase))
    # Stalled, not merely not-ready: the lease will not progress again until a person deletes
    # (and re-creates) the session. kstatus then reports Failed, so a Flux `wait` on a session
    # in Git fails at once instead of timing out on an InProgress that can never change.
    set_session_conditions(body, status, False, reason, message, terminal=True)
    await memo.kube.patch_status(GROUP, VERSION, DatabaseSession.plural, namespace, name,
                                 status)
