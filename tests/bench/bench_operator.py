"""`make bench`: the operator end to end on the local control plane + PostgreSQL 16.

Reports create→Active latency (p50/p95) for single sessions, the time for bursts of N sessions
to become Active and to be fully ended (sessions/s both ways), the operator's RSS with N active
sessions, and how total time grows with N. A benchmark, not a test: it prints figures and writes
them to .cache/bench/operator.md; it asserts nothing about speed.

    .venv/bin/python tests/bench/bench_operator.py [--sizes 100,500,2000] [--singles 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kubernetes

from pgjit.devstack.controlplane import ControlPlane
from pgjit.devstack.kube_binaries import find_repo_root
from pgjit.devstack.postgres import start_postgres
from pgjit.devstack.stack import prepare_demo_postgres

GROUP, VERSION, PLURAL = "pgjit.dev", "v1alpha1", "databasesessions"
NS = "bench"


class PhaseWatch:
    """Records when each session is first seen Active and when it disappears, from one watch."""

    def __init__(self, api: kubernetes.client.ApiClient):
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.active: dict[str, float] = {}
        self.gone: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Each watch request ends after timeout_seconds; the next one resumes from the last
        # resourceVersion seen, so no DELETED event falls between two requests. If that version
        # is too old (410), a list tells which sessions went away meanwhile.
        resource_version = None
        while not self._stop:
            try:
                if resource_version is None:
                    resource_version = self._resync()
                for event in kubernetes.watch.Watch().stream(
                        self.custom.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL,
                        timeout_seconds=60, resource_version=resource_version):
                    if event["type"] == "ERROR":
                        resource_version = None
                        break
                    self._record(event["type"], event["object"], time.monotonic())
                    resource_version = event["object"]["metadata"]["resourceVersion"]
                    if self._stop:
                        break
            except Exception:  # a dropped watch is re-opened; the bench goes on
                resource_version = None
                time.sleep(0.2)

    def _resync(self) -> str:
        listing = self.custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
        now, present = time.monotonic(), set()
        for obj in listing["items"]:
            present.add(obj["metadata"]["name"])
            self._record("MODIFIED", obj, now)
        with self._cond:
            for name in set(self.active) - present:
                self.gone.setdefault(name, now)
            self._cond.notify_all()
        return listing["metadata"]["resourceVersion"]

    def _record(self, kind: str, obj: dict, now: float) -> None:
        name = obj["metadata"]["name"]
        with self._cond:
            if kind == "DELETED":
                self.gone.setdefault(name, now)
            else:
                phase = (obj.get("status") or {}).get("phase")
                if phase == "Active":
                    self.active.setdefault(name, now)
                elif phase == "Failed":
                    self.failed[name] = str(obj["status"].get("conditions"))
            self._cond.notify_all()

    def wait(self, names, table: dict, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not all(n in table or n in self.failed for n in names):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = [n for n in names if n not in table]
                    raise TimeoutError(f"{len(missing)} sessions not there in {timeout}s")
                self._cond.wait(left)
        if self.failed:
            raise RuntimeError(f"sessions failed: {list(self.failed.items())[:3]}")

    def stop(self) -> None:
        self._stop = True


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def session_body(name: str, user: str) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatabaseSession",
            "metadata": {"name": name},
            "spec": {"user": user, "groups": ["bench"], "databaseRef": {"name": "db"},
                     "databaseName": "app", "duration": "1h"}}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,500,2000")
    parser.add_argument("--singles", type=int, default=30)
    parser.add_argument("--scram-iterations", type=int, default=4096)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--no-secret-access", action="store_true",
                        help="run the operator with PGJIT_SECRET_ACCESS=false (no per-session "
                        "Role and RoleBinding), to measure what credential access costs")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    root = find_repo_root()
    workdir = Path(tempfile.mkdtemp(prefix="pgjit-bench-"))
    os.chmod(workdir, 0o755)
    lines: list[str] = []
    with ControlPlane() as cp, start_postgres("16", workdir / "pg16",
                                              settings={"max_connections": "200"}) as pg:
        prepare_demo_postgres(pg, dbname="app", table="items")
        kubectl = [str(cp.binaries.kubectl), f"--kubeconfig={cp.kubeconfig()}"]
        subprocess.run([*kubectl, "apply", "--server-side", "-f", str(root / "crds")], check=True,
                       capture_output=True)
        subprocess.run([*kubectl, "wait", "--for=condition=Established", "--timeout=60s",
                        "crd/databases.pgjit.dev", "crd/roles.pgjit.dev",
                        "crd/databasesessions.pgjit.dev"], check=True, capture_output=True)
        api = kubernetes.config.new_client_from_config(config_file=str(cp.kubeconfig()))
        api.configuration.connection_pool_maxsize = args.clients * 2
        core = kubernetes.client.CoreV1Api(api)
        custom = kubernetes.client.CustomObjectsApi(api)
        core.create_namespace({"metadata": {"name": NS}})
        core.create_namespaced_secret(NS, {"metadata": {"name": "admin"},
                                           "stringData": {"password": pg.admin_password}})
        custom.create_namespaced_custom_object(GROUP, VERSION, NS, "databases", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Database",
            "metadata": {"name": "db", "labels": {"env": "bench"}},
            "spec": {"host": pg.host, "port": pg.port, "admin": {
                "username": pg.admin_user, "passwordSecretRef": {"name": "admin", "key": "password"}},
                "credentials": {"scramIterations": args.scram_iterations}}})
        custom.create_namespaced_custom_object(GROUP, VERSION, NS, "roles", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Role", "metadata": {"name": "bench"},
            "spec": {"subjects": [{"kind": "Group", "name": "bench"}],
                     "userProvisioning": "best_effort_drop",
                     "allow": {"databaseSelector": {}, "databaseNames": ["*"],
                               "databaseRoles": ["reader"]}}})
        log = open(workdir / "operator.log", "w")
        operator = subprocess.Popen([sys.executable, "-m", "pgjit.cli", "run", "-n", NS],
                                    env=dict(os.environ, KUBECONFIG=str(cp.kubeconfig()),
                                             PGJIT_SECRET_ACCESS=str(not args.no_secret_access)),
                                    stdout=log, stderr=subprocess.STDOUT)
        watch = PhaseWatch(api)
        try:
            # Warm-up: the Database must be connected before the clock starts.
            custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL,
                                                   session_body("warmup", "warmup"))
            watch.wait(["warmup"], watch.active, 60)
            custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "warmup")
            watch.wait(["warmup"], watch.gone, 60)

            latencies = []
            for i in range(args.singles):
                name = f"single-{i}"
                started = time.monotonic()
                custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL,
                                                       session_body(name, f"single{i}"))
                watch.wait([name], watch.active, 30)
                latencies.append(watch.active[name] - started)
            for i in range(args.singles):
                custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, f"single-{i}")
            watch.wait([f"single-{i}" for i in range(args.singles)], watch.gone, 120)
            q = statistics.quantiles(latencies, n=20)
            lines.append(f"Single sessions (n={args.singles}): create→Active p50 "
                         f"{statistics.median(latencies) * 1000:.0f} ms, p95 {q[18] * 1000:.0f} ms")
            lines.append("")
            lines.append("| sessions | to Active (s) | Active/s | RSS with all Active (MB) | "
                         "to ended and deleted (s) | ended/s |")
            lines.append("|---|---|---|---|---|---|")
            with ThreadPoolExecutor(args.clients) as pool:
                for size in sizes:
                    names = [f"b{size}-{i}" for i in range(size)]
                    started = time.monotonic()
                    list(pool.map(lambda n: custom.create_namespaced_custom_object(
                        GROUP, VERSION, NS, PLURAL, session_body(n, f"u-{n}")), names))
                    watch.wait(names, watch.active, 600)
                    up = max(watch.active[n] for n in names) - started
                    rss = rss_mb(operator.pid)
                    started = time.monotonic()
                    list(pool.map(lambda n: custom.delete_namespaced_custom_object(
                        GROUP, VERSION, NS, PLURAL, n), names))
                    watch.wait(names, watch.gone, 600)
                    down = max(watch.gone[n] for n in names) - started
                    lines.append(f"| {size} | {up:.1f} | {size / up:.0f} | {rss:.0f} | "
                                 f"{down:.1f} | {size / down:.0f} |")
                    print(lines[-1], flush=True)
        finally:
            watch.stop()
            operator.terminate()
            try:
                operator.wait(20)
            except subprocess.TimeoutExpired:
                operator.kill()
    report = "\n".join(lines)
    out = root / ".cache" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / ("operator-no-secret-access.md" if args.no_secret_access
            else "operator.md")).write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
