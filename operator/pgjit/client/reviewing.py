"""``pgjit review`` and ``pgjit requests``: reviewing sessions that wait for approval, as the
person running the command line.

A review is created as the caller (SelfSubjectReview says who that is; the admission policy
holds the review to it), owned by the session, and then followed until the operator has counted
it, so the reviewer learns at once whether it counted and what it did to the session.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from .. import GROUP, VERSION
from ..api.review import DatabaseSessionReview
from ..vocabulary import ReviewDecision
from .identity import whoami
from .kubeconfig import api_error
from .progress import state_line
from .reviews import pending_for, recorded, review_manifest, why_not_reviewer
from .sessions import POLL_SECONDS, Sessions

EXIT_OK, EXIT_ERROR = 0, 1



def review(api: kubernetes.client.ApiClient, namespace: str, name: str, *,
           decision: ReviewDecision, reason: str | None, report: Callable[[str], None],
           wait_seconds: float = 15.0) -> int:
    """Review the session ``name``; 0 once the operator counted it (or has not looked yet),
    1 when it did not count or could not be created."""
    sessions = Sessions(api, namespace)
    try:
        me = whoami(api)
        session = sessions.get(name)
    except ApiException as exc:
        report(f"cannot read session {name}: {api_error(exc)}")
        return EXIT_ERROR
    if session is None:
        report(f"session {name} not found in namespace {namespace}")
        return EXIT_ERROR
    refusal = why_not_reviewer(session, me)
    if refusal:
        report(refusal)
        return EXIT_ERROR
    body = review_manifest(me, session, decision, reason)
    try:
        created = kubernetes.client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, DatabaseSessionReview.plural, body)
    except ApiException as exc:
        report(f"cannot create the review: {api_error(exc)}")
        return EXIT_ERROR
    review_name = created["metadata"]["name"]
    report(f"review {review_name} created: {decision} session {name} of"
           f" {session['spec']['user']}")
    return _follow(sessions, name, review_name, wait_seconds, report)


def _follow(sessions: Sessions, name: str, review_name: str, wait_seconds: float,
            report: Callable[[str], None]) -> int:
    deadline = time.monotonic() + wait_seconds
    while True:
        session = sessions.get(name)
        if session is None:
            report(f"session {name} is gone")
            return EXIT_ERROR
        record = recorded(session, review_name)
        if record is not None:
            report(f"review {review_name} {record.get('message')}")
            report(f"session {name}: {state_line(session)}")
            return EXIT_OK if record.get("counted") else EXIT_ERROR
        if time.monotonic() > deadline:
            report(f"the operator has not recorded review {review_name} within"
                   f" {wait_seconds:.0f}s; it counts once it does (see kubectl get dbsession"
                   f" {name} -o yaml, status.reviews)")
            return EXIT_OK
        time.sleep(POLL_SECONDS)


def requests(api: kubernetes.client.ApiClient, namespace: str | None
             ) -> list[Mapping[str, Any]]:
    """Sessions of ``namespace`` (None: every namespace) that wait for the caller's review."""
    return pending_for(Sessions(api, namespace).list(), whoami(api))
