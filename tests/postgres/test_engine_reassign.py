"""best_effort_reassign_and_drop: what a user created goes to the Database's objectsInheritor,
then the user is dropped; where that cannot be done it is locked with the reason. Never DROP
OWNED: nothing but the user is ever dropped."""

from __future__ import annotations

from psycopg import sql

from enginekit import ID, new_engine
from pgjit.core.naming import postgres_username


async def owned(kit, db: str, role: str) -> set[tuple[str, str]]:
    rows = await kit.su("""
        SELECT c.relkind::text, c.relname::text FROM pg_class c
         WHERE c.relowner = (SELECT oid FROM pg_roles WHERE rolname = %s)
           AND c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'v', 'S')""",
                        [role], dbname=db)
    return {(k, n) for k, n in rows}


async def setup(kit) -> tuple[str, str, str, object]:
    """Two databases where users may create objects, an inheritor the admin can act for, and an
    engine whose Database names it."""
    inheritor = kit.name("heir")
    await kit.su(sql.SQL("CREATE ROLE {} NOLOGIN").format(ID(inheritor)))
    await kit.su(sql.SQL("GRANT {} TO {}").format(ID(inheritor), ID(kit.server.admin_user)))
    dbs = []
    for base in ("one", "two"):
        db = await kit.make_database(base)
        await kit.su(sql.SQL("GRANT CREATE, USAGE ON SCHEMA public TO PUBLIC"), dbname=db)
        dbs.append(db)
    engine = new_engine(kit.server, kit.managed_role, objects_inheritor=inheritor)
    return dbs[0], dbs[1], inheritor, engine


async def create_objects(kit, user: str, password: str, db: str) -> None:
    async with await kit.login(user, password, db) as conn:
        await conn.execute("CREATE TABLE mine(x int); CREATE VIEW my_view AS SELECT * FROM mine;"
                           " CREATE SEQUENCE my_seq")


async def session_that_creates(kit, engine, user: str, db: str, statements: str):
    """Open a reassign-mode session for ``user``, run ``statements`` as that user in ``db``,
    end the session; the teardown."""
    try:
        await engine.activate(kit.request("s1", user, database=db,
                                          mode="best_effort_reassign_and_drop"))
        async with await kit.login(user, kit.passwords["s1"], db) as conn:
            await conn.execute(statements)
        return await engine.end(user, "s1")
    finally:
        await engine.close()


async def test_objects_in_two_databases_go_to_the_inheritor_and_the_user_is_dropped(kit):
    one, two, inheritor, engine = await setup(kit)
    alice = kit.name("alice")
    try:
        await engine.activate(kit.request("s1", alice, database=one,
                                          mode="best_effort_reassign_and_drop"))
        for db in (one, two):
            await create_objects(kit, alice, kit.passwords["s1"], db)
        teardown = await engine.end(alice, "s1")
    finally:
        await engine.close()
    assert teardown.action == "Dropped", teardown
    assert dict(teardown.reassigned) == {one: 3, two: 3}
    assert not (await kit.role(alice)).exists
    for db in (one, two):
        assert await owned(kit, db, inheritor) == {("r", "mine"), ("v", "my_view"),
                                                  ("S", "my_seq")}


async def test_a_missing_inheritor_locks_the_user_and_says_why(kit):
    one, _two, inheritor, engine = await setup(kit)
    alice = kit.name("alice")
    try:
        await engine.activate(kit.request("s1", alice, database=one,
                                          mode="best_effort_reassign_and_drop"))
        await create_objects(kit, alice, kit.passwords["s1"], one)
        await kit.su(sql.SQL("DROP ROLE {}").format(ID(inheritor)))
        teardown = await engine.end(alice, "s1")
    finally:
        await engine.close()
    assert teardown.action == "Deactivated", teardown
    assert f'objectsInheritor "{inheritor}" does not exist' in teardown.reason
    assert teardown.reassigned == ()
    info = await kit.role(alice)
    assert info.exists and not info.can_login and info.memberships == {kit.managed_role}
    # Nothing was dropped or moved: alice still owns what she created.
    assert await owned(kit, one, postgres_username(alice)) == {
        ("r", "mine"), ("v", "my_view"), ("S", "my_seq")}


async def test_an_inheritor_the_admin_cannot_act_for_is_named_with_the_grant(kit):
    one, _two, inheritor, engine = await setup(kit)
    await kit.su(sql.SQL("REVOKE {} FROM {}").format(ID(inheritor), ID(kit.server.admin_user)))
    alice = kit.name("alice")
    try:
        pre = await engine.preflight()
        assert [s.fix for s in pre.role_shortfalls] == [
            f'GRANT "{inheritor}" TO "{kit.server.admin_user}";']
        await engine.activate(kit.request("s1", alice, database=one,
                                          mode="best_effort_reassign_and_drop"))
        await create_objects(kit, alice, kit.passwords["s1"], one)
        teardown = await engine.end(alice, "s1")
    finally:
        await engine.close()
    assert teardown.action == "Deactivated"
    assert f'GRANT "{inheritor}" TO "{kit.server.admin_user}";' in teardown.reason


async def test_privileges_still_held_lock_the_user_and_the_admin_stops_acting_for_it(kit):
    one, _two, inheritor, engine = await setup(kit)
    alice = kit.name("alice")
    name = postgres_username(alice)
    try:
        await engine.activate(kit.request("s1", alice, database=one,
                                          mode="best_effort_reassign_and_drop"))
        await create_objects(kit, alice, kit.passwords["s1"], one)
        # A privilege on something alice does not own: REASSIGN OWNED leaves it, DROP refuses.
        await kit.su(sql.SQL("CREATE TABLE public.shared(x int); GRANT SELECT ON public.shared "
                             "TO {}").format(ID(name)), dbname=one)
        teardown = await engine.end(alice, "s1")
    finally:
        await engine.close()
    assert teardown.action == "Deactivated", teardown
    assert dict(teardown.reassigned) == {one: 3}
    assert "holds privileges on" in teardown.reason
    assert await owned(kit, one, inheritor) == {("r", "mine"), ("v", "my_view"), ("S", "my_seq")}
    rows = await kit.su("SELECT pg_has_role(%s, %s, 'USAGE')", [kit.server.admin_user, name])
    assert rows == [(False,)], "the admin kept acting for the locked user"


async def test_a_user_that_owns_nothing_is_dropped_at_once(kit):
    one, _two, _inheritor, engine = await setup(kit)
    alice = kit.name("alice")
    try:
        await engine.activate(kit.request("s1", alice, database=one,
                                          mode="best_effort_reassign_and_drop"))
        teardown = await engine.end(alice, "s1")
    finally:
        await engine.close()
    assert (teardown.action, teardown.reassigned) == ("Dropped", ())


async def test_objects_that_run_with_their_owners_rights_are_never_handed_over(kit):
    """A SECURITY DEFINER function owned by the inheritor would run as the inheritor for
    whoever may call it (teleport-behaviour.md §2.4's threat model): no reassignment."""
    one, _two, inheritor, engine = await setup(kit)
    teardown = await session_that_creates(
        kit, engine, kit.name("alice"), one,
        "CREATE TABLE mine(x int); CREATE FUNCTION grab() RETURNS int LANGUAGE sql SECURITY"
        " DEFINER AS 'SELECT 1'")
    assert teardown.action == "Deactivated" and teardown.reassigned == ()
    assert "SECURITY DEFINER function public.grab()" in teardown.reason
    assert await owned(kit, one, inheritor) == set(), "something was handed over"


async def test_what_the_user_shared_is_taken_back_before_it_changes_hands(kit):
    one, _two, _inheritor, engine = await setup(kit)
    teardown = await session_that_creates(
        kit, engine, kit.name("alice"), one,
        "CREATE TABLE mine(x int); CREATE VIEW shared AS SELECT * FROM mine; GRANT SELECT ON"
        " shared TO PUBLIC; CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    assert teardown.action == "Dropped", teardown
    rows = await kit.su("""
        SELECT c.relname::text, count(a.*) FILTER (WHERE a.grantee = 0)
          FROM pg_class c LEFT JOIN LATERAL aclexplode(c.relacl) a ON true
         WHERE c.relname = 'shared' GROUP BY 1""", dbname=one)
    assert rows == [("shared", 0)], "PUBLIC kept SELECT on a view the inheritor now owns"
    rows = await kit.su("SELECT has_function_privilege('public', 'f()', 'EXECUTE')", dbname=one)
    assert rows == [(False,)], "PUBLIC kept EXECUTE on a function the inheritor now owns"
