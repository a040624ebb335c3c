"""`make bench-shards`: is throughput additive when two sharded instances split the Databases?

The local control plane + PostgreSQL 16 (4096 SCRAM iterations, as `make bench`), two Databases
on that server (``db-a`` labelled ``shard=a``, ``db-b`` labelled ``shard=b``), and a burst of N
sessions opened all at once by 16 client threads, held until the operators are quiet, ended all
at once. Twice:

- **one instance** (no shard selector) serving all N, N/2 on each Database;
- **two sharded instances** (``shard=a`` and ``shard=b``, each with its own leader-election
  Lease), N/2 each, at the same time.

Per run: sessions opened and ended per second (first create to last Active, first delete to last
gone), each operator's CPU per session it served (utime + stime of all its threads), and
kube-apiserver + etcd CPU per session. Sessions carry the ``pgjit.dev/database`` label the
chart's admission policy would set. A benchmark, not a test: it writes .cache/bench/shards.md.

    .venv/bin/python tests/bench/bench_shards.py [--sessions 400] [--clients 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_operator import (GROUP, NS, PLURAL, VERSION, PhaseWatch,  # noqa: E402
                            bench_namespace, cpu_seconds, create_bench_role, install_crds, settle,
                            write_report)
from pgjit.devstack.controlplane import ControlPlane  # noqa: E402
from pgjit.devstack.kube_binaries import find_repo_root  # noqa: E402
from pgjit.devstack.postgres import start_postgres  # noqa: E402
from pgjit.devstack.stack import prepare_demo_postgres  # noqa: E402

DATABASES = {"db-a": "a", "db-b": "b"}


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs, from /proc/stat: how saturated the machine was."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


class Operator:
    def __init__(self, cp: ControlPlane, workdir: Path, name: str, env: dict[str, str]):
        self.name = name
        self._log = open(workdir / f"{name}.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pgjit.cli", "run", "-n", NS],
            env=dict(os.environ, KUBECONFIG=str(cp.kubeconfig()), PGJIT_NAMESPACE=NS,
                     PGJIT_LEADER_ELECTION_LEASE=name, POD_NAME=name, **env),
            stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.process.pid

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self._log.close()


def session(name: str, database: str) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatabaseSession",
            "metadata": {"name": name, "labels": {"pgjit.dev/database": f"{NS}.{database}"}},
            "spec": {"user": name, "groups": ["bench"], "databaseRef": {"name": database},
                     "databaseName": "app", "duration": "1h"}}


def run(cp, custom, watch, workdir: Path, *, sharded: bool, count: int, clients: int,
        tag: str) -> dict:
    if sharded:
        operators = [Operator(cp, workdir, f"{tag}-{shard}",
                              {"PGJIT_SHARD_DATABASE_SELECTOR": f"shard={shard}"})
                     for shard in DATABASES.values()]
    else:
        operators = [Operator(cp, workdir, f"{tag}-all", {})]
    try:
        # Warm up: each Database connected, every code path imported, before measuring.
        warm = [f"{tag}-warm-{db}" for db in DATABASES]
        for name, db in zip(warm, DATABASES):
            custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, session(name, db))
        watch.wait(warm, watch.active, 300)
        for name in warm:
            custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
        watch.wait(warm, watch.gone, 300)
        for operator in operators:
            settle(operator.pid)
        names = [(f"{tag}-{i:05d}", list(DATABASES)[i % 2]) for i in range(count)]
        pids = cp.pids()
        control = lambda: sum(cpu_seconds(pid) for pid in pids.values())  # noqa: E731
        before = [cpu_seconds(op.pid) for op in operators], control()
        with ThreadPoolExecutor(clients) as pool:
            began, machine = time.monotonic(), machine_busy()
            list(pool.map(lambda nd: custom.create_namespaced_custom_object(
                GROUP, VERSION, NS, PLURAL, session(*nd)), names))
            watch.wait([n for n, _ in names], watch.active, 1200)
            opened = max(watch.active[n] for n, _ in names) - began
            busy = machine_busy()
            busy_share = (busy[0] - machine[0]) / max(1, busy[1] - machine[1])
            for operator in operators:
                settle(operator.pid)
            began = time.monotonic()
            list(pool.map(lambda nd: custom.delete_namespaced_custom_object(
                GROUP, VERSION, NS, PLURAL, nd[0]), names))
            watch.wait([n for n, _ in names], watch.gone, 1200)
            ended = max(watch.gone[n] for n, _ in names) - began
            for operator in operators:
                settle(operator.pid)
        after = [cpu_seconds(op.pid) for op in operators], control()
        served = count / len(operators)
        return {"sharded": sharded, "sessions": count, "opened_per_s": count / opened,
                "ended_per_s": count / ended, "busy_while_opening": busy_share,
                "operator_ms": {op.name: (a - b) * 1000 / served
                                for op, b, a in zip(operators, before[0], after[0])},
                "control_plane_ms": (after[1] - before[1]) * 1000 / count}
    finally:
        for operator in operators:
            operator.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=400)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pgjit-bench-shards-"))
    os.chmod(workdir, 0o755)
    load_before, started_at = os.getloadavg(), datetime.now(UTC)
    root = find_repo_root()
    results = []
    with ControlPlane() as cp, start_postgres("16", workdir / "pg16",
                                              settings={"max_connections": "200"}) as pg:
        prepare_demo_postgres(pg, dbname="app", table="items")
        install_crds(cp, root)
        api, core, custom = bench_namespace(cp, pg, args.clients)
        for name, shard in DATABASES.items():
            custom.create_namespaced_custom_object(GROUP, VERSION, NS, "databases", {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "Database",
                "metadata": {"name": name, "labels": {"env": "bench", "shard": shard}},
                "spec": {"host": pg.host, "port": pg.port, "managedRole": f"pgjit-{name}",
                         "admin": {"username": pg.admin_user,
                                   "passwordSecretRef": {"name": "admin", "key": "password"}}}})
        create_bench_role(custom, {"matchLabels": {"env": "bench"}}, ["app"])
        watch = PhaseWatch(api)
        try:
            for sharded, tag in ((False, "one"), (True, "two")):
                result = run(cp, custom, watch, workdir, sharded=sharded, count=args.sessions,
                             clients=args.clients, tag=tag)
                results.append(result)
                print(json.dumps(result), flush=True)
        finally:
            watch.stop()
    lines = [f"Run {started_at:%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs, load average "
             f"{load_before[0]:.1f} at the start and {os.getloadavg()[0]:.1f} at the end; "
             f"{args.sessions} sessions per run over two Databases on one PostgreSQL 16, "
             "4096 SCRAM iterations.", "",
             "| instances | opened/s | ended/s | operator CPU per session it served, open + end "
             "(ms) | kube-apiserver + etcd CPU per session (ms) | both cores busy while opening |",
             "|---|---:|---:|---|---:|---:|"]
    for result in results:
        cpu = ", ".join(f"{name}: {ms:.1f}" for name, ms in result["operator_ms"].items())
        lines.append(f"| {'two shards' if result['sharded'] else 'one'} | "
                     f"{result['opened_per_s']:.0f} | {result['ended_per_s']:.0f} | {cpu} | "
                     f"{result['control_plane_ms']:.1f} | {result['busy_while_opening']:.0%} |")
    text = "\n".join(lines)
    print("\n" + text)
    write_report(root, "shards", text, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
