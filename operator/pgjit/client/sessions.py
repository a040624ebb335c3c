"""DatabaseSessions through the API server, as the person running the command line.

Create, wait until Active, read the credentials, end (delete and wait until gone), list. Waiting
polls ``get`` a few times a second: a CLI waits seconds at most, and polling survives the
signal handling of ``connect`` (an exception raised in a handler cannot leave a watch stream
half-read) and API server restarts without any resume logic.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from .. import GROUP, VERSION
from ..api.session import DatabaseSession
from ..api.common import format_duration
from ..vocabulary import Reason, SessionPhase
from .identity import Identity, session_extra, session_groups
from .naming import MANAGED_BY_LABEL, MANAGED_BY_CLI, cli_labels, session_name_prefix
from .progress import (FINAL_PHASES, ChangeReporter, failure_message, phase, ready_condition,
                       state_line)

PLURAL = DatabaseSession.plural
POLL_SECONDS = 0.2
#: How long a Secret that the operator has just written may take to become readable: the
#: per-session RBAC grant reaches the API server's authorizer cache a moment after it is made.
SECRET_GRACE_SECONDS = 10.0


class SessionError(Exception):
    """The session did not become usable; the message says why, in the operator's words."""


def session_manifest(identity: Identity, database: str, database_name: str, *,
                     database_roles: Sequence[str] = (), duration: timedelta | None = None,
                     reason: str | None = None) -> dict[str, Any]:
    """The DatabaseSession ``pgjit connect`` creates for ``identity``. Pure.

    Groups and extra are the identity's own, so the admission policy (spec ⊆ requester) holds.
    """
    spec: dict[str, Any] = {"user": identity.user,
                            "databaseRef": {"name": database},
                            "databaseName": database_name}
    groups = session_groups(identity)
    if groups:
        spec["groups"] = list(groups)
    extra = session_extra(identity)
    if extra:
        spec["extra"] = extra
    if database_roles:
        spec["databaseRoles"] = list(database_roles)
    if duration is not None:
        spec["duration"] = format_duration(duration)
    if reason and reason.strip():
        spec["reason"] = reason.strip()
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatabaseSession",
            "metadata": {"generateName": session_name_prefix(identity.user, database),
                         "labels": cli_labels()},
            "spec": spec}


def escape_field_value(value: str) -> str:
    """``value`` escaped for a field selector, as the API server unescapes it: user names may
    hold ``,`` or ``=``, which would otherwise split the selector."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


class Sessions:
    """DatabaseSessions of one namespace (or of all, for listing), through one ApiClient."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str | None) -> None:
        self.namespace = namespace
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.core = kubernetes.client.CoreV1Api(api)

    # -- single sessions -----------------------------------------------------------------------

    def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                           PLURAL, dict(body))

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                            PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def wait_active(self, name: str, *, timeout: float, report: Callable[[str], None]
                    ) -> dict[str, Any]:
        """Wait until the session is Active; report each change of state.

        Raises SessionError when it reaches a final phase, disappears or the deadline passes.
        Time spent waiting for reviewers does not count towards ``timeout``: the operator ends
        that wait at the Role's pendingTimeout (ApprovalExpired, a final phase).
        """
        reporter = ChangeReporter(lambda line: report(f"session {name}: {line}"))
        started = last = time.monotonic()
        working = 0.0  # seconds spent waiting for the operator, not for reviewers
        while True:
            session = self.get(name)
            if session is None:
                raise SessionError(f"session {name} was deleted while waiting for it")
            current = phase(session)
            if current == SessionPhase.ACTIVE:
                return session
            if current in FINAL_PHASES:
                raise SessionError(f"session {name} is {current}: {failure_message(session)}")
            now = time.monotonic()
            if ready_condition(session).get("reason") != Reason.AWAITING_APPROVAL:
                working += now - last
            last, elapsed = now, now - started
            if working > timeout:
                raise SessionError(f"session {name} did not become Active within {timeout:.0f}s;"
                                   f" last state: {state_line(session)}")
            reporter.update(state_line(session), elapsed)
            time.sleep(POLL_SECONDS)

    def credentials(self, secret_name: str) -> dict[str, str]:
        """The credentials Secret's data, decoded. Retries 403/404 briefly (see
        SECRET_GRACE_SECONDS), then says which permission is missing."""
        deadline = time.monotonic() + SECRET_GRACE_SECONDS
        while True:
            try:
                secret = self.core.read_namespaced_secret(secret_name, self.namespace)
                return {key: base64.b64decode(value).decode()
                        for key, value in (secret.data or {}).items()}
            except ApiException as exc:
                if exc.status not in (403, 404) or time.monotonic() > deadline:
                    what = ("not allowed to read" if exc.status == 403 else "cannot read")
                    raise SessionError(f'{what} the credentials Secret "{secret_name}" in'
                                       f' namespace "{self.namespace}": {exc.status} {exc.reason}'
                                       ) from None
            time.sleep(POLL_SECONDS)

    def delete(self, name: str) -> bool:
        """Ask for the session's end; False when it was already gone."""
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL,
                                                        name)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def end(self, name: str, *, timeout: float, report: Callable[[str], None]) -> None:
        """Delete the session and wait until it is gone: only then has the operator locked the
        PostgreSQL user and terminated its connections. Raises SessionError at the deadline."""
        if not self.delete(name):
            report(f"session {name} was already gone")
            return
        self.wait_gone(name, timeout=timeout, report=report)

    def wait_gone(self, name: str, *, timeout: float, report: Callable[[str], None]) -> None:
        """Wait until a deleted session has disappeared (see ``end``)."""
        report(f"ending session {name}…")
        reporter = ChangeReporter(lambda line: report(f"session {name}: {line}"))
        started = time.monotonic()
        while (session := self.get(name)) is not None:
            elapsed = time.monotonic() - started
            if elapsed > timeout:
                raise SessionError(
                    f"session {name} is marked for deletion but the operator has not ended it"
                    f" within {timeout:.0f}s (last state: {state_line(session)}); access ends at"
                    f" {(session.get('status') or {}).get('expiresAt') or 'its expiry'} at the"
                    " latest")
            reporter.update(f"waiting for the operator to end it (now {state_line(session)})",
                            elapsed)
            time.sleep(POLL_SECONDS)
        report(f"session {name} ended: access revoked")

    # -- many sessions -------------------------------------------------------------------------

    def list(self, *, user: str | None = None, cli_only: bool = False) -> list[dict[str, Any]]:
        """Sessions of this namespace (all namespaces when it is None), optionally only those of
        ``user`` (a field selector: the CRD declares spec.user selectable) and only those this
        command line created."""
        kwargs: dict[str, str] = {}
        if user is not None:
            kwargs["field_selector"] = f"spec.user={escape_field_value(user)}"
        if cli_only:
            kwargs["label_selector"] = f"{MANAGED_BY_LABEL}={MANAGED_BY_CLI}"
        if self.namespace is None:
            result = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kwargs)
        else:
            result = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                               PLURAL, **kwargs)
        return sorted(result["items"], key=lambda item: (item["metadata"].get("namespace", ""),
                                                         item["metadata"]["name"]))
