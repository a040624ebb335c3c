"""DatabaseSession: the lease lifecycle, from Pending to Active to Ended or Expired.

Handlers only translate: the policy core decides what a session may get, the engine changes
PostgreSQL, the Kubernetes adapter writes the Secret. Every step is idempotent, so a handler that
is retried, or re-run after the operator was killed at any instruction, converges.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
import logging
import time
from datetime import datetime, timezone
from typing import Any

import kopf
from pydantic import ValidationError

from .. import GROUP, VERSION
from ..api.database import Database
from ..api.session import DatabaseSession
from ..core import policy
from ..core.boundaries import exact_names
from ..core.object_labels import assignments_for
from ..core.certificates import issue_client_certificate
from ..core.credentials import generate_password
from ..core.credential_access import secret_reader_binding, secret_reader_role
from ..core.credentials_secret import (ConnectionTarget, certificate_secret_data,
                                       iam_secret_data, password_secret_data,
                                       secret_annotations, secret_labels)
from ..core.naming import postgres_username
from ..core.traits import user_traits
from ..engine import ActivationRequest, EngineError
from ..engine.results import Untouched
from ..kube.client import NotOwned
from ..vocabulary import (TERMINAL_PHASES, CredentialsType, Reason, SessionPhase, SSLMode,
                          TeardownAction)
from . import metrics
from .object_labels import valid_rules as valid_label_rules
from .status import set_conditions
from .indexes import session_id, valid_roles

RESOURCE = (GROUP, VERSION, "databasesessions")
log = logging.getLogger(__name__)
#: Seconds between looks at a Database a session is waiting for (missing, suspended, not ready).
DATABASE_WAIT = 10.0


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _ts(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class Outcome(Exception):
    """A decided end state of one reconciliation, carrying the status to write."""

    def __init__(self, phase: str | None, reason: str, message: str, *, retry: float | None = None,
                 terminal: bool = False, release: bool = False):
        super().__init__(message)
        self.phase, self.reason, self.message = phase, reason, message
        self.retry, self.terminal = retry, terminal
        # The session may hold a lease in PostgreSQL (or a Secret) that must be ended with it.
        self.release = release


class SharedPasswords:
    """What this process knows about the password of each shared PostgreSQL user.

    A PostgreSQL role has one password, and sessions sharing a user must all hand out the one in
    effect. Activations of one user are serialized here (per server and user name) so that the
    session that sets the password records it before another session of the user looks for it;
    the Kopf index only learns that the first session is Active a watch event later. Lives in the
    operator's memo, in memory only: after a restart the live sessions' Secrets are the source.
    """

    def __init__(self) -> None:
        self._locks: dict[tuple, asyncio.Lock] = {}
        self._passwords: dict[tuple, str] = {}

    def lock(self, key: tuple) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def get(self, key: tuple) -> str | None:
        return self._passwords.get(key)

    def remember(self, key: tuple, password: str) -> None:
        self._passwords[key] = password

    def __repr__(self) -> str:  # never print a password, even by accident
        return f"<SharedPasswords users={len(self._passwords)}>"


async def _all_of(calls) -> None:
    """Run independent API calls at once, and let every one finish before raising the first
    failure: a call still in flight could otherwise create an object after the clean-up that
    the failure triggers has already looked for it."""
    for result in await asyncio.gather(*calls, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


def _set_conditions(body, status: dict, ready: bool, reason: str, message: str, *,
                    terminal: bool = False) -> None:
    set_conditions(body, status, ready, reason, message, stalled=terminal)


def _database(databases_by_name, namespace: str, name: str, *, opening: bool = True) -> Database:
    """The session's Database, if sessions can be opened on it (``opening``) or at all."""
    body = next(iter(databases_by_name.get((namespace, name), ())), None)
    if body is None:
        raise Outcome(SessionPhase.PENDING, Reason.DATABASE_NOT_READY,
                      f'Database "{name}" does not exist in namespace "{namespace}"',
                      retry=DATABASE_WAIT)
    if opening and body.get("metadata", {}).get("deletionTimestamp"):
        raise Outcome(SessionPhase.FAILED, Reason.DATABASE_NOT_READY,
                      f'Database "{name}" is being deleted; no new sessions are opened on it',
                      terminal=True)
    database = Database.model_validate(body)
    ready = next((c for c in body.get("status", {}).get("conditions") or ()
                  if c.get("type") == "Ready"), None)
    if database.spec.suspended:
        raise Outcome(SessionPhase.PENDING, Reason.DATABASE_NOT_READY,
                      f'Database "{name}" is suspended; the session waits until it is resumed',
                      retry=DATABASE_WAIT)
    if ready is not None and ready.get("status") != "True" and ready.get("reason") in (
            Reason.READ_ONLY, Reason.INSUFFICIENT_PRIVILEGE, Reason.AUTHENTICATION_FAILED,
            Reason.UNREACHABLE):
        raise Outcome(SessionPhase.PENDING, Reason.DATABASE_NOT_READY,
                      f'Database "{name}" is not ready ({ready.get("reason")}): '
                      f'{ready.get("message")}', retry=DATABASE_WAIT)
    return database


async def _load_traits_data(memo: kopf.Memo) -> dict[str, str]:
    """The traits ConfigMap's data (user name -> YAML map of lists), if one is configured."""
    ref = memo.settings.traits_configmap_ref
    if ref is None:
        return {}
    return await memo.kube.read_configmap(*ref) or {}


async def _traits(memo: kopf.Memo, user: str) -> dict[str, list[str]]:
    return user_traits(await _load_traits_data(memo), user)


def _decide(session: DatabaseSession, database: Database, roles_by_namespace, namespace: str,
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


def _with_object_labels(permissions, database: Database, label_rule_bodies):
    """The permission rules with the labels the Database's ObjectLabelRules give, when some
    rule selects objects by label (computed against the catalog at activation)."""
    if not permissions.match_labels:
        return permissions
    return replace(permissions, object_labels=assignments_for(
        database, valid_label_rules(label_rule_bodies)))


def _server_key(database: Database, username: str) -> tuple:
    return (database.spec.host, database.spec.port, username)


async def _own_password(memo, namespace: str, session: DatabaseSession) -> str:
    """The password this session sets when it is the one activating the user: the one it wrote
    before (a retry, or a restart after the Secret was written), else a new one."""
    existing = await memo.kube.read_secret(namespace, session.credentials_secret_name)
    return (existing or {}).get("password", b"").decode("utf-8") or generate_password()


async def _shared_password(memo, namespace: str, session: DatabaseSession, database: Database,
                           username: str, databases_by_name, active_sessions_by_user
                           ) -> str | None:
    """The password in effect for a user other live sessions hold, or None if unknown.

    Known when this process set it (it is remembered until the user is activated afresh), or
    from the Secret of a live session of the same user on the same server, which handed it out.
    """
    known = memo.shared_passwords.get(_server_key(database, username))
    if known is not None:
        return known
    for other_name, secret_name, other_db in active_sessions_by_user.get(
            (namespace, session.spec.user), ()):
        if other_name == session.metadata.name or not secret_name:
            continue
        other = next(iter(databases_by_name.get((namespace, other_db), ())), None)
        if other is None or (other.get("spec", {}).get("host"), other.get("spec", {}).get(
                "port", 5432)) != (database.spec.host, database.spec.port):
            continue  # another server: another PostgreSQL role of that name
        data = await memo.kube.read_secret(namespace, secret_name)
        if data and data.get("password"):
            return data["password"].decode("utf-8")
    return None


async def _open(body, name, namespace, uid, memo, indexes, status: dict) -> None:
    databases_by_name, roles_by_namespace, active_sessions_by_user, label_rules = indexes
    session = DatabaseSession.model_validate(body)
    db_name = session.spec.database_ref.name
    database = _database(databases_by_name, namespace, db_name)
    traits = await _traits(memo, session.spec.user)
    decision = _decide(session, database, roles_by_namespace, namespace, traits)

    created = _parse_ts(body["metadata"]["creationTimestamp"])
    expires_at = created + decision.duration
    if expires_at <= _now():
        # Possibly after holding a lease (the operator stopped mid-activation): end it too.
        raise Outcome(SessionPhase.EXPIRED, Reason.EXPIRED,
                      f"the session expired at {_ts(expires_at)} before it "
                      "could be opened", release=True)
    secret_name = session.credentials_secret_name
    credentials_type = database.spec.credentials.type
    cert_type = credentials_type == CredentialsType.CLIENT_CERTIFICATE
    # Certificates and IAM tokens are the client's own proof: the user gets no password at all.
    passwordless = credentials_type in (CredentialsType.CLIENT_CERTIFICATE,
                                        CredentialsType.AWS_IAM)
    engine = await memo.engines.engine_for(database, namespace)
    username = postgres_username(session.spec.user)
    user_key = _server_key(database, username)
    async with memo.shared_passwords.lock(user_key):
        # Serialized per user, so that a session sharing the user finds the password the one
        # activating it has just set (in memory: the index learns it is Active only later).
        password = None if passwordless else await _own_password(memo, namespace, session)
        request = ActivationRequest(
            session_id=session_id(namespace, name, uid), identity=session.spec.user,
            database=session.spec.database_name, roles=tuple(decision.database_roles),
            expires_at=expires_at, mode=str(decision.mode),
            permissions=_with_object_labels(decision.permissions, database, label_rules),
            password=password, grantable_by_name=exact_names(database.spec.grantable_roles),
            database_object=database.metadata.name)
        try:
            activation = await engine.activate(request)
        except EngineError as error:
            metrics.POSTGRES_OPERATIONS.labels("activate", "error").inc()
            if error.transient:
                raise Outcome(SessionPhase.PENDING, error.reason, error.message, retry=10)
            raise Outcome(SessionPhase.FAILED, error.reason, error.message, terminal=True)
        metrics.POSTGRES_OPERATIONS.labels("activate", "success").inc()
        if activation.drift:
            metrics.DRIFT_CORRECTED.labels("activation").inc()
            report_drift(body, activation.username, activation.drift)
        if password is not None:
            if activation.shared:
                # The user kept the password it had (live credentials must keep working).
                password = await _shared_password(memo, namespace, session, database, username,
                                                  databases_by_name, active_sessions_by_user)
            if password is None:
                # Other sessions hold the user and none has handed out its password yet (they
                # are being opened, or were when the operator stopped). Step back so that one of
                # them (or this one, on retry) activates it and sets the password.
                await engine.end(session.spec.user, request.session_id, mode=str(decision.mode),
                                 terminate_connections=False)
                raise Outcome(SessionPhase.PENDING, Reason.USER_SHARED,
                              f'PostgreSQL user "{username}" is being '
                              "activated by another session of the same user; retrying", retry=2)
            memo.shared_passwords.remember(user_key, password)

    #: Why the session ends earlier than asked, for the Ready message.
    notes: list[str] = [str(decision.duration_message)] if decision.duration_capped else []
    tls_mode = database.spec.tls.ssl_mode if database.spec.tls else SSLMode.PREFER
    target = ConnectionTarget(activation.username, database.spec.host, database.spec.port,
                              session.spec.database_name, tls_mode)
    server_ca = await _server_ca(memo, namespace, database)
    if cert_type:
        ca_ref = database.spec.credentials.client_ca_secret_ref
        ca = await memo.kube.read_secret(namespace, ca_ref.name) if ca_ref else None
        if not ca or "tls.crt" not in ca or "tls.key" not in ca:
            raise Outcome(SessionPhase.PENDING, Reason.SECRET_NOT_FOUND,
                          "the client CA Secret of the Database "
                          "(credentials.clientCASecretRef, keys tls.crt and tls.key) is missing",
                          retry=30)
        try:
            issued = issue_client_certificate(ca["tls.crt"], ca["tls.key"], activation.username,
                                              expires_at)
        except ValueError as exc:
            raise Outcome(SessionPhase.FAILED, Reason.INVALID_CLIENT_CA,
                          str(exc), terminal=True, release=True)
        if issued.capped:
            # The credentials end with the certificate: every expiry shown must be its notAfter,
            # and the lease loop ends the session then (VALID UNTIL stays later, harmlessly).
            expires_at = issued.not_after
            notes.append(f"the certificate expires at {_ts(expires_at)}, when the Database's "
                         "client CA does")
        data = certificate_secret_data(target, issued.cert_pem, issued.key_pem, ca["tls.crt"],
                                       expires_at, server_ca)
    elif credentials_type == CredentialsType.AWS_IAM and database.spec.admin.aws_iam is not None:
        data = iam_secret_data(target, database.spec.admin.aws_iam.region, expires_at, server_ca)
    else:
        assert password is not None
        data = password_secret_data(target, password, expires_at, server_ca)
    if not await memo.kube.exists(GROUP, VERSION, "databasesessions", namespace, name, uid):
        # Deleted meanwhile, possibly without this operator ever running its delete handler: a
        # DELETE that races with the finalizer being added removes the object anyway. Nothing
        # may outlive it: release the lease now, and write no credentials.
        log.info("[%s/%s] deleted while being opened; releasing its lease", namespace, name)
        raise Outcome(SessionPhase.ENDED, Reason.DELETED,
                      "the session was deleted while it was being opened",
                      release=True)
    log.info("[%s/%s] PostgreSQL user %r active; writing Secret %s", namespace, name,
             activation.username, secret_name)
    owner = {"apiVersion": body["apiVersion"], "kind": body["kind"], "name": name, "uid": uid}
    labels = secret_labels(name)
    writes = [memo.kube.write_secret(namespace, secret_name, data, labels=labels, owner=owner,
                                     annotations=secret_annotations(name, expires_at))]
    if memo.settings.secret_access:
        writes.append(memo.kube.grant_secret_access(
            namespace, secret_reader_role(secret_name, labels),
            secret_reader_binding(secret_name, session.spec.user, labels), owner=owner))
    try:
        await _all_of(writes)
    except NotOwned as conflict:
        raise Outcome(SessionPhase.FAILED, Reason.SECRET_CONFLICT,
                      f"{conflict}; choose another spec.secretName "
                      "(the default is <session name>-credentials)", terminal=True, release=True)
    message = f"PostgreSQL user {activation.username} is active until {_ts(expires_at)}"
    if notes:
        message += f" ({'; '.join(notes)})"
    status.update({
        "phase": SessionPhase.ACTIVE, "username": activation.username,
        "databaseRoles": list(activation.roles), "permissions": activation.permissions_summary,
        "userProvisioning": str(decision.mode), "matchedRoles": list(decision.matched_roles),
        "expiresAt": _ts(expires_at), "secretName": secret_name})
    _set_conditions(body, status, True, Reason.ACTIVE, message)
    metrics.PROVISIONING_LATENCY.observe(max(0.0, (_now() - created).total_seconds()))


def report_drift(session_body, username: str, removed) -> None:
    """The Event that says what pgjit took away from a session's user, and why."""
    kopf.event(session_body, type="Normal", reason=Reason.DRIFT_CORRECTED,
               message=f'PostgreSQL user "{username}" held what no session had granted; removed: '
                       + "; ".join(removed)[:900])


async def _server_ca(memo, namespace: str, database: Database) -> bytes | None:
    ref = database.spec.tls.ca_secret_ref if database.spec.tls else None
    if ref is None:
        return None
    data = await memo.kube.read_secret(namespace, ref.name)
    return (data or {}).get(ref.key)


def _apply_outcome(body, status: dict, outcome: Outcome) -> None:
    if outcome.phase:
        status["phase"] = outcome.phase
    if outcome.phase in TERMINAL_PHASES:
        status.setdefault("endedAt", _ts(_now()))
    _set_conditions(body, status, False, outcome.reason, outcome.message,
                    terminal=outcome.terminal or outcome.phase in (SessionPhase.EXPIRED,
                                                                      SessionPhase.ENDED))


@kopf.on.resume(*RESOURCE, id="lease")
@kopf.on.create(*RESOURCE, id="lease")  # type: ignore[arg-type]  # index kwargs
async def open_lease(body, name, namespace, uid, patch, memo, databases_by_name,
                     roles_by_namespace, active_sessions_by_user, label_rules_by_namespace, **_):
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
    with metrics.reconcile("databasesession") as reconciliation:
        status: dict = {}
        try:
            await _open(body, name, namespace, uid, memo,
                        (databases_by_name, roles_by_namespace, active_sessions_by_user,
                         label_rules_by_namespace.get(namespace, ())), status)
        except Outcome as outcome:
            if outcome.terminal:
                reconciliation.failed_terminally()
            if outcome.release:
                status.update(await end_lease(body, namespace, name, uid, memo,
                                              databases_by_name, reason=outcome.reason))
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
    teardown: dict[str, Any] = {"action": TeardownAction.RELEASED,
                                "reason": "the session never held a PostgreSQL user"}
    db_body = next(iter(databases_by_name.get((namespace, session.spec.database_ref.name), ())),
                   None)
    if status.get("username") or status.get("phase") in (None, SessionPhase.PENDING,
                                                         SessionPhase.ACTIVE):
        if db_body is not None:
            database = Database.model_validate(db_body)
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
            raise kopf.TemporaryError(
                f'Database "{session.spec.database_ref.name}" is gone; the PostgreSQL user '
                "cannot be ended (its VALID UNTIL still applies)", delay=60)
    log.info("[%s/%s] lease ended (%s); deleting Secret %s", namespace, name,
             teardown["action"], session.credentials_secret_name)
    removals = [memo.kube.delete_secret(namespace, session.credentials_secret_name, uid)]
    if memo.settings.secret_access:
        removals.append(memo.kube.revoke_secret_access(namespace,
                                                       session.credentials_secret_name, uid))
    await _all_of(removals)
    if status.get("phase") == SessionPhase.ACTIVE:
        metrics.ACTIVE_SESSIONS.dec()
    return {"teardown": teardown, "endedAt": _ts(_now())}


@kopf.on.delete(*RESOURCE, id="end")  # type: ignore[arg-type]  # index kwargs
async def end_on_delete(body, name, namespace, uid, memo, databases_by_name, **_):
    if body.get("status", {}).get("phase") in (SessionPhase.ENDED, SessionPhase.EXPIRED) and \
            body.get("status", {}).get("teardown"):
        return  # already ended; nothing holds a user any more
    with metrics.reconcile("databasesession"):
        await end_lease(body, namespace, name, uid, memo, databases_by_name, reason="deleted")


async def supervise_leases(namespace: str, database_name: str, memo, stopped,
                           active_sessions_by_database, databases_by_name,
                           roles_by_namespace, *, live_sessions_by_database) -> None:
    """End a Database's Active sessions at expiresAt, or when no Role allows them any more, and
    keep the Database's ``activeSessions`` (the SESSIONS column) following its sessions.

    One loop per Database rather than one Kopf daemon per session: the work per tick is a
    pass over the Database's Active sessions in the index, and memory does not grow with a
    task, a stopper and a logger per session. No object can end the loop: one that does not
    parse is skipped (its own status says why), the others go on.
    """
    ending: dict[str, asyncio.Task] = {}
    last_revalidation = time.monotonic()
    count = _SessionCount(namespace, database_name)
    while not stopped:
        now = _now()
        revalidate = time.monotonic() - last_revalidation >= memo.settings.revalidate_seconds
        traits_data = await _load_traits_data(memo) if revalidate else None
        active = list(active_sessions_by_database.get((namespace, database_name), ()))
        for body in active:
            name = body["metadata"]["name"]
            if name in ending:
                continue
            try:
                end = _due_end(body, now, namespace, databases_by_name, roles_by_namespace,
                               traits_data if revalidate else None)
            except ValidationError as error:
                log.warning("[%s/%s] not checked for expiry or revocation: %s", namespace, name,
                            error)
                continue
            if end is not None:
                ending[name] = asyncio.create_task(_finish(
                    body, name, namespace, body["metadata"]["uid"], memo, stopped,
                    databases_by_name, *end))
        if revalidate:
            last_revalidation = time.monotonic()
        # Forget a finished end only once the index no longer shows the session Active, so
        # one end is never started twice for the same session.
        still_active = {b["metadata"]["name"] for b in active}
        for name in [n for n, task in ending.items() if task.done() and n not in still_active]:
            ending.pop(name)
        await count.follow(memo, databases_by_name, live_sessions_by_database)
        await stopped.wait(memo.settings.expiry_tick_seconds)


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
        body = next(iter(databases_by_name.get(key, ())), None)
        if body is None:
            return
        live = len(set(live_sessions_by_database.get(key, ())))
        shown = (body.get("status") or {}).get("activeSessions")
        if shown == self._written:
            self._written = None  # caught up
        if live == (shown if self._written is None else self._written):
            return
        await memo.kube.patch_status(GROUP, VERSION, "databases", self.namespace,
                                     self.database_name, {"activeSessions": live})
        self._written = live


def _due_end(body, now: datetime, namespace: str, databases_by_name, roles_by_namespace,
             traits_data) -> tuple[str, str, str] | None:
    """How an Active session must end now, if it must: expired, or (when ``traits_data`` is
    given, on a revalidation tick) no longer allowed."""
    expires_at = _parse_ts(body["status"]["expiresAt"])
    if expires_at <= now:
        return (SessionPhase.EXPIRED, Reason.EXPIRED, f"the session expired at {_ts(expires_at)}")
    if traits_data is not None:
        return _revoked(body, namespace, databases_by_name, roles_by_namespace, traits_data)
    return None


def _revoked(body, namespace, databases_by_name, roles_by_namespace, traits_data):
    session = DatabaseSession.model_validate(body)
    try:
        # A Database being deleted waits for its sessions; it does not end them.
        database = _database(databases_by_name, namespace, session.spec.database_ref.name,
                             opening=False)
        _decide(session, database, roles_by_namespace, namespace,
                user_traits(traits_data, session.spec.user))
    except Outcome as outcome:
        if outcome.terminal:
            return (SessionPhase.ENDED, Reason.ACCESS_REVOKED,
                    f"access was revoked: {outcome.message}")
    return None


async def _finish(body, name, namespace, uid, memo, stopped, databases_by_name, phase, reason,
                  message):
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
    status["phase"] = phase
    # Stalled, not merely not-ready: the lease will not progress again until a person deletes
    # (and re-creates) the session. kstatus then reports Failed, so a Flux `wait` on a session
    # in Git fails at once instead of timing out on an InProgress that can never change.
    _set_conditions(body, status, False, reason, message, terminal=True)
    await memo.kube.patch_status(GROUP, VERSION, "databasesessions", namespace, name, status)
