"""Access requests, the pure rules (core/approval.py): what approval a session needs, and what
its reviews add up to, against hostile and careless input."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from pgjit.api import Role, RoleApproval
from pgjit.core.approval import (Requirement, Review, Reviewer, Verdict, has_reason, may_review,
                                 requirement, tally)
from pgjit.vocabulary import ReviewDecision

from test_policy import decide, request

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)
SESSION_UID = "uid-session"
APPROVE, DENY = ReviewDecision.APPROVE, ReviewDecision.DENY


def approval(reviewers: list[tuple[str, str]] | None = None, **fields: Any) -> RoleApproval:
    subjects = [{"kind": kind, "name": name} for kind, name in (reviewers or [("User", "bob")])]
    return RoleApproval.model_validate({"reviewers": subjects, **fields})


def req(reviewers: list[tuple[str, str]] | None = None, **fields: Any) -> Requirement:
    found = requirement([("access", approval(reviewers, **fields))])
    assert found is not None
    return found


def rv(reviewer: str, decision: ReviewDecision = APPROVE, *, at: int = 10,
       groups: tuple[str, ...] = (), name: str | None = None, owners: tuple[str, ...] = (),
       reason: str | None = None) -> Review:
    """A review by ``reviewer``, ``at`` seconds after the session was created."""
    return Review(name=name or f"{reviewer}-{at}", reviewer=reviewer, decision=decision,
                  created=T0 + timedelta(seconds=at), groups=groups, owner_uids=owners,
                  reason=reason)


def count(requirement_: Requirement, *reviews: Review, requester: str = "alice",
          now: datetime | None = None, **kwargs: Any):
    return tally(requirement_, requester=requester, session_uid=SESSION_UID, created=T0,
                 reviews=reviews, now=now or T0 + timedelta(minutes=1), **kwargs)


# --------------------------------------------------------------------------------------------
# The requirement


def test_no_role_asking_means_no_requirement():
    assert requirement([]) is None
    assert requirement([("plain", None), ("other", None)]) is None


def test_defaults_are_one_approval_within_an_hour_and_no_reason():
    found = req()
    assert (found.required, found.pending_timeout, found.require_reason) == (
        1, timedelta(hours=1), False)
    assert found.reviewers == (Reviewer("User", "bob"),)  # type: ignore[arg-type]


def test_the_strictest_of_several_roles_applies():
    found = requirement([
        ("a", approval([("User", "bob")], required=1, pendingTimeout="2h")),
        ("plain", None),
        ("b", approval([("Group", "dba"), ("User", "bob")], required=3, pendingTimeout="30m",
                       requireReason=True)),
    ])
    assert found is not None
    assert found.required == 3
    assert found.pending_timeout == timedelta(minutes=30)
    assert found.require_reason is True
    assert found.roles == ("a", "b")
    # The reviewers of every Role that asks, each once, groups and users apart.
    assert [r.describe() for r in found.reviewers] == ["group dba", "user bob"]


@pytest.mark.parametrize("reviewers", [[], None])
def test_a_role_must_name_some_reviewer(reviewers):
    with pytest.raises(ValidationError):
        RoleApproval.model_validate({"reviewers": reviewers})


@pytest.mark.parametrize("required", [0, -1, 17])
def test_required_is_bounded(required):
    with pytest.raises(ValidationError):
        approval(required=required)


def test_a_requirement_no_one_can_meet_is_pointed_out():
    assert req([("User", "bob")], required=2).notes() == (
        "only 1 user(s) may review but 2 approvals are required: no session can be approved"
        " until more reviewers are listed",)
    assert req([("User", "bob"), ("Group", "dba")], required=2).notes() == ()


def test_blank_reasons_say_nothing():
    assert not has_reason(None) and not has_reason("") and not has_reason(" \n\t ")
    assert has_reason("INC-1")


# --------------------------------------------------------------------------------------------
# Who may review


@pytest.mark.parametrize(("user", "groups", "expected"), [
    ("bob", (), "user bob"),
    ("carol", ("dba",), "group dba"),
    ("bob", ("dba",), "user bob"),                     # the user subject is the one named
    ("Bob", (), None),                                 # names are exact: case matters
    (" bob", (), None),                                # and are never trimmed
    ("bo", (), None),                                  # no prefixes
    ("dba", (), None),                                 # a group's name is not a user
    ("carol", ("DBA", "dba-oncall"), None),
    ("system:serviceaccount:ops:approver", (), "user system:serviceaccount:ops:approver"),
    ("system:serviceaccount:ops:other", ("system:serviceaccounts:ops",),
     "group system:serviceaccounts:ops"),
    ("system:serviceaccount:dev:bot", ("system:serviceaccounts:dev",), None),
])
def test_reviewer_matching(user, groups, expected):
    reviewers = req([("User", "bob"), ("Group", "dba"),
                     ("User", "system:serviceaccount:ops:approver"),
                     ("Group", "system:serviceaccounts:ops")]).reviewers
    found = may_review(reviewers, user, groups)
    assert (found.describe() if found else None) == expected


# --------------------------------------------------------------------------------------------
# Tallies


def test_waiting_without_reviews():
    result = count(req())
    assert result.verdict is Verdict.WAITING
    assert result.deadline == T0 + timedelta(hours=1)
    assert result.records == ()
    assert result.message == ("waiting for approval: 0 of 1 approval(s) so far; reviewers: user"
                              " bob (Role(s) access); the request expires at"
                              " 2026-12-01T11:00:00Z")


def test_one_approval_approves_at_the_reviews_creation():
    result = count(req(), rv("bob", at=42, reason="ok"))
    assert result.verdict is Verdict.APPROVED
    assert result.approved_at == T0 + timedelta(seconds=42)
    [record] = result.records
    assert (record.counted, record.message, record.reason) == (
        True, "counted: approval 1 of 1, as user bob", "ok")
    assert result.message == "approved by bob at 2026-12-01T10:00:42Z"


def test_the_same_reviewer_twice_counts_once():
    result = count(req([("User", "bob"), ("Group", "dba")], required=2),
                   rv("bob", at=1), rv("bob", at=2), rv("bob", at=3, groups=("dba",)))
    assert result.verdict is Verdict.WAITING
    assert result.approvers == ("bob",)
    assert [r.counted for r in result.records] == [True, False, False]
    assert result.records[1].message == ("not counted: bob has already approved; each reviewer"
                                         " counts once")
    assert "1 of 2 approval(s) (bob)" in result.message


def test_two_distinct_reviewers_approve_at_the_second():
    result = count(req([("User", "bob"), ("Group", "dba")], required=2),
                   rv("bob", at=1), rv("carol", at=5, groups=("dba",)))
    assert result.verdict is Verdict.APPROVED
    assert result.approved_at == T0 + timedelta(seconds=5)
    assert result.records[1].message == "counted: approval 2 of 2, as group dba"


def test_self_review_never_counts_even_when_the_requester_is_a_reviewer():
    # alice is named as a reviewer, and is in the reviewer group too: still her own access.
    result = count(req([("User", "alice"), ("Group", "dba")]),
                   rv("alice", groups=("dba",)), requester="alice")
    assert result.verdict is Verdict.WAITING
    [record] = result.records
    assert record.counted is False
    assert record.message == ("not counted: alice is the session's own user; nobody reviews"
                              " their own access")


def test_self_denial_does_not_end_the_session_either():
    result = count(req([("User", "alice")]), rv("alice", DENY, reason="oops"))
    assert result.verdict is Verdict.WAITING and result.denial is None


def test_a_non_reviewer_is_ignored_whatever_it_says():
    result = count(req(), rv("mallory", DENY), rv("mallory", APPROVE, at=11))
    assert result.verdict is Verdict.WAITING
    assert all(not r.counted for r in result.records)
    assert result.records[0].message == ("not counted: mallory is not a reviewer of Role(s)"
                                         " access (reviewers: user bob)")


def test_one_counted_denial_ends_it_with_the_reviewers_reason():
    result = count(req([("User", "bob"), ("User", "carol")], required=2),
                   rv("bob", at=1), rv("carol", DENY, at=2, reason="not during the freeze"))
    assert result.verdict is Verdict.DENIED
    assert result.denial is not None and result.denial.reviewer == "carol"
    assert result.message == 'denied by carol: "not during the freeze"'


def test_a_reviewer_may_change_their_mind_before_the_approval_is_complete():
    result = count(req([("User", "bob"), ("User", "carol")], required=2),
                   rv("bob", at=1), rv("bob", DENY, at=2, reason="wrong ticket"))
    assert result.verdict is Verdict.DENIED


def test_nothing_counts_after_the_decision():
    approved = count(req(), rv("bob", at=1), rv("bob", DENY, at=2, reason="late"))
    assert approved.verdict is Verdict.APPROVED
    assert approved.records[1].message == "not counted: the session was already approved"
    denied = count(req([("User", "bob"), ("User", "carol")]), rv("bob", DENY, at=1),
                   rv("carol", at=2))
    assert denied.verdict is Verdict.DENIED
    assert denied.records[1].message == "not counted: the session was already denied"


def test_reviews_are_read_in_creation_order_whatever_order_they_come_in():
    reviews = [rv("carol", DENY, at=3, reason="no"), rv("bob", at=1)]
    result = count(req([("User", "bob"), ("User", "carol")]), *reviews)
    assert result.verdict is Verdict.APPROVED
    assert [r.reviewer for r in result.records] == ["bob", "carol"]
    # Same second: the name decides, the same way on every evaluation.
    same = [rv("carol", DENY, at=3, name="b-review", reason="no"), rv("bob", at=3,
                                                                      name="a-review")]
    assert count(req([("User", "bob"), ("User", "carol")]), *same).verdict is Verdict.APPROVED
    assert count(req([("User", "bob"), ("User", "carol")]), *reversed(same)).verdict \
        is Verdict.APPROVED


def test_reviews_of_an_earlier_session_of_the_same_name_never_count():
    by_owner = count(req(), rv("bob", owners=("uid-of-the-last-one",)))
    assert by_owner.verdict is Verdict.WAITING
    assert by_owner.records[0].message == ("not counted: it belongs to an earlier session of the"
                                           " same name")
    older = count(req(), rv("bob", at=-5))
    assert older.verdict is Verdict.WAITING
    assert "created before this session" in older.records[0].message
    assert count(req(), rv("bob", owners=(SESSION_UID,))).verdict is Verdict.APPROVED


def test_the_pending_timeout():
    requirement_ = req(pendingTimeout="10s")
    assert count(requirement_, now=T0 + timedelta(seconds=9)).verdict is Verdict.WAITING
    expired = count(requirement_, now=T0 + timedelta(seconds=10))
    assert expired.verdict is Verdict.EXPIRED
    assert expired.message == ("not approved within 10s, the pendingTimeout of Role(s) access: 0"
                               " of 1 approval(s) so far; create a new session to ask again")
    # An approval that came in time still counts when it is read late (the operator was down).
    on_time = count(requirement_, rv("bob", at=10), now=T0 + timedelta(hours=5))
    assert on_time.verdict is Verdict.APPROVED
    late = count(requirement_, rv("bob", at=11), now=T0 + timedelta(seconds=12))
    assert late.verdict is Verdict.EXPIRED
    assert late.records[0].message.startswith("not counted: it came after the request expired")


def test_a_flood_of_ignored_reviews_never_hides_the_counted_ones():
    flood = [rv(f"spammer{i}", at=1, name=f"spam-{i:03}") for i in range(100)]
    result = count(req([("User", "bob"), ("User", "carol")], required=2),
                   *flood, rv("bob", at=2), rv("carol", at=3), max_records=10)
    assert result.verdict is Verdict.APPROVED
    assert len(result.records) == 10 and result.omitted == 92
    assert [r.reviewer for r in result.records if r.counted] == ["bob", "carol"]


@given(st.lists(st.tuples(st.sampled_from(["alice", "bob", "carol", "dave", "Bob", ""]),
                          st.sampled_from([APPROVE, DENY]), st.integers(-5, 100),
                          st.booleans()), max_size=12))
def test_the_requester_and_strangers_never_decide(entries):
    """Whatever alice and people outside the reviewers say, in any order, the verdict is what
    bob and carol alone would make it."""
    requirement_ = req([("User", "bob"), ("Group", "dba")], required=2, pendingTimeout="1m")
    reviews = [rv(who, decision, at=at, name=f"r{i}", groups=("dba",) if in_dba else (),
                  reason="x") for i, (who, decision, at, in_dba) in enumerate(entries)]
    def eligible(review: Review) -> bool:
        return review.reviewer != "alice" and (review.reviewer == "bob" or "dba" in review.groups)

    everyone = count(requirement_, *reviews)
    alone = count(requirement_, *filter(eligible, reviews))
    assert everyone.verdict is alone.verdict
    assert everyone.approved_at == alone.approved_at
    assert len(everyone.records) == len(reviews)
    by_name = {r.name: r for r in reviews}
    assert all(not record.counted for record in everyone.records
               if not eligible(by_name[record.name]))
    assert len(set(everyone.approvers)) == len(everyone.approvers)


# --------------------------------------------------------------------------------------------
# In the policy's decision


def _role(name: str, names: list[str], mode: str = "keep", **spec: Any) -> Role:
    return Role.model_validate({"metadata": {"name": name}, "spec": {
        "subjects": [{"kind": "Group", "name": "analysts"}], "userProvisioning": mode,
        "allow": {"databaseSelector": {}, "databaseNames": names, "databaseRoles": ["reader"]},
        **spec}})


ASKS = {"approval": {"reviewers": [{"kind": "User", "name": "bob"}], "required": 2}}


def test_any_allowing_role_that_asks_makes_the_session_need_approval():
    decision = decide(_role("asks", ["orders"], **ASKS), _role("plain", ["orders"]),
                      req=request(groups=("analysts",)))
    assert decision.allowed
    assert decision.approval is not None
    assert (decision.approval.required, decision.approval.roles) == (2, ("asks",))


def test_roles_that_do_not_allow_the_session_ask_nothing():
    other_name = decide(_role("asks", ["reports"], **ASKS), _role("plain", ["orders"]),
                        req=request(groups=("analysts",)))
    assert other_name.allowed and other_name.approval is None
    # Mode off: the Role allows but does not take part, so its approval does not apply.
    off = decide(_role("asks", ["orders"], mode="off", **ASKS), _role("plain", ["orders"]),
                 req=request(groups=("analysts",)))
    assert off.allowed and off.approval is None
