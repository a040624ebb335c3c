"""Sessions that need approval: the gate in the opening handler, and what wakes it (reviews,
the deadline), branch by branch."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import kopf
import pytest
from prometheus_client import REGISTRY

from pgjit.handlers import approvals, lease_loop, metrics, sessions

from .fakes import (NAMESPACE, Stopped, World, database_body, eventually, now, review_body,
                    role_body, session_body, ts)

SESSION = "alice-orders"


def session(**kwargs) -> dict:
    """A session created a minute ago: reviews made "now" come after it, whatever the clock's
    second (a review from before the session never counts)."""
    kwargs.setdefault("created", now() - timedelta(minutes=1))
    return session_body(**kwargs)


def approval_role(**approval) -> dict:
    role = role_body()
    role["spec"]["approval"] = {"reviewers": [{"kind": "User", "name": "bob"},
                                              {"kind": "Group", "name": "dba"}], **approval}
    return role


@pytest.fixture
def world(world: World) -> World:
    world.databases.append(database_body())
    world.roles.append(approval_role())
    return world


async def open_session(world: World, body: dict, **kwargs) -> dict:
    patch = kopf.Patch()
    await sessions.open_lease(body=body, name=body["metadata"]["name"], namespace=NAMESPACE,
                              uid=body["metadata"]["uid"], patch=patch, memo=world.memo,
                              **world.open_lease_kwargs(body), **kwargs)
    return dict(patch.status)


def condition(status: dict, type_: str = "Ready") -> dict:
    return next(c for c in status["conditions"] if c["type"] == type_)


def reasons(world: World, about: str | None = None) -> list[str]:
    return [e["reason"] for e in world.events if about in (None, e["about"])]


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


# --------------------------------------------------------------------------------------------
# The gate


async def test_a_session_without_reviews_waits_and_nothing_is_created(world: World):
    status = await open_session(world, session())
    assert status["phase"] == "Pending"
    ready = condition(status)
    assert (ready["status"], ready["reason"]) == ("False", "AwaitingApproval")
    assert ready["message"].startswith("waiting for approval: 0 of 1 approval(s) so far;"
                                       " reviewers: group dba, user bob (Role(s) analysts)")
    assert ready["message"].endswith(f"review with: pgjit review {SESSION} -n {NAMESPACE}"
                                     " --approve (or --deny --reason TEXT)")
    assert condition(status, "Reconciling")["status"] == "True"
    assert "Stalled" not in {c["type"] for c in status["conditions"]}
    assert status["approval"]["required"] == 1 and status["approval"]["approvals"] == 0
    assert status["approval"]["reviewers"] == [{"kind": "Group", "name": "dba"},
                                               {"kind": "User", "name": "bob"}]
    assert "expiresAt" not in status and "approvedAt" not in status
    assert world.engine.activations == [] and world.engine.ends == []
    assert world.kube.secrets == {} and world.kube.access == {}
    # A Normal Event: waiting for people is no warning.
    [event] = [e for e in world.events if e["reason"] == "AwaitingApproval"]
    assert event["type"] == "Normal"


async def test_waiting_is_no_retry_and_no_error(world: World):
    before = REGISTRY.get_sample_value("controller_runtime_reconcile_total",
                                       {"controller": "databasesession", "result": "success"})
    await open_session(world, session())  # returns: the handler is done, no TemporaryError
    after = REGISTRY.get_sample_value("controller_runtime_reconcile_total",
                                      {"controller": "databasesession", "result": "success"})
    assert after == (before or 0) + 1


async def test_a_required_reason_missing_refuses_the_session(world: World):
    world.roles[:] = [approval_role(requireReason=True)]
    status = await open_session(world, session())
    assert (status["phase"], condition(status)["reason"]) == ("Failed", "AccessDenied")
    assert condition(status)["message"].startswith("Role(s) analysts require a reason for access")
    assert condition(status, "Stalled")["status"] == "True"
    assert world.engine.activations == []
    body = session()
    body["spec"]["reason"] = "   "
    blank = await open_session(world, body)
    assert condition(blank)["reason"] == "AccessDenied"
    body["spec"]["reason"] = "INC-4"
    given = await open_session(world, body)
    assert condition(given)["reason"] == "AwaitingApproval"


async def test_an_approval_opens_it_and_its_time_starts_at_the_approval(world: World):
    created = (now() - timedelta(minutes=10)).replace(microsecond=0)
    approved = created + timedelta(minutes=7)
    world.reviews.append(review_body(created=approved, reason="fine"))
    latency_before = sample("pgjit_session_approval_seconds_count")
    status = await open_session(world, session(created=created, duration="1h"))
    assert status["phase"] == "Active"
    assert status["approvedAt"] == ts(approved)
    assert status["expiresAt"] == ts(approved + timedelta(hours=1))
    assert world.engine.activations[0].expires_at == approved + timedelta(hours=1)
    assert world.kube.secrets[(NAMESPACE, f"{SESSION}-credentials")].data["expiresAt"] \
        .decode() == ts(approved + timedelta(hours=1))
    [record] = status["reviews"]
    assert record == {"name": f"{SESSION}-bob", "reviewer": "bob", "decision": "Approve",
                      "reason": "fine", "time": ts(approved), "counted": True,
                      "message": "counted: approval 1 of 1, as user bob"}
    assert reasons(world, f"DatabaseSession/{SESSION}") == ["ReviewCounted", "Approved",
                                                            "Active"]
    assert sample("pgjit_session_approval_seconds_count") == latency_before + 1
    assert sample("pgjit_session_approval_seconds_sum") >= 7 * 60


async def test_a_retry_after_approval_reports_the_approval_once(world: World):
    created = now() - timedelta(seconds=30)
    world.reviews.append(review_body(created=created + timedelta(seconds=5)))
    first = await open_session(world, session(created=created))
    assert first["phase"] == "Active"
    latency = sample("pgjit_session_approval_seconds_count")
    body = session(created=created, status=first)
    body["status"]["phase"] = "Pending"  # as if the first attempt had failed after the gate
    world.events.clear()
    again = await open_session(world, body, retry=1)
    assert again["approvedAt"] == first["approvedAt"]
    assert "Approved" not in reasons(world) and "ReviewCounted" not in reasons(world)
    assert sample("pgjit_session_approval_seconds_count") == latency


async def test_a_denial_fails_it_with_the_reason_and_touches_nothing(world: World):
    world.reviews.append(review_body(reviewer="carol", groups=["dba"], decision="Deny",
                                     reason="freeze until Monday"))
    status = await open_session(world, session())
    assert (status["phase"], condition(status)["reason"]) == ("Failed", "Denied")
    assert condition(status)["message"] == 'denied by carol: "freeze until Monday"'
    assert condition(status, "Stalled")["status"] == "True"
    assert "endedAt" in status
    assert world.engine.activations == [] and world.engine.ends == []
    assert world.kube.secrets == {}


async def test_a_request_not_approved_in_time_expires(world: World):
    world.roles[:] = [approval_role(pendingTimeout="30s")]
    status = await open_session(world, session(created=now() - timedelta(seconds=31)))
    assert (status["phase"], condition(status)["reason"]) == ("Failed", "ApprovalExpired")
    assert condition(status)["message"].startswith(
        "not approved within 30s, the pendingTimeout of Role(s) analysts")
    assert world.engine.activations == [] and world.engine.ends == []


async def test_an_approval_that_came_too_long_ago_expires_the_session(world: World):
    created = now() - timedelta(hours=3)
    world.reviews.append(review_body(created=created + timedelta(minutes=1)))
    status = await open_session(world, session(created=created, duration="1h"))
    assert (status["phase"], condition(status)["reason"]) == ("Expired", "Expired")
    assert world.engine.activations == []


async def test_ignored_reviews_are_recorded_with_an_event_on_the_session_and_the_review(
        world: World):
    world.reviews += [review_body(reviewer="alice", name="own"),
                      review_body(reviewer="mallory", name="stranger")]
    status = await open_session(world, session())
    assert condition(status)["reason"] == "AwaitingApproval"
    assert sorted((r["name"], r["counted"]) for r in status["reviews"]) == [
        ("own", False), ("stranger", False)]
    ignored = [e for e in world.events if e["reason"] == "ReviewIgnored"]
    assert sorted(e["about"] for e in ignored) == [
        f"DatabaseSession/{SESSION}", f"DatabaseSession/{SESSION}",
        "DatabaseSessionReview/own", "DatabaseSessionReview/stranger"]
    assert all(e["type"] == "Warning" for e in ignored)
    on_review = next(e for e in ignored if e["about"] == "DatabaseSessionReview/own")
    assert on_review["message"] == (f"not counted for session {SESSION}: alice is the session's"
                                    " own user; nobody reviews their own access")

    # The next evaluation finds them in the status: no second Event.
    world.events.clear()
    await open_session(world, session(status=status))
    assert "ReviewIgnored" not in reasons(world)


async def test_a_review_of_an_earlier_session_of_the_same_name_does_not_count(world: World):
    world.reviews.append(review_body(owner_uid="uid-of-an-earlier-one"))
    status = await open_session(world, session())
    assert condition(status)["reason"] == "AwaitingApproval"
    assert status["reviews"][0]["message"] == ("not counted: it belongs to an earlier session of"
                                               " the same name")


async def test_roles_without_approval_open_at_once_as_before(world: World):
    world.roles[:] = [role_body()]
    world.reviews.append(review_body(decision="Deny", reason="ignored: nothing asks"))
    status = await open_session(world, session())
    assert status["phase"] == "Active"
    assert "approval" not in status and "reviews" not in status and "approvedAt" not in status


# --------------------------------------------------------------------------------------------
# What wakes a waiting session


def unopened(world: World, body: dict) -> dict:
    meta = body["metadata"]
    index = approvals.unopened_sessions(namespace=NAMESPACE, name=meta["name"], uid=meta["uid"],
                                        status=body.get("status") or {}, meta=meta)
    return {key: [value] for key, value in index.items()}


async def review_event(world: World, review: dict, session: dict) -> None:
    await approvals.review_changed(namespace=NAMESPACE, spec=review["spec"], memo=world.memo,
                                   reviews_by_session=world.reviews_by_session(),
                                   unopened_sessions=unopened(world, session))


async def test_a_review_pokes_its_waiting_session_once(world: World):
    waiting = session(status=await open_session(world, session()))
    review = review_body()
    world.reviews.append(review)
    await review_event(world, review, waiting)
    [(plural, namespace, name, annotations)] = world.kube.annotations
    assert (plural, namespace, name) == ("databasesessions", NAMESPACE, SESSION)
    check = annotations[approvals.CHECK_ANNOTATION]
    assert check.startswith("reviews:")
    # The same reviews again (a restart lists them all): the session already says so.
    waiting["metadata"]["annotations"] = {approvals.CHECK_ANNOTATION: check}
    await review_event(world, review, waiting)
    assert len(world.kube.annotations) == 1
    # Another review changes the digest.
    second = review_body(reviewer="carol", name="second")
    world.reviews.append(second)
    await review_event(world, second, waiting)
    assert len(world.kube.annotations) == 2
    assert world.kube.annotations[1][3][approvals.CHECK_ANNOTATION] != check


@pytest.mark.parametrize("status", [
    {"phase": "Active"}, {"phase": "Failed"}, {"phase": "Ended"}, {"phase": "Expired"}])
async def test_a_review_of_a_session_it_can_no_longer_decide_pokes_nothing(world: World,
                                                                           status: dict):
    review = review_body()
    world.reviews.append(review)
    await review_event(world, review, session(status=status))
    assert world.kube.annotations == []


async def test_a_review_of_a_session_being_deleted_pokes_nothing(world: World):
    body = session(status={"phase": "Pending"})
    body["metadata"]["deletionTimestamp"] = ts(now())
    review = review_body()
    world.reviews.append(review)
    await review_event(world, review, body)
    assert world.kube.annotations == []


async def reconsider(world: World, body: dict) -> dict:
    patch = kopf.Patch()
    await approvals.reconsider(body=body, name=body["metadata"]["name"], namespace=NAMESPACE,
                               uid=body["metadata"]["uid"], patch=patch, memo=world.memo,
                               **world.open_lease_kwargs(body))
    return dict(patch.status)


async def test_a_poked_waiting_session_is_opened_once_approved(world: World):
    waiting = session(status=await open_session(world, session()))
    world.reviews.append(review_body())
    status = await reconsider(world, waiting)
    assert status["phase"] == "Active"


async def test_kopfs_retry_of_a_poked_opening_that_failed_opens_the_session(world: World):
    """The poke's handler opened the approved session and the server was away: Kopf retries
    the handler, and the session, now Pending for that error, neither awaiting nor queued,
    must still be opened (it was left Pending for good before)."""
    from pgjit.engine import EngineError

    waiting = session(status=await open_session(world, session()))
    world.reviews.append(review_body())
    activate = world.engine.activate

    def away(request):
        raise EngineError("Unreachable", "connection refused", transient=True)

    world.engine.activate = away  # type: ignore[method-assign,assignment]
    patch = kopf.Patch()
    with pytest.raises(kopf.TemporaryError):
        await approvals.reconsider(body=waiting, name=waiting["metadata"]["name"],
                                   namespace=NAMESPACE, uid=waiting["metadata"]["uid"],
                                   patch=patch, memo=world.memo,
                                   **world.open_lease_kwargs(waiting))
    failed = session(status=dict(patch.status))
    assert condition(failed["status"])["reason"] == "Unreachable"
    world.engine.activate = activate  # type: ignore[method-assign]
    retried = kopf.Patch()
    await approvals.reconsider(body=failed, name=failed["metadata"]["name"],
                               namespace=NAMESPACE, uid=failed["metadata"]["uid"],
                               patch=retried, memo=world.memo, retry=1,
                               **world.open_lease_kwargs(failed))
    assert retried.status["phase"] == "Active"


async def test_a_poke_of_a_session_not_waiting_does_nothing(world: World):
    world.reviews.append(review_body())
    # Its create handler has not written a status yet (it will count the review itself),
    # or it is Active already.
    for status in ({}, {"phase": "Active", "conditions": []}):
        assert await reconsider(world, session(status=status)) == {}
    assert world.engine.activations == []


def awaiting_status(deadline) -> dict:
    return {"phase": "Pending", "approval": {"deadline": ts(deadline)},
            "conditions": [{"type": "Ready", "status": "False", "reason": "AwaitingApproval"}]}


def waiting_indexes(body: dict, check: str | None = None) -> tuple[dict, dict]:
    """The awaiting and unopened indexes as Kopf would hold them for one waiting session."""
    meta = body["metadata"]
    awaiting = approvals.awaiting_approval(namespace=NAMESPACE, name=meta["name"],
                                           spec=body["spec"], status=body["status"])
    unopened = {(NAMESPACE, meta["name"]): [{"uid": meta["uid"], "check": check}]}
    return {key: [value] for key, value in awaiting.items()}, unopened


def test_a_request_is_due_once_its_deadline_is_behind_it():
    deadline = now().replace(microsecond=0) - timedelta(seconds=1)
    body = session(status=awaiting_status(deadline))
    awaiting, unopened = waiting_indexes(body)
    check = f"deadline:{ts(deadline)}"
    assert approvals.expired_requests(awaiting, unopened, NAMESPACE, "orders", now()) == [
        (SESSION, check)]
    # Not before the deadline, not for another Database or namespace, not twice.
    assert approvals.expired_requests(awaiting, unopened, NAMESPACE, "orders",
                                      deadline - timedelta(seconds=1)) == []
    assert approvals.expired_requests(awaiting, unopened, NAMESPACE, "billing", now()) == []
    assert approvals.expired_requests(awaiting, unopened, "other", "orders", now()) == []
    poked = waiting_indexes(body, check=check)
    assert approvals.expired_requests(*poked, NAMESPACE, "orders", now()) == []
    # Being deleted (no longer in the unopened index): nothing to poke.
    assert approvals.expired_requests(awaiting, {}, NAMESPACE, "orders", now()) == []


async def test_the_lease_loop_pokes_a_waiting_session_when_its_request_expires(world: World):
    deadline = now().replace(microsecond=0) + timedelta(seconds=1)
    awaiting, unopened = waiting_indexes(session(status=awaiting_status(deadline)))
    stopped = Stopped()
    task = asyncio.create_task(lease_loop.supervise_leases(
        NAMESPACE, "orders", world.memo, stopped, {}, world.databases_by_name,
        world.roles_by_namespace, live_sessions_by_database={},
        awaiting_approval=awaiting, unopened_sessions=unopened))
    try:
        await asyncio.sleep(0)
        assert world.kube.annotations == []  # not before the deadline
        await eventually(lambda: task.done() or world.kube.annotations,
                         what="the poke at the deadline")
        assert not task.done()
        assert now() >= deadline
        expected = ("databasesessions", NAMESPACE, SESSION,
                    {approvals.CHECK_ANNOTATION: f"deadline:{ts(deadline)}"})
        assert world.kube.annotations == [expected]
    finally:
        stopped.stop()
        await asyncio.wait_for(task, 5)


def test_which_sessions_wait_and_which_a_review_may_still_decide():
    waiting = session(status=awaiting_status(now()))
    meta = waiting["metadata"]
    assert approvals.awaiting_approval(
        namespace=NAMESPACE, name=SESSION, spec=waiting["spec"], status=waiting["status"]) == {
        (NAMESPACE, SESSION): approvals.Waiting("orders", waiting["status"]["approval"]["deadline"])}
    assert approvals.awaiting_approval(namespace=NAMESPACE, name=SESSION, spec=waiting["spec"],
                                       status={"phase": "Pending"}) == {}
    assert approvals.unopened_sessions(namespace=NAMESPACE, name=SESSION, uid=meta["uid"],
                                       status={}, meta=meta) == {
        (NAMESPACE, SESSION): {"uid": meta["uid"], "check": None}}
    for phase in ("Active", "Failed", "Ended", "Expired"):
        assert approvals.unopened_sessions(namespace=NAMESPACE, name=SESSION, uid=meta["uid"],
                                           status={"phase": phase}, meta=meta) == {}


async def test_the_gauge_is_the_number_of_waiting_sessions():
    index = {(NAMESPACE, "a"): [True], (NAMESPACE, "b"): [True]}
    await approvals.count_waiting(awaiting_approval=index)
    assert REGISTRY.get_sample_value("pgjit_sessions_awaiting_approval") == 2
    del index[(NAMESPACE, "a")]
    assert REGISTRY.get_sample_value("pgjit_sessions_awaiting_approval") == 1
    metrics.AWAITING_APPROVAL.set_function(lambda: 0)


async def test_the_status_lists_stay_within_the_crds_bounds(world: World):
    world.roles[:] = []
    for index in range(5):
        role = role_body(f"asks-{index}")
        role["spec"]["approval"] = {"reviewers": [{"kind": "User", "name": f"r{index}-{n}"}
                                                  for n in range(256)]}
        world.roles.append(role)
    status = await open_session(world, session())
    assert condition(status)["reason"] == "AwaitingApproval"
    assert len(status["approval"]["reviewers"]) == 1024
    assert status["approval"]["roles"] == [f"asks-{i}" for i in range(5)]
