"""Opening a session: decide, activate the user, issue credentials, write the Secret."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime

import kopf

from ..api.database import Database
from ..api.session import DatabaseSession, DatabaseSessionStatus
from ..core import policy
from ..core.boundaries import exact_names
from ..core.object_labels import assignments_for
from ..core.credential_access import secret_reader_binding, secret_reader_role
from ..core.credentials_secret import (ConnectionTarget, certificate_secret_data,
                                       iam_secret_data, password_secret_data, secret_annotations,
                                       secret_labels)
from ..core.naming import postgres_username
from ..engine import Activation, ActivationRequest, EngineError
from ..kube.client import NotOwned
from ..vocabulary import CredentialsType, Reason, SessionPhase, SSLMode
from . import metrics
from .indexes import session_id
from .approval_gate import approval_start
from .decisions import (Outcome, all_of, database_for, decide, parse_ts,
                        set_session_conditions, to_second, traits_of, ts, utc_now)
from .passwords import own_password, server_key, shared_password
from .status import written

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """What the Roles allow this session, on which Database, until when."""

    session: DatabaseSession
    database: Database
    decision: policy.Decision
    #: When the session's time started: its creation, or its approval.
    created: datetime
    expires_at: datetime


@dataclass(frozen=True)
class Credentials:
    """The credentials Secret's data, and the expiry it states (the certificate's, if earlier)."""

    data: dict[str, str]
    expires_at: datetime
    #: Why the session ends earlier than it asked, for the Ready message.
    notes: tuple[str, ...]


async def open_session(body, name, namespace, uid, memo, indexes, status: dict, *,
                       first_attempt: bool = False, reviews=()) -> None:
    """Open one session, step by step; every step raises an :class:`Outcome` to stop."""
    (databases_by_name, roles_by_namespace, active_sessions_by_user, label_rules,
     live_sessions_by_id) = indexes
    plan = await _plan(body, namespace, memo, databases_by_name, roles_by_namespace, reviews,
                       status)
    activation, password = await _activate(body, plan, session_id(namespace, name, uid), memo,
                                           namespace, databases_by_name, active_sessions_by_user,
                                           label_rules, first_attempt=first_attempt)
    credentials = await _credentials(plan, activation.username, password, memo, namespace)
    _ensure_still_exists(live_sessions_by_id, namespace, name, uid)
    await _publish(body, plan, credentials, memo, namespace, name, uid, activation.username)
    message = f"PostgreSQL user {activation.username} is active until " \
              f"{ts(credentials.expires_at)}"
    if credentials.notes:
        message += f" ({'; '.join(credentials.notes)})"
    status.update(written(
        DatabaseSessionStatus, phase=SessionPhase.ACTIVE, username=activation.username,
        database_roles=list(activation.roles), permissions=activation.permissions_summary,
        user_provisioning=plan.decision.mode, matched_roles=list(plan.decision.matched_roles),
        expires_at=to_second(credentials.expires_at),
        secret_name=plan.session.credentials_secret_name))
    set_session_conditions(body, status, True, Reason.ACTIVE, message)
    metrics.PROVISIONING_LATENCY.observe(max(0.0, (utc_now() - plan.created).total_seconds()))


async def _plan(body, namespace: str, memo, databases_by_name, roles_by_namespace, reviews,
                status: dict) -> Plan:
    session = DatabaseSession.model_validate(body)
    database = database_for(databases_by_name, namespace, session.spec.database_ref.name)
    traits = await traits_of(memo, session.spec.user)
    try:
        decision = decide(session, database, roles_by_namespace, namespace, traits)
    except Outcome as refusal:
        if refusal.reason != Reason.ACCESS_DENIED:
            raise
        # Refusing is for good, and the index may not have seen yet a Role applied together
        # with the session (one `kubectl apply` or GitOps sync): decide once more on the
        # namespace's Roles as the API server has them now. A request on refusals only.
        current = {namespace: await memo.kube.list_roles(namespace)}
        decision = decide(session, database, current, namespace, traits)
    # A session that needs approval waits in the gate, and its time starts at the approval.
    created = approval_start(body, session, decision, reviews, status) or \
        parse_ts(body["metadata"]["creationTimestamp"])
    expires_at = created + decision.duration
    if expires_at <= utc_now():
        # Possibly after holding a lease (the operator stopped mid-activation): end it too.
        raise Outcome(SessionPhase.EXPIRED, Reason.EXPIRED,
                      f"the session expired at {ts(expires_at)} before it "
                      "could be opened", release=True)
    return Plan(session, database, decision, created, expires_at)


async def _activate(body, plan: Plan, lease_id: str, memo, namespace: str, databases_by_name,
                    active_sessions_by_user, label_rules, *, first_attempt: bool = False
                    ) -> tuple[Activation, str | None]:
    """Activate the user; the password in effect (None for the passwordless types)."""
    session, database, decision = plan.session, plan.database, plan.decision
    # Certificates and IAM tokens are the client's own proof: the user gets no password at all.
    passwordless = database.spec.credentials.type in (CredentialsType.CLIENT_CERTIFICATE,
                                                      CredentialsType.AWS_IAM)
    engine = await memo.engines.engine_for(database, namespace)
    username = postgres_username(session.spec.user)
    user_key = server_key(database, username)
    async with memo.shared_passwords.lock(user_key):
        # Serialized per user, so that a session sharing the user finds the password the one
        # activating it has just set (in memory: the index learns it is Active only later).
        password = shared = None
        if not passwordless:
            password = await own_password(memo, namespace, session, first_attempt=first_attempt)
            # What this session would hand out should the engine find the user shared, known
            # before it acts: the engine refuses to share a user whose password is unknown.
            shared = await shared_password(memo, namespace, session, database, username,
                                           databases_by_name, active_sessions_by_user)
        if plan.expires_at <= utc_now():
            # It expired while it waited (for the server, or for this lock): an expired
            # session, not the invalid request the engine would call it.
            raise Outcome(SessionPhase.EXPIRED, Reason.EXPIRED,
                          f"the session expired at {ts(plan.expires_at)} before it could be "
                          "opened", release=True)
        request = ActivationRequest(
            session_id=lease_id, identity=session.spec.user,
            database=session.spec.database_name, roles=tuple(decision.database_roles),
            expires_at=plan.expires_at, mode=str(decision.mode),
            permissions=_with_object_labels(decision.permissions, database, label_rules),
            password=password,
            grantable_by_name=exact_names(database.spec.grantable_roles),
            database_object=database.metadata.name,
            shared_password_known=passwordless or shared is not None)
        try:
            activation = await engine.activate(request)
        except EngineError as error:
            metrics.POSTGRES_OPERATIONS.labels("activate", "error").inc()
            if error.transient:
                # Another session of the user is being opened: it hands out the password soon.
                retry = 2 if error.reason == Reason.USER_SHARED else 10
                raise Outcome(SessionPhase.PENDING, error.reason, error.message, retry=retry)
            raise Outcome(SessionPhase.FAILED, error.reason, error.message, terminal=True)
        metrics.POSTGRES_OPERATIONS.labels("activate", "success").inc()
        if activation.drift:
            metrics.DRIFT_CORRECTED.labels("activation").inc()
            report_drift(body, activation.username, activation.drift)
        if password is not None:
            if activation.shared:
                # The user kept the password it had (live credentials must keep working).
                password = shared
            assert password is not None  # the engine shares only a user whose password is known
            memo.shared_passwords.remember(user_key, password)
    return activation, password


async def _credentials(plan: Plan, username: str, password: str | None, memo,
                       namespace: str) -> Credentials:
    database, expires_at = plan.database, plan.expires_at
    notes = [str(plan.decision.duration_message)] if plan.decision.duration_capped else []
    tls_mode = database.spec.tls.ssl_mode if database.spec.tls else SSLMode.PREFER
    target = ConnectionTarget(username, database.spec.host, database.spec.port,
                              plan.session.spec.database_name, tls_mode)
    server_ca = await _server_ca(memo, namespace, database)
    credentials_type = database.spec.credentials.type
    if credentials_type == CredentialsType.AWS_IAM and database.spec.admin.aws_iam is not None:
        return Credentials(iam_secret_data(target, database.spec.admin.aws_iam.region,
                                           expires_at, server_ca), expires_at, tuple(notes))
    if credentials_type != CredentialsType.CLIENT_CERTIFICATE:
        assert password is not None  # the password type always has one (see _activate)
        return Credentials(password_secret_data(target, password, expires_at, server_ca),
                           expires_at, tuple(notes))
    ca_ref = database.spec.credentials.client_ca_secret_ref
    ca = await memo.kube.read_secret(namespace, ca_ref.name) if ca_ref else None
    if not ca or "tls.crt" not in ca or "tls.key" not in ca:
        raise Outcome(SessionPhase.PENDING, Reason.SECRET_NOT_FOUND,
                      "the client CA Secret of the Database "
                      "(credentials.clientCASecretRef, keys tls.crt and tls.key) is missing",
                      retry=30)
    # Imported here, not at the top: `cryptography` is 8 MB of RSS that an operator whose
    # Databases hand out passwords never needs (README, Performance).
    from ..core.certificates import issue_client_certificate

    try:
        issued = issue_client_certificate(ca["tls.crt"], ca["tls.key"], username, expires_at)
    except ValueError as exc:
        raise Outcome(SessionPhase.FAILED, Reason.INVALID_CLIENT_CA,
                      str(exc), terminal=True, release=True)
    if issued.capped:
        # The credentials end with the certificate: every expiry shown must be its notAfter,
        # and the lease loop ends the session then (VALID UNTIL stays later, harmlessly).
        expires_at = issued.not_after
        notes.append(f"the certificate expires at {ts(expires_at)}, when the Database's "
                     "client CA does")
    data = certificate_secret_data(target, issued.cert_pem, issued.key_pem, ca["tls.crt"],
                                   expires_at, server_ca)
    return Credentials(data, expires_at, tuple(notes))


def _ensure_still_exists(live_sessions_by_id, namespace: str, name: str, uid: str) -> None:
    """Refuse to write credentials for a session the watch has seen go.

    Kopf runs this handler only once its finalizer is on the session, so a session can vanish
    meanwhile only if someone strips the finalizer by hand. The index, which drops a session
    on its DELETED event, says so without a request to the API server; should the event come
    only after the Secret is written, the Secret goes with its owner (garbage collection) and
    the health check's sweep ends the lease.
    """
    if session_id(namespace, name, uid) not in live_sessions_by_id:
        # Nothing may outlive it: release the lease now, and write no credentials.
        log.info("[%s/%s] deleted while being opened; releasing its lease", namespace, name)
        raise Outcome(SessionPhase.ENDED, Reason.DELETED,
                      "the session was deleted while it was being opened",
                      release=True)


async def _publish(body, plan: Plan, credentials: Credentials, memo, namespace: str, name: str,
                   uid: str, username: str) -> None:
    """Write the Secret (and, if configured, the user's access to it)."""
    secret_name = plan.session.credentials_secret_name
    log.info("[%s/%s] PostgreSQL user %r active; writing Secret %s", namespace, name,
             username, secret_name)
    owner = {"apiVersion": body["apiVersion"], "kind": body["kind"], "name": name, "uid": uid}
    labels = secret_labels(name)
    writes = [memo.kube.write_secret(namespace, secret_name, credentials.data, labels=labels,
                                     owner=owner,
                                     annotations=secret_annotations(name, credentials.expires_at))]
    if memo.settings.secret_access:
        # The Role alone grants nothing, so it is written alongside the Secret.
        writes.append(memo.kube.write_reader_role(
            namespace, secret_reader_role(secret_name, labels), owner=owner))
    try:
        await all_of(writes)
        if memo.settings.secret_access:
            # The user is bound only once the Secret is known to be this session's: a
            # spec.secretName naming someone else's Secret must not be readable by the user
            # even for the moment before the conflict is found and cleaned up.
            await memo.kube.bind_reader_role(
                namespace, secret_reader_binding(secret_name, plan.session.spec.user, labels),
                owner=owner)
    except NotOwned as conflict:
        raise Outcome(SessionPhase.FAILED, Reason.SECRET_CONFLICT,
                      f"{conflict}; choose another spec.secretName "
                      "(the default is <session name>-credentials)", terminal=True, release=True)


def _with_object_labels(permissions, database: Database, label_rules):
    """The permission rules with the labels the Database's ObjectLabelRules give, when some
    rule selects objects by label (computed against the catalog at activation)."""
    if not permissions.match_labels:
        return permissions
    return replace(permissions, object_labels=assignments_for(
        database, list(label_rules)))


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
