"""Leader election (kube/leadership.py) against an in-memory Lease API with a hand-driven clock.

The API keeps resourceVersion semantics (a write with a stale one is a 409), which is what the
election's safety rests on; the cluster and fault layers run the same code against a real API
server and real processes.
"""

from __future__ import annotations

import copy
import http.server
import json
import socket
import threading
from types import SimpleNamespace

import pytest

from pgjit.kube.transport import Conflict, NotFound
from pgjit.kube.leadership import (ENDPOINT_ANNOTATION, LEASE_LABEL, SHARD_ANNOTATION,
                                   ElectionConfig, LeaderElector, LeaseLost, new_identity)


class FakeLeases:
    """GET, POST and PUT of one namespace's Leases, answered as the API server answers them
    (through the RestClient interface the elector uses)."""

    PATH = "/apis/coordination.k8s.io/v1/namespaces/ns/leases"

    def __init__(self):
        self.objects: dict[str, dict] = {}
        self.version = 0
        self.down = False

    def request(self, method, path, body=None, **_):
        if self.down:
            raise ConnectionError("the API server is away")
        if method == "POST":
            assert path == self.PATH
            return self._create(body)
        assert path.startswith(self.PATH + "/"), path
        name = path.removeprefix(self.PATH + "/")
        if method == "GET":
            if name not in self.objects:
                raise NotFound(404, "Not Found")
            return copy.deepcopy(self.objects[name])
        assert method == "PUT", method
        return self._replace(name, body)

    def _store(self, name, body):
        self.version += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.objects[name] = stored
        return copy.deepcopy(stored)

    def _create(self, body):
        name = body["metadata"]["name"]
        if name in self.objects:
            raise Conflict(409, "Conflict")
        return self._store(name, body)

    def _replace(self, name, body):
        current = self.objects.get(name)
        if current is None:
            raise NotFound(404, "Not Found")
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise Conflict(409, "Conflict")
        return self._store(name, body)

    def holder(self, name="pgjit"):
        return self.objects[name]["spec"]["holderIdentity"]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def world():
    leases, clock = FakeLeases(), Clock()
    lost: list[tuple[str, str]] = []

    def elector(name: str, **config) -> LeaderElector:
        settings = dict(namespace="ns", name="pgjit", identity=name, lease_duration=15,
                        renew_deadline=10, retry_period=2, probe=False)
        settings.update(config)
        elector = LeaderElector(None, ElectionConfig(**settings), clock=clock,
                                on_lost=lambda message: lost.append((name, message)))
        elector._rest = leases
        return elector

    return SimpleNamespace(leases=leases, clock=clock, lost=lost, elector=elector)


def test_the_first_process_creates_the_lease_and_leads(world):
    first = world.elector("a", endpoint="http://127.0.0.1:1/leader",
                          annotations={SHARD_ANNOTATION: "shard=a"})
    assert first.try_acquire()
    lease = world.leases.objects["pgjit"]
    assert lease["spec"]["holderIdentity"] == "a" and lease["spec"]["leaseDurationSeconds"] == 15
    assert lease["metadata"]["labels"][LEASE_LABEL] == "true"
    assert lease["metadata"]["annotations"] == {ENDPOINT_ANNOTATION: "http://127.0.0.1:1/leader",
                                                SHARD_ANNOTATION: "shard=a"}
    assert first.leader and first.last_renewed == world.clock.now


def test_a_standby_waits_while_the_leader_renews_and_takes_over_after_the_lease(world):
    leader, standby = world.elector("a"), world.elector("b")
    assert leader.try_acquire()
    for _ in range(20):  # 40 s of renewals every 2 s: the standby never gets it
        world.clock.now += 2
        leader.renew_once()
        assert not standby.try_acquire()
        assert standby.holder == "a"
    # The leader dies. The standby's clock starts when it last saw the Lease change.
    for _ in range(7):
        world.clock.now += 2
        assert not standby.try_acquire(), world.clock.now
    world.clock.now += 2  # 16 s since the last renewal it saw
    assert standby.try_acquire()
    spec = world.leases.objects["pgjit"]["spec"]
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1


def test_a_new_standby_trusts_its_own_clock_not_the_renew_time(world):
    """A standby started after the leader died still waits a full lease from its first look:
    renewTime comes from another node's clock."""
    leader = world.elector("a")
    assert leader.try_acquire()
    world.clock.now += 100  # the leader is long dead
    late = world.elector("b")
    assert not late.try_acquire()
    world.clock.now += 14
    assert not late.try_acquire()
    world.clock.now += 1.5
    assert late.try_acquire()


def test_a_leader_that_lost_the_lease_is_told_on_its_next_renewal(world):
    leader, standby = world.elector("a"), world.elector("b")
    assert leader.try_acquire()
    world.clock.now += 1
    assert not standby.try_acquire()
    world.clock.now += 16
    assert standby.try_acquire()
    with pytest.raises(LeaseLost, match="held by b"):
        leader.renew_once()


def test_an_unrenewed_leader_is_overdue_after_the_renew_deadline(world):
    leader = world.elector("a")
    assert leader.try_acquire()
    world.clock.now += 9.9
    assert not leader.overdue()
    leader._on_sigcont(0, None)
    assert world.lost == []
    world.clock.now += 0.2  # 10.1 s since the renewal began
    assert leader.overdue()
    leader._on_sigcont(0, None)  # resumed after a SIGSTOP longer than renewDeadline
    assert world.lost == [("a", "resumed after being stopped for longer than renewDeadline")]
    assert not leader.leader


def test_renew_deadline_is_counted_from_the_start_of_the_renewal(world):
    """A renewal that took long (a request sent, the process stopped, the answer read after)
    counts from when it was sent: the standby's lease may have started running then."""
    leader = world.elector("a")
    assert leader.try_acquire()
    world.clock.now += 2
    started = world.clock.now
    original = world.leases._replace

    def slow_replace(*args, **kwargs):
        answer = original(*args, **kwargs)
        world.clock.now += 30  # stopped while the answer was on its way
        return answer
    world.leases._replace = slow_replace
    assert not leader.renew_pass()  # renewed, but too late to act on: it gives up
    assert leader.last_renewed == started
    assert world.lost and "renewDeadline" in world.lost[0][1]


def test_the_renewal_loop_gives_up_at_the_deadline_when_the_api_server_is_away(world):
    leader = world.elector("a")
    assert leader.try_acquire()
    world.leases.down = True
    waits = []

    def wait(seconds):  # the loop's sleep: advance the clock instead
        waits.append(seconds)
        world.clock.now += max(seconds, 0.5)
        return False
    leader._stopping.wait = wait
    leader._renew_loop()
    assert world.lost and "renewDeadline" in world.lost[0][1]
    assert world.clock.now - 1000.0 <= 10 + 2.5  # gave up within a retry period of the deadline


def test_release_hands_over_at_once(world):
    leader, standby = world.elector("a"), world.elector("b")
    assert leader.try_acquire()
    world.clock.now += 1
    assert not standby.try_acquire()
    leader.release()
    assert world.leases.holder() == "" and not leader.leader
    world.clock.now += 0.1
    assert standby.try_acquire()
    assert world.leases.holder() == "b"


def test_a_stale_leader_does_not_release_what_may_be_anothers(world):
    leader = world.elector("a")
    assert leader.try_acquire()
    world.clock.now += 11
    leader.release()
    assert world.leases.holder() == "a"  # left alone: a standby may be taking it over


def test_two_standbys_racing_for_an_expired_lease_one_wins(world):
    leader, one, two = world.elector("a"), world.elector("b"), world.elector("c")
    assert leader.try_acquire()
    for standby in (one, two):
        assert not standby.try_acquire()
    world.clock.now += 16
    # Both read the same expired Lease; only the first write with its resourceVersion wins.
    lease = copy.deepcopy(world.leases.objects["pgjit"])
    assert one.try_acquire()
    stale_read = world.leases.request
    world.leases.request = lambda method, *args, **kwargs: (
        copy.deepcopy(lease) if method == "GET" else stale_read(method, *args, **kwargs))
    assert not two.try_acquire()
    assert world.leases.holder() == "b"


# -- the probe of a leader that stopped renewing -------------------------------------------------


class _Answering(http.server.BaseHTTPRequestHandler):
    identity = "a"

    def do_GET(self):
        body = json.dumps({"identity": self.identity}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def answering():
    servers = []

    def serve(identity: str) -> str:
        handler = type("Handler", (_Answering,), {"identity": identity})
        server = http.server.HTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/leader"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def _refusing_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/leader"


def _silent_url(stack) -> str:
    """A port that accepts connections and never answers: a stopped process's."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    stack.append(sock)
    return f"http://127.0.0.1:{sock.getsockname()[1]}/leader"


def _probing_pair(world, endpoint):
    leader = world.elector("a", endpoint=endpoint)
    standby = world.elector("b", probe=True)
    assert leader.try_acquire()
    assert not standby.try_acquire()
    return leader, standby


def test_a_standby_takes_over_early_when_the_leaders_port_refuses(world):
    _, standby = _probing_pair(world, _refusing_url())
    world.clock.now += 3.9  # under two retry periods without a renewal: no probe yet
    assert not standby.try_acquire()
    world.clock.now += 0.2
    assert standby.try_acquire()
    assert world.leases.holder() == "b"


def test_a_standby_takes_over_early_when_another_process_answers(world, answering):
    _, standby = _probing_pair(world, answering("a-restarted"))
    world.clock.now += 4.1
    assert standby.try_acquire()


def test_a_leader_that_answers_as_itself_is_waited_for(world, answering):
    _, standby = _probing_pair(world, answering("a"))
    world.clock.now += 14
    assert not standby.try_acquire()
    world.clock.now += 1.5
    assert standby.try_acquire()  # the lease ran out: a partitioned leader has exited by now


def test_a_leader_whose_port_does_not_answer_is_waited_for(world):
    sockets: list[socket.socket] = []
    try:
        _, standby = _probing_pair(world, _silent_url(sockets))
        world.clock.now += 10
        assert not standby.try_acquire()
    finally:
        for sock in sockets:
            sock.close()


def test_no_early_takeover_while_the_leader_renews(world):
    leader, standby = _probing_pair(world, _refusing_url())
    for _ in range(10):
        world.clock.now += 2
        leader.renew_once()
        assert not standby.try_acquire()


def test_identities_differ_between_two_processes_of_one_pod():
    one, two = new_identity("pgjit-0"), new_identity("pgjit-0")
    assert one != two and one.startswith("pgjit-0_") and two.startswith("pgjit-0_")


def test_a_renewal_after_failed_ones_reports_the_reconnection(world):
    """Watch streams resumed after the API server was away can miss events: the runner
    restarts them when the renewals, which notice the outage first, come back."""
    reconnected = []
    leader = world.elector("a")
    leader.on_reconnected = lambda: reconnected.append(world.clock.now)
    assert leader.try_acquire()
    world.clock.now += 2
    assert leader.renew_pass() and reconnected == []
    world.leases.down = True
    for _ in range(3):
        world.clock.now += 2
        assert leader.renew_pass()
    assert reconnected == []
    world.leases.down = False
    world.clock.now += 1
    assert leader.renew_pass()
    assert reconnected == [world.clock.now]
    world.clock.now += 2
    assert leader.renew_pass() and len(reconnected) == 1
