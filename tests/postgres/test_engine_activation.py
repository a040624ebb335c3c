"""Activation: teleport-behaviour.md §6 items 1-22, against real servers, non-superuser admin."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import psycopg
import pytest
from psycopg import sql

from enginekit import ID, new_engine, soon
from pgjit.core.leases import Ledger
from pgjit.engine import EngineError, ServerConfig
from pgjit.vocabulary import Reason


async def test_01_new_user_has_login_ownership_marker_and_exactly_the_requested_roles(kit):
    reader, _writer = await kit.make_roles("reader", "writer")
    alice = kit.name("alice")
    result = await kit.engine.activate(kit.request("s1", alice, [reader]))
    assert result.created and not result.shared and result.password_set
    info = await kit.role(alice)
    assert info.can_login
    assert info.memberships == {reader, kit.managed_role}
    assert info.valid_until is not None and abs(info.valid_until - result.valid_until) < timedelta(seconds=1)
    conn = await kit.login(alice, kit.passwords["s1"])
    assert (await (await conn.execute("SELECT current_user")).fetchone())[0] == alice
    await conn.close()


async def test_02_managed_role_dropped_out_of_band_is_recreated(kit):
    alice, bob = kit.name("alice"), kit.name("bob")
    await kit.engine.activate(kit.request("s1", alice))
    await kit.engine.end(alice, "s1", mode="best_effort_drop")
    await kit.su(sql.SQL("DROP ROLE {}").format(ID(kit.managed_role)))
    await kit.engine.activate(kit.request("s2", bob))
    assert kit.managed_role in (await kit.role(bob)).memberships


async def test_03_existing_managed_role_is_not_an_error_in_any_language(kit):
    assert await kit.engine.ensure_managed_role() is True
    assert await kit.engine.ensure_managed_role() is False
    await kit.engine.activate(kit.request("s1", kit.name("alice")))
    assert (await kit.role(kit.name("alice"))).can_login


async def test_04_unmanaged_role_of_the_same_name_is_refused_and_untouched(kit):
    carol = kit.name("carol")
    await kit.su(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'x' CONNECTION LIMIT 3").format(ID(carol)))
    before = await kit.role(carol)
    with pytest.raises(EngineError) as caught:
        await kit.engine.activate(kit.request("s1", carol))
    assert caught.value.reason == Reason.USER_CONFLICT and "not managed by pgjit" in caught.value.message
    assert await kit.role(carol) == before
    ended = await kit.engine.end(carol, "s1")
    assert ended.action == "NotManaged" and await kit.role(carol) == before


async def test_05_deactivated_user_is_reactivated_with_roles_replaced_not_merged(kit):
    reader, writer = await kit.make_roles("reader", "writer")
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, [reader]))
    await kit.engine.end(alice, "s1")
    assert not (await kit.role(alice)).can_login
    result = await kit.engine.activate(kit.request("s2", alice, [writer]))
    assert not result.created and not result.shared
    info = await kit.role(alice)
    assert info.can_login and info.memberships == {writer, kit.managed_role}
    assert await kit.can_login(alice, kit.passwords["s2"])
    assert not await kit.can_login(alice, kit.passwords["s1"])


async def test_06_leftover_roles_from_a_crashed_run_are_stripped(kit):
    reader, writer, extra = await kit.make_roles("reader", "writer", "extra")
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, [reader]))
    # A crashed run left a grant it made and lost its ledger.
    async with await psycopg.AsyncConnection.connect(kit.server.admin_conninfo(),
                                                     autocommit=True) as admin:
        await admin.execute(sql.SQL("GRANT {} TO {}").format(ID(extra), ID(alice)))
    await kit.su(sql.SQL("COMMENT ON ROLE {} IS NULL").format(ID(alice)))
    await kit.engine.activate(kit.request("s2", alice, [writer]))
    assert (await kit.role(alice)).memberships == {writer, kit.managed_role}


async def test_06b_leftover_granted_by_someone_else_is_reported_not_ignored(kit, pg_server):
    reader, extra = await kit.make_roles("reader", "extra")
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, [reader]))
    await kit.engine.end(alice, "s1")
    await kit.su(sql.SQL("GRANT {} TO {}").format(ID(extra), ID(alice)))  # by a superuser
    if int(pg_server.major) >= 16:
        # PostgreSQL 16 only lets the grantor revoke; the REVOKE would merely warn.
        with pytest.raises(EngineError) as caught:
            await kit.engine.activate(kit.request("s2", alice, [reader]))
        assert caught.value.reason == Reason.INSUFFICIENT_PRIVILEGE and extra in caught.value.message
        assert not (await kit.role(alice)).can_login  # rolled back: still locked
    else:
        await kit.engine.activate(kit.request("s2", alice, [reader]))
        assert (await kit.role(alice)).memberships == {reader, kit.managed_role}


async def test_07_second_session_with_identical_roles_shares_the_user(kit):
    reader, = await kit.make_roles("reader")
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, [reader]))
    first = await kit.role(alice)
    second = await kit.engine.activate(kit.request("s2", alice, [reader], expires_at=soon(2)))
    assert second.shared and not second.password_set
    info = await kit.role(alice)
    assert info.memberships == first.memberships
    assert info.valid_until > first.valid_until  # the later expiry wins
    assert await kit.can_login(alice, kit.passwords["s1"])  # the first password still works
    assert set(Ledger.parse(info.comment).leases) == {"s1", "s2"}


@pytest.mark.parametrize("second", [["reader", "writer"], [], ["writer"]],
                         ids=["added", "removed", "changed"])
async def test_08_second_session_with_different_roles_is_refused(kit, second):
    await kit.make_roles("reader", "writer")
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, [kit.name("reader")]))
    with pytest.raises(EngineError) as caught:
        await kit.engine.activate(kit.request("s2", alice, [kit.name(r) for r in second]))
    assert caught.value.reason == Reason.ROLES_CHANGED and "end those sessions" in caught.value.message
    assert (await kit.role(alice)).memberships == {kit.name("reader"), kit.managed_role}


async def test_09_empty_role_list_with_and_without_live_sessions(kit):
    alice = kit.name("alice")
    first = await kit.engine.activate(kit.request("s1", alice, []))
    assert first.roles == ()
    assert (await kit.role(alice)).memberships == {kit.managed_role}
    second = await kit.engine.activate(kit.request("s2", alice, []))
    assert second.shared
    await kit.engine.end(alice, "s1")
    await kit.engine.end(alice, "s2")
    again = await kit.engine.activate(kit.request("s3", alice, []))
    assert not again.shared and (await kit.role(alice)).can_login


async def test_10_duplicate_role_names_are_deduplicated(kit):
    reader, = await kit.make_roles("reader")
    alice = kit.name("alice")
    result = await kit.engine.activate(kit.request("s1", alice, [reader, reader]))
    assert result.roles == (reader,)
    second = await kit.engine.activate(kit.request("s2", alice, [reader]))
    assert second.shared


async def test_11_missing_role_rolls_back_everything(kit):
    reader, = await kit.make_roles("reader")
    alice = kit.name("alice")
    with pytest.raises(EngineError) as caught:
        await kit.engine.activate(kit.request("s1", alice, [reader, kit.name("nosuch")]))
    assert caught.value.reason == Reason.MISSING_DATABASE_ROLE
    assert kit.name("nosuch") in caught.value.message
    assert not (await kit.role(alice)).exists


async def test_12_role_the_admin_cannot_grant_names_the_fix(kit, pg_server):
    if int(pg_server.major) >= 16:
        locked, = await kit.make_roles("locked", admin_option=False)
    else:
        # PostgreSQL 15 lets CREATEROLE grant any role except superuser ones.
        locked = kit.name("locked")
        await kit.su(sql.SQL("CREATE ROLE {} SUPERUSER").format(ID(locked)))
    alice = kit.name("alice")
    with pytest.raises(EngineError) as caught:
        await kit.engine.activate(kit.request("s1", alice, [locked]))
    if int(pg_server.major) >= 16:
        assert caught.value.reason == Reason.INSUFFICIENT_PRIVILEGE
        assert f'GRANT "{locked}" TO "{pg_server.admin_user}" WITH ADMIN OPTION;' \
            in caught.value.message
    else:
        # A superuser role is a hard refusal first: ADMIN OPTION would not make it grantable.
        assert caught.value.reason == Reason.PRIVILEGED_ROLE and "has SUPERUSER" in caught.value.message
    assert not (await kit.role(alice)).exists
    pre = await kit.engine.preflight(roles=[locked])
    assert any(locked in s.fix for s in pre.role_shortfalls)
    assert pre.roles_without_admin_option == (locked,)
    assert not any(locked in s.fix for s in pre.shortfalls)  # the server itself is fine


async def test_13_managed_role_created_by_someone_else_needs_admin_option_on_16(kit, pg_server):
    """The PostgreSQL 15 → 16 upgrade case (Teleport #48949): CREATEROLE is not enough any more."""
    await kit.su(sql.SQL("CREATE ROLE {} NOLOGIN").format(ID(kit.managed_role)))
    # A user created before the upgrade by someone else, also not administrable by the admin.
    old = kit.name("old")
    await kit.su(sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(ID(old), ID(kit.managed_role)))
    alice = kit.name("alice")
    if int(pg_server.major) >= 16:
        with pytest.raises(EngineError) as caught:
            await kit.engine.activate(kit.request("s1", alice))
        assert caught.value.reason == Reason.INSUFFICIENT_PRIVILEGE
        assert f'GRANT "{kit.managed_role}" TO "{pg_server.admin_user}"' in caught.value.message
        with pytest.raises(EngineError) as caught:
            await kit.engine.end(old, None)
        assert caught.value.reason == Reason.INSUFFICIENT_PRIVILEGE
        assert (await kit.role(old)).can_login  # refused, not half-changed
        await kit.su(sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
            ID(kit.managed_role), ID(pg_server.admin_user)))
    await kit.engine.activate(kit.request("s1", alice))
    assert (await kit.role(alice)).can_login


async def test_14_implicit_roles_are_always_granted_and_compared(kit, pg_server):
    iam, reader = await kit.make_roles("iam", "reader")
    engine = new_engine(pg_server, kit.managed_role, implicit_roles=(iam,))
    try:
        alice = kit.name("alice")
        result = await engine.activate(kit.request("s1", alice, [reader]))
        assert set(result.roles) == {iam, reader}
        assert (await kit.role(alice)).memberships == {iam, reader, kit.managed_role}
        shared = await engine.activate(kit.request("s2", alice, [reader]))
        assert shared.shared
    finally:
        await engine.close()


async def test_15_read_only_server_is_detected_before_any_change(kit, pg_server):
    ro_admin = kit.name("ro-admin")
    await kit.su(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD 'ro-admin-pass'").format(
        ID(ro_admin)))
    await kit.su(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(
        ID(ro_admin)))
    engine = new_engine(pg_server, kit.managed_role)
    engine = type(engine)(ServerConfig(host=pg_server.host, port=pg_server.port,
                                       admin_user=ro_admin, admin_password="ro-admin-pass",
                                       managed_role=kit.managed_role))
    try:
        pre = await engine.preflight()
        assert pre.read_only and not pre.ok
        with pytest.raises(EngineError) as caught:
            await engine.check_writable()
        assert caught.value.reason == Reason.READ_ONLY
        with pytest.raises(EngineError) as caught:
            await engine.activate(kit.request("s1", kit.name("alice")))
        assert caught.value.reason == Reason.READ_ONLY and caught.value.sqlstate == "25006"
    finally:
        await engine.close()


def test_16_missing_admin_configuration_fails_before_any_database_work():
    from pgjit.engine import Engine
    with pytest.raises(EngineError) as caught:
        Engine(ServerConfig(host="192.0.2.1", admin_user=""))
    assert caught.value.reason == Reason.INVALID_REQUEST and "admin" in caught.value.message
    with pytest.raises(EngineError, match="a password, a client certificate or IAM"):
        Engine(ServerConfig(host="192.0.2.1", admin_user="a"))
    with pytest.raises(EngineError, match="not several"):
        Engine(ServerConfig(host="192.0.2.1", admin_user="a", admin_password="p",
                            admin_cert_pem=b"c", admin_key_pem=b"k"))


async def test_19_ending_another_session_never_disables_a_live_one(kit):
    """pgjit's leases replace Teleport's 'hold the lock until the backend connects' (item 19)."""
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice))
    await kit.engine.activate(kit.request("s2", alice))
    conn = await kit.login(alice, kit.passwords["s1"])
    ended = await kit.engine.end(alice, "s2")
    assert ended.action == "Released"
    assert (await (await conn.execute("SELECT 1")).fetchone()) == (1,)
    assert await kit.can_login(alice, kit.passwords["s1"])
    await conn.close()


async def test_20_a_failing_later_step_leaves_nothing_behind(kit):
    """Permissions fail after the user was created: the activation is undone (item 20)."""
    from pgjit.core.permissions import PermissionRule, PermissionRules
    db = await kit.make_database()
    await kit.su("CREATE TABLE t(x int)", dbname=db)  # owned by the superuser, no grant option
    rules = PermissionRules(allow=(PermissionRule.build("table", "public", "t", ["SELECT"],
                                                        deny=False),))
    alice = kit.name("alice")
    with pytest.raises(EngineError) as caught:
        await kit.engine.activate(kit.request("s1", alice, database=db, permissions=rules,
                                              mode="best_effort_drop"))
    assert caught.value.reason == Reason.INSUFFICIENT_PRIVILEGE
    assert not (await kit.role(alice)).exists


async def test_21_no_persistent_objects_and_no_temp_privilege_needed(kit, pg_server):
    from pgjit.core.permissions import PermissionRule, PermissionRules
    db = await kit.make_database()
    await kit.su(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ID(db)))
    await kit.su(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(ID(db), ID(pg_server.admin_user)))
    await kit.su(sql.SQL("CREATE TABLE t(x int); ALTER TABLE t OWNER TO {}").format(
        ID(pg_server.admin_user)), dbname=db)
    before = await kit.su("SELECT count(*) FROM pg_proc", dbname=db)
    rules = PermissionRules(allow=(PermissionRule.build("table", "*", "*", ["SELECT"], deny=False),))
    alice = kit.name("alice")
    result = await kit.engine.activate(kit.request("s1", alice, database=db, permissions=rules))
    assert result.permissions_summary == "SELECT on 1 table"
    assert await kit.su("SELECT count(*) FROM pg_proc", dbname=db) == before
    pre = await kit.engine.preflight(databases=[db])
    assert pre.ok, pre.shortfalls
    # Without CONNECT the preflight says exactly what to grant.
    await kit.su(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM {}").format(ID(db), ID(pg_server.admin_user)))
    pre = await kit.engine.preflight(databases=[db])
    assert any(f'GRANT CONNECT ON DATABASE "{db}"' in s.fix for s in pre.shortfalls)


async def test_22_user_lifecycle_in_admin_database_grants_in_session_database(kit, pg_server):
    from pgjit.core.permissions import PermissionRule, PermissionRules
    db_a, db_b = await kit.make_database("a"), await kit.make_database("b")
    for db in (db_a, db_b):
        await kit.su(sql.SQL("CREATE TABLE t(x int); ALTER TABLE t OWNER TO {}").format(
            ID(pg_server.admin_user)), dbname=db)
    rules = PermissionRules(allow=(PermissionRule.build("table", "public", "t", ["SELECT"], deny=False),))
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, database=db_a, permissions=rules))
    conn = await kit.login(alice, kit.passwords["s1"], db_a)
    await conn.execute("SELECT * FROM t")
    await conn.close()
    conn = await kit.login(alice, kit.passwords["s1"], db_b)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        await conn.execute("SELECT * FROM t")
    await conn.close()


async def test_unreachable_server_is_a_transient_error():
    from pgjit.engine import Engine, RetryPolicy
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = Engine(ServerConfig(host="127.0.0.1", port=port, admin_user="a", admin_password="p",
                                 connect_timeout=1), retry=RetryPolicy(attempts=2, base_delay=0.01))
    try:
        with pytest.raises(EngineError) as caught:
            await engine.preflight()
        assert caught.value.transient and caught.value.reason == Reason.UNREACHABLE
    finally:
        await engine.close()


class _Silent:
    """A port that accepts connections and never answers, as a hung server does."""

    def __init__(self) -> None:
        import socket
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=32)
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []

    def accepted(self) -> int:
        """Connections made so far (each is left unanswered)."""
        self.listener.setblocking(False)
        while True:
            try:
                self.connections.append(self.listener.accept()[0])
            except BlockingIOError:
                return len(self.connections)

    def close(self) -> None:
        for sock in [self.listener, *self.connections]:
            sock.close()


@pytest.mark.parametrize("budget, attempts", [(0.5, 1), (60.0, 3)])
async def test_a_server_that_does_not_answer_is_not_retried_past_the_budget(budget, attempts):
    """Each attempt waits for the connect timeout; retrying eight of them held a Database's
    handler (and its deletion) for 85 s. Past the budget the error is reported at once."""
    from pgjit.engine import Engine, RetryPolicy
    silent = _Silent()
    engine = Engine(ServerConfig(host="127.0.0.1", port=silent.port, admin_user="a",
                                 admin_password="p", connect_timeout=1),
                    retry=RetryPolicy(attempts=3, base_delay=0.01, budget=budget))
    try:
        with pytest.raises(EngineError) as caught:
            await engine.preflight()
        assert caught.value.transient and caught.value.reason == Reason.UNREACHABLE
        assert silent.accepted() == attempts
    finally:
        await engine.close()
        silent.close()


async def test_wrong_admin_password_is_a_permanent_authentication_error(pg_server):
    from pgjit.engine import Engine
    engine = Engine(ServerConfig(host=pg_server.host, port=pg_server.port,
                                 admin_user=pg_server.admin_user, admin_password="wrong"))
    try:
        with pytest.raises(EngineError) as caught:
            await engine.preflight()
        assert caught.value.reason == "AuthenticationFailed" and not caught.value.transient
    finally:
        await engine.close()


async def test_a_session_that_does_not_know_the_shared_password_is_refused_before_any_change(kit):
    """Whether a shared user's password is known is decided before activation: a session that
    cannot hand out the password in effect changes nothing, and steps its own stale lease back
    so that the sessions of the user cannot wait on each other for ever."""
    reader, = await kit.make_roles("reader")
    alice = kit.name("alice")
    await kit.engine.activate(kit.request("s1", alice, [reader]))
    before = await kit.role(alice)
    blind = replace(kit.request("s2", alice, [reader], expires_at=soon(2)),
                    shared_password_known=False)
    with pytest.raises(EngineError) as caught:
        await kit.engine.activate(blind)
    assert caught.value.reason == Reason.USER_SHARED and caught.value.transient
    assert await kit.role(alice) == before  # VALID UNTIL, memberships, ledger: unchanged
    assert await kit.can_login(alice, kit.passwords["s1"])

    # s2 held a lease from an earlier attempt (the operator stopped before its Secret): it
    # steps back, and s1's lease is untouched.
    await kit.engine.activate(kit.request("s2", alice, [reader], expires_at=soon(2)))
    with pytest.raises(EngineError):
        await kit.engine.activate(blind)
    assert set(Ledger.parse((await kit.role(alice)).comment).leases) == {"s1"}
    # Alone on the user, the same session activates it with its own password.
    alone = await kit.engine.activate(replace(kit.request("s3", kit.name("bob"), [reader]),
                                              shared_password_known=False))
    assert alone.password_set and not alone.shared


async def test_a_refused_admin_login_fails_calls_fast_and_retriably(kit, pg_server):
    """The admin's password rotated in PostgreSQL before the Secret: every call used to wait
    out the pool's timeout eight times over (over a minute each); now they fail within
    seconds, transiently (the session waits, it does not fail), and the engine says so, for the
    registry to re-read the Secret."""
    import time

    from pgjit.engine import Engine, RetryPolicy
    config = ServerConfig(host=pg_server.host, port=pg_server.port,
                          admin_user=pg_server.admin_user, admin_password="rotated-away",
                          managed_role=kit.managed_role, connect_timeout=5)
    engine = Engine(config, retry=RetryPolicy(attempts=8))
    try:
        began = time.monotonic()
        with pytest.raises(EngineError) as caught:
            await engine.activate(kit.request("s1", kit.name("alice")))
        assert caught.value.reason == "AuthenticationFailed" and caught.value.transient
        assert time.monotonic() - began < 5  # a single pool timeout would be 5 s
        assert engine.admin_refused
        # The same for the next call, without trying the server again meanwhile.
        with pytest.raises(EngineError) as again:
            await engine.end(kit.name("alice"), "s1")
        assert again.value.reason == "AuthenticationFailed"
    finally:
        await engine.close()
    await kit.engine.activate(kit.request("s2", kit.name("bob")))
    assert not kit.engine.admin_refused  # an engine that logs in is not refused
