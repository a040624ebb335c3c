"""DatabaseSession: the lease lifecycle, from Pending to Active to Ended or Expired.

Handlers only translate: the policy core decides what a session may get, the engine changes
PostgreSQL, the Kubernetes adapter writes the Secret. Every step is idempotent, so a handler that
is retried, or re-run after the operator was killed at any instruction, converges.

The Kopf handlers are here; the work is split by job:

- ``decisions``: the session's Database and what the Roles allow (``Outcome`` when it stops);
- ``approval_gate``: a session that needs approval waits there (``approvals``: the reviews);
- ``passwords``: the password-sharing protocol of sessions that share a PostgreSQL user;
- ``opening``: activating the user and writing the credentials;
- ``slots``: how many sessions of one Database are opened, and ended, at once;
- ``queue``: sessions past those waiting in memory, queued in their status;
- ``ending``: releasing the lease and removing the Secret;
- ``lease_loop``: each Database's loop that ends sessions at expiry or on revocation.
"""

from __future__ import annotations

import logging

import kopf

from .. import GROUP, VERSION
from ..api.session import DatabaseSession
from ..vocabulary import TERMINAL_PHASES, Reason, SessionPhase
from . import metrics
from .decisions import Outcome, apply_outcome
from .ending import end_lease
from .indexes import SESSION_INDEX, session_database
from .opening import open_session
from .queue import is_queued

RESOURCE = (GROUP, VERSION, DatabaseSession.plural)
log = logging.getLogger(__name__)


@kopf.on.resume(*RESOURCE, id="lease")
@kopf.on.create(*RESOURCE, id="lease")  # type: ignore[arg-type]  # index kwargs
@SESSION_INDEX.as_kwargs
async def open_lease(body, name, namespace, uid, patch, memo, databases_by_name,
                     roles_by_namespace, active_sessions_by_user, label_rules_by_namespace,
                     live_sessions_by_id, reviews_by_session, **_):
    phase = body.get("status", {}).get("phase")
    if phase in TERMINAL_PHASES:
        return
    if phase == SessionPhase.ACTIVE:
        # Opened before (this is a resume after a restart, or the operator stopped between
        # writing the status and recording the handler as done). The expiry daemon takes it from
        # here, including an expiry missed while the operator was down; activating again would
        # only churn PostgreSQL for every live session on each restart.
        metrics.ACTIVE_SESSIONS.inc()
        return
    database = session_database(namespace, body.get("spec", {}))
    queued = is_queued(body.get("status", {}))
    if not _.get("poked") and not _.get("retry") and memo.openings.crowded(database):
        _queue(body, patch, database, memo)
        return
    with metrics.reconcile("databasesession") as reconciliation:
        status: dict = {}
        try:
            async with memo.openings.slot(database):
                await open_session(body, name, namespace, uid, memo,
                                   (databases_by_name, roles_by_namespace,
                                    active_sessions_by_user,
                                    label_rules_by_namespace.get(namespace, ()),
                                    live_sessions_by_id), status,
                                   # A queued session was queued before any attempt.
                                   first_attempt=(not body.get("status") or queued)
                                   and not _.get("retry"),
                                   reviews=reviews_by_session.get((namespace, name), ()))
        except Outcome as outcome:
            if outcome.terminal:
                reconciliation.failed_terminally()
            if outcome.release:
                status.update(await end_lease(body, namespace, name, uid, memo,
                                              databases_by_name, reason=outcome.reason))
            apply_outcome(body, status, outcome)
            patch.status.update(status)
            if outcome.retry is not None:
                raise kopf.TemporaryError(outcome.message, delay=outcome.retry)
            return
        patch.status.update(status)
        metrics.ACTIVE_SESSIONS.inc()


def _queue(body, patch, database, memo) -> None:
    """Leave the session queued in its status; its Database's lease loop hands it back."""
    if is_queued(body.get("status", {})):
        return  # already queued (a restart's resume): nothing to write
    log.info("[%s/%s] queued behind the other sessions of Database %s",
             body["metadata"].get("namespace"), body["metadata"].get("name"), database[1])
    status: dict = {}
    apply_outcome(body, status, Outcome(
        SessionPhase.PENDING, Reason.QUEUED,
        f'queued: more than {memo.openings.per_database + (memo.openings.queue or 0)} '
        f'sessions of Database "{database[1]}" are being opened or waiting; it is opened in '
        "its turn, in the order sessions were created"))
    patch.status.update(status)


@kopf.on.delete(*RESOURCE, id="end")  # type: ignore[arg-type]  # index kwargs
async def end_on_delete(body, name, namespace, uid, memo, databases_by_name, **_):
    if body.get("status", {}).get("phase") in (SessionPhase.ENDED, SessionPhase.EXPIRED) and \
            body.get("status", {}).get("teardown"):
        return  # already ended; nothing holds a user any more
    with metrics.reconcile("databasesession"):
        await end_lease(body, namespace, name, uid, memo, databases_by_name, reason="deleted")
