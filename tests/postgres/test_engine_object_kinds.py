"""Every object kind a permission can name, granted, used and revoked on real servers.

Teleport's users asked for views, sequences and functions (gravitational/teleport#53052). Each
kind here is granted, then used for real by the session's user (a SELECT through a view, a
nextval, a CALL, a CREATE in a schema, a temporary table), and revoked at the end. PUBLIC's
default EXECUTE on functions and TEMPORARY on databases are revoked first, so that what the user
can do comes from pgjit's grants alone.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from enginekit import ID
from pgjit.core.naming import postgres_username
from pgjit.core.permissions import PermissionRule, PermissionRules

SCHEMA_OBJECTS = """
CREATE SCHEMA app;
CREATE TABLE app.orders(id serial PRIMARY KEY, amount int);
CREATE TABLE app.secrets(id int);
CREATE VIEW app.order_totals AS SELECT count(*) AS n, coalesce(sum(amount), 0) AS total
  FROM app.orders;
CREATE MATERIALIZED VIEW app.daily AS SELECT 1 AS day;
CREATE SEQUENCE app.tickets;
CREATE FUNCTION app.score(x int) RETURNS int LANGUAGE sql AS 'SELECT x * 2';
CREATE FUNCTION app.score(x text) RETURNS int LANGUAGE sql AS 'SELECT length(x)';
CREATE FUNCTION app.other() RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE PROCEDURE app.touch() LANGUAGE sql AS 'SELECT 1';
CREATE SCHEMA scratch;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA app FROM PUBLIC;
REVOKE EXECUTE ON ALL PROCEDURES IN SCHEMA app FROM PUBLIC;
"""

OWNERSHIP = """
ALTER SCHEMA app OWNER TO {a}; ALTER SCHEMA scratch OWNER TO {a};
ALTER TABLE app.orders OWNER TO {a}; ALTER TABLE app.secrets OWNER TO {a};
ALTER VIEW app.order_totals OWNER TO {a}; ALTER MATERIALIZED VIEW app.daily OWNER TO {a};
ALTER SEQUENCE app.tickets OWNER TO {a}; ALTER SEQUENCE app.orders_id_seq OWNER TO {a};
ALTER FUNCTION app.score(int) OWNER TO {a}; ALTER FUNCTION app.score(text) OWNER TO {a};
ALTER FUNCTION app.other() OWNER TO {a}; ALTER PROCEDURE app.touch() OWNER TO {a};
"""


def rule(kind: str, privileges, schema: str = "*", name: str = "*", deny: bool = False):
    return PermissionRule.build(kind, schema, name, privileges, deny=deny)


async def app_database(kit) -> str:
    db = await kit.make_database("objects")
    admin = ID(kit.server.admin_user)
    await kit.su(sql.SQL(SCHEMA_OBJECTS), dbname=db)
    await kit.su(sql.SQL(OWNERSHIP).format(a=admin), dbname=db)
    await kit.su(sql.SQL("REVOKE TEMPORARY ON DATABASE {d} FROM PUBLIC; GRANT TEMPORARY ON "
                         "DATABASE {d} TO {a} WITH GRANT OPTION").format(d=ID(db), a=admin))
    return db


async def held(kit, db: str, user: str) -> set[tuple[str, str]]:
    """(object, privilege) pairs the user holds in ``db``, as the ACLs say."""
    rows = await kit.su("""
        WITH me AS (SELECT oid FROM pg_roles WHERE rolname = %(u)s)
        SELECT c.oid::regclass::text, a.privilege_type FROM pg_class c
         CROSS JOIN LATERAL aclexplode(c.relacl) a WHERE a.grantee = (SELECT oid FROM me)
        UNION ALL
        SELECT p.oid::regprocedure::text, a.privilege_type FROM pg_proc p
         CROSS JOIN LATERAL aclexplode(p.proacl) a WHERE a.grantee = (SELECT oid FROM me)
        UNION ALL
        SELECT 'schema ' || n.nspname, a.privilege_type FROM pg_namespace n
         CROSS JOIN LATERAL aclexplode(n.nspacl) a WHERE a.grantee = (SELECT oid FROM me)
        UNION ALL
        SELECT 'database', a.privilege_type FROM pg_database d
         CROSS JOIN LATERAL aclexplode(d.datacl) a
         WHERE d.datname = current_database() AND a.grantee = (SELECT oid FROM me)
    """, {"u": postgres_username(user)}, dbname=db)
    return {(o, p) for o, p in rows}


async def test_every_kind_is_granted_used_and_revoked(kit):
    db = await app_database(kit)
    alice = kit.name("alice")
    rules = PermissionRules(allow=(
        rule("view", ["select"], "app", "order_totals"),
        rule("materializedView", ["SELECT"], "app", "*"),
        rule("sequence", ["USAGE", "SELECT", "UPDATE"], "app", "tickets"),
        rule("function", ["EXECUTE"], "app", "score"),
        rule("procedure", ["EXECUTE"], "app", "touch"),
        rule("schema", ["USAGE", "CREATE"], name="scratch"),
        rule("database", ["TEMPORARY"], name="objects*"),
    ))
    activation = await kit.engine.activate(kit.request("s1", alice, database=db,
                                                       permissions=rules))
    assert await held(kit, db, alice) == {
        ("app.order_totals", "SELECT"), ("app.daily", "SELECT"),
        ("app.tickets", "USAGE"), ("app.tickets", "SELECT"), ("app.tickets", "UPDATE"),
        # Overloaded: every signature of the name, nothing else of the schema.
        ("app.score(integer)", "EXECUTE"), ("app.score(text)", "EXECUTE"),
        ("app.touch()", "EXECUTE"),
        ("schema app", "USAGE"), ("schema scratch", "USAGE"), ("schema scratch", "CREATE"),
        ("database", "TEMPORARY")}
    assert activation.permissions_summary == (
        "SELECT on 1 view, SELECT on 1 materialized view, USAGE on 1 sequence, SELECT on 1"
        " sequence, UPDATE on 1 sequence, EXECUTE on 2 functions, EXECUTE on 1 procedure,"
        " USAGE on 1 schema, CREATE on 1 schema, TEMPORARY on 1 database")

    async with await kit.login(alice, kit.passwords["s1"], db) as conn:
        # A view runs with its owner's rights: alice reads the total, not the table.
        assert await (await conn.execute("SELECT n FROM app.order_totals")).fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT * FROM app.orders")
        assert (await (await conn.execute("SELECT nextval('app.tickets')")).fetchone())[0] == 1
        assert await (await conn.execute("SELECT app.score(21), app.score('abc')")).fetchone() \
            == (42, 3)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT app.other()")
        await conn.execute("CALL app.touch()")
        await conn.execute("CREATE TABLE scratch.mine(x int)")
        await conn.execute("CREATE TEMP TABLE t(x int)")
        await conn.execute("DROP TABLE scratch.mine")

    await kit.engine.end(alice, "s1", mode="keep")
    assert await held(kit, db, alice) == set(), "privileges outlived the session"


async def test_deny_removes_one_signature_kind_and_system_schemas_never_match(kit):
    db = await app_database(kit)
    alice = kit.name("alice")
    rules = PermissionRules(
        allow=(rule("function", ["EXECUTE"]), rule("schema", ["USAGE", "CREATE"])),
        deny=(rule("function", ["*"], "app", "other", deny=True),
              rule("schema", ["CREATE"], name="app", deny=True)))
    await kit.engine.activate(kit.request("s1", alice, database=db, permissions=rules))
    got = await held(kit, db, alice)
    assert ("app.score(integer)", "EXECUTE") in got and ("app.other()", "EXECUTE") not in got
    assert ("schema app", "USAGE") in got and ("schema app", "CREATE") not in got
    assert ("schema scratch", "CREATE") in got
    assert not any(o.startswith(("pg_catalog", "information_schema", "schema pg_"))
                   for o, _ in got), got


HOSTILE = """
CREATE SCHEMA "we""ird; DROP TABLE x --";
CREATE TYPE "we""ird; DROP TABLE x --"."my type" AS (a int);
CREATE FUNCTION "we""ird; DROP TABLE x --"."f(); DROP" (v "we""ird; DROP TABLE x --"."my type",
    n int[]) RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE SEQUENCE "we""ird; DROP TABLE x --"."s%s";
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA "we""ird; DROP TABLE x --" FROM PUBLIC;
"""


async def test_hostile_object_names_are_granted_through_identifiers_only(kit):
    db = await kit.make_database("hostile")
    admin = ID(kit.server.admin_user)
    schema = 'we"ird; DROP TABLE x --'
    await kit.su(sql.SQL(HOSTILE), dbname=db)
    await kit.su(sql.SQL("ALTER SCHEMA {s} OWNER TO {a}; ALTER FUNCTION {s}.{f}({s}.{t}, int[])"
                         " OWNER TO {a}; ALTER SEQUENCE {s}.{q} OWNER TO {a}").format(
        s=ID(schema), f=ID("f(); DROP"), t=ID("my type"), q=ID("s%s"), a=admin), dbname=db)
    alice = kit.name("alice")
    rules = PermissionRules(allow=(rule("function", ["EXECUTE"], schema, "f(); DROP"),
                                   rule("sequence", ["USAGE"], schema, "s%s")))
    await kit.engine.activate(kit.request("s1", alice, database=db, permissions=rules))
    got = await held(kit, db, alice)
    assert {p for _, p in got} == {"EXECUTE", "USAGE"} and len(got) == 3, got
    async with await kit.login(alice, kit.passwords["s1"], db) as conn:
        cur = await conn.execute(sql.SQL("SELECT {}.{}(ROW(1)::{}.{}, ARRAY[1])").format(
            ID(schema), ID("f(); DROP"), ID(schema), ID("my type")))
        assert await cur.fetchone() == (1,)
    await kit.engine.end(alice, "s1", mode="keep")
    assert await held(kit, db, alice) == set()


async def test_objects_chosen_by_labels_include_objects_created_after_the_rule(kit):
    from dataclasses import replace

    from pgjit.api import Database
    from pgjit.api.common import LabelSelector
    from pgjit.api.labels import ObjectLabelRule
    from pgjit.core.object_labels import assignments_for

    db = await app_database(kit)
    database = Database.model_validate({"metadata": {"name": "d"}, "spec": {
        "host": "h", "admin": {"username": "a", "passwordSecretRef": {"name": "s"}}}})
    label_rule = ObjectLabelRule.model_validate({"metadata": {"name": "pii"}, "spec": {
        "databaseSelector": {}, "rules": [
            {"match": {"schema": "app", "name": "order*"}, "labels": {"pii": "false"}},
            {"match": {"objectKind": "view", "schema": "app"}, "labels": {"pii": "false"}}]}})
    selector = LabelSelector.model_validate({"matchLabels": {"pii": "false"}})
    rules = replace(PermissionRules(allow=(
        PermissionRule.build("table", "*", "*", ["SELECT"], deny=False, labels=selector),
        PermissionRule.build("view", "*", "*", ["SELECT"], deny=False, labels=selector))),
        object_labels=assignments_for(database, [label_rule]))
    alice, bob = kit.name("alice"), kit.name("bob")
    await kit.engine.activate(kit.request("s1", alice, database=db, permissions=rules))
    assert {o for o, p in await held(kit, db, alice) if p == "SELECT"} == {
        "app.orders", "app.order_totals"}
    admin = ID(kit.server.admin_user)
    await kit.su(sql.SQL("CREATE TABLE app.order_lines(x int); ALTER TABLE app.order_lines "
                         "OWNER TO {}").format(admin), dbname=db)
    await kit.engine.activate(kit.request("s2", bob, database=db, permissions=rules))
    assert {o for o, p in await held(kit, db, bob) if p == "SELECT"} == {
        "app.orders", "app.order_lines", "app.order_totals"}
