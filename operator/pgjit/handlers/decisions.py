"""What opening and revalidating a session decide, before anything is changed.

``Outcome`` is a decided end state of one reconciliation (the phase, reason and message to
write); the functions here find the session's Database and decide what the Roles allow, raising
an ``Outcome`` when the session cannot go on. Shared by opening (opening.py) and the lease loop
(lease_loop.py).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

import kopf

from ..api.database import Database
from ..api.session import DatabaseSession, DatabaseSessionStatus
from ..core import policy
from ..core.conditions import rfc3339
from ..core.traits import user_traits
from ..vocabulary import TERMINAL_PHASES, Reason, SessionPhase
from .status import set_conditions, written
from .indexes import Unparsed, database_in, valid_roles

log = logging.getLogger(__name__)
#: Seconds between looks at a Database a session is waiting for (missing, suspended, not ready).
DATABASE_WAIT = 10.0


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


#: A status timestamp, as the API server writes metav1.Time (the rule lives in core.conditions).
ts = rfc3339


def to_second(value: datetime) -> datetime:
    """A time as status shows it: metav1.Time keeps whole seconds."""
    return value.replace(microsecond=0)


def parse_ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class Outcome(Exception):
    """A decided end state of one reconciliation, carrying the status to write."""

    def __init__(self, phase: SessionPhase | None, reason: str, message: str, *,
                 retry: float | None = None, terminal: bool = False, release: bool = False):
        super().__init__(message)
        self.phase, self.reason, self.message = phase, reason, message
        self.retry, self.terminal = retry, terminal
        # The session may hold a lease in PostgreSQL (or a Secret) that must be ended with it.
        self.release = release


async def all_of(calls) -> None:
    """Run independent API calls at once, and let every one finish before raising the first
    failure: a call still in flight could otherwise create an object after the clean-up that
    the failure triggers has already looked for it."""
    for result in await asyncio.gather(*calls, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


def set_session_conditions(body, status: dict, ready: bool, reason: str, message: str, *,
                    terminal: bool = False) -> None:
    set_conditions(body, status, ready, reason, message, stalled=terminal)


def apply_outcome(body, status: dict, outcome: Outcome) -> None:
    if outcome.phase:
        status.update(written(DatabaseSessionStatus, phase=outcome.phase))
    if outcome.phase in TERMINAL_PHASES and "endedAt" not in status:
        status.update(written(DatabaseSessionStatus, ended_at=to_second(utc_now())))
    set_session_conditions(body, status, False, outcome.reason, outcome.message,
                    terminal=outcome.terminal or outcome.phase in (SessionPhase.EXPIRED,
                                                                      SessionPhase.ENDED))


def ready_condition(database: Database):
    """A parsed Database's Ready condition, if it has one."""
    return next((c for c in database.status.conditions or () if c.type == "Ready"), None)


def database_for(databases_by_name, namespace: str, name: str, *, opening: bool = True) -> Database:
    """The session's Database, if sessions can be opened on it (``opening``) or at all."""
    database = database_in(databases_by_name, namespace, name)
    if database is None:
        raise Outcome(SessionPhase.PENDING, Reason.DATABASE_NOT_READY,
                      f'Database "{name}" does not exist in namespace "{namespace}"',
                      retry=DATABASE_WAIT)
    if isinstance(database, Unparsed):
        raise Outcome(SessionPhase.PENDING, Reason.DATABASE_NOT_READY,
                      f'Database "{name}" is invalid ({database.problem}); the session waits '
                      "until it is corrected", retry=DATABASE_WAIT)
    if opening and database.metadata.deletion_timestamp:
        raise Outcome(SessionPhase.FAILED, Reason.DATABASE_NOT_READY,
                      f'Database "{name}" is being deleted; no new sessions are opened on it',
                      terminal=True)
    ready = ready_condition(database)
    if database.spec.suspended:
        raise Outcome(SessionPhase.PENDING, Reason.DATABASE_NOT_READY,
                      f'Database "{name}" is suspended; the session waits until it is resumed',
                      retry=DATABASE_WAIT)
    if ready is not None and ready.status != "True" and ready.reason in (
            Reason.READ_ONLY, Reason.INSUFFICIENT_PRIVILEGE, Reason.AUTHENTICATION_FAILED,
            Reason.UNREACHABLE):
        raise Outcome(SessionPhase.PENDING, Reason.DATABASE_NOT_READY,
                      f'Database "{name}" is not ready ({ready.reason}): '
                      f'{ready.message}', retry=DATABASE_WAIT)
    return database


async def load_traits_data(memo: kopf.Memo) -> dict[str, str]:
    """The traits ConfigMap's data (user name -> YAML map of lists), if one is configured."""
    ref = memo.settings.traits_configmap_ref
    if ref is None:
        return {}
    return await memo.kube.read_configmap(*ref) or {}


async def traits_of(memo: kopf.Memo, user: str) -> dict[str, list[str]]:
    return user_traits(await load_traits_data(memo), user)


def decide(session: DatabaseSession, database: Database, roles_by_namespace, namespace: str,
            traits) -> "policy.Decision":
    decision = policy.evaluate(session.spec, database, valid_roles(roles_by_namespace, namespace),
                               internal_traits=traits)
    if not decision.allowed:
        raise Outcome(SessionPhase.FAILED, decision.reason, decision.message, terminal=True)
    allow_list = database.spec.databases
    if allow_list and session.spec.database_name not in allow_list:
        raise Outcome(SessionPhase.FAILED, Reason.ACCESS_DENIED,
                      f'database "{session.spec.database_name}" is not in Database '
                      f'"{database.metadata.name}" spec.databases', terminal=True)
    return decision
