"""Leader election: one pod acts, the others stand by; a leader killed or stopped mid-burst.

Each test has a control plane, PostgreSQL and two operator pods of its own (faultkit). A burst
of 50 sessions opens and ends while the fault happens; afterwards every remaining session must
be Active, every deleted one gone, one Secret per Active session and none other, no managed
login without a live session, and, once all are ended, nothing left at all.
"""

from __future__ import annotations

import signal
import time

import kubernetes

from faultkit import (DEFAULT_TIMINGS, FAST_TIMINGS, RELEASE_NS, check_no_leaks, fault_burst,
                      phases)
from operatorkit import wait_for


def lease_holder(stack, name: str = "pgjit") -> str:
    lease = kubernetes.client.CoordinationV1Api(stack.api).read_namespaced_lease(name, RELEASE_NS)
    return lease.spec.holder_identity or ""


def acting_lines(text: str) -> list[str]:
    """Log lines of an operator doing something to an object (Kopf's handlers, pgjit's)."""
    return [line for line in text.splitlines()
            if "kopf.objects" in line or "pgjit.handlers" in line]


def first_activation_after(env, burst, moment: float, timeout: float) -> float:
    """Seconds from ``moment`` until a session created after it is Active: nothing in flight
    from before can have done that, only a leader acting afterwards."""
    def activated():
        later = {name for name, at in burst.created_at.items() if at > moment}
        return any(s["metadata"]["name"] in later
                   and (s.get("status") or {}).get("phase") == "Active"
                   for s in env.list("DatabaseSession"))
    wait_for("a session created after the fault to be Active", activated, timeout,
             interval=0.05)
    return time.monotonic() - moment


def test_one_leader_acts_and_hands_over_on_a_clean_stop(stack):
    pods = stack.add_pods(2)
    leader = pods.wait_leader()
    standby = next(pod for pod in pods.pods if pod is not leader)
    # Both Ready: a rolling update waits for the new pod to be Ready before stopping the old.
    wait_for("both pods Ready, each in its role", lambda: (
        leader.readiness(), standby.readiness()) == ({"ready": True, "role": "leader"},
                                                     {"ready": True, "role": "standby"}), 30,
        interval=0.1)
    env = stack.env()
    env.role("analysts", "best_effort_drop")
    offset = standby.mark("sessions opened")
    for index in range(3):
        env.open_session(f"s{index}", f"one-{index}")
    # Only the leader touched them.
    assert acting_lines(standby.log_since(offset)) == []
    assert lease_holder(stack).startswith(leader.name)

    # A clean stop (a rollout, a drain) hands the Lease over: the standby need not wait for it
    # to run out.
    stopped_at = time.monotonic()
    leader.stop()
    wait_for("the standby to lead", lambda: standby.role() == "leader", 10, interval=0.05)
    handover = time.monotonic() - stopped_at
    assert handover < DEFAULT_TIMINGS["lease"] / 2, handover
    assert lease_holder(stack).startswith(standby.name)
    env.open_session("after", "one-after")
    env.delete("DatabaseSession", "s0")
    env.wait_gone("DatabaseSession", "s0")
    assert env.login_capable_managed_users() == {"one-1", "one-2", "one-after"}
    print(f"clean handover in {handover:.2f}s")


def test_leader_killed_mid_burst(stack):
    """SIGKILL: no release, no cleanup. A standby takes over once the leader has missed two
    renewals and its process is provably gone, well within the lease (default timings).

    Two standbys race for it: the other pod, and the killed pod's restarted container (the
    kubelet restarts it at once, and it answers the probe at the old leader's address with
    another identity). Either may win, and on a busy machine either does; what must hold is
    that one live process leads, the one killed never again, and the loser stands by."""
    pods = stack.add_pods(2)
    leader = pods.wait_leader()
    killed_identity = lease_holder(stack)
    env = stack.env()
    found = {}

    def kill(burst):
        killed_at = time.monotonic()
        leader.signal(signal.SIGKILL)
        found["failover"] = first_activation_after(env, burst, killed_at, 60)
        found["holder"] = lease_holder(stack)

    burst, _, settled = fault_burst(env, kill)
    assert found["holder"] and found["holder"] != killed_identity, pods.log_tail()
    new_leader = next(pod for pod in pods.pods if found["holder"].startswith(pod.name + "_"))
    other = next(pod for pod in pods.pods if pod is not new_leader)
    assert new_leader.role() == "leader", pods.log_tail()
    wait_for("the other pod standing by", lambda: other.role() == "standby", 30)
    assert leader.exits and leader.exits[0][1] == -signal.SIGKILL
    assert found["failover"] < DEFAULT_TIMINGS["lease"], found
    check_no_leaks(env, burst)
    winner = "the restarted container" if new_leader is leader else "the other pod"
    print(f"failover (leader SIGKILLed to the first session activated by the new leader, "
          f"{winner}): {found['failover']:.2f}s; settled {settled:.1f}s after the kill")


def test_leader_stopped_longer_than_the_lease_does_not_act_when_resumed(stack):
    """SIGSTOP stands for a partition from the API server: the process can neither renew nor
    act. The standby takes over when the lease runs out; the old leader, resumed, must notice
    that its lease expired and exit before doing anything (fast timings: 4 s lease)."""
    pods = stack.add_pods(2, timings=FAST_TIMINGS)
    leader = pods.wait_leader()
    standby = next(pod for pod in pods.pods if pod is not leader)
    env = stack.env()
    seen = {}

    def partition(burst):
        stopped_at = time.monotonic()
        leader.signal(signal.SIGSTOP)
        # A stopped process's port accepts connections and never answers: no early takeover.
        wait_for("the standby to lead", lambda: standby.role() == "leader", 30, interval=0.1)
        seen["takeover"] = time.monotonic() - stopped_at
        assert seen["takeover"] >= FAST_TIMINGS["lease"] - 0.5, seen
        # Stopped well past the lease, while the new leader works.
        time.sleep(max(0.0, stopped_at + FAST_TIMINGS["lease"] + 2 - time.monotonic()))
        exits = len(leader.exits)
        seen["offset"] = leader.mark("resumed")
        seen["pid"] = leader.pid
        leader.signal(signal.SIGCONT)
        wait_for("the resumed leader to exit", lambda: len(leader.exits) > exits, 10,
                 interval=0.02)
        seen["exit"] = leader.exits[exits][1]

    burst, _, settled = fault_burst(env, partition)
    after = leader.log_since(seen["offset"])
    assert seen["exit"] == 1, after
    # The SIGCONT handler or the watchdog thread, whichever runs first after the resume.
    assert "Leader election lost" in after and "exiting" in after, after
    # Between the resume and the exit it did nothing: no handler ran, no object was touched.
    resumed_part = after.split("--- pod-", 1)[0]  # up to the restarted process's first line
    assert acting_lines(resumed_part) == [], resumed_part
    assert lease_holder(stack).startswith(standby.name)
    check_no_leaks(env, burst)
    print(f"stopped leader: standby led after {seen['takeover']:.2f}s; "
          f"settled {settled:.1f}s after the stop; phases at the end {phases(env)}")
