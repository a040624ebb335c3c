"""A burst of sessions is opened, and ended, a bounded number at a time per Database
(handlers/slots.py)."""

from __future__ import annotations

import asyncio

import kopf
import pytest

from pgjit.handlers import metrics, sessions
from pgjit.handlers.slots import DatabaseSlots

from .fakes import NAMESPACE, World, database_body, role_body, session_body

LIMIT = 3


async def _open(world: World, body: dict) -> dict:
    patch = kopf.Patch()
    await sessions.open_lease(body=body, name=body["metadata"]["name"], namespace=NAMESPACE,
                              uid=body["metadata"]["uid"], patch=patch, memo=world.memo,
                              **world.open_lease_kwargs(body))
    return dict(patch.status)


class HeldEngine:
    """Holds every activation until released, counting those in flight per Database name."""

    def __init__(self, world: World) -> None:
        self.activate_stub = world.engine.activate
        self.release = asyncio.Event()
        self.in_flight: dict[str, int] = {}
        self.most: dict[str, int] = {}
        world.engine.activate = self.activate  # type: ignore[method-assign]

    async def activate(self, request):
        database = request.session_id.split("-")[-1]  # the uid ends with the Database's name
        self.in_flight[database] = self.in_flight.get(database, 0) + 1
        self.most[database] = max(self.most.get(database, 0), self.in_flight[database])
        try:
            await self.release.wait()
            return await self.activate_stub(request)
        finally:
            self.in_flight[database] -= 1


def _waiting(step: str = "open") -> float:
    return metrics.WAITING_FOR_SLOT.labels(step)._value.get()


async def _until(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def _burst(world: World, database: str, count: int) -> list[dict]:
    bodies = []
    for i in range(count):
        user = f"{database}-user{i}"
        world.roles.append(role_body(f"role-{user}", user=user))
        bodies.append(session_body(f"s{i}-{database}", user=user, database=database))
    return bodies


@pytest.fixture
def limited(world: World) -> World:
    world.memo.openings = DatabaseSlots("open", LIMIT)
    world.memo.endings = DatabaseSlots("end", LIMIT)
    world.databases.extend([database_body("orders"), database_body("billing")])
    return world


async def test_a_burst_is_opened_at_most_the_limit_at_a_time_and_all_of_it_opens(limited):
    engine = HeldEngine(limited)
    tasks = [asyncio.create_task(_open(limited, body)) for body in _burst(limited, "orders", 10)]
    await _until(lambda: engine.in_flight.get("orders") == LIMIT)
    await _until(lambda: _waiting() == 10 - LIMIT)
    engine.release.set()
    statuses = await asyncio.gather(*tasks)
    assert [status["phase"] for status in statuses] == ["Active"] * 10
    assert engine.most["orders"] == LIMIT
    assert _waiting() == 0
    assert len(limited.memo.openings) == 0  # nothing kept for a Database with no opening


async def test_a_database_with_every_slot_taken_holds_up_no_other_database(limited):
    engine = HeldEngine(limited)
    stuck = [asyncio.create_task(_open(limited, body)) for body in _burst(limited, "orders", 5)]
    await _until(lambda: engine.in_flight.get("orders") == LIMIT)
    others = [asyncio.create_task(_open(limited, body)) for body in _burst(limited, "billing", 2)]
    await _until(lambda: engine.in_flight.get("billing") == 2)
    engine.release.set()
    await asyncio.gather(*stuck, *others)
    assert engine.most == {"orders": LIMIT, "billing": 2}


async def test_an_opening_that_fails_gives_its_slot_back(limited):
    def refuse(request):
        raise RuntimeError("the server went away")

    limited.engine.activate = refuse  # type: ignore[method-assign,assignment]
    for body in _burst(limited, "orders", LIMIT + 1):
        with pytest.raises(RuntimeError):
            await asyncio.wait_for(_open(limited, body), 5)  # a slot kept would block the last
    assert len(limited.memo.openings) == 0


async def test_the_slots_follow_the_setting(world: World):
    from pgjit.handlers.settings import OperatorMemo
    from pgjit.settings import Settings

    memo = OperatorMemo(Settings(concurrent_openings=7, concurrent_endings=5))
    assert (memo.openings.per_database, memo.endings.per_database) == (7, 5)
    memo = OperatorMemo(Settings())
    assert (memo.openings.per_database, memo.endings.per_database) == (64, 64)


async def test_an_opening_cancelled_while_it_waits_leaves_no_slot_and_no_count(limited):
    engine = HeldEngine(limited)
    holding = [asyncio.create_task(_open(limited, body)) for body in _burst(limited, "orders", 4)]
    await _until(lambda: _waiting() == 1)
    waiting = holding.pop()  # created last, so the one that waits
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert _waiting() == 0
    engine.release.set()
    assert [s["phase"] for s in await asyncio.gather(*holding)] == ["Active"] * LIMIT
    assert len(limited.memo.openings) == 0


class HeldEnds:
    """Holds every end until released, counting those in flight."""

    def __init__(self, world: World) -> None:
        self.end_stub = world.engine.end
        self.release = asyncio.Event()
        self.in_flight = self.most = 0
        world.engine.end = self.end  # type: ignore[method-assign]

    async def end(self, *args, **kwargs):
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await self.release.wait()
            return await self.end_stub(*args, **kwargs)
        finally:
            self.in_flight -= 1


def _active(body: dict) -> dict:
    return {**body, "status": {"phase": "Active", "username": body["spec"]["user"],
                               "userProvisioning": "keep"}}


async def _delete(world: World, body: dict) -> None:
    await sessions.end_on_delete(body=body, name=body["metadata"]["name"], namespace=NAMESPACE,
                                 uid=body["metadata"]["uid"], memo=world.memo,
                                 databases_by_name=world.databases_by_name)


async def test_a_mass_deletion_is_ended_at_most_the_limit_at_a_time_and_all_of_it_ends(limited):
    ends = HeldEnds(limited)
    bodies = [_active(body) for body in _burst(limited, "orders", 10)]
    tasks = [asyncio.create_task(_delete(limited, body)) for body in bodies]
    await _until(lambda: ends.in_flight == LIMIT)
    await _until(lambda: _waiting("end") == 10 - LIMIT)
    ends.release.set()
    await asyncio.gather(*tasks)
    assert ends.most == LIMIT
    assert len(limited.engine.ends) == 10
    assert _waiting("end") == 0 and len(limited.memo.endings) == 0


async def test_openings_holding_every_slot_never_delay_an_ending(limited):
    engine = HeldEngine(limited)
    opening = [asyncio.create_task(_open(limited, body))
               for body in _burst(limited, "orders", LIMIT + 2)]
    await _until(lambda: engine.in_flight.get("orders") == LIMIT and _waiting("open") == 2)
    ending = _active(session_body("leaving-orders", user="leaver", database="orders"))
    await asyncio.wait_for(_delete(limited, ending), 5)
    assert ("leaver", f"{NAMESPACE}/leaving-orders/uid-leaving-orders") in limited.engine.ends
    engine.release.set()
    await asyncio.gather(*opening)
