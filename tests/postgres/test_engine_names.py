"""User names: teleport-behaviour.md §6 items 50-51, plus generated hostile names."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from psycopg import sql

from enginekit import ID
from pgjit.core.leases import Ledger
from pgjit.core.naming import postgres_username
from pgjit.core.stewards import steward_roles
from pgjit.engine import ActivationRequest

HOSTILE = ['"', "'", "\\", "$", ";", " ", "$$", "--", "/*", "%s", "%(x)s", "{}", "ü", "😀",
           "Robert'); DROP ROLE x;--"]


def _name_cases(suffix: str) -> dict[str, str]:
    pad = lambda base, n: base + "x" * (n - len(base.encode()))  # noqa: E731
    return {
        "exactly_63_bytes": pad(f"e63-{suffix}-", 63),
        "64_bytes": pad(f"e64-{suffix}-", 64),
        "200_bytes_remote_user": pad(f"remote-alice@example.com-{suffix}-root-cluster-", 200),
        "multibyte": f"Jürgen-Ĳssel-日本語-{suffix}" + "ü" * 30,
        "mixed_case": f"STeve-{suffix}",
        "specials": f"a\"b'c\\d$e;f g@h.i-{suffix}",
        "reserved_prefix": f"pg_{suffix}",
    }


@pytest.mark.parametrize("case", list(_name_cases("x")))
async def test_50_names_that_need_care_work_end_to_end(kit, case):
    identity = _name_cases(kit.suffix)[case]
    result = await kit.engine.activate(kit.request("s1", identity))
    assert result.username == postgres_username(identity)
    assert len(result.username.encode()) <= 63
    info = await kit.role(identity)
    assert info.can_login and Ledger.parse(info.comment).identity == identity
    assert await kit.can_login(identity, kit.passwords["s1"])
    assert (await kit.engine.end(identity, "s1", mode="best_effort_drop")).action == "Dropped"


async def test_64_byte_names_that_share_a_prefix_stay_distinct(kit):
    a, b = "y" * 70 + kit.suffix + "a", "y" * 70 + kit.suffix + "b"
    await kit.engine.activate(kit.request("s1", a))
    await kit.engine.activate(kit.request("s2", b))
    assert postgres_username(a) != postgres_username(b)
    assert (await kit.role(a)).can_login and (await kit.role(b)).can_login


async def test_51_the_postgres_user_is_derived_from_the_identity_only(kit):
    """No request field names the PostgreSQL user; a name owned by another identity is refused."""
    assert "username" not in ActivationRequest.__dataclass_fields__
    long_identity = "z" * 80 + kit.suffix
    await kit.engine.activate(kit.request("s1", long_identity))
    mapped = postgres_username(long_identity)
    # Someone whose identity *is* the mapped name must not get the long identity's user.
    from pgjit.engine import EngineError
    with pytest.raises(EngineError) as caught:
        await kit.engine.activate(kit.request("s2", mapped))
    assert caught.value.reason == "UserConflict" and long_identity in caught.value.message


identities = st.lists(st.sampled_from(HOSTILE + list("abcXYZ09_-.@")), min_size=1,
                      max_size=8).map("".join)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(identity=identities, role_tail=identities)
async def test_hostile_identities_and_role_names_cannot_inject_sql(kit, identity, role_tail):
    identity = f"{identity}-{kit.suffix}"
    role = f"r{role_tail}"[:40] + kit.suffix
    role = role.encode()[:60].decode(errors="ignore")
    await kit.su(sql.SQL("CREATE ROLE {}").format(ID(role)))
    await kit.su(sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(ID(role), ID(kit.server.admin_user)))
    await kit.engine.ensure_managed_role()
    roles_before = {name for (name,) in await kit.su("SELECT rolname FROM pg_roles")}
    try:
        await kit.engine.activate(kit.request("s", identity, [role]))
        info = await kit.role(identity)
        assert info.can_login and info.memberships == {role, kit.managed_role}
        # The user, and on 16+ the steward that created it: no other role.
        created = {name for (name,) in await kit.su("SELECT rolname FROM pg_roles")} - roles_before
        assert created - set(steward_roles(kit.managed_role)) == {postgres_username(identity)}
        assert len(created) <= (2 if int(kit.server.major) >= 16 else 1)
        assert (await kit.engine.end(identity, "s", mode="best_effort_drop")).action == "Dropped"
    finally:
        await kit.su(sql.SQL("DROP ROLE IF EXISTS {}").format(ID(postgres_username(identity))))
        await kit.su(sql.SQL("DROP ROLE {}").format(ID(role)))
