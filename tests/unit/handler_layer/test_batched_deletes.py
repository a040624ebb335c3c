"""Ended sessions' objects are deleted several sessions at a time, and each session's delete
returns only once the request that carried it has (kube/batched_deletes.py)."""

from __future__ import annotations

import asyncio

import pytest

from pgjit.kube.batched_deletes import BatchedDeletes

ROLES = "/apis/rbac.authorization.k8s.io/v1/namespaces/team-a/roles"


class FakeRequests:
    """Records each request's selector; holds each until released, fails those it is told to."""

    def __init__(self) -> None:
        self.selectors: list[str] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail_next: Exception | None = None

    async def __call__(self, method: str, path: str, *, params) -> dict:
        assert (method, path) == ("DELETE", ROLES)
        self.selectors.append(params["labelSelector"])
        await self.release.wait()
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        return {"items": []}


async def test_sessions_that_end_together_go_in_one_request():
    requests = FakeRequests()
    deletes = BatchedDeletes(requests)
    await asyncio.gather(*(deletes.delete(ROLES, f"u{i}") for i in range(3)))
    assert requests.selectors == ["pgjit.dev/session-uid in (u0,u1,u2)"]


async def test_sessions_that_end_while_a_request_is_out_go_in_the_next():
    requests = FakeRequests()
    requests.release.clear()
    deletes = BatchedDeletes(requests)
    first = asyncio.create_task(deletes.delete(ROLES, "u0"))
    while not requests.selectors:
        await asyncio.sleep(0)
    later = [asyncio.create_task(deletes.delete(ROLES, f"u{i}")) for i in (1, 2)]
    await asyncio.sleep(0)
    assert not first.done(), "a session's delete returned before its request did"
    requests.release.set()
    await asyncio.gather(first, *later)
    assert requests.selectors == ["pgjit.dev/session-uid in (u0)",
                                  "pgjit.dev/session-uid in (u1,u2)"]


async def test_no_request_names_more_sessions_than_the_bound():
    requests = FakeRequests()
    deletes = BatchedDeletes(requests, most=2)
    await asyncio.gather(*(deletes.delete(ROLES, f"u{i}") for i in range(5)))
    assert [s.count(",") + 1 for s in requests.selectors] == [2, 2, 1]


async def test_a_failed_request_fails_each_of_its_sessions_and_a_retry_goes_again():
    requests = FakeRequests()
    requests.fail_next = RuntimeError("the API server is away")
    deletes = BatchedDeletes(requests)
    results = await asyncio.gather(deletes.delete(ROLES, "u0"), deletes.delete(ROLES, "u1"),
                                   return_exceptions=True)
    assert [str(r) for r in results] == ["the API server is away"] * 2
    await deletes.delete(ROLES, "u0")
    assert requests.selectors[-1] == "pgjit.dev/session-uid in (u0)"


async def test_a_cancelled_session_does_not_cancel_the_others_request():
    requests = FakeRequests()
    requests.release.clear()
    deletes = BatchedDeletes(requests)
    cancelled = asyncio.create_task(deletes.delete(ROLES, "u0"))
    kept = asyncio.create_task(deletes.delete(ROLES, "u1"))
    while not requests.selectors:
        await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    requests.release.set()
    await kept
    assert requests.selectors == ["pgjit.dev/session-uid in (u0,u1)"]


async def test_a_session_named_twice_is_named_once_in_the_selector():
    requests = FakeRequests()
    deletes = BatchedDeletes(requests)
    await asyncio.gather(deletes.delete(ROLES, "u0"), deletes.delete(ROLES, "u0"))
    assert requests.selectors == ["pgjit.dev/session-uid in (u0)"]


@pytest.mark.parametrize("uid", ["u1) ,pgjit.dev/session-uid notin (u2", "u1,u2", "", "u 1",
                                 "a" * 64])
async def test_a_uid_that_is_not_a_label_value_sends_nothing(uid):
    """A selector built from it could name more than one session (or everything)."""
    requests = FakeRequests()
    with pytest.raises(ValueError, match="not a label value"):
        await BatchedDeletes(requests).delete(ROLES, uid)
    assert requests.selectors == []
