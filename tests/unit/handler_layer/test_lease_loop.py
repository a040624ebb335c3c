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


class LiveIndex(dict):
    """An index the loop reads on every tick, as it would Kopf's live indexes."""

    def __init__(self, read):
        super().__init__()
        self._read = read

    def get(self, key, default=None):
        return self._read().get(key, default)

    def values(self):
        return self._read().values()

    def items(self):
        return self._read().items()


async def run_loop(world: World, stopped: Stopped) -> asyncio.Task:
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


class _Frozen:
    """Indexes that hold the same objects from tick to tick, as Kopf's do between events."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.refresh()

    def refresh(self) -> None:
        self.databases = self.world.databases_by_name
        self.roles = self.world.roles_by_namespace
        self.active = self.world.active_sessions_by_database()


async def _run_frozen(world: World, frozen: _Frozen, stopped: Stopped) -> asyncio.Task:
    return asyncio.create_task(lease_loop.supervise_leases(
        NAMESPACE, "orders", world.memo, stopped, LiveIndex(lambda: frozen.active),
        LiveIndex(lambda: frozen.databases), LiveIndex(lambda: frozen.roles),
        live_sessions_by_database=LiveIndex(world.live_sessions_by_database)))


def _counting(monkeypatch, module, name: str) -> list:
    calls: list = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


async def _revalidations(loads: list, count: int) -> None:
    start = len(loads)
    await eventually(lambda: len(loads) >= start + count, what=f"{count} more revalidations")


async def test_an_unchanged_world_decides_each_session_once_and_any_change_decides_again(
        world: World, monkeypatch):
    world.databases.append(database_body())
    world.roles.append(role_body())
    world.active_sessions += [active("one", expires_in=timedelta(hours=1)),
                              active("two", expires_in=timedelta(hours=1))]
    frozen = _Frozen(world)
    decisions = _counting(monkeypatch, lease_loop, "decide")
    traits = {"data": {}}

    async def load_traits(memo):
        loads.append(memo)
        return traits["data"]

    loads: list = []
    monkeypatch.setattr(lease_loop, "load_traits_data", load_traits)
    stopped = Stopped()
    task = await _run_frozen(world, frozen, stopped)
    try:
        await _revalidations(loads, 5)
        assert len(decisions) == 2  # once each, however many revalidations

        async def database_changed(part: str, value: dict) -> int:
            """The Database's ``part`` replaced (a new object in the index); the decisions
            made over three more revalidations."""
            world.databases[0][part] = {**world.databases[0][part], **value}
            frozen.databases = world.databases_by_name
            before = len(decisions)
            await _revalidations(loads, 3)
            return len(decisions) - before

        def ready(message: str) -> dict:
            return {"conditions": [{"type": "Ready", "status": "True", "reason": "Connected",
                                    "message": message,
                                    "lastTransitionTime": "2026-12-04T10:00:00Z"}]}

        # The session count: the loop itself writes it on every tick of a burst, and no
        # decision reads it. Nobody is decided again.
        assert await database_changed("status", {"activeSessions": 2}) == 0
        # What a decision reads: the labels (Roles select Databases by them), the spec, the
        # Ready condition. Each time both sessions are decided again.
        assert await database_changed("metadata", {"labels": {"tier": "prod"}}) == 2
        assert await database_changed("spec", {"port": 5433}) == 2
        assert await database_changed("status", ready("ok")) == 2
        # The count and the Ready message together: still nothing a decision reads.
        assert await database_changed("status", {"activeSessions": 3, **ready("ok again")}) == 0

        # The traits ConfigMap changed.
        traits["data"] = {"alice": "teams: [payments]"}
        await _revalidations(loads, 3)
        assert len(decisions) == 10

        # One session's record was replaced (its status changed): only that one again.
        world.active_sessions[1] = active("two", expires_in=timedelta(hours=2))
        frozen.active = world.active_sessions_by_database()
        await _revalidations(loads, 3)
        assert len(decisions) == 12  # the index gave both sessions new records

        # A Role that no longer names alice: the sessions decided allowed before are ended.
        world.roles[0] = role_body(user="bob")
        frozen.roles = world.roles_by_namespace
        await eventually(lambda: world.kube.patches_of("databasesessions", "one")
                         and world.kube.patches_of("databasesessions", "two"),
                         what="both sessions ended")
        for name in ("one", "two"):
            patch = world.kube.patches_of("databasesessions", name)[-1]
            assert patch["phase"] == "Ended"
            assert any(c["reason"] == "AccessRevoked" for c in patch["conditions"])
        assert not task.done(), task.exception()
    finally:
        stopped.stop()
        await asyncio.wait_for(task, 5)


async def _ended_by_a_database_change(world: World, monkeypatch, change) -> dict:
    """Run the loop until the session was decided allowed, apply ``change`` to the Database
    (its status left as it was), and return the session's last status patch."""
    world.active_sessions.append(active("one", expires_in=timedelta(hours=1)))
    frozen = _Frozen(world)
    decisions = _counting(monkeypatch, lease_loop, "decide")
    stopped = Stopped()
    task = await _run_frozen(world, frozen, stopped)
    try:
        await eventually(lambda: len(decisions) >= 1, what="the session decided allowed")
        change(world.databases[0])
        frozen.databases = world.databases_by_name
        await eventually(lambda: world.kube.patches_of("databasesessions", "one"),
                         what="the session ended")
        assert not task.done(), task.exception()
        return world.kube.patches_of("databasesessions", "one")[-1]
    finally:
        stopped.stop()
        await asyncio.wait_for(task, 5)


async def test_a_database_relabelled_out_of_a_roles_selector_ends_its_sessions(world, monkeypatch):
    """The session was decided allowed on the same Roles and traits; only the Database's
    labels changed, and the Role no longer selects it."""
    database = database_body()
    database["metadata"]["labels"] = {"tier": "prod"}
    world.databases.append(database)
    spec = role_body()["spec"]
    spec["allow"]["databaseSelector"] = {"matchLabels": {"tier": "prod"}}
    world.roles.append(role_body(spec=spec))

    def relabel(body):
        body["metadata"] = {**body["metadata"], "labels": {"tier": "dev"}}

    patch = await _ended_by_a_database_change(world, monkeypatch, relabel)
    assert patch["phase"] == "Ended"
    assert any(c["reason"] == "AccessRevoked" for c in patch["conditions"])


async def test_a_database_whose_spec_no_longer_lists_the_sessions_database_ends_it(
        world, monkeypatch):
    database = database_body()
    database["spec"]["databases"] = ["orders", "billing"]
    world.databases.append(database)
    world.roles.append(role_body())

    def unlist(body):
        body["spec"] = {**body["spec"], "databases": ["billing"]}

    patch = await _ended_by_a_database_change(world, monkeypatch, unlist)
    assert patch["phase"] == "Ended"
    assert any(c["reason"] == "AccessRevoked" for c in patch["conditions"])


async def test_a_session_whose_decision_failed_is_decided_again(world: World, monkeypatch):
    """Only an allowed session is remembered; one whose decision raised is decided again."""
    world.databases.append(database_body())
    world.roles.append(role_body())
    world.active_sessions.append(active("one", expires_in=timedelta(hours=1)))
    frozen = _Frozen(world)
    calls: list = []

    def not_final(*args, **kwargs):
        calls.append(args)
        raise lease_loop.Outcome("Pending", "Waiting", "not yet", terminal=False)

    monkeypatch.setattr(lease_loop, "decide", not_final)
    stopped = Stopped()
    task = await _run_frozen(world, frozen, stopped)
    try:
        await eventually(lambda: task.done() or len(calls) >= 3,
                         what="three decisions of the same session")
        assert not task.done(), task.exception()
        assert not world.kube.patches_of("databasesessions", "one")
    finally:
        stopped.stop()
        await asyncio.wait_for(task, 5)
