"""Database: connect, preflight, keep the bookkeeping role, report health, sweep leftovers."""

from __future__ import annotations

import kopf

from .. import GROUP, VERSION
from ..api.database import Database
from ..core import conditions
from ..engine import EngineError
from . import metrics

RESOURCE = (GROUP, VERSION, "databases")
HEALTH_INTERVAL = 60.0


def _live_sessions(index, namespace: str, name: str) -> set[str]:
    return set(index.get((namespace, name), ()))


async def _check(body, namespace: str, name: str, patch: kopf.Patch, memo: kopf.Memo,
                 live_sessions_by_database, *, refresh: bool, sweep: bool) -> None:
    database = Database.model_validate(body)
    previous = body.get("status", {}).get("conditions")
    generation = body.get("metadata", {}).get("generation")
    live = _live_sessions(live_sessions_by_database, namespace, name)
    patch.status["activeSessions"] = len(live)
    patch.status["observedGeneration"] = generation

    def report(ready: bool, reason: str, message: str, *, stalled: bool = False) -> None:
        if ready:
            new = conditions.ready(previous, generation, reason, message)
        elif stalled:
            new = conditions.stalled(previous, generation, reason, message)
        else:
            new = conditions.in_progress(previous, generation, reason, message)
        if conditions.condition_changed(conditions.find_condition(previous, "Ready"),
                                        conditions.find_condition(new, "Ready")):
            kopf.event(body, type="Normal" if ready else "Warning", reason=reason, message=message)
        patch.status["conditions"] = new

    try:
        engine = await memo.engines.engine_for(database, namespace, refresh=refresh)
        pre = await engine.preflight(databases=database.spec.databases or (),
                                     terminate_connections=database.spec.terminate_connections)
    except EngineError as error:
        report(False, error.reason, error.message, stalled=not error.transient)
        raise kopf.TemporaryError(error.message, delay=30 if error.transient else 120)

    patch.status["serverVersion"] = pre.server_version
    patch.status["readOnly"] = pre.read_only
    patch.status["adminPrivileges"] = {
        "superuser": pre.admin_is_superuser, "createRole": pre.admin_can_create_roles,
        "signalBackend": pre.can_signal_backends,
        "summary": "; ".join(pre.summary())[:1024]}
    if pre.read_only:
        report(False, "ReadOnly", "the server is read-only (a standby or a reader endpoint); point"
               " spec.host at the primary", stalled=True)
        return
    if pre.missing_databases:
        report(False, "DatabaseNotFound", "databases listed in spec.databases do not exist: "
               + ", ".join(pre.missing_databases), stalled=True)
        return
    if pre.shortfalls:
        report(False, "InsufficientPrivilege", "; ".join(str(s) for s in pre.shortfalls),
               stalled=True)
        return
    try:
        await engine.ensure_managed_role()
        if sweep:
            for teardown in await engine.sweep(
                    live, terminate_connections=database.spec.terminate_connections):
                kopf.event(body, type="Normal", reason="UserSwept",
                           message=f'user "{teardown.username}": {teardown.action}: '
                                   f"{teardown.reason}")
    except EngineError as error:
        report(False, error.reason, error.message, stalled=not error.transient)
        raise kopf.TemporaryError(error.message, delay=30)
    if database.spec.suspended:
        report(False, "Suspended", "spec.suspended is true: no new sessions are opened; ending "
               "sessions still works")
        return
    report(True, "Connected", f"PostgreSQL {pre.server_version}; the admin can provision users")


@kopf.on.resume(*RESOURCE, id="connect")
@kopf.on.create(*RESOURCE, id="connect")
@kopf.on.update(*RESOURCE, id="connect", field="spec")
async def connect(body, namespace, name, patch, memo, live_sessions_by_database, **_):
    with metrics.reconcile("database"):
        await _check(body, namespace, name, patch, memo, live_sessions_by_database,
                     refresh=True, sweep=False)


@kopf.timer(*RESOURCE, id="health", interval=HEALTH_INTERVAL, initial_delay=HEALTH_INTERVAL)
async def health(body, namespace, name, patch, memo, live_sessions_by_database, **_):
    """Re-check reachability and privileges, and end users no live session holds (crash safety)."""
    with metrics.reconcile("database"):
        await _check(body, namespace, name, patch, memo, live_sessions_by_database,
                     refresh=True, sweep=True)


@kopf.on.delete(*RESOURCE, id="release")
async def release(body, namespace, name, patch, memo, live_sessions_by_database, **_):
    live = _live_sessions(live_sessions_by_database, namespace, name)
    if live:
        message = (f"{len(live)} DatabaseSession(s) still use this Database; it is deleted once "
                   "they have ended (delete them to end them now)")
        patch.status["conditions"] = conditions.in_progress(
            body.get("status", {}).get("conditions"), body.get("metadata", {}).get("generation"),
            "SessionsActive", message)
        raise kopf.TemporaryError(message, delay=10)
    await memo.engines.forget(namespace, name)
