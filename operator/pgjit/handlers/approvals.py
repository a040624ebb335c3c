"""Reviews: what wakes a session that waits for approval (the gate is approval_gate.py).

A session that needs approval is opened by the same handler as any other; the gate stops it
while it waits and the handler is done. Two things bring it back, each by changing the session's
``approval.pgjit.dev/check`` annotation, which the ``approval`` update handler below watches:

- a review of it is created (or deleted): the event handler on reviews writes a digest of the
  session's reviews, so the same reviews never poke twice (a restart lists them all again);
- its deadline passes: the lease loop of the session's Database (lease_loop.py) pokes it once
  ``status.approval.deadline`` is behind it (:func:`poke_expired_requests`). Not a Kopf daemon
  per session: a kind with daemons makes Kopf keep every object's latest body in memory, and
  check its daemons on every event of every session, waiting or not.

The handler then re-runs the opening, which re-reads every review from the index: one writer
of the session's status (Kopf serializes one object's handlers), and no state in memory. The
operator only reads reviews (list, watch): Kopf writes nothing onto an object that has only
index and event handlers.

The annotation is not under ``pgjit.dev/``: should Kopf's bookkeeping move back to annotations
with that prefix, Kopf would leave it out of the diff that update handlers see.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Awaitable, cast

import kopf

from .. import GROUP, VERSION
from ..api.review import DatabaseSessionReview
from ..api.session import DatabaseSession
from ..vocabulary import TERMINAL_PHASES, Reason, SessionPhase
from . import metrics
from .approval_gate import review_entry
from .decisions import parse_ts
from .queue import is_queued
from .sessions import open_lease
from .indexes import SESSION_INDEX
from .triggers import index

log = logging.getLogger(__name__)
SESSIONS = (GROUP, VERSION, DatabaseSession.plural)
REVIEWS = (GROUP, VERSION, DatabaseSessionReview.plural)
CHECK_ANNOTATION = "approval.pgjit.dev/check"
#: Past the deadline by this much before poking: creation timestamps have whole seconds.
DEADLINE_MARGIN = timedelta(seconds=0.05)


@index(*REVIEWS)
def reviews_by_session(namespace, name, uid, spec, meta, **_):
    """Reviews per (namespace, session name): what the gate counts."""
    session = (spec.get("sessionRef") or {}).get("name")
    if not session:
        return {}
    return {(namespace, session): review_entry(namespace, name, uid, spec, meta)}


def _awaiting(status) -> bool:
    ready: dict = next((c for c in status.get("conditions") or () if c.get("type") == "Ready"), {})
    return status.get("phase") == SessionPhase.PENDING and \
        ready.get("reason") == Reason.AWAITING_APPROVAL


@SESSION_INDEX.part()
def unopened_sessions(namespace, name, uid, status, meta, **_):
    """Sessions a review may still decide: neither Active nor over, nor being deleted."""
    if status.get("phase") in TERMINAL_PHASES or status.get("phase") == SessionPhase.ACTIVE \
            or meta.get("deletionTimestamp"):
        return {}
    return {(namespace, name): {"uid": uid,
                                "check": (meta.get("annotations") or {}).get(CHECK_ANNOTATION)}}


@dataclass(frozen=True)
class Waiting:
    """A session waiting for approval: its Database (whose lease loop watches the deadline)
    and the deadline its gate wrote (None until it has)."""

    database: str | None
    deadline: str | None


@SESSION_INDEX.part(listed=True)
def awaiting_approval(namespace, name, spec, status, **_):
    """Sessions waiting for approval, one key each: the gauge is the index's length."""
    if not _awaiting(status):
        return {}
    return {(namespace, name): Waiting((spec.get("databaseRef") or {}).get("name"),
                                       (status.get("approval") or {}).get("deadline"))}


def _deadline_check(deadline: str) -> str:
    return f"deadline:{deadline}"


def expired_requests(awaiting_approval, unopened_sessions, namespace: str, database: str,
                     now: datetime) -> list[tuple[str, str]]:
    """The waiting sessions of a Database whose deadline has passed and that were not poked for
    it yet: (session name, the check to write)."""
    due = []
    for (ns, name), entries in list(awaiting_approval.items()):
        waiting = next(iter(entries), None)
        if ns != namespace or waiting is None or waiting.database != database or \
                not waiting.deadline or parse_ts(waiting.deadline) + DEADLINE_MARGIN > now:
            continue
        check = _deadline_check(waiting.deadline)
        target = next(iter(unopened_sessions.get((ns, name), ())), None)
        if target is not None and target["check"] != check:
            due.append((name, check))
    return due


async def poke_expired_requests(memo, namespace: str, database: str, awaiting_approval,
                                unopened_sessions, now: datetime) -> None:
    """Poke each waiting session of the Database whose request expired: its gate then fails it
    (``ApprovalExpired``). The poke is the annotation, so a session is poked once per deadline
    (a restart sees the annotation in the index)."""
    for name, check in expired_requests(awaiting_approval, unopened_sessions, namespace,
                                        database, now):
        await memo.kube.annotate(*SESSIONS, namespace, name, {CHECK_ANNOTATION: check})


def reviews_digest(entries) -> str:
    """Changes whenever a session's set of reviews does, and only then."""
    names = sorted(f"{entry.get('name')}/{entry.get('uid')}" for entry in entries)
    return "reviews:" + hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


@kopf.on.event(*REVIEWS)  # type: ignore[arg-type]  # index kwargs
@SESSION_INDEX.as_kwargs
async def review_changed(namespace, spec, memo, reviews_by_session, unopened_sessions, **_):
    """Poke the session a review names, if a review can still decide it."""
    session = (spec.get("sessionRef") or {}).get("name")
    target = next(iter(unopened_sessions.get((namespace, session), ())), None)
    if target is None:
        return
    check = reviews_digest(reviews_by_session.get((namespace, session), ()))
    if target["check"] == check:
        return
    await memo.kube.annotate(*SESSIONS, namespace, session, {CHECK_ANNOTATION: check})


@kopf.on.update(*SESSIONS, id="approval", field=("metadata", "annotations", CHECK_ANNOTATION))
async def reconsider(body, **kwargs):
    """A waiting session was poked: open it, fail it, or let it wait on (the gate decides);
    a queued one was handed back by its Database's lease loop (queue.py): open it."""
    status = body.get("status") or {}
    if is_queued(status) or kwargs.get("retry"):
        # Queued: the loop poked no more than the slots and their queue have room for. A
        # retry: this handler's own opening failed (the server away) and left the session
        # Pending for that error, neither waiting nor queued; it is opened all the same.
        await cast(Awaitable[object], open_lease(body=body, poked=True, **kwargs))
        return
    if not _awaiting(status):
        return  # opened, ended or still being opened by its create handler
    # The same handler as on creation (Kopf's decorator hides that it is a coroutine).
    await cast(Awaitable[object], open_lease(body=body, **kwargs))


@kopf.on.startup()  # type: ignore[arg-type]  # index kwargs
@SESSION_INDEX.as_kwargs
async def count_waiting(awaiting_approval, **_):
    """The gauge reads the index's length at each scrape (from the metrics server's thread,
    where ``len`` of the index's dict is safe): no count to keep in step."""
    metrics.AWAITING_APPROVAL.set_function(lambda: len(awaiting_approval))
