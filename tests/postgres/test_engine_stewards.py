"""Steward roles (core/stewards.py) against real servers: who creates and administers users on
PostgreSQL 16+, what each steward holds, and the roles pgjit meets that it did not make.

On 16+ the admin must not hold a membership in every user (each check of its rights walks them
all: README Performance, session 16), so a steward creates the user; on 15 nothing changes.
"""

from __future__ import annotations

import pytest
import psycopg
from psycopg import sql

from enginekit import ID, new_engine
from pgjit.core.naming import postgres_username
from pgjit.core.stewards import steward_index, steward_role, steward_roles
from pgjit.engine import EngineError
from pgjit.vocabulary import Reason

# Every direct membership of a role, with its options and grantor.
GRANTS = """
SELECT g.rolname::text, m.rolname::text, a.admin_option,
       CASE WHEN current_setting('server_version_num')::int >= 160000
            THEN (to_jsonb(a) ->> 'inherit_option')::bool END,
       CASE WHEN current_setting('server_version_num')::int >= 160000
            THEN (to_jsonb(a) ->> 'set_option')::bool END,
       gr.rolname::text
  FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid
  JOIN pg_roles m ON m.oid = a.member JOIN pg_roles gr ON gr.oid = a.grantor
 WHERE g.rolname = %(role)s OR m.rolname = %(role)s
 ORDER BY 1, 2, 6
"""


def stewarded(kit) -> bool:
    return int(kit.server.major) >= 16


def steward_of(kit, identity: str) -> str:
    return steward_role(kit.managed_role, steward_index(postgres_username(identity),
                                                       kit.engine.config.steward_roles))


async def grants(kit, role: str) -> list[tuple]:
    return await kit.su(GRANTS, {"role": role})


async def stewards_made(kit) -> set[str]:
    rows = await kit.su("SELECT rolname::text FROM pg_roles WHERE rolname = ANY(%s)",
                        [steward_roles(kit.managed_role)])
    return {name for (name,) in rows}


async def test_a_steward_creates_and_administers_each_user_the_admin_never_holds_it(kit):
    reader, = await kit.make_roles("reader")
    alice = kit.name("alice")
    admin = kit.server.admin_user
    await kit.engine.activate(kit.request("s1", alice, [reader]))
    name = postgres_username(alice)
    if not stewarded(kit):
        assert await stewards_made(kit) == set()
        assert (reader, name, False, None, None, admin) in await grants(kit, name)
        return
    steward = steward_of(kit, alice)
    assert await stewards_made(kit) == {steward}
    on_user = [g for g in await grants(kit, name) if g[0] == name]
    # Only the steward holds the user, with ADMIN OPTION and without its privileges.
    assert [(member, admin_option, inherit, set_) for _r, member, admin_option, inherit, set_, _g
            in on_user] == [(steward, True, False, False)]
    assert (reader, name, False, True, True, steward) in await grants(kit, name)
    # The steward: NOLOGIN CREATEROLE, marked, and what it holds is ADMIN OPTION alone.
    attributes = await kit.su("SELECT rolcanlogin, rolcreaterole, rolsuper, rolinherit, "
                              "shobj_description(oid, 'pg_authid') FROM pg_roles "
                              "WHERE rolname = %s", [steward])
    assert attributes[0][:3] == (False, True, False)
    assert attributes[0][4].startswith("pgjit steward of")
    held = {(role, admin_option, inherit, set_) for role, member, admin_option, inherit, set_, _g
            in await grants(kit, steward) if member == steward and role != name}
    assert held == {(kit.managed_role, True, False, False), (reader, True, False, False)}
    # The admin may SET ROLE to the steward and inherits nothing from it.
    to_admin = {(admin_option, inherit, set_) for role, member, admin_option, inherit, set_, _g
                in await grants(kit, steward) if role == steward and member == admin}
    assert (False, False, True) in to_admin and not any(inherit for _a, inherit, _s in to_admin)
    teardown = await kit.engine.end(alice, "s1", mode="best_effort_drop")
    assert teardown.action == "Dropped" and not (await kit.role(alice)).exists


async def test_the_admin_holds_no_user_and_users_spread_over_the_stewards(kit):
    """What the cost rests on: the admin's memberships do not grow with the users (on 15,
    where a creator gets no membership, without any steward)."""
    admin = kit.server.admin_user
    identities = [kit.name(f"u{i}") for i in range(24)]
    for i, identity in enumerate(identities):
        await kit.engine.activate(kit.request(f"s{i}", identity))
    held = await kit.su("""SELECT count(*) FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid
                            WHERE a.member = (SELECT oid FROM pg_roles WHERE rolname = %s)
                              AND r.rolname = ANY(%s)""",
                        [admin, [postgres_username(i) for i in identities]])
    assert held == [(0,)]
    if stewarded(kit):
        assert await stewards_made(kit) == {steward_of(kit, i) for i in identities}
        assert len(await stewards_made(kit)) > 4
    else:
        assert await stewards_made(kit) == set()
    for i, identity in enumerate(identities):
        assert (await kit.engine.end(identity, f"s{i}", mode="best_effort_drop")).action == "Dropped"


async def test_a_role_squatting_on_a_stewards_name_is_left_alone_and_named(kit):
    """Someone made a role of the steward's name: pgjit neither adopts nor alters it."""
    reader, = await kit.make_roles("reader")
    alice = kit.name("alice")
    squatter = steward_of(kit, alice)
    await kit.su(sql.SQL("CREATE ROLE {} NOLOGIN CREATEROLE").format(ID(squatter)))
    # Even with the admin allowed to SET ROLE to it and the mark forged, it is not pgjit's: the
    # admin did not create it, so it holds no ADMIN OPTION on it.
    await kit.su(sql.SQL("COMMENT ON ROLE {} IS {}").format(
        ID(squatter), sql.Literal(f'pgjit steward of "{kit.managed_role}"')))
    before = await grants(kit, squatter)
    if not stewarded(kit):
        await kit.engine.activate(kit.request("s1", alice, [reader]))
        assert await grants(kit, squatter) == before
        return
    with pytest.raises(EngineError) as refused:
        await kit.engine.activate(kit.request("s1", alice, [reader]))
    assert refused.value.reason == Reason.USER_CONFLICT
    assert f'"{squatter}"' in refused.value.message
    assert "PGJIT_STEWARD_ROLES=0" in refused.value.message
    assert await grants(kit, squatter) == before
    assert not (await kit.role(alice)).exists


async def test_users_the_admin_created_itself_are_still_managed_by_it(kit):
    """Users made before stewards (or with PGJIT_STEWARD_ROLES=0) keep being administered by
    the admin: re-activated with other roles, locked, stripped and dropped."""
    reader, writer = await kit.make_roles("reader", "writer")
    alice = kit.name("alice")
    name = postgres_username(alice)
    before = new_engine(kit.server, kit.managed_role, steward_roles=0)
    try:
        await before.activate(kit.request("s1", alice, [reader]))
        await before.end(alice, "s1", mode="keep")
    finally:
        await before.close()
    assert await stewards_made(kit) == set()
    await kit.engine.activate(kit.request("s2", alice, [writer]))
    info = await kit.role(alice)
    assert info.can_login and info.memberships == {writer, kit.managed_role}
    assert (await kit.engine.end(alice, "s2", mode="keep")).action == "Locked"
    info = await kit.role(alice)
    assert not info.can_login and info.memberships == {kit.managed_role}
    assert await stewards_made(kit) == set()
    await kit.engine.activate(kit.request("s3", alice, [reader]))
    assert (await kit.engine.end(alice, "s3", mode="best_effort_drop")).action == "Dropped"
    assert not (await kit.role(name, mapped=False)).exists


async def test_a_steward_is_given_each_new_role_and_given_back_what_was_taken(kit):
    reader, writer = await kit.make_roles("reader", "writer")
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, [reader]))
    assert (await kit.engine.end(alice, "s1", mode="keep")).action == "Locked"
    # Another session of the same person wants another role: the steward is entrusted with it,
    # and the steward's own grant of the first role is what gets revoked.
    await kit.engine.activate(kit.request("s2", alice, [writer]))
    assert (await kit.role(alice)).memberships == {writer, kit.managed_role}
    if stewarded(kit):
        steward = steward_of(kit, alice)
        held = {role for role, member, admin_option, _i, _s, _g in await grants(kit, steward)
                if member == steward and admin_option}
        assert {reader, writer, kit.managed_role} <= held
        # A DBA takes the admin's SET ROLE away: the next operation gives it back.
        await kit.su(sql.SQL("REVOKE {} FROM {} GRANTED BY {}").format(
            ID(steward), ID(kit.server.admin_user), ID(kit.server.admin_user)))
        assert (await kit.su("SELECT pg_has_role(%s, %s, 'SET')",
                             [kit.server.admin_user, steward])) == [(False,)]
    teardown = await kit.engine.end(alice, "s2", mode="best_effort_drop")
    assert teardown.action == "Dropped" and not (await kit.role(alice)).exists


async def test_a_membership_the_admin_granted_out_of_band_is_revoked_by_the_admin(kit):
    """On a steward's user, drift granted by the admin (not the steward) is the admin's to
    revoke: PostgreSQL 16+ revokes only the current role's grants, and silently skips others."""
    reader, extra = await kit.make_roles("reader", "extra")
    alice = kit.name("alice")
    name = postgres_username(alice)
    await kit.engine.activate(kit.request("s1", alice, [reader]))
    async with await psycopg.AsyncConnection.connect(kit.server.admin_conninfo(),
                                                     autocommit=True) as admin:
        await admin.execute(sql.SQL("GRANT {} TO {}").format(ID(extra), ID(name)))
        await admin.execute(sql.SQL("GRANT {} TO {}").format(ID(reader), ID(name)))
    assert extra in (await kit.role(alice)).memberships
    await kit.engine.end(alice, "s1", mode="keep")
    await kit.engine.activate(kit.request("s2", alice, [reader]))
    assert (await kit.role(alice)).memberships == {reader, kit.managed_role}
    assert (await kit.engine.end(alice, "s2", mode="keep")).action == "Locked"
    # Every grant of reader is gone, the steward's and the admin's.
    assert [g for g in await grants(kit, name) if g[1] == name and g[0] == reader] == []


async def test_a_role_naming_a_steward_is_refused(kit):
    alice, bob = kit.name("alice"), kit.name("bob")
    await kit.engine.activate(kit.request("s1", alice))
    if not stewarded(kit):
        assert await stewards_made(kit) == set()
        return
    steward = steward_of(kit, alice)
    with pytest.raises(EngineError) as refused:
        await kit.engine.activate(kit.request("s2", bob, [steward]))
    assert refused.value.reason == Reason.PRIVILEGED_ROLE
    assert f'refused: "{steward}"' in refused.value.message
    assert not (await kit.role(bob)).exists
