"""A Database's lease loop: ends sessions at expiry and keeps the Database's session count."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pgjit.handlers import lease_loop

from .fakes import (NAMESPACE, Stopped, World, database_body, eventually, invalid_role_body, now,
                    role_body, session_body, ts)


def active(name: str, *, expires_in: timedelta) -> dict:
    return session_body(name, status={"phase": "Active", "username": "alice",
                                      "userProvisioning": "keep",
                                      "expiresAt": ts(now() + expires_in)})


async def run_loop(world: World, stopped: Stopped) -> asyncio.Task:
    # The loop reads the indexes on every tick, as Kopf's live indexes would be.
    class LiveIndex(dict):
        def __init__(self, read):
            super().__init__()
            self._read = read

        def get(self, key, default=None):
            return self._read().get(key, default)

        def values(self):
            return self._read().values()

        def items(self):
            return self._read().items()

    return asyncio.create_task(lease_loop.supervise_leases(
        NAMESPACE, "orders", world.memo, stopped,
        LiveIndex(world.active_sessions_by_database), LiveIndex(lambda: world.databases_by_name),
        LiveIndex(lambda: world.roles_by_namespace),
        live_sessions_by_database=LiveIndex(world.live_sessions_by_database)))


async def test_invalid_role_never_breaks_the_lease_loop(world: World):
    world.databases.append(database_body())
    world.roles += [role_body(), invalid_role_body()]
    world.active_sessions.append(active("kept", expires_in=timedelta(hours=1)))
    stopped = Stopped()
    task = await run_loop(world, stopped)
    try:
        # Revalidation runs on every tick here; the invalid Role must not end the loop...
        await asyncio.sleep(0)
        world.active_sessions.append(active("due", expires_in=timedelta(seconds=-1)))
        # ...so the next expiry is still seen and ended.
        await eventually(lambda: task.done() or world.kube.patches_of("databasesessions", "due"),
                         what="the expired session's end")
        assert not task.done(), task.exception()
        assert world.kube.patches_of("databasesessions", "due")[-1]["phase"] == "Expired"
        assert not world.kube.patches_of("databasesessions", "kept")  # still allowed
    finally:
        stopped.stop()
        await asyncio.wait_for(task, 5)


async def test_session_count_follows_sessions_within_a_tick(world: World):
    # status.activeSessions (the SESSIONS column) said 1; that session has just ended.
    world.databases.append(database_body(status={"activeSessions": 1}))
    stopped = Stopped()
    task = await run_loop(world, stopped)
    try:
        await eventually(lambda: task.done() or world.kube.patches_of("databases", "orders"),
                         what="a status patch of the Database")
        assert not task.done(), task.exception()
        assert world.kube.patches_of("databases", "orders")[-1] == {"activeSessions": 0}
        # A new session: the count follows as soon as the index shows it.
        world.live_sessions["orders"] = [f"{NAMESPACE}/new/uid-new"]
        await eventually(lambda: world.kube.patches_of("databases", "orders")[-1]
                         == {"activeSessions": 1}, what="the count of the new session")
    finally:
        stopped.stop()
        await asyncio.wait_for(task, 5)


async def test_unchanged_session_count_is_not_rewritten(world: World):
    world.databases.append(database_body(status={"activeSessions": 1}))
    world.live_sessions["orders"] = [f"{NAMESPACE}/s/uid-s"]
    stopped = Stopped()
    task = await run_loop(world, stopped)
    # A due session's end is a visible point after which several ticks have run.
    world.active_sessions.append(active("due", expires_in=timedelta(seconds=-1)))
    try:
        await eventually(lambda: task.done() or world.kube.patches_of("databasesessions", "due"),
                         what="the expired session's end")
        assert not world.kube.patches_of("databases", "orders")
    finally:
        stopped.stop()
        await asyncio.wait_for(task, 5)


async def test_a_session_that_does_not_parse_is_left_out_and_the_others_still_end(world: World):
    """The index holds parsed sessions; one whose status does not parse (an expiresAt written
    by hand) is not in it, so no ValidationError can reach the loop."""
    world.databases.append(database_body())
    world.roles.append(role_body())
    broken = active("broken", expires_in=timedelta(hours=1))
    broken["status"]["expiresAt"] = "next tuesday"
    world.active_sessions += [broken, active("due", expires_in=timedelta(seconds=-1))]
    assert [s.name for s in world.active_sessions_by_database()[(NAMESPACE, "orders")]
            ] == ["due"]
    stopped = Stopped()
    task = await run_loop(world, stopped)
    try:
        await eventually(lambda: task.done() or world.kube.patches_of("databasesessions", "due"),
                         what="the expired session's end")
        assert not task.done(), task.exception()
        assert world.kube.patches_of("databasesessions", "due")[-1]["phase"] == "Expired"
    finally:
        stopped.stop()
        await asyncio.wait_for(task, 5)
