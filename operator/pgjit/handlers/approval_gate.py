"""The approval gate: where a session that needs approval waits, before anything is created.

Opening a session calls :func:`approval_start` once the Roles have decided what it may get and
before PostgreSQL is touched. A session whose allowing Roles ask for no approval passes at once.
One that needs approval is tallied (core.approval) against its reviews, as the index of reviews
holds them, and either goes on (approved: its time starts at the approval), or stops with an
Outcome: waiting (AwaitingApproval, Pending, the handler done until a review or the deadline
pokes the session, see approvals.py), denied or expired (Failed). Every evaluation writes what
it saw into the status (``approval``, ``reviews``), so the audit trail is the object itself.

Nothing here is kept in memory between evaluations: a restarted operator reads the same reviews
and reaches the same verdict.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Iterable, Mapping

import kopf

from .. import GROUP, VERSION
from ..api.session import MAX_RECORDED_REVIEWS, DatabaseSession, DatabaseSessionStatus
from ..core import approval
from ..core.policy import Decision
from ..vocabulary import Reason, ReviewDecision, SessionPhase
from . import metrics
from .decisions import Outcome, parse_ts, utc_now
from .status import written

log = logging.getLogger(__name__)
#: status.approval's lists hold at most this many (the CRD's maxItems).
MAX_LISTED_REVIEWERS, MAX_LISTED_ROLES = 1024, 256


def review_entry(namespace: str, name: str, uid: str, spec: Mapping, meta: Mapping) -> dict:
    """What the index of reviews keeps of one DatabaseSessionReview (see approvals.py)."""
    return {"namespace": namespace, "name": name, "uid": uid,
            "reviewer": spec.get("reviewer"), "groups": list(spec.get("reviewerGroups") or ()),
            "decision": spec.get("decision"), "reason": spec.get("reason"),
            "created": meta.get("creationTimestamp"),
            "owners": [ref.get("uid") for ref in meta.get("ownerReferences") or ()
                       if ref.get("kind") == "DatabaseSession" and ref.get("uid")]}


def _review(entry: Mapping) -> approval.Review | None:
    """The tally's view of an index entry; None for one the API server should have refused."""
    try:
        return approval.Review(
            name=str(entry["name"]), reviewer=str(entry["reviewer"]),
            decision=ReviewDecision(entry["decision"]), created=parse_ts(entry["created"]),
            groups=tuple(entry.get("groups") or ()), reason=entry.get("reason"),
            owner_uids=tuple(entry.get("owners") or ()))
    except (KeyError, TypeError, ValueError):
        log.warning("[%s/%s] review skipped: it does not parse", entry.get("namespace"),
                    entry.get("name"))
        return None


def approval_start(body, session: DatabaseSession, decision: Decision,
                   reviews: Iterable[Mapping], status: dict, *,
                   now: datetime | None = None) -> datetime | None:
    """When the session's time starts if it needed approval and has it; None if it needs none.

    Raises :class:`Outcome` while it waits, and when it is refused. Writes ``approval``,
    ``reviews`` and (once approved) ``approvedAt`` into ``status``.
    """
    requirement = decision.approval
    if requirement is None:
        return None
    entries = list(reviews)
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    if requirement.require_reason and not approval.has_reason(session.spec.reason):
        raise Outcome(SessionPhase.FAILED, Reason.ACCESS_DENIED,
                      f"Role(s) {', '.join(requirement.roles)} require a reason for access:"
                      " create the session with spec.reason (pgjit connect --reason TEXT)",
                      terminal=True)
    tally = approval.tally(
        requirement, requester=session.spec.user, session_uid=body["metadata"]["uid"],
        created=parse_ts(body["metadata"]["creationTimestamp"]),
        reviews=filter(None, map(_review, entries)), now=now or utc_now(),
        max_records=MAX_RECORDED_REVIEWS)
    previous = body.get("status") or {}
    # Bounded as the CRD bounds them: many Roles may each list many reviewers.
    status.update(written(
        DatabaseSessionStatus,
        approval={"required": requirement.required, "approvals": len(tally.approvers),
                  "reviewers": [{"kind": r.kind, "name": r.name}
                                for r in requirement.reviewers][:MAX_LISTED_REVIEWERS],
                  "roles": list(requirement.roles)[:MAX_LISTED_ROLES],
                  "deadline": tally.deadline},
        reviews=[_record(r) for r in tally.records] or None))
    _report_new_reviews(body, tally.records, previous.get("reviews") or (), entries)
    match tally.verdict:
        case approval.Verdict.DENIED:
            raise Outcome(SessionPhase.FAILED, Reason.DENIED, tally.message, terminal=True)
        case approval.Verdict.EXPIRED:
            raise Outcome(SessionPhase.FAILED, Reason.APPROVAL_EXPIRED, tally.message,
                          terminal=True)
        case approval.Verdict.WAITING:
            # No retry: the handler is done until a review or the deadline pokes the session.
            raise Outcome(SessionPhase.PENDING, Reason.AWAITING_APPROVAL,
                          f"{tally.message}; review with: pgjit review {name} -n {namespace}"
                          " --approve (or --deny --reason TEXT)")
    assert tally.approved_at is not None
    status.update(written(DatabaseSessionStatus, approved_at=tally.approved_at))
    if not previous.get("approvedAt"):
        kopf.event(body, type="Normal", reason=Reason.APPROVED, message=tally.message)
        metrics.APPROVAL_LATENCY.observe(
            max(0.0, (tally.approved_at - parse_ts(body["metadata"]["creationTimestamp"]))
                .total_seconds()))
    return tally.approved_at


def _record(record: approval.Record) -> dict[str, Any]:
    out: dict[str, Any] = {"name": record.name, "reviewer": record.reviewer,
                           "decision": record.decision, "time": record.time,
                           "counted": record.counted, "message": record.message[:1024]}
    if record.reason:
        out["reason"] = record.reason  # absent, not null: the CRD has no nullable fields
    return out


def _report_new_reviews(body, records: Iterable[approval.Record], previous: Iterable[Mapping],
                        entries: Iterable[Mapping]) -> None:
    """One Event per review the status did not list yet: on the session, and for an ignored
    review also on the review itself, so its author sees why (``kubectl describe dbreview``)."""
    seen = {entry.get("name") for entry in previous}
    uids = {entry.get("name"): entry.get("uid") for entry in entries}
    for record in records:
        if record.name in seen:
            continue
        message = f"review {record.name} by {record.reviewer} ({record.decision}): " \
                  f"{record.message}"[:1024]
        if record.counted:
            kopf.event(body, type="Normal", reason=Reason.REVIEW_COUNTED, message=message)
            continue
        kopf.event(body, type="Warning", reason=Reason.REVIEW_IGNORED, message=message)
        if uids.get(record.name):
            review: Any = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatabaseSessionReview",
                      "metadata": {"name": record.name, "uid": uids[record.name],
                                   "namespace": body["metadata"]["namespace"]}}
            kopf.event(review, type="Warning", reason=Reason.REVIEW_IGNORED,
                       message=f"not counted for session {body['metadata']['name']}: "
                               f"{record.message.removeprefix('not counted: ')}"[:1024])

