"""Ending sessions: teleport-behaviour.md §6 items 23-32, and the sweep."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from psycopg import sql

from enginekit import ID, soon
from pgjit.core.leases import Ledger
from pgjit.core.permissions import PermissionRule, PermissionRules

SELECT_ALL = PermissionRules(allow=(PermissionRule.build("table", "*", "*", ["SELECT"], deny=False),))


async def _admin(kit, dbname="postgres"):
    return await psycopg.AsyncConnection.connect(kit.server.admin_conninfo(dbname), autocommit=True)


async def test_23_keep_strips_direct_memberships_locks_and_keeps_owned_objects(kit):
    reader, = await kit.make_roles("reader")
    alice = kit.name("alice")
    db = await kit.make_database()
    await kit.su(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(ID(reader)), dbname=db)
    await kit.engine.activate(kit.request("s1", alice, [reader], database=db))
    conn = await kit.login(alice, kit.passwords["s1"], db)
    await conn.execute("SET ROLE NONE")
    await conn.execute(sql.SQL("SET ROLE {}").format(ID(alice)))
    await conn.execute("CREATE TABLE public.mine(x int)")
    await conn.close()
    teardown = await kit.engine.end(alice, "s1", mode="keep")
    assert teardown.action == "Locked"
    info = await kit.role(alice)
    assert info.exists and not info.can_login and info.memberships == {kit.managed_role}
    assert await kit.su("SELECT count(*) FROM pg_tables WHERE tablename = 'mine'", dbname=db) == [(1,)]


async def test_24_other_live_session_keeps_login_and_roles(kit):
    reader, = await kit.make_roles("reader")
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, [reader], database="postgres"))
    await kit.engine.activate(kit.request("s2", alice, [reader], database="template1"))
    teardown = await kit.engine.end(alice, "s1")
    assert teardown.action == "Released"
    info = await kit.role(alice)
    assert info.can_login and info.memberships == {reader, kit.managed_role}
    assert set(Ledger.parse(info.comment).leases) == {"s2"}


async def test_25_login_is_refused_as_soon_as_the_end_committed(kit):
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice))
    await kit.engine.end(alice, "s1", terminate_connections=False)
    with pytest.raises(psycopg.OperationalError):
        await kit.login(alice, kit.passwords["s1"])


async def test_26_best_effort_drop_without_dependencies_drops(kit):
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, mode="best_effort_drop"))
    teardown = await kit.engine.end(alice, "s1", mode="best_effort_drop")
    assert teardown.action == "Dropped"
    assert not (await kit.role(alice)).exists


async def test_27_drop_refused_by_an_owned_object_falls_back_to_locking(kit):
    alice = kit.name("alice")
    db = await kit.make_database()
    await kit.engine.activate(kit.request("s1", alice, database=db, mode="best_effort_drop"))
    await kit.su(sql.SQL("CREATE TABLE owned(x int); ALTER TABLE owned OWNER TO {}").format(
        ID(alice)), dbname=db)
    teardown = await kit.engine.end(alice, "s1", mode="best_effort_drop")
    assert teardown.action == "Deactivated"
    assert any("owns 1 object" in b and db in b for b in teardown.blockers), teardown.blockers
    info = await kit.role(alice)
    assert info.exists and not info.can_login and info.memberships == {kit.managed_role}


async def test_28_object_in_another_database_blocks_the_drop(kit):
    alice = kit.name("alice")
    db_other = await kit.make_database("other")
    await kit.engine.activate(kit.request("s1", alice, mode="best_effort_drop"))
    await kit.su(sql.SQL("CREATE TABLE elsewhere(x int); ALTER TABLE elsewhere OWNER TO {}").format(
        ID(alice)), dbname=db_other)
    teardown = await kit.engine.end(alice, "s1", mode="best_effort_drop")
    assert teardown.action == "Deactivated"
    assert any(db_other in b for b in teardown.blockers)


@pytest.mark.parametrize("kind", ["acl", "default_acl"])
async def test_29_privileges_and_default_acls_block_the_drop(kit, kind):
    alice = kit.name("alice")
    db = await kit.make_database()
    await kit.engine.activate(kit.request("s1", alice, database=db, mode="best_effort_drop"))
    if kind == "acl":
        await kit.su(sql.SQL("CREATE TABLE t(x int); GRANT SELECT ON t TO {}").format(ID(alice)),
                     dbname=db)
    else:
        await kit.su(sql.SQL("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {}").format(
            ID(alice)), dbname=db)
    teardown = await kit.engine.end(alice, "s1", mode="best_effort_drop")
    assert teardown.action == "Deactivated" and teardown.blockers
    assert not (await kit.role(alice)).can_login


async def test_30_ending_a_vanished_or_already_ended_user_succeeds(kit):
    alice = kit.name("alice")
    assert (await kit.engine.end(alice, "never-started")).action == "Absent"
    await kit.engine.activate(kit.request("s1", alice))
    assert (await kit.engine.end(alice, "s1")).action == "Locked"
    assert (await kit.engine.end(alice, "s1")).action == "Locked"
    await kit.su(sql.SQL("DROP ROLE {}").format(ID(alice)))
    assert (await kit.engine.end(alice, "s1")).action == "Absent"


async def test_31_teardown_that_failed_is_finished_by_a_later_retry_or_sweep(kit):
    """A teardown that never ran (operator down, server unreachable) is completed by the sweep."""
    alice, bob = kit.name("alice"), kit.name("bob")
    await kit.engine.activate(kit.request("a1", alice))
    await kit.engine.activate(kit.request("b1", bob, mode="best_effort_drop"))
    await kit.engine.activate(kit.request("b2", bob, mode="best_effort_drop"))
    results = await kit.engine.sweep({"b2"})
    assert {(t.username, t.action) for t in results} == {(alice, "Locked"), (bob, "Released")}
    assert (await kit.role(bob)).can_login
    results = await kit.engine.sweep(set())
    assert [(t.username, t.action) for t in results] == [(bob, "Dropped")]
    assert not (await kit.role(alice)).can_login and not (await kit.role(bob)).exists
    assert await kit.engine.sweep(set()) == []


async def test_sweep_locks_a_managed_user_enabled_behind_pgjit_s_back(kit):
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice))
    await kit.engine.end(alice, "s1")
    await kit.su(sql.SQL("ALTER ROLE {} LOGIN").format(ID(alice)))
    results = await kit.engine.sweep(set())
    assert [(t.username, t.action) for t in results] == [(alice, "Locked")]
    assert not (await kit.role(alice)).can_login


async def test_sweep_never_touches_unmanaged_roles_or_the_admin(kit, pg_server):
    stranger = kit.name("stranger")
    await kit.su(sql.SQL("CREATE ROLE {} LOGIN").format(ID(stranger)))
    await kit.engine.ensure_managed_role()  # on 16+ the admin holds ADMIN OPTION on it
    assert await kit.engine.sweep(set()) == []
    assert (await kit.role(stranger)).can_login
    assert (await kit.role(pg_server.admin_user, mapped=False)).can_login


async def test_32_end_terminates_backends_and_waits_until_they_are_gone(kit):
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, mode="best_effort_drop"))
    conns = [await kit.login(alice, kit.passwords["s1"]) for _ in range(3)]
    teardown = await kit.engine.end(alice, "s1", mode="best_effort_drop")
    assert teardown.terminated_backends == 3
    assert teardown.action == "Dropped"  # the drop did not race the exiting backends
    for conn in conns:
        with pytest.raises(psycopg.OperationalError):
            await conn.execute("SELECT 1")
        await conn.close()


async def test_the_common_end_drops_and_terminates_in_two_round_trips(kit):
    # The state read, then one script: DROP, COMMIT and the terminate (it was a third trip).
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, mode="best_effort_drop"))
    before = kit.engine.stats.round_trips
    teardown = await kit.engine.end(alice, "s1", mode="best_effort_drop")
    assert teardown.action == "Dropped" and teardown.terminated_backends == 0
    assert kit.engine.stats.round_trips - before == 2
    assert not (await kit.role(alice)).exists


async def test_a_login_after_the_state_read_is_terminated_by_the_drop(kit, monkeypatch):
    """Dropping a role does not end its connections, and a login is not held by pgjit's lock:
    one that lands between the state read (no connections) and the drop is ended with it."""
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, mode="best_effort_drop"))
    users = kit.engine._users
    read_state = users._begin_locked
    late: list = []

    async def then_log_in(tx, name, *args, **kwargs):
        state = await read_state(tx, name, *args, **kwargs)
        if name == alice and not late:
            late.append(await kit.login(alice, kit.passwords["s1"]))
        return state

    monkeypatch.setattr(users, "_begin_locked", then_log_in)
    teardown = await kit.engine.end(alice, "s1", mode="best_effort_drop")
    assert teardown.action == "Dropped" and teardown.terminated_backends == 1
    with pytest.raises(psycopg.OperationalError):
        await late[0].execute("SELECT 1")
    await late[0].close()
    assert not (await kit.role(alice)).exists


async def test_without_terminate_connections_live_backends_turn_drop_into_lock(kit):
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, mode="best_effort_drop"))
    conn = await kit.login(alice, kit.passwords["s1"])
    teardown = await kit.engine.end(alice, "s1", mode="best_effort_drop",
                                    terminate_connections=False)
    assert teardown.action == "Deactivated" and "open connection" in teardown.reason
    assert (await (await conn.execute("SELECT 1")).fetchone()) == (1,)  # Teleport's behaviour
    await conn.close()


async def test_end_revokes_object_permissions_in_the_session_database(kit, pg_server):
    db = await kit.make_database()
    await kit.su(sql.SQL("CREATE SCHEMA s; CREATE TABLE s.t(x int); ALTER TABLE s.t OWNER TO {}; "
                         "GRANT USAGE ON SCHEMA s TO {} WITH GRANT OPTION").format(
        ID(pg_server.admin_user), ID(pg_server.admin_user)), dbname=db)
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, database=db, permissions=SELECT_ALL,
                                          mode="best_effort_drop"))
    teardown = await kit.engine.end(alice, "s1", mode="best_effort_drop")
    assert teardown.action == "Dropped"  # no ACL entry was left to block it


@pytest.mark.parametrize("failing", ["alice", "bob"])
async def test_one_user_that_cannot_be_swept_does_not_stop_the_others(kit, monkeypatch, failing):
    """The sweep collects errors per user (CloudNativePG's applyRoleActions): whichever user
    fails, in whatever order the catalog lists them, every other one is still ended."""
    from pgjit.engine import EngineError, SweepIncomplete
    from pgjit.vocabulary import Reason
    alice, bob = kit.name("alice"), kit.name("bob")
    await kit.engine.activate(kit.request("a1", alice))
    await kit.engine.activate(kit.request("b1", bob))
    broken = kit.name(failing)
    end_username = kit.engine._users.end_username

    async def refuse_one(name, *args, **kwargs):
        if name == broken:
            raise EngineError(Reason.INSUFFICIENT_PRIVILEGE, f'cannot end "{name}"')
        return await end_username(name, *args, **kwargs)

    monkeypatch.setattr(kit.engine._users, "end_username", refuse_one)
    with pytest.raises(SweepIncomplete) as raised:
        await kit.engine.sweep(set())
    other = bob if failing == "alice" else alice
    assert [(t.username, t.action, t.session_id) for t in raised.value.teardowns] == [
        (other, "Locked", "b1" if other == bob else "a1")]
    assert raised.value.reason == Reason.INSUFFICIENT_PRIVILEGE
    assert broken in raised.value.message and not raised.value.transient
    assert not (await kit.role(other)).can_login
    assert (await kit.role(broken)).can_login
