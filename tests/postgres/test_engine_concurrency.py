"""Concurrency: items 17-18, and 20 concurrent activations and ends of one and many users."""

from __future__ import annotations

import asyncio
import random

from psycopg import sql

from enginekit import ID, new_engine
from pgjit.core.leases import Ledger

N = 20


async def managed_users(kit):
    rows = await kit.su("""
        SELECT r.rolname, r.rolcanlogin, shobj_description(r.oid, 'pg_authid')
          FROM pg_roles r JOIN pg_auth_members m ON m.member = r.oid
          JOIN pg_roles g ON g.oid = m.roleid
         WHERE g.rolname = %s AND NOT m.admin_option""", [kit.managed_role])
    return {name: (login, Ledger.parse(comment)) for name, login, comment in rows}


async def test_17_concurrent_activations_of_one_user_are_serialized(kit):
    reader, = await kit.make_roles("reader")
    alice = kit.name("alice")
    results = await asyncio.gather(*(kit.engine.activate(kit.request(f"s{i}", alice, [reader]))
                                     for i in range(N)))
    assert sum(r.created for r in results) == 1
    assert sum(r.password_set for r in results) == 1  # exactly one password: everyone shares it
    login, ledger = (await managed_users(kit))[alice]
    assert login and set(ledger.leases) == {f"s{i}" for i in range(N)}
    # Ends race with each other; only the last one locks the user.
    teardowns = await asyncio.gather(*(kit.engine.end(alice, f"s{i}") for i in range(N)))
    assert sorted(t.action for t in teardowns) == ["Locked"] + ["Released"] * (N - 1)
    login, ledger = (await managed_users(kit))[alice]
    assert not login and ledger.leases == {}
    assert (await kit.role(alice)).memberships == {kit.managed_role}


async def test_18_concurrent_work_from_several_engines_on_one_server(kit, pg_server):
    """Several operator replicas (engines) race on shared catalogs; retries absorb conflicts."""
    reader, = await kit.make_roles("reader")
    engines = [new_engine(pg_server, kit.managed_role) for _ in range(3)]
    try:
        users = [kit.name(f"u{i}") for i in range(N)]
        await asyncio.gather(*(random.choice(engines).activate(kit.request(f"s-{u}", u, [reader]))
                               for u in users))
        # Interleave ends and re-activations of the same users from different engines.
        ops = []
        for u in users:
            ops.append(random.choice(engines).end(u, f"s-{u}", mode="best_effort_drop"))
            ops.append(random.choice(engines).activate(kit.request(f"t-{u}", u, [reader])))
        outcomes = await asyncio.gather(*ops, return_exceptions=True)
        assert [o for o in outcomes if isinstance(o, BaseException)] == []
        state = await managed_users(kit)
        for u in users:
            if u in state:
                login, ledger = state[u]
                # Consistent: enabled exactly when a live lease exists.
                assert login == bool(ledger.leases), (u, login, ledger)
        await asyncio.gather(*(random.choice(engines).end(u, f"t-{u}") for u in users))
        assert all(not login for login, _ in (await managed_users(kit)).values())
    finally:
        for engine in engines:
            await engine.close()


async def test_20_different_users_concurrently_leave_a_consistent_catalog(kit):
    reader, writer = await kit.make_roles("reader", "writer")
    users = [kit.name(f"p{i}") for i in range(N)]
    await asyncio.gather(*(kit.engine.activate(kit.request(f"s-{u}", u, [random.choice([reader, writer])],
                                                           mode=random.choice(["keep", "best_effort_drop"])))
                           for u in users))
    assert all(login for login, _ in (await managed_users(kit)).values())
    await asyncio.gather(*(kit.engine.end(u, f"s-{u}") for u in users))
    remaining = await managed_users(kit)
    assert all(not login and not ledger.leases for login, ledger in remaining.values())
    for name in remaining:
        assert (await kit.role(name, mapped=False)).memberships == {kit.managed_role}


async def test_pool_stays_within_its_connection_bound(kit, pg_server):
    """However many sessions start at once, the engine uses at most max_connections."""
    t0 = (await kit.su("SELECT clock_timestamp()"))[0][0]
    peak = 0
    done = asyncio.Event()

    async def watch():
        # A backend counts when it is seen in two consecutive samples: a connection the pool
        # has just closed can linger in pg_stat_activity for a moment while it exits.
        nonlocal peak
        previous: set[int] = set()
        while not done.is_set():
            rows = await kit.su("""SELECT pid FROM pg_stat_activity WHERE usename = %s
                                    AND application_name = 'pgjit' AND backend_start >= %s""",
                                [pg_server.admin_user, t0])
            current = {r[0] for r in rows}
            peak = max(peak, len(current & previous))
            previous = current
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    users = [kit.name(f"c{i}") for i in range(3 * N)]
    await asyncio.gather(*(kit.engine.activate(kit.request(f"s-{u}", u)) for u in users))
    await asyncio.gather(*(kit.engine.end(u, f"s-{u}") for u in users))
    done.set()
    await watcher
    assert 1 <= peak <= kit.engine.config.max_connections
