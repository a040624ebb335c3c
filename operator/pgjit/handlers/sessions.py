"""DatabaseSession: the lease lifecycle, from Pending to Active to Ended or Expired.

Handlers only translate: the policy core decides what a session may get, the engine changes
PostgreSQL, the Kubernetes adapter writes the Secret. Every step is idempotent, so a handler that
is retried, or re-run after the operator was killed at any instruction, converges.
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime, timezone

import kopf
import yaml

from .. import GROUP, VERSION
from ..api.database import Database
from ..api.role import Role
from ..api.session import DatabaseSession
from ..core import conditions, policy
from ..core.certificates import issue_client_certificate
from ..core.credentials import generate_password
from ..core.credentials_secret import (ConnectionTarget, certificate_secret_data,
                                       password_secret_data, secret_labels)
from ..engine import ActivationRequest, EngineError
from ..engine.results import ABSENT, NOT_MANAGED
from . import metrics
from .indexes import TERMINAL_PHASES, session_id

RESOURCE = (GROUP, VERSION, "databasesessions")
REVALIDATE_INTERVAL = float(os.environ.get("PGJIT_REVALIDATE_SECONDS", "30"))


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _ts(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class Outcome(Exception):
    """A decided end state of one reconciliation, carrying the status to write."""

    def __init__(self, phase: str | None, reason: str, message: str, *, retry: float | None = None,
                 terminal: bool = False):
        super().__init__(message)
        self.phase, self.reason, self.message = phase, reason, message
        self.retry, self.terminal = retry, terminal


def _set_conditions(body, status: dict, ready: bool, reason: str, message: str, *,
                    terminal: bool = False) -> None:
    previous = body.get("status", {}).get("conditions")
    generation = body.get("metadata", {}).get("generation")
    if ready:
        new = conditions.ready(previous, generation, reason, message)
    elif terminal:
        new = conditions.stalled(previous, generation, reason, message)
    else:
        new = conditions.in_progress(previous, generation, reason, message)
    if conditions.condition_changed(conditions.find_condition(previous, "Ready"),
                                    conditions.find_condition(new, "Ready")):
        kopf.event(body, type="Normal" if ready or reason in ("Ended", "Expired") else "Warning",
                   reason=reason, message=message)
    status["conditions"] = new
    status["observedGeneration"] = generation


def _database(databases_by_name, namespace: str, name: str) -> Database:
    body = next(iter(databases_by_name.get((namespace, name), ())), None)
    if body is None:
        raise Outcome("Pending", "DatabaseNotReady",
                      f'Database "{name}" does not exist in namespace "{namespace}"', retry=15)
    database = Database.model_validate(body)
    ready = next((c for c in body.get("status", {}).get("conditions") or ()
                  if c.get("type") == "Ready"), None)
    if database.spec.suspended:
        raise Outcome("Pending", "DatabaseNotReady",
                      f'Database "{name}" is suspended; the session waits until it is resumed',
                      retry=30)
    if ready is not None and ready.get("status") != "True" and ready.get("reason") in (
            "ReadOnly", "InsufficientPrivilege", "AuthenticationFailed", "Unreachable"):
        raise Outcome("Pending", "DatabaseNotReady",
                      f'Database "{name}" is not ready ({ready.get("reason")}): '
                      f'{ready.get("message")}', retry=30)
    return database


async def _traits(memo: kopf.Memo, user: str) -> dict[str, list[str]]:
    name = os.environ.get("PGJIT_TRAITS_CONFIGMAP")
    namespace = os.environ.get("PGJIT_NAMESPACE")
    if not name or not namespace:
        return {}
    data = await memo.kube.read_configmap(namespace, name)
    raw = (data or {}).get(user)
    try:
        traits = yaml.safe_load(raw) if raw else {}
    except yaml.YAMLError:
        traits = {}  # a broken entry grants nothing extra; the policy notes empty templates
    return traits if isinstance(traits, dict) else {}


def _decide(session: DatabaseSession, database: Database, roles_by_namespace, namespace: str,
            traits) -> "policy.Decision":
    roles = [Role.model_validate(b) for b in roles_by_namespace.get(namespace, [])]
    decision = policy.evaluate(session.spec, database, roles, internal_traits=traits)
    if not decision.allowed:
        raise Outcome("Failed", decision.reason, decision.message, terminal=True)
    allow_list = database.spec.databases
    if allow_list and session.spec.database_name not in allow_list:
        raise Outcome("Failed", "AccessDenied",
                      f'database "{session.spec.database_name}" is not in Database '
                      f'"{database.metadata.name}" spec.databases', terminal=True)
    return decision


async def _shared_password(memo, namespace, database_name, session, active_sessions_by_user):
    """A shared user keeps one password: hand out the one the live sessions already hold."""
    for other_name, secret_name in active_sessions_by_user.get(
            (namespace, database_name, session.spec.user), []):
        if other_name == session.metadata.name or not secret_name:
            continue
        data = await memo.kube.read_secret(namespace, secret_name)
        if data and "password" in data:
            return data["password"].decode("utf-8")
    return None


async def _open(body, name, namespace, uid, memo, indexes, status: dict) -> None:
    databases_by_name, roles_by_namespace, active_sessions_by_user = indexes
    session = DatabaseSession.model_validate(body)
    db_name = session.spec.database_ref.name
    database = _database(databases_by_name, namespace, db_name)
    traits = await _traits(memo, session.spec.user)
    decision = _decide(session, database, roles_by_namespace, namespace, traits)

    created = _parse_ts(body["metadata"]["creationTimestamp"])
    expires_at = created + decision.duration
    if expires_at <= _now():
        raise Outcome("Expired", "Expired", "the session expired before it could be opened",
                      terminal=True)
    secret_name = session.credentials_secret_name
    cert_type = str(database.spec.credentials.type) == "clientCertificate"
    password = None
    if not cert_type:
        existing = await memo.kube.read_secret(namespace, secret_name)
        password = (existing or {}).get("password", b"").decode("utf-8") or generate_password()

    engine = await memo.engines.engine_for(database, namespace)
    request = ActivationRequest(
        session_id=session_id(namespace, name, uid), identity=session.spec.user,
        database=session.spec.database_name, roles=tuple(decision.database_roles),
        expires_at=expires_at, mode=str(decision.mode), permissions=decision.permissions,
        password=password)
    try:
        activation = await engine.activate(request)
    except EngineError as error:
        if error.transient:
            raise Outcome("Pending", error.reason, error.message, retry=10)
        raise Outcome("Failed", error.reason, error.message, terminal=True)
    metrics.POSTGRES_OPERATIONS.labels("activate", "success").inc()

    tls_mode = str(database.spec.tls.ssl_mode) if database.spec.tls else "prefer"
    target = ConnectionTarget(activation.username, database.spec.host, database.spec.port,
                              session.spec.database_name, tls_mode)
    server_ca = await _server_ca(memo, namespace, database)
    if cert_type:
        ca_ref = database.spec.credentials.client_ca_secret_ref
        ca = await memo.kube.read_secret(namespace, ca_ref.name) if ca_ref else None
        if not ca or "tls.crt" not in ca or "tls.key" not in ca:
            raise Outcome("Pending", "SecretNotFound", "the client CA Secret of the Database "
                          "(credentials.clientCASecretRef, keys tls.crt and tls.key) is missing",
                          retry=30)
        try:
            issued = issue_client_certificate(ca["tls.crt"], ca["tls.key"], activation.username,
                                              expires_at)
        except ValueError as exc:
            raise Outcome("Failed", "InvalidClientCA", str(exc), terminal=True)
        data = certificate_secret_data(target, issued.cert_pem, issued.key_pem, ca["tls.crt"],
                                       expires_at, server_ca)
    else:
        if activation.shared:
            password = await _shared_password(memo, namespace, db_name, session,
                                              active_sessions_by_user)
            if password is None:
                raise Outcome("Failed", "RolesChanged", f'"{activation.username}" is shared '
                              "with other live sessions whose credentials could not be read; "
                              "end them and retry", terminal=True)
        data = password_secret_data(target, password, expires_at, server_ca)
    await memo.kube.write_secret(namespace, secret_name, data, labels=secret_labels(name),
                                 owner={"apiVersion": body["apiVersion"], "kind": body["kind"],
                                        "name": name, "uid": uid})
    message = f"PostgreSQL user {activation.username} is active until {_ts(expires_at)}"
    if decision.duration_capped:
        message += f" ({decision.duration_message})"
    status.update({
        "phase": "Active", "username": activation.username,
        "databaseRoles": list(activation.roles), "permissions": activation.permissions_summary,
        "userProvisioning": str(decision.mode), "matchedRoles": list(decision.matched_roles),
        "expiresAt": _ts(expires_at), "secretName": secret_name})
    _set_conditions(body, status, True, "Active", message)
    metrics.PROVISIONING_LATENCY.observe(max(0.0, (_now() - created).total_seconds()))


async def _server_ca(memo, namespace: str, database: Database) -> bytes | None:
    ref = database.spec.tls.ca_secret_ref if database.spec.tls else None
    if ref is None:
        return None
    data = await memo.kube.read_secret(namespace, ref.name)
    return (data or {}).get(ref.key)


def _apply_outcome(body, status: dict, outcome: Outcome) -> None:
    if outcome.phase:
        status["phase"] = outcome.phase
    if outcome.phase in ("Failed", "Expired"):
        status["endedAt"] = _ts(_now())
    _set_conditions(body, status, False, outcome.reason, outcome.message, terminal=outcome.terminal)


@kopf.on.resume(*RESOURCE, id="lease")
@kopf.on.create(*RESOURCE, id="lease")
async def open_lease(body, name, namespace, uid, patch, memo, databases_by_name,
                     roles_by_namespace, active_sessions_by_user, **_):
    if body.get("status", {}).get("phase") in TERMINAL_PHASES:
        return
    with metrics.reconcile("databasesession"):
        status: dict = {}
        try:
            await _open(body, name, namespace, uid, memo,
                        (databases_by_name, roles_by_namespace, active_sessions_by_user), status)
        except Outcome as outcome:
            _apply_outcome(body, status, outcome)
            patch.status.update(status)
            if outcome.retry is not None:
                raise kopf.TemporaryError(outcome.message, delay=outcome.retry)
            return
        patch.status.update(status)
        metrics.ACTIVE_SESSIONS.inc()


async def end_lease(body, namespace: str, name: str, uid: str, memo, databases_by_name, *,
                    reason: str) -> dict:
    """End the session's hold on its user and delete its Secret; returns the status to write."""
    session = DatabaseSession.model_validate(body)
    status = body.get("status", {})
    teardown = {"action": "Released", "reason": "the session never held a PostgreSQL user"}
    db_body = next(iter(databases_by_name.get((namespace, session.spec.database_ref.name), ())),
                   None)
    if status.get("username") or status.get("phase") in (None, "Pending", "Active"):
        if db_body is not None:
            database = Database.model_validate(db_body)
            engine = await memo.engines.engine_for(database, namespace)
            try:
                result = await engine.end(session.spec.user, session_id(namespace, name, uid),
                                          mode=status.get("userProvisioning"),
                                          terminate_connections=database.spec.terminate_connections)
            except EngineError as error:
                raise kopf.TemporaryError(f"ending the PostgreSQL user failed: {error.message}",
                                          delay=10 if error.transient else 60)
            action = {ABSENT: "Dropped", NOT_MANAGED: "Released"}.get(result.action, result.action)
            teardown = {"action": action, "reason": f"{reason}: {result.reason}"}
            metrics.POSTGRES_OPERATIONS.labels("end", "success").inc()
        elif status.get("username"):
            raise kopf.TemporaryError(
                f'Database "{session.spec.database_ref.name}" is gone; the PostgreSQL user '
                "cannot be ended (its VALID UNTIL still applies)", delay=60)
    await memo.kube.delete_secret(namespace, session.credentials_secret_name)
    if status.get("phase") == "Active":
        metrics.ACTIVE_SESSIONS.dec()
    return {"teardown": teardown, "endedAt": _ts(_now())}


@kopf.on.delete(*RESOURCE, id="end")
async def end_on_delete(body, name, namespace, uid, memo, databases_by_name, **_):
    if body.get("status", {}).get("phase") in ("Ended", "Expired") and \
            body.get("status", {}).get("teardown"):
        return  # already ended; nothing holds a user any more
    with metrics.reconcile("databasesession"):
        await end_lease(body, namespace, name, uid, memo, databases_by_name, reason="deleted")


@kopf.daemon(*RESOURCE, id="expiry", cancellation_timeout=10.0,
             when=lambda status, **_: status.get("phase") == "Active")
async def watch_expiry(body, name, namespace, uid, memo, stopped, databases_by_name,
                       roles_by_namespace, **_):
    """Ends the session at expiresAt, or earlier when no Role allows it any more."""
    expires_at = _parse_ts(body["status"]["expiresAt"])
    while not stopped:
        remaining = (expires_at - _now()).total_seconds()
        if remaining <= 0:
            await _finish(body, name, namespace, uid, memo, databases_by_name, "Expired",
                          "Expired", f"the session expired at {_ts(expires_at)}")
            return
        await stopped.wait(min(remaining, REVALIDATE_INTERVAL))
        if stopped or (expires_at - _now()).total_seconds() <= 0:
            continue
        session = DatabaseSession.model_validate(body)
        try:
            database = _database(databases_by_name, namespace, session.spec.database_ref.name)
            _decide(session, database, roles_by_namespace, namespace,
                    await _traits(memo, session.spec.user))
        except Outcome as outcome:
            if outcome.terminal:
                await _finish(body, name, namespace, uid, memo, databases_by_name, "Ended",
                              "AccessRevoked", f"access was revoked: {outcome.message}")
                return


async def _finish(body, name, namespace, uid, memo, databases_by_name, phase, reason, message):
    for attempt in range(1000):
        try:
            status = await end_lease(body, namespace, name, uid, memo, databases_by_name,
                                     reason=reason)
            break
        except kopf.TemporaryError:
            await asyncio.sleep(min(60, 2 ** min(attempt, 6)))
    status["phase"] = phase
    _set_conditions(body, status, False, reason, message)
    # An ended session is not in progress and not stalled: it is done.
    status["conditions"] = [c for c in status["conditions"] if c["type"] == "Ready"]
    await memo.kube.patch_status(GROUP, VERSION, "databasesessions", namespace, name, status)
