"""Ending a session's lease: the PostgreSQL user released, locked or dropped; its Secret gone."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from ..api.database import Database
from ..api.session import DatabaseSession, DatabaseSessionStatus
from ..engine import EngineError
from ..engine.results import Untouched
from ..vocabulary import SessionPhase, TeardownAction
from . import metrics
from .indexes import database_in, session_database, session_id
from .decisions import all_of, to_second, utc_now
from .status import written

log = logging.getLogger(__name__)


async def end_lease(body, namespace: str, name: str, uid: str, memo, databases_by_name, *,
                    reason: str) -> dict:
    """End the session's hold on its user and delete its Secret; returns the status to write.

    Every end comes here (a deletion, expiry, revocation, a refused opening), and takes one of
    its Database's ending slots first (handlers/slots.py)."""
    async with memo.endings.slot(session_database(namespace, body.get("spec", {}))):
        return await _end_lease(body, namespace, name, uid, memo, databases_by_name,
                                reason=reason)


async def _end_lease(body, namespace: str, name: str, uid: str, memo, databases_by_name, *,
                     reason: str) -> dict:
    session = DatabaseSession.model_validate(body)
    status = body.get("status", {})
    teardown: dict[str, Any] = {"action": TeardownAction.RELEASED,
                                "reason": "the session never held a PostgreSQL user"}
    database = database_in(databases_by_name, namespace, session.spec.database_ref.name)
    if status.get("username") or status.get("phase") in (None, SessionPhase.PENDING,
                                                         SessionPhase.ACTIVE):
        if isinstance(database, Database):
            engine = await memo.engines.engine_for(database, namespace)
            try:
                result = await engine.end(session.spec.user, session_id(namespace, name, uid),
                                          mode=status.get("userProvisioning"),
                                          terminate_connections=database.spec.terminate_connections)
            except EngineError as error:
                metrics.POSTGRES_OPERATIONS.labels("end", "error").inc()
                raise kopf.TemporaryError(f"ending the PostgreSQL user failed: {error.message}",
                                          delay=10 if error.transient else 60)
            action = result.action.reported if isinstance(result.action, Untouched) \
                else result.action
            teardown = {"action": action, "reason": f"{reason}: {result.reason}"}
            if result.reassigned:
                teardown["reassigned"] = [{"database": database, "objects": count}
                                          for database, count in result.reassigned]
            metrics.POSTGRES_OPERATIONS.labels("end", "success").inc()
        elif status.get("username"):
            why = "is gone" if database is None else f"is invalid ({database.problem})"
            raise kopf.TemporaryError(
                f'Database "{session.spec.database_ref.name}" {why}; the PostgreSQL user '
                "cannot be ended (its VALID UNTIL still applies)", delay=60)
    log.info("[%s/%s] lease ended (%s); deleting Secret %s", namespace, name,
             teardown["action"], session.credentials_secret_name)
    removals = [memo.kube.delete_secret(namespace, session.credentials_secret_name, uid)]
    if memo.settings.secret_access:
        removals.append(memo.kube.revoke_secret_access(namespace,
                                                       session.credentials_secret_name, uid))
    await all_of(removals)
    if status.get("phase") == SessionPhase.ACTIVE:
        metrics.ACTIVE_SESSIONS.dec()
    return written(DatabaseSessionStatus, teardown=teardown, ended_at=to_second(utc_now()))
