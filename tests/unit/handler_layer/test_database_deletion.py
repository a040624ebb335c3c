"""Deleting a Database: its delete handler and its health timer never hold the finalizer.

Kopf removes a Database's finalizer once its delete handler has succeeded and its daemon and
timer have exited. Two ways that stalled in the cluster layer: the health check went on
waiting on a server that no longer answered, and the delete handler wrote a status that
changed nothing, whose patch Kopf counted on to wake it (settings.py, databases.py).
"""

from __future__ import annotations

import asyncio

import kopf

from pgjit.handlers import databases

from .fakes import NAMESPACE, Stopped, World, database_body


async def _release(world: World, status: dict) -> kopf.Patch:
    body = database_body(status=status)
    patch = kopf.Patch()
    await databases.release(body=body, namespace=NAMESPACE, name=body["metadata"]["name"],
                            patch=patch, memo=world.memo,
                            live_sessions_by_database=world.live_sessions_by_database())
    return patch


async def test_release_writes_nothing_when_the_count_shown_is_right(world):
    assert dict(await _release(world, {"activeSessions": 0})) == {}


async def test_release_corrects_a_stale_count(world):
    patch = await _release(world, {"activeSessions": 3})
    assert patch["status"]["activeSessions"] == 0
    patch = await _release(world, {})
    assert patch["status"]["activeSessions"] == 0


class _Hanging:
    """An engine registry whose server never answers: every call waits for good."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.cancelled = False

    async def engine_for(self, database, namespace, *, refresh=False):
        self.waiting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def test_the_health_check_is_given_up_when_the_database_is_deleted(world):
    world.memo.engines = hanging = _Hanging()
    stopped = Stopped()
    body = database_body()
    check = asyncio.create_task(databases.health(
        body=body, namespace=NAMESPACE, name=body["metadata"]["name"], patch=kopf.Patch(),
        memo=world.memo, live_sessions_by_database=world.live_sessions_by_database(),
        live_sessions_by_id=world.live_sessions_by_id(),
        roles_by_namespace=world.roles_by_namespace, stopped=stopped))
    await asyncio.wait_for(hanging.waiting.wait(), 5)
    assert not check.done()
    stopped.stop()
    await asyncio.wait_for(check, 5)
    assert hanging.cancelled


async def test_a_health_check_that_ends_reports_its_error(world):
    """Not swallowed by the stop watch: the timer still fails, and Kopf retries it."""
    class Refusing:
        async def engine_for(self, database, namespace, *, refresh=False):
            raise databases.EngineError("Unreachable", "connection refused", transient=True)
    world.memo.engines = Refusing()
    body = database_body()
    patch = kopf.Patch()
    try:
        await databases.health(
            body=body, namespace=NAMESPACE, name=body["metadata"]["name"], patch=patch,
            memo=world.memo, live_sessions_by_database=world.live_sessions_by_database(),
        live_sessions_by_id=world.live_sessions_by_id(),
            roles_by_namespace=world.roles_by_namespace, stopped=Stopped())
    except kopf.TemporaryError as error:
        assert "connection refused" in str(error)
    else:
        raise AssertionError("the health check's failure was lost")
    assert patch["status"]["conditions"][0]["reason"] == "Unreachable"
