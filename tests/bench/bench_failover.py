"""`make bench-failover`: how long sessions wait when the leading operator dies.

Two operator pods (leader election, controller-runtime's default timings: lease 15 s, renew
deadline 10 s, retry period 2 s) on the local control plane + PostgreSQL 16, with ``--held``
Active sessions for the new leader to pick up. Then, ``--kills`` times: SIGKILL the leader (no
release, no cleanup; the pod is restarted, as the kubelet would, and stands by), create a session
at once, and measure

- **takeover**: from the kill until the standby's readiness says it leads;
- **failover**: from the kill until that session is Active, opened by the new leader (it was
  created after the kill, so nothing the dead leader had in flight can have opened it).

The same for ``--no-probe-kills`` kills with PGJIT_LEADER_ELECTION_PROBE=false (pure
controller-runtime semantics: the standby waits the whole lease), and for ``--handovers`` clean
stops (SIGTERM: the leader releases the Lease on its way out, as in a rollout or a drain).

A benchmark, not a test: it prints the figures and writes them to .cache/bench/failover.md
(and failover.json); it asserts nothing.

    .venv/bin/python tests/bench/bench_failover.py [--kills 10] [--no-probe-kills 3]
        [--handovers 3] [--held 50]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import kubernetes

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "faults"), str(HERE.parent / "cluster")]

from bench_operator import install_crds, write_report  # noqa: E402

from faultkit import DEFAULT_TIMINGS, RELEASE_NS, OperatorPod, Pods  # noqa: E402
from operatorkit import wait_for  # noqa: E402
from pgjit.devstack.controlplane import ControlPlane  # noqa: E402
from pgjit.devstack.kube_binaries import find_repo_root  # noqa: E402
from pgjit.devstack.postgres import start_postgres  # noqa: E402
from pgjit.devstack.stack import prepare_demo_postgres  # noqa: E402

GROUP, VERSION = "pgjit.dev", "v1alpha1"
NS = "bench"


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q * 100) - 1]


class Bench:
    def __init__(self, cp: ControlPlane, pg, workdir: Path) -> None:
        self.cp, self.pg, self.workdir = cp, pg, workdir
        self.api = kubernetes.config.new_client_from_config(config_file=str(cp.kubeconfig()),
                                                            persist_config=False)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.count = 0

    def setup(self) -> None:
        core = kubernetes.client.CoreV1Api(self.api)
        for namespace in (NS, RELEASE_NS):
            core.create_namespace({"metadata": {"name": namespace}})
        core.create_namespaced_secret(NS, {"metadata": {"name": "admin"},
                                           "stringData": {"password": self.pg.admin_password}})
        self.custom.create_namespaced_custom_object(GROUP, VERSION, NS, "databases", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Database",
            "metadata": {"name": "db", "labels": {"env": "bench"}},
            "spec": {"host": self.pg.host, "port": self.pg.port, "databases": ["app"],
                     "admin": {"username": self.pg.admin_user,
                               "passwordSecretRef": {"name": "admin", "key": "password"}},
                     "credentials": {"scramIterations": 1}}})
        self.custom.create_namespaced_custom_object(GROUP, VERSION, NS, "roles", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Role", "metadata": {"name": "bench"},
            "spec": {"subjects": [{"kind": "Group", "name": "bench"}],
                     "userProvisioning": "best_effort_drop",
                     "allow": {"databaseSelector": {"matchLabels": {"env": "bench"}},
                               "databaseNames": ["app"], "databaseRoles": ["reader"]}}})

    def hold(self, held: int) -> None:
        names = [self.create() for _ in range(held)]
        for name in names:
            self.wait_active(name, 120)

    def create(self) -> str:
        self.count += 1
        name = f"s{self.count:04d}"
        self.custom.create_namespaced_custom_object(GROUP, VERSION, NS, "databasesessions", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "DatabaseSession",
            "metadata": {"name": name},
            "spec": {"user": f"u{self.count:04d}", "groups": ["bench"],
                     "databaseRef": {"name": "db"}, "databaseName": "app"}})
        return name

    def phase(self, name: str) -> str | None:
        body = self.custom.get_namespaced_custom_object(GROUP, VERSION, NS, "databasesessions",
                                                        name)
        return (body.get("status") or {}).get("phase")

    def wait_active(self, name: str, timeout: float) -> None:
        wait_for(f"{name} Active", lambda: self.phase(name) == "Active", timeout, interval=0.05)

    def pods(self, probe: bool) -> Pods:
        env = {} if probe else {"PGJIT_LEADER_ELECTION_PROBE": "false"}
        lease = "pgjit" if probe else "pgjit-no-probe"
        pods = Pods([OperatorPod(f"{lease}-{i}", self.cp.kubeconfig(), self.workdir,
                                 timings=DEFAULT_TIMINGS, lease=lease, extra_env=env)
                     for i in range(2)])
        for pod in pods.pods:
            pod.start()
        pods.wait_leader(120)
        return pods

    def failover(self, pods: Pods, *, clean: bool) -> dict[str, float]:
        """One leader stopped (SIGKILL, or SIGTERM when ``clean``); the standby's times."""
        leader = pods.wait_leader(120)
        standby = next(pod for pod in pods.pods if pod is not leader)
        # A standby observes the Lease every retry period; let it see a renewal first, as it
        # would have in a long-running pair.
        time.sleep(DEFAULT_TIMINGS["retry"] * 1.5)
        began = time.monotonic()
        if clean:
            leader.stop()
        else:
            leader.signal(signal.SIGKILL)
        name = self.create()
        created = time.monotonic() - began
        takeover = None
        while True:
            if takeover is None and standby.role() == "leader":
                takeover = time.monotonic() - began
            if self.phase(name) == "Active":
                active = time.monotonic() - began
                break
            if time.monotonic() - began > 120:
                raise AssertionError(f"no failover in 120 s\n{pods.log_tail()}")
            time.sleep(0.05)
        if takeover is None:
            takeover = active
        if clean:  # the kubelet would start a new pod for the stopped one
            replacement = OperatorPod(f"{leader.name}r", self.cp.kubeconfig(), self.workdir,
                                      timings=DEFAULT_TIMINGS, lease=leader.env[
                                          "PGJIT_LEADER_ELECTION_LEASE"],
                                      extra_env={k: v for k, v in leader.env.items()
                                                 if k == "PGJIT_LEADER_ELECTION_PROBE"})
            replacement.start()
            pods.pods[pods.pods.index(leader)] = replacement
        return {"takeover": takeover, "failover": active, "create": created}


def summary(title: str, runs: list[dict[str, float]]) -> list[str]:
    if not runs:
        return []
    lines = [f"**{title}** ({len(runs)} runs)", "",
             "| seconds | p50 | p95 | max | all |", "|---|---:|---:|---:|---|"]
    for key, label in (("takeover", "kill → the standby leads"),
                       ("failover", "kill → first session Active (opened by the new leader)")):
        values = [run[key] for run in runs]
        lines.append(f"| {label} | {quantile(values, 0.5):.2f} | {quantile(values, 0.95):.2f} | "
                     f"{max(values):.2f} | {', '.join(f'{v:.1f}' for v in values)} |")
    return lines + [""]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--no-probe-kills", type=int, default=3)
    parser.add_argument("--handovers", type=int, default=3)
    parser.add_argument("--held", type=int, default=50,
                        help="Active sessions the new leader picks up on each failover")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pgjit-bench-failover-"))
    os.chmod(workdir, 0o755)
    load_before = os.getloadavg()
    started_at = datetime.now(UTC)
    results: dict[str, list[dict[str, float]]] = {"kill": [], "kill-no-probe": [],
                                                  "handover": []}
    root = find_repo_root()
    with ControlPlane() as cp, start_postgres("16", workdir / "pg16") as pg:
        prepare_demo_postgres(pg, dbname="app", table="items")
        install_crds(cp, root)
        bench = Bench(cp, pg, workdir)
        bench.setup()
        pods = bench.pods(probe=True)
        try:
            bench.hold(args.held)
            for kind, count, clean in (("kill", args.kills, False),
                                       ("handover", args.handovers, True)):
                for index in range(count):
                    run = bench.failover(pods, clean=clean)
                    results[kind].append(run)
                    print(f"{kind} {index + 1}/{count}: takeover {run['takeover']:.2f}s, "
                          f"first session Active {run['failover']:.2f}s", flush=True)
        finally:
            pods.stop()
        if args.no_probe_kills:
            pods = bench.pods(probe=False)
            try:
                for index in range(args.no_probe_kills):
                    run = bench.failover(pods, clean=False)
                    results["kill-no-probe"].append(run)
                    print(f"kill without probe {index + 1}/{args.no_probe_kills}: takeover "
                          f"{run['takeover']:.2f}s, first session Active {run['failover']:.2f}s",
                          flush=True)
            finally:
                pods.stop()
    lines = [f"Run {started_at:%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs, load average "
             f"{load_before[0]:.1f} at the start and {os.getloadavg()[0]:.1f} at the end; "
             f"{args.held} Active sessions held; lease {DEFAULT_TIMINGS['lease']:g}s, renew "
             f"deadline {DEFAULT_TIMINGS['renew']:g}s, retry period "
             f"{DEFAULT_TIMINGS['retry']:g}s.", ""]
    lines += summary("Leader SIGKILLed, standby with the probe (the default)", results["kill"])
    lines += summary("Leader SIGKILLed, probe off (controller-runtime semantics)",
                     results["kill-no-probe"])
    lines += summary("Leader stopped cleanly (SIGTERM: the Lease is released)",
                     results["handover"])
    text = "\n".join(lines)
    print("\n" + text)
    write_report(root, "failover", text, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
