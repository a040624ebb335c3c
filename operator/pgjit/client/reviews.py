"""The reviewer's side of access requests, what ``pgjit review`` and ``pgjit requests`` write
and show. Pure.

Which sessions await a person's review is read from each session's own status
(``status.approval``, written by the operator's gate): the reviewers the Roles named, and the
reviews already counted. The CLI decides nothing the operator would not: its filter only spares
reviewers the sessions where their review could not count.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import yaml

from .. import GROUP, VERSION
from ..api.role import Subject
from ..core.approval import may_review, reviewers_of
from ..vocabulary import Reason, ReviewDecision, SessionPhase
from .identity import Identity, session_groups
from .naming import slug
from .output import expiry_cell, format_table
from .progress import phase, ready_condition

#: generateName of a review may be this long (the API server adds 5 characters; names are
#: DNS subdomains of at most 253).
_MAX_REVIEW_PREFIX = 200


def awaiting_approval(session: Mapping[str, Any]) -> bool:
    """Whether the session waits for reviews (Pending, Ready reason AwaitingApproval)."""
    return phase(session) == SessionPhase.PENDING and \
        ready_condition(session).get("reason") == Reason.AWAITING_APPROVAL


def _reviewers(session: Mapping[str, Any]) -> tuple:
    approval = (session.get("status") or {}).get("approval") or {}
    subjects = []
    for item in approval.get("reviewers") or ():
        try:
            subjects.append(Subject.model_validate(item))
        except ValueError:
            continue  # a reviewer this version cannot read cannot be matched either
    return reviewers_of(subjects)


def own_review(session: Mapping[str, Any], identity: Identity) -> Mapping[str, Any] | None:
    """The caller's review of the session as the status records it, if any (the last one)."""
    mine = [r for r in (session.get("status") or {}).get("reviews") or ()
            if r.get("reviewer") == identity.user]
    return mine[-1] if mine else None


def why_not_reviewer(session: Mapping[str, Any], identity: Identity) -> str | None:
    """Why the caller's review of ``session`` would not count, or None if it would."""
    name = (session.get("metadata") or {}).get("name")
    if not awaiting_approval(session):
        ready = ready_condition(session)
        state = f"{phase(session)}" + (f" ({ready.get('reason')})" if ready.get("reason") else "")
        return f"session {name} is not waiting for review: it is {state}"
    if (session.get("spec") or {}).get("user") == identity.user:
        return (f"session {name} is your own: nobody reviews their own access (ask one of its"
                " reviewers)")
    reviewers = _reviewers(session)
    if may_review(reviewers, identity.user, identity.groups) is None:
        listed = ", ".join(r.describe() for r in reviewers) or "none"
        return (f"you ({identity.user}) are not among the reviewers of session {name}"
                f" ({listed}): your review would not count")
    return None


def pending_for(sessions: Sequence[Mapping[str, Any]], identity: Identity
                ) -> list[Mapping[str, Any]]:
    """The sessions that wait for the caller's review: waiting, the caller may review them, and
    has not yet done so."""
    return [s for s in sessions
            if why_not_reviewer(s, identity) is None and own_review(s, identity) is None]


def review_name_prefix(session_name: str, reviewer: str) -> str:
    """``<session>-<reviewer>-``: whose review of what, at a glance in ``kubectl get dbreview``."""
    prefix = f"{session_name}-{slug(reviewer) or 'reviewer'}"
    return prefix[:_MAX_REVIEW_PREFIX].rstrip("-.") + "-"


def review_manifest(identity: Identity, session: Mapping[str, Any], decision: ReviewDecision,
                    reason: str | None) -> dict[str, Any]:
    """The DatabaseSessionReview ``pgjit review`` creates: the caller's own word (the admission
    policy refuses any other reviewer), owned by the session so that it goes with it."""
    metadata = session["metadata"]
    spec: dict[str, Any] = {"sessionRef": {"name": metadata["name"]}, "decision": str(decision),
                            "reviewer": identity.user}
    groups = session_groups(identity)
    if groups:
        spec["reviewerGroups"] = list(groups)
    if reason:
        spec["reason"] = reason
    owner = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatabaseSession",
             "name": metadata["name"], "uid": metadata["uid"]}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatabaseSessionReview",
            "metadata": {"generateName": review_name_prefix(metadata["name"], identity.user),
                         "ownerReferences": [owner]},
            "spec": spec}


def recorded(session: Mapping[str, Any], review_name: str) -> Mapping[str, Any] | None:
    """The session's record of the review ``review_name``, once the operator has counted it."""
    return next((r for r in (session.get("status") or {}).get("reviews") or ()
                 if r.get("name") == review_name), None)


# --------------------------------------------------------------------------------------------
# pgjit requests


def request_record(session: Mapping[str, Any]) -> dict[str, Any]:
    """The facts about one waiting session that ``pgjit requests`` shows."""
    metadata, spec = session.get("metadata") or {}, session.get("spec") or {}
    approval = (session.get("status") or {}).get("approval") or {}
    return {
        "namespace": metadata.get("namespace"),
        "name": metadata.get("name"),
        "user": spec.get("user"),
        "database": (spec.get("databaseRef") or {}).get("name"),
        "databaseName": spec.get("databaseName"),
        "databaseRoles": spec.get("databaseRoles") or [],
        "duration": spec.get("duration"),
        "reason": spec.get("reason"),
        "approvals": approval.get("approvals", 0),
        "required": approval.get("required"),
        "deadline": approval.get("deadline"),
    }


def requests_json(sessions: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps([request_record(s) for s in sessions], indent=2, ensure_ascii=False) + "\n"


def requests_yaml(sessions: Sequence[Mapping[str, Any]]) -> str:
    return yaml.safe_dump([request_record(s) for s in sessions], sort_keys=False,
                          allow_unicode=True)


def requests_table(sessions: Sequence[Mapping[str, Any]], *, all_namespaces: bool = False,
                   now: datetime | None = None) -> str:
    """NAME, USER, DATABASE, DBNAME, DURATION, APPROVALS, EXPIRES, REASON (NAMESPACE first
    with ``-A``)."""
    if not sessions:
        return "No sessions wait for your review.\n"
    now = now or datetime.now(timezone.utc)
    header = ["NAME", "USER", "DATABASE", "DBNAME", "DURATION", "APPROVALS", "EXPIRES", "REASON"]
    rows = []
    for session in sessions:
        r = request_record(session)
        row = [r["name"], r["user"], r["database"], r["databaseName"], r["duration"],
               f"{r['approvals']}/{r['required']}", expiry_cell(r["deadline"], now),
               _one_line(r["reason"]) or "-"]
        rows.append([r["namespace"], *row] if all_namespaces else row)
    if all_namespaces:
        header.insert(0, "NAMESPACE")
    return format_table(header, rows)


def _one_line(text: str | None, limit: int = 60) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
