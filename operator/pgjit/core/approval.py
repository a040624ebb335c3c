"""Access requests: what a session's approval needs, and what its reviews add up to. Pure.

Two questions, answered from the API's objects alone (so a restarted operator answers them the
same way, and ``pgjit explain`` and ``pgjit requests`` can ask them too):

* :func:`requirement`: given the ``spec.approval`` of the Roles that allow a session, does it
  need approval, and which? The strictest applies: the largest ``required``, the shortest
  ``pendingTimeout``, a reason if any Role asks for one, and the reviewers of all the Roles that
  ask for approval.
* :func:`tally`: given that requirement and the session's reviews, is it approved (and when),
  denied (and by whom), expired, or still waiting? Each review is recorded, counted or not,
  with the reason in words.

Who a reviewer is comes from the review's ``spec.reviewer`` and ``spec.reviewerGroups``, which
the chart's admission policy binds to the identity that created it; this module takes them as
given. A review counts only if its reviewer matches a reviewer subject, is not the session's own
user, reviews this very session (not an earlier one of the same name), arrives before the
deadline, and is the reviewer's first word; reviews are read in the order the API server created
them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from ..api.common import format_duration
from ..api.role import RoleApproval, Subject, SubjectKind
from ..vocabulary import ReviewDecision


@dataclass(frozen=True, order=True)
class Reviewer:
    """A subject that may review: a user or a group, by exact name (Kubernetes names are
    case-sensitive and never trimmed)."""

    kind: SubjectKind
    name: str

    def describe(self) -> str:
        return f"{'user' if self.kind is SubjectKind.USER else 'group'} {self.name}"


@dataclass(frozen=True)
class Requirement:
    """What a session must get before it is opened."""

    required: int
    reviewers: tuple[Reviewer, ...]
    require_reason: bool
    pending_timeout: timedelta
    #: The Roles that ask for approval, sorted.
    roles: tuple[str, ...]

    def describe_reviewers(self) -> str:
        return ", ".join(reviewer.describe() for reviewer in self.reviewers)

    def summary(self) -> str:
        """One line for people: ``2 approvals from user bob, group dba (Role prod), within 1h``."""
        approvals = "1 approval" if self.required == 1 else f"{self.required} distinct approvals"
        reason = "; a reason (spec.reason) is required" if self.require_reason else ""
        return (f"{approvals} from {self.describe_reviewers()} (Role(s) {', '.join(self.roles)}),"
                f" within {format_duration(self.pending_timeout)} of the request{reason}")

    def notes(self) -> tuple[str, ...]:
        """Remarks on a requirement that may never be met."""
        users = [r for r in self.reviewers if r.kind is SubjectKind.USER]
        if len(users) == len(self.reviewers) and len(users) < self.required:
            return (f"only {len(users)} user(s) may review but {self.required} approvals are"
                    " required: no session can be approved until more reviewers are listed",)
        return ()


def requirement(approvals: Iterable[tuple[str, RoleApproval | None]]) -> Requirement | None:
    """The combined requirement of the allowing Roles' ``(name, spec.approval)``; None when
    none of them asks for approval."""
    asking = [(name, approval) for name, approval in approvals if approval is not None]
    if not asking:
        return None
    reviewers = {Reviewer(subject.kind, subject.name)
                 for _, approval in asking for subject in approval.reviewers}
    return Requirement(
        required=max(approval.required for _, approval in asking),
        reviewers=tuple(sorted(reviewers)),
        require_reason=any(approval.require_reason for _, approval in asking),
        pending_timeout=min(approval.pending_timeout for _, approval in asking),
        roles=tuple(sorted({name for name, _ in asking})),
    )


def reviewers_of(subjects: Sequence[Subject]) -> tuple[Reviewer, ...]:
    """Subjects as reviewers (for callers holding a status' ``approval.reviewers``)."""
    return tuple(sorted({Reviewer(subject.kind, subject.name) for subject in subjects}))


def may_review(reviewers: Iterable[Reviewer], user: str, groups: Iterable[str]) -> Reviewer | None:
    """The reviewer subject that names ``user`` or one of ``groups``, if any; users first."""
    group_set = set(groups)
    matching = [r for r in reviewers
                if (r.kind is SubjectKind.USER and r.name == user)
                or (r.kind is SubjectKind.GROUP and r.name in group_set)]
    return min(matching, key=lambda r: (r.kind is not SubjectKind.USER, r.name), default=None)


def has_reason(reason: str | None) -> bool:
    """Whether a session states a reason; blank text says nothing."""
    return bool(reason and reason.strip())


# --------------------------------------------------------------------------------------------
# Reviews


@dataclass(frozen=True)
class Review:
    """What the tally reads of a DatabaseSessionReview."""

    name: str
    reviewer: str
    decision: ReviewDecision
    created: datetime
    groups: tuple[str, ...] = ()
    reason: str | None = None
    #: uids of the DatabaseSessions the review names as its owners (metadata.ownerReferences).
    owner_uids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Record:
    """One review as the session's ``status.reviews`` lists it."""

    name: str
    reviewer: str
    decision: ReviewDecision
    reason: str | None
    time: datetime
    counted: bool
    message: str


class Verdict(enum.Enum):
    WAITING = "waiting"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Tally:
    """Where a session's approval stands."""

    verdict: Verdict
    requirement: Requirement
    deadline: datetime
    records: tuple[Record, ...]
    #: Reviewers whose approvals counted, in the order they came.
    approvers: tuple[str, ...] = ()
    #: The review that completed the approval: the session's time starts at its creation.
    approved_at: datetime | None = None
    #: The counted denial that ended the session.
    denial: Record | None = None
    #: Records left out of ``records`` because the status has room for fewer.
    omitted: int = 0
    message: str = field(default="")


def _ignored(review: Review, why: str) -> Record:
    return Record(review.name, review.reviewer, review.decision, review.reason, review.created,
                  False, f"not counted: {why}")


def _order(reviews: Iterable[Review]) -> list[Review]:
    # Creation timestamps have one-second precision; the name breaks ties the same way on
    # every evaluation, so a restarted operator reaches the same verdict.
    return sorted(reviews, key=lambda r: (r.created, r.name))


def tally(req: Requirement, *, requester: str, session_uid: str, created: datetime,
          reviews: Iterable[Review], now: datetime, max_records: int = 64) -> Tally:
    """Count ``reviews`` of the session ``session_uid`` of ``requester``, created at ``created``.

    ``now`` only decides whether a session that is not approved has expired; whether a review
    came in time is judged by its creation time, which the API server sets.
    """
    deadline = created + req.pending_timeout
    records: list[Record] = []
    approvers: list[str] = []
    approved_at: datetime | None = None
    denial: Record | None = None
    for review in _order(reviews):
        if review.owner_uids and session_uid not in review.owner_uids:
            records.append(_ignored(review, "it belongs to an earlier session of the same name"))
        elif review.created < created.replace(microsecond=0):
            records.append(_ignored(review, "it was created before this session (it reviews an"
                                            " earlier session of the same name)"))
        elif review.reviewer == requester:
            records.append(_ignored(review, f"{review.reviewer} is the session's own user;"
                                            " nobody reviews their own access"))
        elif (subject := may_review(req.reviewers, review.reviewer, review.groups)) is None:
            records.append(_ignored(review, f"{review.reviewer} is not a reviewer of Role(s)"
                                            f" {', '.join(req.roles)} (reviewers:"
                                            f" {req.describe_reviewers()})"))
        elif review.created > deadline:
            records.append(_ignored(review, "it came after the request expired"
                                            f" ({_ts(deadline)})"))
        elif approved_at is not None or denial is not None:
            records.append(_ignored(review, "the session was already "
                                            + ("approved" if denial is None else "denied")))
        elif review.decision is ReviewDecision.DENY:
            denial = Record(review.name, review.reviewer, review.decision, review.reason,
                            review.created, True, f"counted: denied, as {subject.describe()}")
            records.append(denial)
        elif review.reviewer in approvers:
            records.append(_ignored(review, f"{review.reviewer} has already approved; each"
                                            " reviewer counts once"))
        else:
            approvers.append(review.reviewer)
            records.append(Record(review.name, review.reviewer, review.decision, review.reason,
                                  review.created, True,
                                  f"counted: approval {len(approvers)} of {req.required}, as"
                                  f" {subject.describe()}"))
            if len(approvers) >= req.required:
                approved_at = review.created
    kept, omitted = _bounded(records, max_records)
    if denial is not None:
        verdict = Verdict.DENIED
    elif approved_at is not None:
        verdict = Verdict.APPROVED
    elif now >= deadline:
        verdict = Verdict.EXPIRED
    else:
        verdict = Verdict.WAITING
    result = Tally(verdict, req, deadline, kept, tuple(approvers), approved_at, denial, omitted)
    return replace(result, message=_message(result))


def _bounded(records: list[Record], limit: int) -> tuple[tuple[Record, ...], int]:
    """At most ``limit`` records in creation order, the counted ones always among them: a flood
    of ignored reviews must not push the ones that decided out of the status."""
    if len(records) <= limit:
        return tuple(records), 0
    counted = [r for r in records if r.counted]
    room = max(0, limit - len(counted))
    ignored = [r for r in records if not r.counted][:room]
    keep = {id(r) for r in counted[:limit]} | {id(r) for r in ignored}
    kept = tuple(r for r in records if id(r) in keep)
    return kept, len(records) - len(kept)


def _ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _progress(t: Tally) -> str:
    done = f"{len(t.approvers)} of {t.requirement.required} approval(s)"
    return f"{done} ({', '.join(t.approvers)})" if t.approvers else f"{done} so far"


def _message(t: Tally) -> str:
    req = t.requirement
    if t.verdict is Verdict.DENIED and t.denial is not None:
        why = f': "{t.denial.reason}"' if t.denial.reason else " (no reason given)"
        return f"denied by {t.denial.reviewer}{why}"
    if t.verdict is Verdict.APPROVED and t.approved_at is not None:
        return f"approved by {', '.join(t.approvers)} at {_ts(t.approved_at)}"
    if t.verdict is Verdict.EXPIRED:
        return (f"not approved within {format_duration(req.pending_timeout)}, the"
                f" pendingTimeout of Role(s) {', '.join(req.roles)}: {_progress(t)}; create a new"
                " session to ask again")
    return (f"waiting for approval: {_progress(t)}; reviewers: {req.describe_reviewers()}"
            f" (Role(s) {', '.join(req.roles)}); the request expires at {_ts(t.deadline)}")
