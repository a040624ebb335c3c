"""Privilege boundaries against real servers: the hard refusals, the Database's exact-name
opt-in, the session database's existence, and the catalog over the ledger (drift).

Found by probing as a hostile Role author would (issue 11): on PostgreSQL 15 a CREATEROLE admin
may grant any non-superuser role, its own included, so a Role naming the admin made every
session's user an admin. On 16+ the server refuses unless the admin holds ADMIN OPTION, which DBAs
give broadly; the tests give it, so that only pgjit stands in the way.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from enginekit import ID
from pgjit.api import Database, Role
from pgjit.core import policy
from pgjit.core.naming import postgres_username
from pgjit.core.permissions import PermissionRule, PermissionRules
from pgjit.engine import EngineError
from pgjit.vocabulary import Reason

CATALOG = """
SELECT r.rolname, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin,
       r.rolreplication, r.rolbypassrls, r.rolvaliduntil, r.rolpassword,
       shobj_description(r.oid, 'pg_authid'),
       ARRAY(SELECT g.rolname || ':' || m.admin_option FROM pg_auth_members m
               JOIN pg_authid g ON g.oid = m.roleid WHERE m.member = r.oid ORDER BY 1)
  FROM pg_authid r ORDER BY r.rolname
"""


async def catalog(kit) -> list[tuple]:
    """Every role's attributes, password, comment and memberships: what must not change."""
    return await kit.su(CATALOG)


async def grant_admin_option(kit, role: str) -> None:
    """What a DBA does on 16+ so the admin may grant ``role`` (on 15, CREATEROLE suffices)."""
    if int(kit.server.major) >= 16:
        await kit.su(sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
            ID(role), ID(kit.server.admin_user)))


async def refused(kit, request) -> EngineError:
    before = await catalog(kit)
    with pytest.raises(EngineError) as caught:
        await kit.engine.activate(request)
    assert caught.value.reason == Reason.PRIVILEGED_ROLE, caught.value
    assert await catalog(kit) == before, "a refused activation changed the catalog"
    return caught.value


# Each case: how to make the privileged role (as a superuser), and what the refusal must say.
PRIVILEGED_KINDS = {
    "superuser": ("CREATE ROLE {r} SUPERUSER", "has SUPERUSER"),
    "createrole": ("CREATE ROLE {r} CREATEROLE", "has CREATEROLE"),
    "createdb": ("CREATE ROLE {r} CREATEDB", "has CREATEDB"),
    "replication": ("CREATE ROLE {r} REPLICATION", "has REPLICATION"),
    "bypassrls": ("CREATE ROLE {r} BYPASSRLS", "has BYPASSRLS"),
}
SERVER_ACCESS = {
    "pg_read_server_files": "reads any file",
    "pg_write_server_files": "writes any file",
    "pg_execute_server_program": "runs programs on the server",
}


@pytest.mark.parametrize("kind", sorted(PRIVILEGED_KINDS))
async def test_roles_with_powerful_attributes_are_refused(kit, kind):
    role = kit.name(kind)
    create, why = PRIVILEGED_KINDS[kind]
    await kit.su(sql.SQL(create.replace("{r}", "{}")).format(ID(role)))
    await grant_admin_option(kit, role)
    error = await refused(kit, kit.request("s1", kit.name("alice"), [role]))
    assert f'"{role}" {why}' in error.message
    assert not (await kit.role(kit.name("alice"))).exists


@pytest.mark.parametrize("predefined", sorted(SERVER_ACCESS))
async def test_server_access_roles_are_refused_directly_and_through_membership(kit, predefined):
    await grant_admin_option(kit, predefined)
    error = await refused(kit, kit.request("s1", kit.name("alice"), [predefined]))
    assert f'"{predefined}" {SERVER_ACCESS[predefined]}' in error.message

    # A role that merely inherits it, two memberships deep.
    outer, inner = await kit.make_roles("reader_plus", "inner")
    await kit.su(sql.SQL("GRANT {} TO {}").format(ID(predefined), ID(inner)))
    await kit.su(sql.SQL("GRANT {} TO {}").format(ID(inner), ID(outer)))
    error = await refused(kit, kit.request("s2", kit.name("bob"), [outer]))
    assert f'"{outer}" is a member of "{predefined}", which' in error.message
    assert "grantableRoles" in error.message


async def test_the_admins_own_role_is_refused(kit):
    # PostgreSQL 15 lets a CREATEROLE admin grant itself: this activation used to succeed and
    # give alice SET ROLE to the admin.
    admin = kit.server.admin_user
    error = await refused(kit, kit.request("s1", kit.name("alice"), [admin]))
    assert f'"{admin}" is the admin role pgjit logs in as' in error.message
    # And a role that is a member of the admin: refused even when listed by exact name.
    # (No ADMIN OPTION for the admin on it: that would make the two members of each other.)
    helper, = await kit.make_roles("helper", admin_option=False)
    await kit.su(sql.SQL("GRANT {} TO {}").format(ID(admin), ID(helper)))
    request = kit.request("s2", kit.name("alice"), [helper])
    error = await refused(kit, type(request)(**{**request.__dict__,
                                               "grantable_by_name": (helper, admin)}))
    assert f'"{helper}" is a member of "{admin}"' in error.message


async def test_the_managed_role_and_other_pgjit_users_are_refused(kit):
    reader, = await kit.make_roles("reader")
    bob = kit.name("bob")
    await kit.engine.activate(kit.request("b1", bob, [reader]))
    error = await refused(kit, kit.request("s1", kit.name("alice"), [kit.managed_role]))
    assert "is the managed role" in error.message
    # bob is a pgjit user: a member of the managed role, so granting bob to alice is refused.
    await grant_admin_option(kit, postgres_username(bob))
    error = await refused(kit, kit.request("s2", kit.name("alice"), [postgres_username(bob)]))
    assert f'is a member of "{kit.managed_role}"' in error.message


async def test_refusals_apply_when_re_activating_and_sharing(kit):
    reader, = await kit.make_roles("reader")
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, [reader]))
    # Shared: a second live session asking for the same role, now privileged.
    await kit.su(sql.SQL("GRANT pg_execute_server_program TO {}").format(ID(reader)))
    await refused(kit, kit.request("s2", alice, [reader]))
    assert await kit.can_login(alice, kit.passwords["s1"]), "s1's access was disturbed"
    # Re-activation of a locked user.
    await kit.engine.end(alice, "s1")
    await refused(kit, kit.request("s3", alice, [reader]))
    assert not (await kit.role(alice)).can_login


async def test_a_role_that_becomes_privileged_after_admission_is_refused(kit):
    reader, = await kit.make_roles("reader")
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, [reader]))
    await kit.engine.end(alice, "s1")
    await kit.su(sql.SQL("ALTER ROLE {} CREATEROLE").format(ID(reader)))
    error = await refused(kit, kit.request("s2", alice, [reader]))
    assert f'"{reader}" has CREATEROLE' in error.message
    await kit.su(sql.SQL("ALTER ROLE {} NOCREATEROLE").format(ID(reader)))
    await kit.engine.activate(kit.request("s3", alice, [reader]))
    assert (await kit.role(alice)).can_login


async def test_exact_name_in_grantable_roles_allows_one_refused_role_deliberately(kit):
    await grant_admin_option(kit, "pg_read_server_files")
    alice = kit.name("alice")
    request = kit.request("s1", alice, ["pg_read_server_files"])
    await kit.engine.activate(type(request)(**{**request.__dict__,
                                              "grantable_by_name": ("pg_read_server_files",)}))
    assert "pg_read_server_files" in (await kit.role(alice)).memberships
    # The opt-in names that role, not the roles that are members of it.
    wrapper, = await kit.make_roles("wrapper")
    await kit.su(sql.SQL("GRANT pg_read_server_files TO {}").format(ID(wrapper)))
    request = kit.request("s2", kit.name("bob"), [wrapper])
    await refused(kit, type(request)(**{**request.__dict__,
                                       "grantable_by_name": ("pg_read_server_files",)}))


async def test_a_trait_template_cannot_smuggle_a_refused_role(kit):
    """The policy expands {{external.db_roles}} to whatever the requester's extra says; the
    engine still refuses a privileged result."""
    await grant_admin_option(kit, "pg_execute_server_program")
    database = Database.model_validate({
        "metadata": {"name": "orders", "namespace": "team"},
        "spec": {"host": kit.server.host, "admin": {
            "username": kit.server.admin_user,
            "passwordSecretRef": {"name": "admin", "key": "password"}}}})
    role = Role.model_validate({
        "metadata": {"name": "from-traits", "namespace": "team"},
        "spec": {"subjects": [{"kind": "User", "name": kit.name("alice")}],
                 "userProvisioning": "keep",
                 "allow": {"databaseSelector": {}, "databaseNames": ["*"],
                           "databaseRoles": ["{{external.db_roles}}"]}}})
    decision = policy.evaluate(policy.AccessRequest(
        user=kit.name("alice"), database_name="postgres",
        extra={"db_roles": ("pg_execute_server_program",)}), database, [role])
    assert decision.allowed and decision.database_roles == ("pg_execute_server_program",)
    error = await refused(kit, kit.request("s1", kit.name("alice"), decision.database_roles))
    assert "runs programs on the server" in error.message


# --------------------------------------------------------------------------------------------
# The session database must exist


async def test_a_session_database_that_does_not_exist_fails_before_the_user_is_touched(kit):
    reader, = await kit.make_roles("reader")
    alice = kit.name("alice")
    before = await catalog(kit)
    with pytest.raises(EngineError) as caught:
        await kit.engine.activate(kit.request("s1", alice, [reader], database="no_such_db"))
    assert caught.value.reason == Reason.DATABASE_NOT_FOUND
    assert '"no_such_db" does not exist on server' in caught.value.message
    assert f"{kit.server.host}:{kit.server.port}" in caught.value.message
    assert await catalog(kit) == before
    # With object permissions the same refusal comes from the connection check.
    rules = PermissionRules(allow=(PermissionRule.build("table", "*", "*", ["SELECT"],
                                                        deny=False),))
    with pytest.raises(EngineError) as caught:
        await kit.engine.activate(kit.request("s2", alice, database="no_such_db",
                                              permissions=rules))
    assert caught.value.reason == Reason.DATABASE_NOT_FOUND
    assert "does not exist on server" in caught.value.message
    assert not (await kit.role(alice)).exists


# --------------------------------------------------------------------------------------------
# The catalog is the truth: drift


async def grant_out_of_band(kit, role: str, user: str, *, as_superuser: bool = False) -> None:
    statement = sql.SQL("GRANT {} TO {}").format(ID(role), ID(postgres_username(user)))
    if as_superuser:
        await kit.su(statement)
        return
    # Someone with the admin's credentials (the grant is then the admin's to take back).
    async with await psycopg.AsyncConnection.connect(kit.server.admin_conninfo(),
                                                     autocommit=True) as conn:
        await conn.execute(statement)


async def test_a_membership_granted_while_locked_is_stripped_at_re_activation(kit):
    reader, extra = await kit.make_roles("reader", "extra")
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, [reader]))
    await kit.engine.end(alice, "s1")
    await grant_out_of_band(kit, extra, alice)
    activation = await kit.engine.activate(kit.request("s2", alice, [reader]))
    assert activation.drift == (f'membership in "{extra}"',)
    assert (await kit.role(alice)).memberships == {kit.managed_role, reader}


async def test_a_membership_granted_while_shared_is_stripped_when_the_next_session_shares(kit):
    reader, extra = await kit.make_roles("reader", "extra")
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, [reader]))
    await grant_out_of_band(kit, extra, alice)
    activation = await kit.engine.activate(kit.request("s2", alice, [reader]))
    assert activation.shared and activation.drift == (f'membership in "{extra}"',)
    assert (await kit.role(alice)).memberships == {kit.managed_role, reader}
    assert await kit.can_login(alice, kit.passwords["s1"])


async def test_the_sweep_strips_drift_behind_an_orphaned_lease(kit):
    reader, extra = await kit.make_roles("reader", "extra")
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, [reader]))
    await kit.engine.activate(kit.request("s2", alice, [reader]))
    await grant_out_of_band(kit, extra, alice)
    # The operator crashed: s1 no longer exists, s2 is live.
    await kit.engine.sweep({"s2"})
    corrections = await kit.engine.correct_drift({"s2"})
    assert [(c.username, c.removed, c.session_ids) for c in corrections] == [
        (postgres_username(alice), (f'membership in "{extra}"',), ("s2",))]
    info = await kit.role(alice)
    assert info.memberships == {kit.managed_role, reader} and info.can_login
    assert await kit.engine.correct_drift({"s2"}) == [], "a corrected user is corrected again"


async def test_the_sweep_leaves_users_without_drift_alone(kit):
    reader, = await kit.make_roles("reader")
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, [reader]))
    before = await catalog(kit)
    assert await kit.engine.correct_drift({"s1"}) == []
    assert await catalog(kit) == before


async def test_drift_granted_by_a_superuser_on_16_plus_fails_with_the_revoke(kit):
    reader, extra = await kit.make_roles("reader", "extra")
    alice = kit.name("alice")
    name = postgres_username(alice)
    await kit.engine.activate(kit.request("s1", alice, [reader]))
    await grant_out_of_band(kit, extra, alice, as_superuser=True)
    if int(kit.server.major) < 16:
        # 15: CREATEROLE may revoke any membership of a non-superuser role.
        activation = await kit.engine.activate(kit.request("s2", alice, [reader]))
        assert activation.drift == (f'membership in "{extra}"',)
        assert extra not in (await kit.role(alice)).memberships
        return
    before = await catalog(kit)
    with pytest.raises(EngineError) as caught:
        await kit.engine.activate(kit.request("s2", alice, [reader]))
    assert caught.value.reason == Reason.INSUFFICIENT_PRIVILEGE
    assert f'REVOKE "{extra}" FROM "{name}";' in caught.value.message
    assert await catalog(kit) == before
    with pytest.raises(EngineError) as caught:
        await kit.engine.correct_drift({"s1"})
    assert f'REVOKE "{extra}" FROM "{name}";' in caught.value.message


async def test_attributes_granted_out_of_band_are_stripped(kit):
    reader, = await kit.make_roles("reader")
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, [reader]))
    await kit.engine.end(alice, "s1")
    await kit.su(sql.SQL("ALTER ROLE {} CREATEDB").format(ID(postgres_username(alice))))
    try:
        activation = await kit.engine.activate(kit.request("s2", alice, [reader]))
    except EngineError as error:
        # 16+: a CREATEROLE admin without CREATEDB itself may not take CREATEDB away; nothing
        # may then be activated, and the message says what a superuser must do.
        assert int(kit.server.major) >= 16 and error.reason == Reason.INSUFFICIENT_PRIVILEGE, error
        assert not (await kit.role(alice)).can_login
        return
    assert "CREATEDB" in activation.drift
    rows = await kit.su("SELECT rolcreatedb FROM pg_roles WHERE rolname = %s",
                        [postgres_username(alice)])
    assert rows == [(False,)]


async def app_tables(kit) -> str:
    db = await kit.make_database("app")
    admin = ID(kit.server.admin_user)
    await kit.su(sql.SQL("""
        CREATE TABLE public.orders(id int); CREATE TABLE public.payroll(id int);
        ALTER TABLE public.orders OWNER TO {a}; ALTER TABLE public.payroll OWNER TO {a};
    """).format(a=admin), dbname=db)
    return db


async def table_privileges(kit, db: str, user: str) -> set[tuple[str, str]]:
    rows = await kit.su("""
        SELECT c.relname, a.privilege_type FROM pg_class c
         CROSS JOIN LATERAL aclexplode(c.relacl) a
         WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = %s)""",
                        [postgres_username(user)], dbname=db)
    return {(t, p) for t, p in rows}


async def test_object_privileges_granted_out_of_band_are_stripped_when_sharing(kit):
    db = await app_tables(kit)
    alice = kit.name("alice")
    rules = PermissionRules(allow=(PermissionRule.build("table", "public", "orders", ["SELECT"],
                                                        deny=False),))
    await kit.engine.activate(kit.request("s1", alice, database=db, permissions=rules))
    await kit.su(sql.SQL("GRANT SELECT ON public.payroll TO {u}; GRANT DELETE ON public.orders "
                         "TO {u}").format(u=ID(postgres_username(alice))), dbname=db)
    activation = await kit.engine.activate(kit.request("s2", alice, database=db,
                                                       permissions=rules))
    assert activation.shared
    assert set(activation.drift) == {"DELETE on table public.orders",
                                     "SELECT on table public.payroll"}
    assert await table_privileges(kit, db, alice) == {("orders", "SELECT")}
