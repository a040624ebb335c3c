"""The reviewer's command line (pgjit review, pgjit requests) and the requester's (connect
--reason, the wait that reviewers do not time out), without a cluster."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest
import yaml

from pgjit.cli import build_parser, main
from pgjit.client import reviews
from pgjit.client.identity import Identity
from pgjit.client.sessions import SessionError, Sessions, session_manifest
from pgjit.vocabulary import ReviewDecision

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)
BOB = Identity("bob", ("system:authenticated",))
CAROL = Identity("carol", ("dba", "system:authenticated"))
ALICE = Identity("alice", ("analysts", "system:authenticated"))


def waiting(name: str = "alice-db-x1", *, user: str = "alice", reviewed_by: tuple = (),
            reviewers: list | None = None, reason: str | None = "INC-7", phase: str = "Pending",
            ready_reason: str = "AwaitingApproval", namespace: str = "team") -> dict[str, Any]:
    spec: dict[str, Any] = {"user": user, "databaseRef": {"name": "db"}, "databaseName": "app",
                            "duration": "1h"}
    if reason:
        spec["reason"] = reason
    return {"metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}"},
            "spec": spec,
            "status": {"phase": phase,
                       "conditions": [{"type": "Ready", "status": "False",
                                       "reason": ready_reason, "message": "waiting"}],
                       "approval": {"required": 2, "approvals": len(reviewed_by),
                                    "reviewers": reviewers if reviewers is not None else [
                                        {"kind": "User", "name": "bob"},
                                        {"kind": "Group", "name": "dba"}],
                                    "roles": ["access"], "deadline": "2026-12-01T10:30:00Z"},
                       "reviews": [{"name": f"r-{who}", "reviewer": who, "decision": "Approve",
                                    "time": "2026-12-01T09:59:00Z", "counted": True,
                                    "message": "counted"} for who in reviewed_by]}}


# --------------------------------------------------------------------------------------------
# Who may review what


def test_the_requests_of_a_reviewer():
    sessions = [waiting("mine", user="bob"), waiting("by-user"), waiting("done", reviewed_by=("bob",)),
                waiting("active", phase="Active", ready_reason="Active"),
                waiting("not-listed", reviewers=[{"kind": "User", "name": "dave"}])]
    assert [s["metadata"]["name"] for s in reviews.pending_for(sessions, BOB)] == ["by-user"]
    # carol reviews as a member of group dba; bob's approval does not take hers away.
    assert [s["metadata"]["name"] for s in reviews.pending_for(sessions, CAROL)] == [
        "mine", "by-user", "done"]
    assert reviews.pending_for(sessions, ALICE) == []


@pytest.mark.parametrize(("session", "identity", "why"), [
    (waiting(user="bob"), BOB, "session alice-db-x1 is your own: nobody reviews their own access"),
    (waiting(phase="Failed", ready_reason="Denied"), BOB,
     "session alice-db-x1 is not waiting for review: it is Failed (Denied)"),
    (waiting(reviewers=[{"kind": "Group", "name": "dba"}]), BOB,
     "you (bob) are not among the reviewers of session alice-db-x1 (group dba): your review"
     " would not count"),
    (waiting(reviewers=[{"kind": "Group", "name": "DBA"}]), CAROL, "you (carol) are not among"),
    (waiting(reviewers=[{"kind": "User", "name": "bob "}]), BOB, "you (bob) are not among"),
    (waiting(reviewers=[{"kind": "Alien", "name": "bob"}]), BOB, "(none)"),
])
def test_why_a_review_would_not_count(session, identity, why):
    assert why in (reviews.why_not_reviewer(session, identity) or "")


def test_a_reviewer_who_may_is_not_stopped():
    assert reviews.why_not_reviewer(waiting(), BOB) is None
    assert reviews.why_not_reviewer(waiting(), CAROL) is None


def test_the_review_is_the_callers_own_word_owned_by_the_session():
    body = reviews.review_manifest(CAROL, waiting(), ReviewDecision.DENY, "freeze")
    assert body["kind"] == "DatabaseSessionReview"
    assert body["spec"] == {"sessionRef": {"name": "alice-db-x1"}, "decision": "Deny",
                            "reviewer": "carol", "reason": "freeze",
                            "reviewerGroups": ["dba", "system:authenticated"]}
    assert body["metadata"]["ownerReferences"] == [{
        "apiVersion": "pgjit.dev/v1alpha1", "kind": "DatabaseSession", "name": "alice-db-x1",
        "uid": "uid-alice-db-x1"}]
    assert body["metadata"]["generateName"] == "alice-db-x1-carol-"
    bare = reviews.review_manifest(Identity("bob"), waiting(), ReviewDecision.APPROVE, None)
    assert "reason" not in bare["spec"] and "reviewerGroups" not in bare["spec"]


@pytest.mark.parametrize("user", ["system:serviceaccount:ops:approver", "Bob@Example.COM",
                                  "!!!", "x" * 400])
def test_review_names_are_always_valid_prefixes(user):
    prefix = reviews.review_name_prefix("s" * 250, user)
    assert len(prefix) <= 201 and prefix.endswith("-")
    assert prefix[:-1] == prefix[:-1].lower() and prefix[-2] not in "-."


def test_the_record_of_a_review_once_counted():
    session = waiting(reviewed_by=("bob",))
    assert reviews.recorded(session, "r-bob")["counted"] is True
    assert reviews.recorded(session, "r-carol") is None


# --------------------------------------------------------------------------------------------
# pgjit requests output


def test_requests_table():
    text = reviews.requests_table([waiting(reason="INC-7:\n  refunds   stuck")], now=NOW)
    header, row = text.splitlines()
    assert header.split() == ["NAME", "USER", "DATABASE", "DBNAME", "DURATION", "APPROVALS",
                              "EXPIRES", "REASON"]
    assert row.split()[:6] == ["alice-db-x1", "alice", "db", "app", "1h", "0/2"]
    assert "2026-12-01T10:30:00Z (in 30m)" in row
    assert row.endswith("INC-7: refunds stuck")
    every = reviews.requests_table([waiting()], all_namespaces=True, now=NOW)
    assert every.splitlines()[0].startswith("NAMESPACE") and "team" in every.splitlines()[1]
    assert reviews.requests_table([], now=NOW) == "No sessions wait for your review.\n"


def test_requests_for_programs():
    [record] = json.loads(reviews.requests_json([waiting()]))
    assert record == {"namespace": "team", "name": "alice-db-x1", "user": "alice",
                      "database": "db", "databaseName": "app", "databaseRoles": [],
                      "duration": "1h", "reason": "INC-7", "approvals": 0, "required": 2,
                      "deadline": "2026-12-01T10:30:00Z"}
    assert yaml.safe_load(reviews.requests_yaml([waiting()])) == [record]


# --------------------------------------------------------------------------------------------
# The command line


def test_review_needs_a_decision_and_a_denial_a_reason(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["review", "s"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["review", "s", "--approve", "--deny"])
    assert main(["review", "s", "--deny"]) == 2
    assert main(["review", "s", "--deny", "--reason", "   "]) == 2
    assert "--deny needs --reason TEXT" in capsys.readouterr().err
    args = build_parser().parse_args(["requests", "-A", "-o", "json"])
    assert (args.all_namespaces, args.output) == (True, "json")


def test_connect_puts_the_reason_into_the_session():
    body = session_manifest(ALICE, "db", "app", reason="  INC-7: refunds  ")
    assert body["spec"]["reason"] == "INC-7: refunds"
    assert "reason" not in session_manifest(ALICE, "db", "app", reason="  ")["spec"]
    args = build_parser().parse_args(["connect", "db", "--db-name", "app", "--reason", "x"])
    assert args.reason == "x"


class _Sessions(Sessions):
    """Answers get() from a script of bodies; counts time with a fake clock."""

    def __init__(self, script: list[dict]) -> None:
        self.script = script

    def get(self, name: str) -> dict | None:
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


def test_waiting_for_reviewers_does_not_count_towards_the_wait_timeout(monkeypatch):
    clock = iter(range(0, 10_000, 60))  # a minute per look
    monkeypatch.setattr("pgjit.client.sessions.time.monotonic", lambda: next(clock))
    monkeypatch.setattr("pgjit.client.sessions.time.sleep", lambda _: None)
    active = waiting(phase="Active", ready_reason="Active")
    script = [waiting() for _ in range(10)] + [active]
    lines: list[str] = []
    session = _Sessions(script).wait_active("alice-db-x1", timeout=120, report=lines.append)
    assert session is active  # ten minutes of review, well past the two-minute timeout
    assert lines[0] == "session alice-db-x1: Pending (AwaitingApproval: waiting)"
    stuck = waiting(ready_reason="DatabaseNotReady")
    with pytest.raises(SessionError, match="did not become Active within 120s"):
        _Sessions([stuck]).wait_active("alice-db-x1", timeout=120, report=lines.append)


def test_a_denied_request_ends_the_wait_with_the_reviewers_words():
    denied = waiting(phase="Failed", ready_reason="Denied")
    denied["status"]["conditions"][0]["message"] = 'denied by bob: "no"'
    with pytest.raises(SessionError, match='is Failed: Denied: denied by bob: "no"'):
        _Sessions([denied]).wait_active("alice-db-x1", timeout=120, report=lambda _: None)
