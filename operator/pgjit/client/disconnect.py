"""``pgjit disconnect``: end sessions that outlived psql (``connect --keep-session``), or that a
killed ``pgjit connect`` left behind, without waiting for their expiry."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import kubernetes
from kubernetes.client.rest import ApiException

from .identity import whoami
from .sessions import Sessions, SessionError

EXIT_OK, EXIT_ERROR = 0, 1


def disconnect(api: kubernetes.client.ApiClient, namespace: str, names: Sequence[str], *,
               all_mine: bool, wait: bool, timeout: float, report: Callable[[str], None]) -> int:
    """End the named sessions, or with ``all_mine`` every session this command line created for
    the current user (matched by spec.user, so other people's sessions are never touched).
    With ``wait``, return only once each is gone, i.e. access is revoked."""
    sessions = Sessions(api, namespace)
    try:
        if all_mine:
            me = whoami(api)
            names = [s["metadata"]["name"] for s in sessions.list(user=me.user, cli_only=True)]
            if not names:
                report(f"no sessions of {me.user} created by pgjit connect in namespace"
                       f" {namespace}")
                return EXIT_OK
    except ApiException as exc:
        report(f"cannot list your sessions: {exc.status} {exc.reason}")
        return EXIT_ERROR
    code = EXIT_OK
    for name in names:
        try:
            if not all_mine and sessions.get(name) is None:
                report(f'session {name} not found in namespace {namespace}')
                code = EXIT_ERROR
                continue
            if wait:
                sessions.end(name, timeout=timeout, report=report)
            elif sessions.delete(name):
                report(f"session {name} is being ended by the operator")
            else:
                report(f"session {name} was already gone")
        except SessionError as exc:
            report(str(exc))
            code = EXIT_ERROR
        except ApiException as exc:
            report(f"cannot end session {name}: {exc.status} {exc.reason}")
            code = EXIT_ERROR
    return code
