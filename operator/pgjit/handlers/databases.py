"""Database: connect, preflight, keep the bookkeeping role, report health, sweep leftovers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

import kopf

from .. import GROUP, VERSION
from ..api.database import AdminPrivileges, Database, DatabaseStatus
from ..core.policy import bound_violations, roles_granted_on
from ..core.credentials_secret import SESSION_LABEL, session_label_value
from ..engine import EngineError, SweepIncomplete
from ..settings import Settings
from ..vocabulary import Reason
from . import metrics
from .triggers import on_spec
from .indexes import SESSION_INDEX, valid_roles
from .lease_loop import supervise_leases
from .opening import report_drift
from .status import set_conditions, written

RESOURCE = (GROUP, VERSION, Database.plural)
log = logging.getLogger(__name__)
#: Seconds between checks whether a Database being deleted has no sessions left.
RELEASE_RETRY = 5.0


def _live_sessions(index, namespace: str, name: str) -> set[str]:
    return set(index.get((namespace, name), ()))


class LiveSessions:
    """Whether a session id holds a live lease, read from the index at the moment of asking.

    The sweep reads the users' leases from PostgreSQL and only then asks about each one, so a
    session created (and activated) after the sweep started is seen as live: a snapshot taken
    before would call its brand-new lease dead and lock the user under it. Every Database's
    sessions count, not only this one's: several Database objects may point at one server and
    managed role, and a session id (namespace/name/uid) is unique anyway.
    """

    def __init__(self, live_sessions_by_id):
        self._index = live_sessions_by_id

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._index


def _session_object(session_id: str) -> dict | None:
    """Enough of a session for an Event, from its lease id (namespace/name/uid)."""
    namespace, _, rest = session_id.partition("/")
    name, _, uid = rest.rpartition("/")
    if not (namespace and name and uid):
        return None
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatabaseSession",
            "metadata": {"namespace": namespace, "name": name, "uid": uid}}


async def _check(body, namespace: str, name: str, patch: kopf.Patch, memo: kopf.Memo,
                 live_sessions_by_database, live_sessions_by_id, roles_by_namespace, *,
                 refresh: bool,
                 sweep: bool, reconciliation: metrics.Reconciliation) -> None:
    database = Database.model_validate(body)
    generation = body.get("metadata", {}).get("generation")
    live = _live_sessions(live_sessions_by_database, namespace, name)
    patch.status.update(written(DatabaseStatus, active_sessions=len(live),
                                observed_generation=generation))

    def report(ready: bool, reason: str, message: str, *, stalled: bool = False,
               settled: bool = False) -> None:
        if stalled:
            reconciliation.failed_terminally()
        set_conditions(body, patch.status, ready, reason, message, stalled=stalled,
                       settled=settled)

    try:
        engine = await memo.engines.engine_for(database, namespace, refresh=refresh)
        roles = valid_roles(roles_by_namespace, namespace)
        patch.status.update(written(DatabaseStatus, policy_violations=[
            {"role": v.role, "kind": v.kind, "name": v.name, "reason": v.reason}
            for v in bound_violations(database, roles)[:256]] or None))
        pre = await engine.preflight(databases=database.spec.databases or (),
                                     roles=roles_granted_on(database, roles),
                                     terminate_connections=database.spec.terminate_connections)
    except EngineError as error:
        report(False, error.reason, error.message, stalled=not error.transient)
        retry = 30 if error.transient else 120
        raise kopf.TemporaryError(error.message, delay=min(memo.settings.health_seconds, retry))

    patch.status.update(written(
        DatabaseStatus, server_version=pre.server_version, read_only=pre.read_only,
        admin_privileges=AdminPrivileges(
            superuser=pre.admin_is_superuser, create_role=pre.admin_can_create_roles,
            signal_backend=pre.can_signal_backends,
            # Not a reason to refuse every session: only those given these roles fail, each
            # with the GRANT in its message. Listed here so a DBA sees it before anyone asks.
            roles_without_admin_option=list(pre.roles_without_admin_option[:256]),
            summary="; ".join(pre.summary())[:4096])))
    if pre.read_only:
        report(False, Reason.READ_ONLY, "the server is read-only (a standby or a reader "
               "endpoint); point spec.host at the primary", stalled=True)
        return
    if pre.missing_databases:
        report(False, Reason.DATABASE_NOT_FOUND, "databases listed in spec.databases do not exist: "
               + ", ".join(pre.missing_databases), stalled=True)
        return
    if pre.shortfalls:
        report(False, Reason.INSUFFICIENT_PRIVILEGE, "; ".join(str(s) for s in pre.shortfalls),
               stalled=True)
        return
    try:
        await engine.ensure_managed_role()
        if sweep:
            incomplete: SweepIncomplete | None = None
            try:
                teardowns = await engine.sweep(
                    LiveSessions(live_sessions_by_id),
                    terminate_connections=database.spec.terminate_connections)
            except SweepIncomplete as error:
                # The users that were swept are reported (and their Secrets removed) before
                # the ones that were not make the Database not ready.
                teardowns, incomplete = error.teardowns, error
            for teardown in teardowns:
                kopf.event(body, type="Normal", reason=Reason.USER_SWEPT,
                           message=f'user "{teardown.username}": {teardown.action}: '
                                   f"{teardown.reason}")
                if teardown.session_id:
                    await _remove_secrets_of(memo, teardown.session_id)
            if incomplete is not None:
                raise incomplete
            await _correct_drift(body, engine, live_sessions_by_id)
    except EngineError as error:
        report(False, error.reason, error.message, stalled=not error.transient)
        raise kopf.TemporaryError(error.message, delay=min(memo.settings.health_seconds, 30))
    if database.spec.suspended:
        report(False, Reason.SUSPENDED, "spec.suspended is true: no new sessions are opened; "
               "ending sessions still works", settled=True)
        return
    report(True, Reason.CONNECTED,
           f"PostgreSQL {pre.server_version}; the admin can provision users")


async def _correct_drift(body, engine, live_sessions_by_id) -> None:
    """Strip what no session granted from users in use; a failure here is the DBA's to fix and
    does not make the Database unhealthy, so it is reported as a Warning, not raised."""
    try:
        corrections = await engine.correct_drift(LiveSessions(live_sessions_by_id))
    except EngineError as error:
        kopf.warn(body, reason=Reason.DRIFT_NOT_CORRECTED, message=error.message[:1000])
        return
    for correction in corrections:
        metrics.DRIFT_CORRECTED.labels("sweep").inc()
        for session in filter(None, map(_session_object, correction.session_ids)):
            report_drift(session, correction.username, correction.removed)


async def _remove_secrets_of(memo: kopf.Memo, session_id: str) -> None:
    """The credentials Secret of a session that is gone (its lease was just swept).

    A session deleted before the operator's finalizer took hold is removed without the delete
    handler ever running; a garbage collector would delete the Secret it owns, but not every
    cluster runs one and the credentials must not outlive the session.
    """
    namespace, _, rest = session_id.partition("/")
    name, _, uid = rest.rpartition("/")
    if not (namespace and name and uid):
        return
    selector = f"{SESSION_LABEL}={session_label_value(name)}"
    for secret in await memo.kube.delete_owned_secrets(namespace, selector, uid):
        if memo.settings.secret_access:
            await memo.kube.revoke_secret_access(namespace, secret, uid)
        log.info("[%s/%s] deleted Secret %s of the swept session", namespace, name, secret)


@on_spec(*RESOURCE, id="connect")
@SESSION_INDEX.as_kwargs
async def connect(body, namespace, name, patch, memo, live_sessions_by_database,
                  live_sessions_by_id, roles_by_namespace, **_):
    with metrics.reconcile("database") as reconciliation:
        await _check(body, namespace, name, patch, memo, live_sessions_by_database,
                     live_sessions_by_id, roles_by_namespace, refresh=True, sweep=False,
                     reconciliation=reconciliation)


async def health(body, namespace, name, patch, memo, live_sessions_by_database,
                 live_sessions_by_id, roles_by_namespace, stopped, **_):
    """Re-check reachability and privileges, and end users no live session holds (crash safety).

    Given up when the Database is deleted: a check waiting on a server that stopped answering
    (connect timeouts, retried) would otherwise hold the finalizer for a minute or more.
    """
    with metrics.reconcile("database") as reconciliation:
        await _unless_stopped(stopped, _check(
            body, namespace, name, patch, memo, live_sessions_by_database, live_sessions_by_id,
            roles_by_namespace, refresh=True, sweep=True, reconciliation=reconciliation))


async def _unless_stopped(stopped, work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` until it ends or ``stopped`` is set, whichever comes first."""
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if not task.cancelled():
        task.result()


def register(settings: Settings) -> None:
    """The health timer, every ``settings.health_seconds`` (see handlers.register)."""
    kopf.timer(*RESOURCE, id="health", interval=settings.health_seconds,
               initial_delay=settings.health_seconds)(SESSION_INDEX.as_kwargs(health))  # type: ignore[arg-type]  # index kwargs


@kopf.on.delete(*RESOURCE, id="release")  # type: ignore[arg-type]  # index kwargs
@SESSION_INDEX.as_kwargs
async def release(body, namespace, name, patch, memo, live_sessions_by_database, **_):
    live = _live_sessions(live_sessions_by_database, namespace, name)
    # Only a change is written. While a daemon or timer is still exiting, Kopf skips its
    # wait for them after any patch, counting on the patch's watch event to wake it; a patch
    # that changes nothing raises no event, and the finalizer then stayed for good.
    if (body.get("status") or {}).get("activeSessions") != len(live):
        patch.status.update(written(DatabaseStatus, active_sessions=len(live)))
    if live:
        message = (f"deletion waits: {len(live)} DatabaseSession(s) still use this Database; it "
                   "is deleted once they have ended (delete them to end them now)")
        set_conditions(body, patch.status, False, Reason.SESSIONS_ACTIVE, message)
        raise kopf.TemporaryError(message, delay=RELEASE_RETRY)
    await memo.engines.forget(namespace, name)


@kopf.daemon(*RESOURCE, id="leases", cancellation_timeout=10.0)  # type: ignore[arg-type]  # index kwargs
@SESSION_INDEX.as_kwargs
async def leases(namespace, name, memo, stopped, active_sessions_by_database, databases_by_name,
                 roles_by_namespace, live_sessions_by_database, awaiting_approval,
                 unopened_sessions, queued_sessions, **_):
    """Ends this Database's sessions at expiry and when access is revoked, keeps its
    ``activeSessions`` current, and expires its sessions' access requests (see sessions.py)."""
    await supervise_leases(namespace, name, memo, stopped, active_sessions_by_database,
                           databases_by_name, roles_by_namespace,
                           live_sessions_by_database=live_sessions_by_database,
                           awaiting_approval=awaiting_approval,
                           unopened_sessions=unopened_sessions,
                           queued_sessions=queued_sessions)
