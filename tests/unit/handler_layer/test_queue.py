"""Past the sessions waiting in memory, a session is queued in its status and handed back by its
Database's lease loop (handlers/queue.py)."""

from __future__ import annotations

import asyncio
import random
import time

import kopf
import pytest

from pgjit.handlers import approvals, queue, sessions
from pgjit.handlers.approvals import CHECK_ANNOTATION
from pgjit.handlers.queue import QueuePokes, is_queued
from pgjit.handlers.slots import DatabaseSlots
from pgjit.vocabulary import Reason, SessionPhase

from .fakes import NAMESPACE, World, database_body
from .test_slots import HeldEngine, _burst, _open, _until, _waiting

SLOTS, WAITING = 2, 2


@pytest.fixture
def bounded(world: World) -> World:
    world.memo.openings = DatabaseSlots("open", SLOTS, queue=WAITING)
    world.databases.extend([database_body("orders"), database_body("billing")])
    return world


def _queued_index(bodies: list[dict]) -> dict:
    index: dict = {}
    for body in bodies:
        entries = queue.queued_sessions(namespace=NAMESPACE, name=body["metadata"]["name"],
                                        spec=body["spec"], status=body["status"],
                                        meta=body["metadata"])
        for key, value in entries.items():
            index.setdefault(key, []).append(value)
    return index


def _with_status(body: dict, status: dict) -> dict:
    return {**body, "status": status}


async def test_past_the_waiting_bound_a_session_is_queued_and_holds_nothing(bounded: World):
    engine = HeldEngine(bounded)
    bodies = _burst(bounded, "orders", 7)
    held = [asyncio.create_task(_open(bounded, body)) for body in bodies[:SLOTS + WAITING]]
    await _until(lambda: engine.in_flight.get("orders") == SLOTS and _waiting() == WAITING)
    # The rest return at once, queued: no activation, no Secret, nothing waiting in memory.
    for body in bodies[SLOTS + WAITING:]:
        status = await asyncio.wait_for(_open(bounded, body), 5)
        assert status["phase"] == SessionPhase.PENDING
        assert is_queued(status), status
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert 'Database "orders"' in ready["message"]
    assert engine.most["orders"] == SLOTS and _waiting() == WAITING
    assert not any(name.endswith(("s4-orders-credentials", "s5-orders-credentials"))
                   for _, name in bounded.kube.secrets)
    engine.release.set()
    assert [s["phase"] for s in await asyncio.gather(*held)] == ["Active"] * (SLOTS + WAITING)


async def test_another_database_is_not_queued_behind_a_crowded_one(bounded: World):
    engine = HeldEngine(bounded)
    crowded = [asyncio.create_task(_open(bounded, body))
               for body in _burst(bounded, "orders", SLOTS + WAITING)]
    await _until(lambda: engine.in_flight.get("orders") == SLOTS)
    other = asyncio.create_task(_open(bounded, _burst(bounded, "billing", 1)[0]))
    await _until(lambda: engine.in_flight.get("billing") == 1)
    engine.release.set()
    assert (await other)["phase"] == "Active"
    await asyncio.gather(*crowded)


async def test_a_session_already_queued_is_not_written_again_when_still_crowded(bounded):
    """A restart's resume meets its backlog queued: it writes nothing for each of them."""
    engine = HeldEngine(bounded)
    bodies = _burst(bounded, "orders", SLOTS + WAITING + 1)
    held = [asyncio.create_task(_open(bounded, body)) for body in bodies[:-1]]
    await _until(lambda: _waiting() == WAITING)
    queued = await _open(bounded, bodies[-1])
    assert await _open(bounded, _with_status(bodies[-1], queued)) == {}
    engine.release.set()
    await asyncio.gather(*held)


async def test_a_handed_back_session_is_opened_past_the_bound(bounded: World):
    engine = HeldEngine(bounded)
    bodies = _burst(bounded, "orders", SLOTS + WAITING + 1)
    held = [asyncio.create_task(_open(bounded, body)) for body in bodies[:-1]]
    await _until(lambda: _waiting() == WAITING)
    last = _with_status(bodies[-1], await _open(bounded, bodies[-1]))
    assert is_queued(last["status"])
    # The lease loop poked it: the annotation's update handler opens it, not queues it again.
    patch = kopf.Patch()
    handed_back = asyncio.create_task(approvals.reconsider(
        body=last, name=last["metadata"]["name"], namespace=NAMESPACE,
        uid=last["metadata"]["uid"], patch=patch, memo=bounded.memo,
        **bounded.open_lease_kwargs(last)))
    await _until(lambda: _waiting() == WAITING + 1)
    engine.release.set()
    await asyncio.gather(handed_back, *held)
    assert patch.status["phase"] == "Active"


async def test_queueing_posts_no_event_and_the_opening_after_it_does(bounded: World):
    """Queued is flow control the status shows: in a burst of 10,000 an Event for each would be
    8,900 writes for nothing a person acts on. The session's opening still posts its Event."""
    engine = HeldEngine(bounded)
    bodies = _burst(bounded, "orders", SLOTS + WAITING + 1)
    held = [asyncio.create_task(_open(bounded, body)) for body in bodies[:-1]]
    await _until(lambda: _waiting() == WAITING)
    try:
        last = _with_status(bodies[-1], await _open(bounded, bodies[-1]))
        assert is_queued(last["status"])
        about = f"DatabaseSession/{last['metadata']['name']}"
        assert [e for e in bounded.events if e["about"] == about] == []
    finally:  # a failure above leaves no opening waiting for the tests after this one
        engine.release.set()
        await asyncio.gather(*held)
    patch = kopf.Patch()
    await approvals.reconsider(
        body=last, name=last["metadata"]["name"], namespace=NAMESPACE,
        uid=last["metadata"]["uid"], patch=patch, memo=bounded.memo,
        **bounded.open_lease_kwargs(last))
    assert [(e["type"], e["reason"]) for e in bounded.events if e["about"] == about] == [
        ("Normal", Reason.ACTIVE)]


class _Memo:
    """What ``QueuePokes.poke`` uses: the slots, and a Kube whose annotations can fail."""

    def __init__(self, openings: DatabaseSlots) -> None:
        self.openings, self.kube, self.poked, self.fail = openings, self, [], False

    async def annotate(self, group, version, plural, namespace, name, annotations) -> None:
        if self.fail:
            raise ConnectionError("the API server is away")
        self.poked.append(name)


def _queued_bodies(count: int) -> list[dict]:
    queued = [_with_status(body, {"phase": "Pending", "conditions": [
        {"type": "Ready", "status": "False", "reason": Reason.QUEUED}]})
        for body in _burst(_Roles(), "orders", count)]
    for i, body in enumerate(queued):  # created one second apart, the last first
        body["metadata"] = {**body["metadata"],
                            "creationTimestamp": f"2026-12-02T10:00:0{count - 1 - i}Z"}
    return queued


async def test_the_loop_hands_back_no_more_than_there_is_room_for_oldest_first():
    memo = _Memo(DatabaseSlots("open", SLOTS, queue=WAITING))
    pokes = QueuePokes(NAMESPACE, "orders")
    queued = _queued_bodies(6)
    index = _queued_index(queued)
    await pokes.poke(memo, index)
    assert memo.poked == ["s5-orders", "s4-orders", "s3-orders", "s2-orders"]  # room: 2 + 2
    # Poked but not yet seen opened: they still count and are not poked again, however long
    # they wait their turn.
    await pokes.poke(memo, index)
    assert len(memo.poked) == 4
    # Two were opened (their events took them out of the queue): room for two more.
    opened = {"s5-orders", "s4-orders"}
    await pokes.poke(memo, _queued_index([b for b in queued
                                          if b["metadata"]["name"] not in opened]))
    assert memo.poked[4:] == ["s1-orders", "s0-orders"]


class _Room:
    def __init__(self, room: int) -> None:
        self.free = room

    def room(self, key) -> int:
        return self.free


def test_the_sessions_due_are_the_oldest_not_yet_poked_as_many_as_there_is_room_for():
    """Against the rule written plainly (sort everything, skip the poked, take the room), on
    random queues with entries repeated (a session's events) and creation times shared."""
    rng = random.Random(20)
    for _ in range(300):
        created = {f"s{i}": f"2026-12-04T10:00:{rng.randrange(6):02d}Z" for i in range(40)}
        entries = [(created[name], name)
                   for name in (f"s{rng.randrange(40)}" for _ in range(rng.randrange(60)))]
        queued = {(NAMESPACE, "orders"): entries, (NAMESPACE, "billing"): [("0", "other")]}
        pokes = QueuePokes(NAMESPACE, "orders")
        # Some poked sessions are still queued, others were opened since (no longer listed).
        pokes._poked = {f"s{rng.randrange(50)}": time.monotonic() for _ in range(10)}
        still_poked = {name for _, name in entries} & set(pokes._poked)
        room = rng.randrange(-2, 30)
        expected = [name for _, name in sorted(set(entries))
                    if name not in still_poked][:max(0, room - len(still_poked))]
        assert pokes.due(queued, _Room(room)) == expected


async def test_a_poke_that_failed_is_made_again():
    memo = _Memo(DatabaseSlots("open", SLOTS, queue=WAITING))
    pokes = QueuePokes(NAMESPACE, "orders")
    index = _queued_index(_queued_bodies(1))
    memo.fail = True
    with pytest.raises(ConnectionError):
        await pokes.poke(memo, index)
    memo.fail = False
    await pokes.poke(memo, index)
    assert memo.poked == ["s0-orders"]


async def test_the_lease_loop_pokes_queued_sessions_with_the_check_annotation(world: World):
    world.memo.openings = DatabaseSlots("open", SLOTS, queue=WAITING)
    queued = [_with_status(body, {"phase": "Pending", "conditions": [
        {"type": "Ready", "status": "False", "reason": Reason.QUEUED}]})
        for body in _burst(world, "orders", 3)]
    await QueuePokes(NAMESPACE, "orders").poke(world.memo, _queued_index(queued))
    poked = [(name, annotations) for _, _, name, annotations in world.kube.annotations]
    assert sorted(name for name, _ in poked) == ["s0-orders", "s1-orders", "s2-orders"]
    assert all(annotations[CHECK_ANNOTATION].startswith("queue:") for _, annotations in poked)


def test_a_session_being_deleted_or_not_queued_is_not_in_the_queue():
    body = _burst(_Roles(), "orders", 1)[0]
    queued_status = {"phase": "Pending", "conditions": [
        {"type": "Ready", "status": "False", "reason": Reason.QUEUED}]}
    assert _queued_index([_with_status(body, queued_status)])
    deleting = _with_status(body, queued_status)
    deleting["metadata"] = {**body["metadata"], "deletionTimestamp": "2026-12-02T10:00:00Z"}
    assert not _queued_index([deleting])
    assert not _queued_index([_with_status(body, {"phase": "Pending", "conditions": [
        {"type": "Ready", "status": "False", "reason": Reason.USER_SHARED}]})])
    assert not _queued_index([_with_status(body, {"phase": "Active"})])


class _Roles:
    """Enough of a World for ``_burst`` outside a handler test."""

    def __init__(self) -> None:
        self.roles: list = []


def test_the_waiting_bound_follows_the_setting():
    from pgjit.handlers.settings import OperatorMemo
    from pgjit.settings import Settings

    assert OperatorMemo(Settings(opening_queue=9)).openings.queue == 9
    assert OperatorMemo(Settings()).openings.queue == 1024
