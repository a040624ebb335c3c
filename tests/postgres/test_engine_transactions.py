"""Admin transactions say what they are for (application_name) and never leak a transaction."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from enginekit import engine_kit, new_engine, soon
from pgjit.core.naming import postgres_username
from pgjit.engine.transactions import application_name, locked_transaction
from pgjit.engine.users import lock_key


async def _wait_for_waiting_backend_named(kit, expected: str, deadline: float = 10.0) -> None:
    """Until an admin backend waiting on an advisory lock shows ``expected`` as its name.

    Polled, not read once: the query reads pg_stat_activity and pg_locks one after the other,
    so one reading can see the backend already waiting but its name from a moment before.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    seen: list[str] = []
    while True:
        rows = await kit.su(
            "SELECT a.application_name FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid"
            " WHERE l.locktype = 'advisory' AND NOT l.granted AND a.usename = %s",
            [kit.server.admin_user])
        seen = [r[0] for r in rows]
        if seen == [expected]:
            return
        if loop.time() > end:
            raise AssertionError(f"waiting admin backends: {seen}, expected [{expected!r}]")
        await asyncio.sleep(0.02)


async def _holding_lock(kit, key: int) -> psycopg.AsyncConnection:
    conn = await kit.superuser()
    await conn.execute("SELECT pg_advisory_lock(%s)", [key])
    return conn


@pytest.mark.parametrize("purpose", ["activate", "sweep"])
async def test_a_waiting_transaction_is_named_for_its_purpose_and_database(kit, purpose):
    engine = new_engine(kit.server, kit.managed_role, label="team-a/orders")
    alice = kit.name("alice")
    try:
        if purpose == "sweep":
            # A lease whose session is gone: the sweep ends it under the user's lock.
            await engine.activate(kit.request("gone", alice))
        holder = await _holding_lock(kit, lock_key(postgres_username(alice)))
        try:
            work = asyncio.ensure_future(
                engine.activate(kit.request("s1", alice)) if purpose == "activate"
                else engine.sweep(set(), terminate_connections=False))
            await _wait_for_waiting_backend_named(kit, f"pgjit/{purpose} team-a/orders")
        finally:
            await holder.close()
        await asyncio.wait_for(work, 30)
        # Local to the transaction: the pooled connection shows its plain name again.
        rows = await kit.su("SELECT DISTINCT application_name FROM pg_stat_activity"
                            " WHERE usename = %s AND state = 'idle'", [kit.server.admin_user])
        assert ("pgjit team-a/orders",) in rows
    finally:
        await engine.close()


async def test_an_error_inside_leaves_the_connection_idle(kit):
    async with await psycopg.AsyncConnection.connect(kit.server.admin_conninfo(),
                                                     autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable):
            async with locked_transaction(conn, "test") as tx:
                async with conn.pipeline():
                    await tx.begin(lock_key("x"))
                await conn.execute("SELECT * FROM no_such_table_here")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


async def test_a_block_that_forgets_to_commit_is_rolled_back(kit):
    table = kit.name("t").replace("-", "_")
    await kit.su(f"CREATE TABLE {table} (x int)")
    await kit.su(f"GRANT INSERT ON {table} TO {kit.server.admin_user}")
    async with await psycopg.AsyncConnection.connect(kit.server.admin_conninfo(),
                                                     autocommit=True) as conn:
        async with locked_transaction(conn, "test") as tx:
            async with conn.pipeline():
                await tx.begin(lock_key("y"))
                await conn.execute(f"INSERT INTO public.{table} VALUES (1)")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert await kit.su(f"SELECT count(*) FROM {table}") == [(0,)]


def test_application_names_fit_postgres_and_keep_whole_characters():
    assert application_name("activate", "team-a/orders") == "pgjit/activate team-a/orders"
    assert application_name("", "team-a/orders") == "pgjit team-a/orders"
    long = application_name("sweep", "ns/" + "ü" * 80)
    assert len(long.encode("utf-8")) <= 63 and long.startswith("pgjit/sweep ns/ü")


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "not-prepared"])
async def test_the_state_reads_are_prepared_once_per_connection_unless_turned_off(
        pg_server, prepared):
    """Planning the state reads cost more server CPU than running them: they are prepared on
    each admin connection and reused; behind a transaction-mode pooler they can be turned off."""

    async def state_reads(engine) -> set:
        async with engine._conns.connection() as conn:  # the pool's one connection
            rows = await (await conn.execute(
                "SELECT name, statement, prepare_time FROM pg_prepared_statements")).fetchall()
        return {(name, prepared_at) for name, statement, prepared_at in rows
                if "rolcanlogin" in statement or "pg_auth_members" in statement}

    async with engine_kit(pg_server) as kit:
        engine = new_engine(pg_server, kit.managed_role, max_connections=1,
                            prepared_statements=prepared)
        try:
            reader, = await kit.make_roles("reader")
            await engine.activate(kit.request("s1", kit.name("alice"), [reader]))
            first = await state_reads(engine)
            # Sharing and re-activating run ALTER ROLE, after which psycopg would drop its own
            # prepared statements; these must survive it.
            for session in ("s2", "s3"):
                await engine.activate(kit.request(session, kit.name("alice"), [reader]))
            await engine.end(kit.name("alice"), "s2")
            await engine.activate(kit.request("s4", kit.name("alice"), [reader]))
            last = await state_reads(engine)
        finally:
            await engine.close()
    if prepared:
        assert len(first) == 2 and last == first  # the same two, prepared once
    else:
        assert first == last == set()
