"""`make bench-soak`: 10,000 sessions opened and ended in waves for 20 minutes; does anything leak?

The local control plane + PostgreSQL 16 and the operator as a separate process. Every
``--period`` seconds a wave of ``--wave`` sessions is created at once by 16 client threads,
held until all are Active, and deleted; the next wave starts on the next period. Every few
seconds the bench samples the operator's RSS, the admin connections the operator holds
(``pg_stat_activity``), and the sessions opened and ended since the last sample. After each
wave, once the operator is quiet again, it records the RSS: the figure a leak would make grow.

Writes .cache/bench/soak.md, soak.json and a plot (RSS, admin connections and sessions/s over
time) to ``--plot`` (default docs/soak.png, which the README shows). Not part of `make test`: it
takes 20 minutes of the machine. A benchmark, not a test: it asserts nothing.

    .venv/bin/python tests/bench/bench_soak.py [--sessions 10000] [--wave 500] [--period 60]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_operator import (GROUP, NS, PLURAL, VERSION, Operator, PhaseWatch,  # noqa: E402
                            bench_namespace, create_bench_role, install_crds, rss_mb, session_body,
                            settle, write_report)
from pgjit.devstack.controlplane import ControlPlane  # noqa: E402
from pgjit.devstack.kube_binaries import find_repo_root  # noqa: E402
from pgjit.devstack.postgres import start_postgres  # noqa: E402
from pgjit.devstack.stack import prepare_demo_postgres  # noqa: E402

SAMPLE_SECONDS = 5.0


class Sampler:
    """RSS, admin connections and session counts every SAMPLE_SECONDS, in a thread."""

    def __init__(self, operator_pid: int, pg, watch: PhaseWatch) -> None:
        self.pid, self.pg, self.watch = operator_pid, pg, watch
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._began = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def admin_connections(self) -> int:
        with psycopg.connect(self.pg.superuser_conninfo(), autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s",
                               [self.pg.admin_user]).fetchone()
        return int(row[0]) if row else 0

    def _run(self) -> None:
        opened = ended = 0
        while not self._stop.wait(SAMPLE_SECONDS):
            now_opened, now_ended = len(self.watch.active), len(self.watch.gone)
            self.samples.append({
                "t": time.monotonic() - self._began, "rss_mb": rss_mb(self.pid),
                "admin_connections": self.admin_connections(),
                "opened_per_s": (now_opened - opened) / SAMPLE_SECONDS,
                "ended_per_s": (now_ended - ended) / SAMPLE_SECONDS})
            opened, ended = now_opened, now_ended

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def plot(samples: list[dict], waves: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    minutes = [s["t"] / 60 for s in samples]
    figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(9, 7.5), sharex=True)
    top.plot(minutes, [s["rss_mb"] for s in samples], color="tab:blue", label="RSS")
    top.scatter([w["t"] / 60 for w in waves], [w["rss_mb"] for w in waves], color="tab:red",
                s=12, zorder=3, label="after each wave, quiet")
    top.set_ylabel("operator RSS (MB)")
    top.set_ylim(bottom=0)
    top.legend(loc="lower right")
    middle.plot(minutes, [s["opened_per_s"] for s in samples], label="opened/s")
    middle.plot(minutes, [s["ended_per_s"] for s in samples], label="ended/s")
    middle.set_ylabel("sessions/s")
    middle.legend(loc="upper right")
    bottom.plot(minutes, [s["admin_connections"] for s in samples], color="tab:green")
    bottom.set_ylabel("admin connections")
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel("minutes")
    top.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--wave", type=int, default=500)
    parser.add_argument("--period", type=float, default=60.0,
                        help="seconds from one wave's start to the next one's")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--plot", default=None, help="the PNG (default: docs/soak.png)")
    args = parser.parse_args()
    root = find_repo_root()
    plot_path = Path(args.plot) if args.plot else root / "docs" / "soak.png"
    workdir = Path(tempfile.mkdtemp(prefix="pgjit-bench-soak-"))
    os.chmod(workdir, 0o755)
    load_before, started_at = os.getloadavg(), datetime.now(UTC)
    waves: list[dict] = []
    with ControlPlane() as cp, start_postgres("16", workdir / "pg16",
                                              settings={"max_connections": "200"}) as pg:
        prepare_demo_postgres(pg, dbname="app", table="items")
        install_crds(cp, root)
        api, core, custom = bench_namespace(cp, pg, args.clients)
        custom.create_namespaced_custom_object(GROUP, VERSION, NS, "databases", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Database",
            "metadata": {"name": "db", "labels": {"env": "bench"}},
            "spec": {"host": pg.host, "port": pg.port, "admin": {
                "username": pg.admin_user,
                "passwordSecretRef": {"name": "admin", "key": "password"}}}})
        create_bench_role(custom, {"matchLabels": {"env": "bench"}}, ["app"])
        operator = Operator(cp, workdir, secret_access=True, name="soak")
        watch = PhaseWatch(api)
        sampler = Sampler(operator.pid, pg, watch)
        try:
            sampler.start()
            began = time.monotonic()
            count = 0
            with ThreadPoolExecutor(args.clients) as pool:
                while count < args.sessions:
                    wave_start = time.monotonic()
                    names = [f"w{len(waves):03d}-{i:04d}" for i in range(
                        min(args.wave, args.sessions - count))]
                    list(pool.map(lambda name: custom.create_namespaced_custom_object(
                        GROUP, VERSION, NS, PLURAL, session_body(name, name)), names))
                    watch.wait(names, watch.active, 1200)
                    opened = time.monotonic() - wave_start
                    list(pool.map(lambda name: custom.delete_namespaced_custom_object(
                        GROUP, VERSION, NS, PLURAL, name), names))
                    watch.wait(names, watch.gone, 1200)
                    count += len(names)
                    settle(operator.pid)
                    waves.append({"wave": len(waves) + 1, "t": time.monotonic() - began,
                                  "sessions": len(names), "open_s": opened,
                                  "total_s": time.monotonic() - wave_start,
                                  "rss_mb": rss_mb(operator.pid),
                                  "admin_connections": sampler.admin_connections()})
                    print(json.dumps(waves[-1]), flush=True)
                    time.sleep(max(0.0, wave_start + args.period - time.monotonic()))
        finally:
            sampler.stop()
            watch.stop()
            operator.stop()
    second, last = waves[min(1, len(waves) - 1)], waves[-1]
    growth = (last["rss_mb"] - second["rss_mb"]) / second["rss_mb"] * 100
    minutes = (waves[-1]["t"]) / 60
    title = (f"{args.sessions} sessions in {len(waves)} waves of {args.wave}, "
             f"{minutes:.0f} min ({started_at:%Y-%m-%d %H:%M} UTC, shared 2-core machine)")
    plot(sampler.samples, waves, plot_path, title)
    connections = [s["admin_connections"] for s in sampler.samples]
    lines = [f"Run {started_at:%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs, load average "
             f"{load_before[0]:.1f} at the start and {os.getloadavg()[0]:.1f} at the end.", "",
             f"{args.sessions} sessions in {len(waves)} waves of {args.wave} (one every "
             f"{args.period:g} s) over {minutes:.1f} minutes; plot: {plot_path.name}.", "",
             f"- operator RSS after each wave, quiet: wave 2 {second['rss_mb']:.0f} MB, last "
             f"wave {last['rss_mb']:.0f} MB ({growth:+.1f} %); all waves: "
             + ", ".join(f"{w['rss_mb']:.0f}" for w in waves),
             f"- admin connections sampled: min {min(connections)}, max {max(connections)}; "
             "after each wave: " + ", ".join(str(w["admin_connections"]) for w in waves),
             "- seconds to open each wave: " + ", ".join(f"{w['open_s']:.0f}" for w in waves)]
    text = "\n".join(lines)
    print("\n" + text)
    write_report(root, "soak", text, {"waves": waves, "samples": sampler.samples})
    return 0


if __name__ == "__main__":
    sys.exit(main())
