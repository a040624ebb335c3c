"""Crash safety: SIGKILL in the middle of a burst of creates and deletes.

200 sessions are created (some users twice, so they share a login) and a subset deleted while
they are being created; the operator is killed with SIGKILL half-way, the burst goes on without
it, and then it is started again. Whatever instruction the kill interrupted, the end state must
be exact: every remaining session Active with working credentials, every deleted one gone
without a trace (no Secret, its user locked or dropped), and no managed user able to log in
without a live session.
"""

from __future__ import annotations

import random
import time

import pytest

from operatorkit import SESSION_LABEL, Env, make_env, token, wait_for

SESSIONS = 200
KILL_AT = 100            # SIGKILL after this many creates
DELETE_EVERY = 5         # after creating session i with i % 5 == 4, delete session i - 3
SETTLE_TIMEOUT = 240.0


@pytest.fixture
def env(kube_api, namespace, postgres16, operator) -> Env:
    return make_env(kube_api, namespace, postgres16, operator)


def base_of(index: int) -> int:
    """Whose user a session uses: its own, or (sharing) that of a session created just before.

    i % 5 == 2 shares with i - 1 (which gets deleted) in every other group of five, i % 5 == 3
    with i - 3 (which stays), so shared users are activated concurrently and some shared users
    outlive one of their sessions.
    """
    if index % 5 == 2 and (index // 5) % 2 == 0:
        return index - 1
    if index % 5 == 3:
        return index - 3
    return index


def user_of(index: int, suffix: str) -> str:
    return f"burst{base_of(index):03d}-{suffix}"


def group_of(index: int) -> str:
    return "keepers" if base_of(index) % 2 == 0 else "droppers"


def name_of(index: int) -> str:
    return f"b{index:03d}"


def test_sigkill_in_a_burst_of_creates_and_deletes(env, operator):
    env.role("keepers", "keep", group="keepers")
    env.role("droppers", "best_effort_drop", group="droppers")
    suffix = token()
    deleted: set[int] = set()
    started = time.monotonic()
    try:
        for index in range(SESSIONS):
            env.create("DatabaseSession", name_of(index), env.session_spec(
                user_of(index, suffix), groups=[group_of(index)]))
            if index % DELETE_EVERY == DELETE_EVERY - 1:
                env.delete("DatabaseSession", name_of(index - 3))
                deleted.add(index - 3)
            if index == KILL_AT:
                operator.kill()
    finally:
        if not operator.running:
            operator.start()
    remaining = [i for i in range(SESSIONS) if i not in deleted]

    def settled():
        sessions = {s["metadata"]["name"]: s for s in env.list("DatabaseSession")}
        if set(sessions) != {name_of(i) for i in remaining}:
            return None
        if any(s.get("status", {}).get("phase") != "Active" for s in sessions.values()):
            return None
        return sessions
    try:
        sessions = wait_for("every remaining session Active and every deleted one gone",
                            settled, SETTLE_TIMEOUT, interval=0.5)
    except AssertionError as exc:
        phases = {}
        for s in env.list("DatabaseSession"):
            phase = s.get("status", {}).get("phase")
            phases.setdefault(phase, []).append(s["metadata"]["name"])
        raise AssertionError(f"{exc}\nphases: { {k: v[:10] for k, v in phases.items()} }\n"
                             f"{operator.log_tail(60)}") from None
    settle_time = time.monotonic() - started

    # Credentials: one Secret per remaining session, none for the deleted ones. A session
    # deleted while its finalizer was being added vanishes without a delete handler; the
    # Database's sweep removes what it left (one round at most).
    expected = {f"{name_of(i)}-credentials" for i in remaining}
    try:
        wait_for("exactly the remaining sessions' Secrets",
                 lambda: set(env.session_secrets()) == expected, 15, interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nextra: {set(env.session_secrets()) - expected}\n"
                             f"missing: {expected - set(env.session_secrets())}") from None
    secrets = env.session_secrets()
    for name, secret in secrets.items():
        assert secret.metadata.labels[SESSION_LABEL] == name.removesuffix("-credentials")
    usernames = {s["status"]["username"] for s in sessions.values()}

    # Users with two live sessions hand out one password.
    shared = [i for i in remaining if base_of(i) != i]
    pairs = [(base_of(i), i) for i in shared if base_of(i) not in deleted]
    assert len(pairs) >= 30
    for twin, index in pairs:
        first = env.secret(f"{name_of(twin)}-credentials")
        second = env.secret(f"{name_of(index)}-credentials")
        assert first["password"] == second["password"], (name_of(twin), name_of(index))

    # A sample logs in (every shared user among them) and runs what the role allows.
    sample = shared + random.sample(remaining, 15)
    for index in sample:
        creds = env.secret(f"{name_of(index)}-credentials")
        with env.login(creds) as conn:
            assert conn.execute("SELECT count(*) FROM public.items").fetchone() == (2,)

    # Deleted sessions whose user has no live session left: the user is locked or dropped.
    gone_users = {user_of(i, suffix) for i in deleted} - usernames
    assert gone_users
    for user in gone_users:
        row = env.role_row(user)
        assert row is None or row["rolcanlogin"] is False, (user, row)
        if row is not None:
            assert row["member_of"] == [env.managed_role], (user, row)

    # No managed user can log in without a live session (the sweep is the backstop for
    # whatever the handlers missed, so give it one round).
    def difference():
        capable = env.login_capable_managed_users()
        return {"can log in without a live session": sorted(capable - usernames),
                "live but cannot log in": sorted(usernames - capable)}
    try:
        wait_for("login-capable managed users == live sessions' users",
                 lambda: env.login_capable_managed_users() == usernames, 15, interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{difference()}") from None

    # End everything: all users locked or dropped, no Secret left behind.
    for index in remaining:
        env.delete("DatabaseSession", name_of(index))
    wait_for("every session deleted", lambda: not env.list("DatabaseSession"), 120, interval=0.5)
    assert not env.session_secrets()
    assert env.login_capable_managed_users() == set()
    print(f"burst of {SESSIONS} settled {settle_time:.1f}s after it started")
