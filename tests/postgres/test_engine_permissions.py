"""Object permissions: teleport-behaviour.md §6 items 39-49, against real servers."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from enginekit import ID
from pgjit.core.permissions import PermissionRule, PermissionRules
from pgjit.engine import EngineError
from pgjit.vocabulary import Reason


def allow(*rules, deny=()):
    return PermissionRules(
        allow=tuple(PermissionRule.build("table", s, n, p, deny=False) for s, n, p in rules),
        deny=tuple(PermissionRule.build("table", s, n, p, deny=True) for s, n, p in deny))


async def app_database(kit, base: str = "db") -> str:
    """A database whose tables the admin owns, as the docs recommend for object permissions."""
    db = await kit.make_database(base)
    admin = ID(kit.server.admin_user)
    await kit.su(sql.SQL("""
        CREATE TABLE public.orders(id int);
        CREATE TABLE public.secret_keys(k text);
        CREATE SCHEMA "Sales";
        CREATE TABLE "Sales"."Big ""Quoted"" Table"(x int);
        ALTER TABLE public.orders OWNER TO {a};
        ALTER TABLE public.secret_keys OWNER TO {a};
        ALTER TABLE "Sales"."Big ""Quoted"" Table" OWNER TO {a};
        GRANT USAGE ON SCHEMA "Sales" TO {a} WITH GRANT OPTION;
    """).format(a=admin), dbname=db)
    return db


async def held(kit, db, name):
    rows = await kit.su("""
        SELECT n.nspname, c.relname, a.privilege_type
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         CROSS JOIN LATERAL aclexplode(c.relacl) a
         WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = %s)""", [name], dbname=db)
    return {(s, t, p) for s, t, p in rows}


async def schema_usage(kit, db, name):
    rows = await kit.su("""
        SELECT n.nspname FROM pg_namespace n CROSS JOIN LATERAL aclexplode(n.nspacl) a
         WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = %s)
           AND a.privilege_type = 'USAGE'""", [name], dbname=db)
    return {r[0] for r in rows}


async def test_39_allow_and_deny_with_star_and_case_insensitive_names(kit):
    db = await app_database(kit)
    alice = kit.name("alice")
    rules = allow(("*", "*", ["select", " Insert "]), deny=[("public", "secret_*", ["*"]),
                                                           ("Sales", "*", ["INSERT"])])
    result = await kit.engine.activate(kit.request("s1", alice, database=db, permissions=rules))
    assert await held(kit, db, alice) == {
        ("public", "orders", "SELECT"), ("public", "orders", "INSERT"),
        ("Sales", 'Big "Quoted" Table', "SELECT")}
    assert result.permissions_summary == "SELECT on 2 tables, INSERT on 1 table"


def test_40_unknown_privilege_is_fatal_and_other_kinds_are_ignored():
    from pgjit.core.permissions import PermissionError_
    with pytest.raises(PermissionError_):
        PermissionRule.build("table", "*", "*", ["SELECT, UPDATE"], deny=False)


async def test_41_roles_and_permissions_together_are_refused(kit):
    reader, = await kit.make_roles("reader")
    with pytest.raises(EngineError) as caught:
        await kit.engine.activate(kit.request("s1", kit.name("alice"), [reader],
                                              permissions=allow(("*", "*", ["SELECT"]))))
    assert caught.value.reason == Reason.INVALID_REQUEST and "mutually exclusive" in caught.value.message
    assert not (await kit.role(kit.name("alice"))).exists


async def test_42_empty_computed_permissions_on_a_second_session(kit):
    db = await app_database(kit)
    alice = kit.name("alice")
    nothing = allow(("nosuchschema", "*", ["SELECT"]))
    first = await kit.engine.activate(kit.request("s1", alice, database=db, permissions=nothing))
    second = await kit.engine.activate(kit.request("s2", alice, database=db, permissions=nothing))
    assert first.permissions_summary == second.permissions_summary == "no object privileges"
    assert second.shared


async def test_43_grants_include_schema_usage_and_the_end_revokes_it(kit):
    db = await app_database(kit)
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, database=db,
                                          permissions=allow(("Sales", "*", ["SELECT"]))))
    assert await schema_usage(kit, db, alice) == {"Sales"}
    conn = await kit.login(alice, kit.passwords["s1"], db)
    await conn.execute('SELECT * FROM "Sales"."Big ""Quoted"" Table"')
    await conn.close()
    await kit.engine.end(alice, "s1")
    assert await schema_usage(kit, db, alice) == set()
    assert await held(kit, db, alice) == set()


async def test_44_grants_made_by_a_superuser_are_found_and_revoked(kit):
    db = await app_database(kit)
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, database=db,
                                          permissions=allow(("public", "orders", ["SELECT"]))))
    # A superuser's GRANT is recorded as made by the table's owner (here: the admin).
    await kit.su(sql.SQL("GRANT UPDATE ON public.secret_keys TO {}").format(ID(alice)), dbname=db)
    await kit.engine.end(alice, "s1")
    assert await held(kit, db, alice) == set()


async def test_45_second_session_with_different_permissions_is_refused(kit):
    db = await app_database(kit)
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, database=db,
                                          permissions=allow(("public", "orders", ["SELECT"]))))
    with pytest.raises(EngineError) as caught:
        await kit.engine.activate(kit.request("s2", alice, database=db,
                                              permissions=allow(("public", "*", ["SELECT"]))))
    assert caught.value.reason == Reason.ROLES_CHANGED and "object permissions" in caught.value.message
    # The refused session left the first one's access exactly as it was.
    assert await held(kit, db, alice) == {("public", "orders", "SELECT")}
    assert await kit.can_login(alice, kit.passwords["s1"], db)
    same = await kit.engine.activate(kit.request("s3", alice, database=db,
                                                 permissions=allow(("public", "orders", ["SELECT"]))))
    assert same.shared


async def test_46_permissions_are_per_database(kit):
    db_a, db_b = await app_database(kit, "a"), await app_database(kit, "b")
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, database=db_a,
                                          permissions=allow(("public", "orders", ["SELECT"]))))
    await kit.engine.activate(kit.request("s2", alice, database=db_b,
                                          permissions=allow(("public", "*", ["SELECT"]))))
    assert await held(kit, db_a, alice) == {("public", "orders", "SELECT")}
    assert len(await held(kit, db_b, alice)) == 2
    await kit.engine.end(alice, "s1")
    assert await held(kit, db_a, alice) == set()
    assert len(await held(kit, db_b, alice)) == 2  # the other database's session is untouched


async def test_47_rules_match_objects_by_schema_and_name_globs(kit):
    """pgjit matches objects by kind/schema/name globs instead of Teleport's import rules."""
    db = await app_database(kit)
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, database=db,
                                          permissions=allow(("pub*", "ord*s", ["SELECT"]))))
    assert await held(kit, db, alice) == {("public", "orders", "SELECT")}


async def test_48_system_catalogs_never_match_a_catch_all_rule(kit):
    db = await app_database(kit)
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, database=db,
                                          permissions=allow(("*", "*", ["SELECT"]))))
    schemas = {s for s, _, _ in await held(kit, db, alice)}
    assert schemas == {"public", "Sales"}


async def test_49_identifiers_that_need_quotes(kit):
    db = await app_database(kit)
    alice = kit.name('Al "ice" \'x\'')
    await kit.engine.activate(kit.request("s1", alice, database=db,
                                          permissions=allow(("Sales", 'Big "Quoted" Table',
                                                             ["SELECT", "UPDATE"]))))
    assert await held(kit, db, alice) == {("Sales", 'Big "Quoted" Table', "SELECT"),
                                          ("Sales", 'Big "Quoted" Table', "UPDATE")}
    conn = await kit.login(alice, kit.passwords["s1"], db)
    await conn.execute('UPDATE "Sales"."Big ""Quoted"" Table" SET x = 1')
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        await conn.execute("SELECT * FROM public.orders")
    await conn.close()


async def test_reactivation_replaces_permissions_rather_than_merging(kit):
    db = await app_database(kit)
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, database=db,
                                          permissions=allow(("public", "*", ["SELECT"]))))
    await kit.engine.end(alice, "s1")
    await kit.engine.activate(kit.request("s2", alice, database=db,
                                          permissions=allow(("Sales", "*", ["SELECT"]))))
    assert await held(kit, db, alice) == {("Sales", 'Big "Quoted" Table', "SELECT")}
    assert await schema_usage(kit, db, alice) == {"Sales"}


async def test_no_connect_on_the_session_database_fails_at_once_and_leaves_nothing(kit):
    """A database outside the Database's spec.databases is not preflighted: the admin's missing
    CONNECT there must still show as such, with the GRANT, before the user exists."""
    import time

    db = await app_database(kit, "noconnect")
    await kit.su(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(ID(db)))
    alice = kit.name("alice")
    began = time.monotonic()
    with pytest.raises(EngineError) as caught:
        await kit.engine.activate(kit.request("s1", alice, database=db,
                                              permissions=allow(("*", "*", ["SELECT"]))))
    # Not the pool's timeout (10 s) and not "unreachable": the server's own refusal.
    assert time.monotonic() - began < 5
    assert caught.value.reason == Reason.INSUFFICIENT_PRIVILEGE and not caught.value.transient
    assert f'GRANT CONNECT ON DATABASE "{db}" TO "{kit.server.admin_user}";' \
        in caught.value.message
    assert not (await kit.role(alice)).exists

    await kit.su(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
        ID(db), ID(kit.server.admin_user)))
    await kit.engine.activate(kit.request("s2", alice, database=db,
                                          permissions=allow(("*", "*", ["SELECT"]))))
    assert ("public", "orders", "SELECT") in await held(kit, db, alice)
