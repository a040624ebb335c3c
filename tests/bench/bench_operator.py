"""`make bench`: the operator end to end on the local control plane + PostgreSQL 16.

Reports create→Active latency (p50/p95) for single sessions, then per burst of N sessions
(opened all at once, held until quiet, ended all at once):

- wall-clock rates both ways, next to the API server's floor measured in the same run (bare
  Secrets created and deleted by the same client and thread pool) and the ratio to it;
- CPU per session, opening and ending separately, of the operator (/proc/<pid>/stat, all its
  threads) and of kube-apiserver + etcd;
- API requests per session by verb and resource (the API server's apiserver_request_total,
  scraped before and after each phase, less the bench's own requests);
- the operator's RSS, and the bytes of each object a session leaves at rest.

With --profile, also a py-spy profile of the operator over one burst and a tracemalloc diff of a
second operator process between 0 and N live sessions (PGJIT_TRACEMALLOC_FILE + SIGUSR2).

A benchmark, not a test: it prints figures and writes them to .cache/bench/operator.md
(operator-no-secret-access.md, operator-profile.md); it asserts nothing about speed.

    .venv/bin/python tests/bench/bench_operator.py [--sizes 100,500] [--singles 30]
        [--no-secret-access] [--profile [--profile-size 500]]

`--sizes 100,500,10000` adds the 10,000-session burst (about 10 minutes more on two cores).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import kopf
import kubernetes

from pgjit.devstack.controlplane import ControlPlane
from pgjit.devstack.kube_binaries import find_repo_root
from pgjit.devstack.postgres import start_postgres
from pgjit.devstack.stack import prepare_demo_postgres

GROUP, VERSION, PLURAL = "pgjit.dev", "v1alpha1", "databasesessions"
NS = "bench"
SESSIONS = "pgjit/databasesessions"
GROUP_SHORT = {"": "core", "pgjit.dev": "pgjit", "rbac.authorization.k8s.io": "rbac",
               "coordination.k8s.io": "coordination", "events.k8s.io": "events.k8s.io"}
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"}


class PhaseWatch:
    """Records when each session is first seen Active and when it disappears, from one watch."""

    def __init__(self, api: kubernetes.client.ApiClient):
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.active: dict[str, float] = {}
        self.gone: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self._cond = threading.Condition()
        self._stop = False
        #: The watch's own requests, keyed like request_counts(): LISTs when sent, WATCHes when
        #: they end (the API server counts a watch when it closes).
        self.requests: Counter = Counter()
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
                self.requests["WATCH", SESSIONS] += 1
            except Exception:  # a dropped watch is re-opened; the bench goes on
                self.requests["WATCH", SESSIONS] += 1
                resource_version = None
                time.sleep(0.2)

    def _resync(self) -> str:
        self.requests["LIST", SESSIONS] += 1
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


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (the process line sums all its threads)."""
    return cpu_seconds_of(Path(f"/proc/{pid}/stat"))


def cpu_seconds_of(stat: Path) -> float:
    # The command name in field 2 may hold spaces and parentheses: split after the last ")".
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def thread_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of the main thread (the operator's event loop) and of all other threads."""
    main = others = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            seconds = cpu_seconds_of(task / "stat")
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        if task.name == str(pid):
            main = seconds
        else:
            others += seconds
    return main, others


class Api:
    """Raw HTTPS to the API server as admin: /metrics, and objects as the bytes it serves."""

    def __init__(self, cp: ControlPlane):
        self.url = cp.url
        self.token = cp.token("admin")
        self.context = ssl.create_default_context(cafile=cp.ca_file)

    def get(self, path: str) -> bytes:
        request = urllib.request.Request(self.url + path,
                                         headers={"Authorization": f"Bearer {self.token}",
                                                  "Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=30, context=self.context) as response:
            return response.read()

    def request_counts(self) -> tuple[Counter, Counter]:
        """apiserver_request_total summed over codes, by (verb, group/resource[/subresource]),
        and the non-2xx ones by (verb, resource, code). Non-resource paths (/metrics) are left
        out: only the bench reads them."""
        counts, failures = Counter(), Counter()
        for line in self.get("/metrics").decode().splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels_text, value = line[len("apiserver_request_total{"):].rsplit("} ", 1)
            labels = dict(re.findall(r'(\w+)="([^"]*)"', labels_text))
            if not labels.get("resource"):
                continue
            resource = f"{GROUP_SHORT.get(labels['group'], labels['group'])}/{labels['resource']}"
            if labels.get("subresource"):
                resource += "/" + labels["subresource"]
            counts[labels["verb"], resource] += float(value)
            if not labels["code"].startswith("2"):
                failures[labels["verb"], resource, labels["code"]] += float(value)
        return counts, failures


class Meter:
    """CPU of the operator, kube-apiserver and etcd, and the API server's request counters,
    sampled at the start and end of a phase; ``own`` are the bench's requests to subtract."""

    def __init__(self, api: Api, pids: dict[str, int]):
        self.api, self.pids = api, pids

    def sample(self) -> dict:
        counts, failures = self.api.request_counts()
        return {"cpu": {name: cpu_seconds(pid) for name, pid in self.pids.items()},
                "requests": counts, "failures": failures, "at": time.monotonic()}

    @staticmethod
    def delta(before: dict, after: dict, own: Counter) -> dict:
        requests = Counter(after["requests"])
        requests.subtract(before["requests"])
        requests.subtract(own)
        failures = Counter(after["failures"])
        failures.subtract(before["failures"])
        return {"cpu": {name: after["cpu"][name] - before["cpu"][name] for name in after["cpu"]},
                "requests": {key: n for key, n in requests.items() if round(n)},
                "failures": {key: n for key, n in failures.items() if n},
                "seconds": after["at"] - before["at"]}


def settle(pid: int, quiet_cpu: float = 0.03, window: float = 1.0, limit: float = 20.0) -> None:
    """Wait until the operator has (nearly) stopped working: Active is not the last write of
    an opening (Kopf still patches its progress away), nor is a watch DELETED the last work of
    an end. Quiet means under ``quiet_cpu`` seconds of CPU in ``window``; the lease loop's tick
    and the periodic health and revalidation runs keep it from being zero."""
    deadline = time.monotonic() + limit
    previous = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(window)
        current = cpu_seconds(pid)
        if current - previous < quiet_cpu:
            return
        previous = current


def session_body(name: str, user: str) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatabaseSession",
            "metadata": {"name": name},
            "spec": {"user": user, "groups": ["bench"], "databaseRef": {"name": "db"},
                     "databaseName": "app", "duration": "1h"}}


def object_sizes(api: Api, session: str) -> list[tuple[str, int, int, int]]:
    """(kind, bytes, of which managedFields, of which annotations) of one Active session's
    objects, compact JSON as the API serves them (etcd holds CRs as JSON; core and RBAC objects
    as protobuf, somewhat smaller)."""
    secret = f"{session}-credentials"
    paths = [("DatabaseSession", f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}/{session}"),
             ("Secret", f"/api/v1/namespaces/{NS}/secrets/{secret}"),
             ("Role (rbac)", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles/{secret}"),
             ("RoleBinding", "/apis/rbac.authorization.k8s.io/v1/namespaces/"
                             f"{NS}/rolebindings/{secret}")]
    sizes = []
    for kind, path in paths:
        try:
            obj = json.loads(api.get(path))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # no Role/RoleBinding with --no-secret-access
                continue
            raise
        meta = obj["metadata"]
        sizes.append((kind, len(json.dumps(obj, separators=(",", ":"))),
                      len(json.dumps(meta.get("managedFields", []), separators=(",", ":"))),
                      len(json.dumps(meta.get("annotations", {}), separators=(",", ":")))))
    events = json.loads(api.get(f"/api/v1/namespaces/{NS}/events?fieldSelector="
                                f"involvedObject.name%3D{session}"))["items"]
    if events:
        size = sum(len(json.dumps(e, separators=(",", ":"))) for e in events)
        sizes.append((f"Events ({len(events)})", size, sum(
            len(json.dumps(e["metadata"].get("managedFields", []), separators=(",", ":")))
            for e in events), 0))
    return sizes


class Operator:
    """The operator as a separate process, as in a cluster: its CPU and memory are its own."""

    def __init__(self, cp: ControlPlane, workdir: Path, secret_access: bool, name: str,
                 extra_env: dict[str, str] | None = None):
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pgjit.cli", "run", "-n", NS],
            env=dict(os.environ, KUBECONFIG=str(cp.kubeconfig()),
                     PGJIT_SECRET_ACCESS=str(secret_access), **(extra_env or {})),
            stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.process.pid

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def warm_up(custom, watch: PhaseWatch, name: str) -> None:
    """One session opened and ended: the Database connected and every code path imported
    before anything is measured."""
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, session_body(name, name))
    watch.wait([name], watch.active, 120)
    custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
    watch.wait([name], watch.gone, 120)


def burst_timeout(size: int) -> float:
    # Ten times the slowest rate seen on two shared cores (about 20/s), never under 10 minutes.
    return max(600.0, size / 2)


def py_spy_summary(raw: Path, rate: int, sessions: int, cpu: float, top: int = 15) -> list[str]:
    """Own and total samples per function, and own samples per package, from py-spy's raw
    (collapsed stack) output. py-spy samples every thread that is not sleeping, which on a
    loaded machine includes threads waiting for a core: the shares are the profile's, the
    milliseconds are those shares of ``cpu``, the operator's measured CPU over the burst."""
    own, total, packages, inclusive = Counter(), Counter(), Counter(), Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames, n = stack.split(";"), int(count)
        own[frames[-1]] += n
        for frame in set(frames):
            if not _ROOT_FRAMES.search(frame):
                total[frame] += n
        packages[_package(frames[-1])] += n
        for package in {_package(frame) for frame in frames}:
            inclusive[package] += n
    samples = sum(own.values())
    per_session = cpu * 1000 / samples / sessions

    def table(title: str, counter: Counter, name=_short, top: int = top) -> list[str]:
        rows = [f"| {title} | samples | % | ms/session |", "|---|---:|---:|---:|"]
        for frame, n in counter.most_common(top):
            rows.append(f"| `{name(frame)}` | {n} | {100 * n / samples:.1f} | "
                        f"{n * per_session:.2f} |")
        return rows

    return [f"{samples} samples at {rate} Hz ({samples / rate:.1f} s of runnable threads) over "
            f"{cpu:.1f} s of operator CPU: {cpu * 1000 / sessions:.1f} ms per session", "",
            *table("own time, by package or module", packages, str), "",
            *table("total time (package anywhere on the stack)", Counter({
                k: v for k, v in inclusive.items() if not _ROOT_PACKAGES.search(k)}), str), "",
            *table("own time, by function", own), "",
            *table("total time (function anywhere on the stack; event loop and thread "
                   "bootstrap frames left out)", total, top=25)]


# The frames every sample of a thread passes through (the event loop, the thread pool's
# bootstrap, the command line): on top of any total-time list and saying nothing.
_ROOT_FRAMES = re.compile(r"\((<frozen runpy>|pgjit/cli\.py|pgjit/runner\.py|threading\.py|"
                          r"asyncio/(runners|base_events|events)\.py)")
_ROOT_PACKAGES = re.compile(r"^(<frozen runpy>|pgjit\.cli|pgjit\.runner|threading|asyncio)")


def _package(frame: str) -> str:
    """pgjit's module, else the top-level package or module of a frame or file name."""
    where = frame[frame.rfind("(") + 1:].split(":")[0]
    for marker in ("site-packages/", "/operator/", "/lib/python3.11/"):
        if marker in where:  # tracemalloc's file names are absolute, py-spy's relative
            where = where.split(marker, 1)[1]
            break
    parts = where.removesuffix(".py").split("/")
    if parts[0] == "pgjit":
        return ".".join(parts[:3])
    top = parts[0]
    return f"{top} (stdlib)" if top in sys.stdlib_module_names else top


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/operator/", "/lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})"


def tracemalloc_summary(base: Path, live: Path, sessions: int, top: int = 15,
                        label: str = "Active") -> list[str]:
    """What N live sessions added to the traced heap, by package and by allocation site."""
    before, after = tracemalloc.Snapshot.load(str(base)), tracemalloc.Snapshot.load(str(live))
    by_line = after.compare_to(before, "lineno")
    growth = sum(stat.size_diff for stat in by_line)
    packages = Counter()
    for stat in after.compare_to(before, "filename"):
        packages[_package(f"({stat.traceback[0].filename}:0)")] += stat.size_diff
    lines = [f"traced heap {sum(s.size for s in before.statistics('filename')) / 2**20:.1f} MiB "
             f"with 0 sessions → {sum(s.size for s in after.statistics('filename')) / 2**20:.1f}"
             f" MiB with {sessions} {label}: {growth / 1024:.0f} KiB, "
             f"{growth / 1024 / sessions:.1f} KiB per session", "",
             "| allocated in (package) | KiB | KiB/session |", "|---|---:|---:|"]
    for name, size in packages.most_common(top):
        lines.append(f"| {name} | {size / 1024:.0f} | {size / 1024 / sessions:.2f} |")
    lines += ["", "| allocation site | KiB | blocks | KiB/session |", "|---|---:|---:|---:|"]
    for stat in sorted(by_line, key=lambda s: -s.size_diff)[:top]:
        frame = stat.traceback[0]
        where = _short(f"x ({frame.filename}:{frame.lineno})").removeprefix("x (").rstrip(")")
        lines.append(f"| `{where}` | {stat.size_diff / 1024:.0f} | {stat.count_diff} | "
                     f"{stat.size_diff / 1024 / sessions:.2f} |")
    return lines


#: How long Kopf keeps an object's worker (and its last event) after the object's last event.
KOPF_IDLE_TIMEOUT = kopf.OperatorSettings().batching.idle_timeout


def signal_snapshot(operator: Operator, path: Path, timeout: float = 300) -> Path:
    snapshot = Path(str(path) + ".snapshot")
    snapshot.unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    operator.process.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    while not path.exists():  # the text is written after the snapshot: both are there
        if time.monotonic() > deadline:
            raise TimeoutError(f"no tracemalloc snapshot in {timeout}s")
        time.sleep(0.5)
    return snapshot


def waiting_sessions_memory(operator: Operator, custom, watch: PhaseWatch, trace_file: Path,
                            workdir: Path, size: int, clients: int) -> list[str]:
    """What a session waiting for its opening slot holds: a burst of ``size`` against an
    operator with one slot, traced while most of the burst waits."""
    warm_up(custom, watch, "warmup-waiting")
    settle(operator.pid, quiet_cpu=0.1)
    base = signal_snapshot(operator, trace_file).rename(workdir / "tracemalloc-w0.snapshot")
    names = [f"w{size}-{i}" for i in range(size)]
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda n: custom.create_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, session_body(n, f"u-{n}")), names))
        # Every creation is in; the burst is flowing once a tenth of it is Active.
        watch.wait(names[:1], watch.active, burst_timeout(size))
        deadline = time.monotonic() + burst_timeout(size)
        while sum(n in watch.active for n in names) < size // 10:
            if time.monotonic() > deadline:
                raise TimeoutError("the one-slot burst did not get going")
            time.sleep(0.05)
        active_before = sum(n in watch.active for n in names)
        waiting = signal_snapshot(operator, trace_file)
        active_after = sum(n in watch.active for n in names)
        held = size - (active_before + active_after) // 2
        watch.wait(names, watch.active, burst_timeout(size) * 3)
        list(pool.map(lambda n: custom.delete_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, n), names))
        watch.wait(names, watch.gone, burst_timeout(size) * 3)
    return ["#### tracemalloc: sessions waiting for their opening slot", "",
            f"An operator with one opening slot (`PGJIT_CONCURRENT_OPENINGS=1`), {size} sessions "
            f"created at once, traced while about {held} waited ({active_before}-{active_after} "
            "Active, whose records are in the figures too):", "",
            *tracemalloc_summary(base, waiting, held, label="waiting")]


#: The chart's policies on DatabaseSessions, as `helm install` puts them in a cluster that
#: serves MutatingAdmissionPolicy: what every session goes through where users run pgjit.
SESSION_POLICIES = ("templates/session-finalizer.yaml", "templates/session-database-label.yaml")


def apply_session_admission(cp: ControlPlane, kubectl: list[str], root: Path, custom) -> None:
    """Apply the chart's session admission policies and wait until they act on a session."""
    rendered = subprocess.run(
        [str(cp.binaries.helm), "template", "pgjit", str(root / "charts" / "pgjit"),
         "--namespace", "pgjit-system", "--api-versions",
         "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy",
         *(arg for template in SESSION_POLICIES for arg in ("--show-only", template))],
        check=True, capture_output=True, text=True).stdout
    subprocess.run([*kubectl, "apply", "-f", "-"], input=rendered, check=True,
                   capture_output=True, text=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            probe = custom.create_namespaced_custom_object(
                GROUP, VERSION, NS, PLURAL, session_body("admission-probe", "probe"),
                dry_run="All")
        except kubernetes.client.ApiException as error:
            # An Established CRD can still answer 503 for a moment, until every API server
            # handler serves the kind ("There can be a delay ..."); anything else is a failure.
            if error.status != 503 or time.monotonic() > deadline:
                raise
            probe = {"metadata": {}}
        if probe["metadata"].get("finalizers") and probe["metadata"].get("labels"):
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the chart's session admission policies never acted")
        time.sleep(0.5)


#: The kinds whose CRDs every bench waits for before it starts.
BENCH_CRDS = ("databases", "roles", "databasesessions")


def install_crds(cp: ControlPlane, root: Path) -> list[str]:
    """Apply the repository's CRDs and wait until they are Established; kubectl for ``cp``."""
    kubectl = [str(cp.binaries.kubectl), f"--kubeconfig={cp.kubeconfig()}"]
    subprocess.run([*kubectl, "apply", "--server-side", "-f", str(root / "crds")], check=True,
                   capture_output=True)
    subprocess.run([*kubectl, "wait", "--for=condition=Established", "--timeout=60s",
                    *(f"crd/{plural}.{GROUP}" for plural in BENCH_CRDS)],
                   check=True, capture_output=True)
    cp.refresh_garbage_collector()
    return kubectl


def bench_namespace(cp: ControlPlane, pg, clients: int):
    """The bench's client (two connections per client thread), its namespace and the admin's
    password Secret there: (api client, CoreV1Api, CustomObjectsApi)."""
    api = kubernetes.config.new_client_from_config(config_file=str(cp.kubeconfig()))
    api.configuration.connection_pool_maxsize = clients * 2
    core, custom = kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)
    core.create_namespace({"metadata": {"name": NS}})
    core.create_namespaced_secret(NS, {"metadata": {"name": "admin"},
                                       "stringData": {"password": pg.admin_password}})
    return api, core, custom


def create_bench_role(custom, database_selector: dict, database_names: list[str]) -> None:
    """The Role every bench session is opened under: group ``bench`` gets ``reader``."""
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, "roles", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Role", "metadata": {"name": "bench"},
        "spec": {"subjects": [{"kind": "Group", "name": "bench"}],
                 "userProvisioning": "best_effort_drop",
                 "allow": {"databaseSelector": database_selector,
                           "databaseNames": database_names, "databaseRoles": ["reader"]}}})


def write_report(root: Path, stem: str, text: str, data) -> None:
    """``.cache/bench/<stem>.md``, and the raw figures as ``<stem>.json`` for re-reading a run
    without re-running it."""
    out = root / ".cache" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(text + "\n")
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")


def ms(seconds: float, n: int) -> str:
    return f"{seconds * 1000 / n:.1f}"


def collect_garbage(core, meter: Meter, size: int) -> tuple[dict, float]:
    """Resumed, the garbage collector deletes the ended sessions' Secrets: what that costs
    (CPU, requests less the bench's own polling lists) and how long it takes."""
    before = meter.sample()
    started = time.monotonic()
    polls = 0
    deadline = started + burst_timeout(size) + 120  # its discovery resync included
    while True:
        polls += 1
        # limit=1: one Secret left is enough to know, and a full list of hundreds every poll
        # would cost the API server more than the collection it measures.
        left = core.list_namespaced_secret(NS, label_selector="pgjit.dev/session",
                                           limit=1).items
        if not left:
            break
        if time.monotonic() > deadline:
            raise RuntimeError("Secrets of ended sessions not collected in time")
        time.sleep(0.5)
    took = time.monotonic() - started
    time.sleep(1)  # its last deletes' trailing work
    after = meter.sample()
    return Meter.delta(before, after, Counter({("LIST", "core/secrets"): polls})), took


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,500",
                        help="burst sizes, e.g. 100,500,10000 for the growth to 10,000 sessions")
    parser.add_argument("--singles", type=int, default=30)
    parser.add_argument("--scram-iterations", type=int, default=4096)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--no-secret-access", action="store_true",
                        help="run the operator with PGJIT_SECRET_ACCESS=false (no per-session "
                        "Role and RoleBinding), to measure what credential access costs")
    parser.add_argument("--no-admission", action="store_true",
                        help="leave out the chart's session admission policies (the finalizer "
                        "and the pgjit.dev/database label), to measure what they save or cost")
    parser.add_argument("--garbage-collector", choices=("live", "paused"), default="live",
                        help="leave kube-controller-manager's garbage collector running, as on "
                             "any cluster (the default), or hold it stopped during the end "
                             "phase, which then counts the operator alone; what it left to "
                             "collect is measured after the end phase either way")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the operator over one burst, then tracemalloc a second "
                        "operator between 0 and N live sessions (both slow the operator: the "
                        "profiled burst's own figures are not comparable with plain runs)")
    parser.add_argument("--profile-size", type=int, default=None,
                        help="the burst to profile (default: the largest size)")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples/s")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    profile_size = args.profile_size or max(sizes)
    if args.profile and profile_size not in sizes:
        sizes.append(profile_size)
    root = find_repo_root()
    workdir = Path(tempfile.mkdtemp(prefix="pgjit-bench-"))
    os.chmod(workdir, 0o755)
    load_before = os.getloadavg()
    started_at = datetime.now(UTC)
    lines: list[str] = []
    results: list[dict] = []
    sizes_at_rest: list[tuple] = []
    profile_lines: list[str] = []
    # Sessions hold no PostgreSQL connections (the operator works through its pool of admin
    # connections, and nobody logs in as the users here), so max_connections bounds the pools,
    # not N; 10,000 roles and their ledger rows are nothing to PostgreSQL's catalog.
    with ControlPlane(garbage_collector=True) as cp, start_postgres("16", workdir / "pg16",
                                              settings={"max_connections": "200"}) as pg:
        prepare_demo_postgres(pg, dbname="app", table="items")
        kubectl = install_crds(cp, root)
        api, core, custom = bench_namespace(cp, pg, args.clients)
        raw = Api(cp)
        if not args.no_admission:
            apply_session_admission(cp, kubectl, root, custom)
        custom.create_namespaced_custom_object(GROUP, VERSION, NS, "databases", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Database",
            "metadata": {"name": "db", "labels": {"env": "bench"}},
            "spec": {"host": pg.host, "port": pg.port, "admin": {
                "username": pg.admin_user, "passwordSecretRef": {"name": "admin", "key": "password"}},
                "credentials": {"scramIterations": args.scram_iterations}}})
        create_bench_role(custom, {}, ["*"])
        operator = Operator(cp, workdir, not args.no_secret_access, "operator")
        watch = PhaseWatch(api)
        try:
            warm_up(custom, watch, "warmup")

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
            print(lines[-1], flush=True)

            settle(operator.pid)
            idle_from = cpu_seconds(operator.pid)
            time.sleep(5)
            idle_cpu = (cpu_seconds(operator.pid) - idle_from) / 5
            base_rss = rss_mb(operator.pid)
            meter = Meter(raw, {"operator": operator.pid, **cp.pids()})
            with ThreadPoolExecutor(args.clients) as pool:
                for size in sizes:
                    result = {"size": size}
                    names = [f"b{size}-{i}" for i in range(size)]
                    spies = []
                    if args.profile and size == profile_size:
                        # Two views: every thread that is not asleep (native work included, but
                        # on a loaded machine also threads waiting for a core), and only the
                        # thread holding the GIL (Python's own work, one thread at a time).
                        for mode in ("all", "gil"):
                            spies.append(subprocess.Popen(
                                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                                 str(operator.pid), "--rate", str(args.profile_rate), "--format",
                                 "raw", "--function", "--nonblocking", "--output",
                                 str(workdir / f"py-spy-{mode}.txt"),
                                 *(["--gil"] if mode == "gil" else [])],
                                stdout=subprocess.DEVNULL,
                                stderr=open(workdir / f"py-spy-{mode}.log", "w")))
                        time.sleep(1)  # py-spy attaches before the burst starts
                        threads_before = thread_cpu(operator.pid)

                    own_before = Counter(watch.requests)
                    before = meter.sample()
                    started = time.monotonic()
                    list(pool.map(lambda n: custom.create_namespaced_custom_object(
                        GROUP, VERSION, NS, PLURAL, session_body(n, f"u-{n}")), names))
                    watch.wait(names, watch.active, burst_timeout(size))
                    result["up"] = max(watch.active[n] for n in names) - started
                    settle(operator.pid)
                    result["rss"] = rss_mb(operator.pid)
                    print(f"N={size}: all Active after {result['up']:.1f}s, operator RSS "
                          f"{result['rss']:.0f} MB", flush=True)
                    after = meter.sample()
                    own = Counter(watch.requests)
                    own.subtract(own_before)
                    own["POST", SESSIONS] += size
                    result["open"] = Meter.delta(before, after, own)
                    result["own_open"] = +own
                    if not sizes_at_rest:
                        sizes_at_rest = object_sizes(raw, names[0])

                    own_before = Counter(watch.requests)
                    # The garbage collector deletes the ended sessions' Secrets; held stopped
                    # here, the end phase counts the operator's requests alone, and the
                    # collection is measured on its own right after.
                    with (cp.garbage_collector_paused() if args.garbage_collector == "paused"
                          else contextlib.nullcontext()):
                        before = meter.sample()
                        started = time.monotonic()
                        list(pool.map(lambda n: custom.delete_namespaced_custom_object(
                            GROUP, VERSION, NS, PLURAL, n), names))
                        watch.wait(names, watch.gone, burst_timeout(size))
                        result["down"] = max(watch.gone[n] for n in names) - started
                        settle(operator.pid)
                        result["rss_after"] = rss_mb(operator.pid)
                        after = meter.sample()
                    own = Counter(watch.requests)
                    own.subtract(own_before)
                    own["DELETE", SESSIONS] += size
                    result["end"] = Meter.delta(before, after, own)
                    result["own_end"] = +own
                    result["garbage_collector"] = args.garbage_collector
                    result["collect"], result["collected_in"] = collect_garbage(
                        core, meter, size)
                    if spies:
                        threads_after = thread_cpu(operator.pid)
                        for spy in spies:
                            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                            spy.wait(120)
                        cpu = result["open"]["cpu"]["operator"] + result["end"]["cpu"]["operator"]
                        loop = threads_after[0] - threads_before[0]
                        others = threads_after[1] - threads_before[1]
                        profile_lines = [
                            f"Operator CPU over the burst by OS thread: the event loop (main "
                            f"thread) {ms(loop, size)} ms per session, the other threads (the "
                            f"kubernetes client's thread pool, password hashing) "
                            f"{ms(others, size)} ms.", "",
                            "#### py-spy, only the thread holding the GIL", "",
                            *py_spy_summary(workdir / "py-spy-gil.txt", args.profile_rate, size,
                                            cpu),
                            "", "#### py-spy, every thread not asleep", "",
                            *py_spy_summary(workdir / "py-spy-all.txt", args.profile_rate, size,
                                            cpu)]
                        result["profiled"] = True

                    # The floor: the same client, pool and sizes, bare Secrets, nothing
                    # watching them.
                    floor = [f"floor-{size}-{i}" for i in range(size)]
                    before = meter.sample()
                    started = time.monotonic()
                    list(pool.map(lambda n: core.create_namespaced_secret(NS, {
                        "metadata": {"name": n},
                        "stringData": {"password": "x" * 43}}), floor))
                    middle = time.monotonic()
                    list(pool.map(lambda n: core.delete_namespaced_secret(n, NS), floor))
                    finished = time.monotonic()
                    after = meter.sample()
                    result["floor_up"], result["floor_down"] = middle - started, finished - middle
                    result["floor"] = Meter.delta(before, after, Counter())
                    results.append(result)
                    print(f"N={size}: opened in {result['up']:.1f}s, ended in "
                          f"{result['down']:.1f}s, floor {result['floor_up']:.1f}s + "
                          f"{result['floor_down']:.1f}s", flush=True)

            if args.profile:
                operator.stop()
                trace_file = workdir / "tracemalloc.txt"
                operator = Operator(cp, workdir, not args.no_secret_access, "operator-traced",
                                    {"PGJIT_TRACEMALLOC_FILE": str(trace_file)})
                warm_up(custom, watch, "warmup-traced")
                settle(operator.pid, quiet_cpu=0.1)
                base = signal_snapshot(operator, trace_file)
                base = base.rename(workdir / "tracemalloc-0.snapshot")
                rss_traced_base = rss_mb(operator.pid)
                names = [f"t{profile_size}-{i}" for i in range(profile_size)]
                with ThreadPoolExecutor(args.clients) as pool:
                    list(pool.map(lambda n: custom.create_namespaced_custom_object(
                        GROUP, VERSION, NS, PLURAL, session_body(n, f"u-{n}")), names))
                    watch.wait(names, watch.active, burst_timeout(profile_size) * 3)
                    settle(operator.pid, quiet_cpu=0.1)
                    live = signal_snapshot(operator, trace_file)
                    live = live.rename(workdir / "tracemalloc-settled.snapshot")
                    rss_traced = rss_mb(operator.pid)
                    # Kopf keeps each object's worker, holding its last event, until the
                    # worker has been idle for batching.idle_timeout: held sessions outlive it.
                    time.sleep(KOPF_IDLE_TIMEOUT + 2)
                    steady = signal_snapshot(operator, trace_file)
                    profile_lines += ["", f"#### tracemalloc: {profile_size} Active sessions",
                                      "", f"RSS of the traced operator {rss_traced_base:.0f} → "
                                      f"{rss_traced:.0f} MB (tracemalloc's own bookkeeping "
                                      "included).", "",
                                      "Once the operator is quiet (its last workers still "
                                      "waiting for more events of their objects):", "",
                                      *tracemalloc_summary(base, live, profile_size), "",
                                      f"Held: {KOPF_IDLE_TIMEOUT + 2:.0f} s later, Kopf's idle "
                                      "workers gone:", "",
                                      *tracemalloc_summary(base, steady, profile_size)]
                    list(pool.map(lambda n: custom.delete_namespaced_custom_object(
                        GROUP, VERSION, NS, PLURAL, n), names))
                    watch.wait(names, watch.gone, burst_timeout(profile_size) * 3)
                operator.stop()
                operator = Operator(cp, workdir, not args.no_secret_access, "operator-waiting",
                                    {"PGJIT_TRACEMALLOC_FILE": str(trace_file),
                                     "PGJIT_CONCURRENT_OPENINGS": "1"})
                profile_lines += ["", *waiting_sessions_memory(
                    operator, custom, watch, trace_file, workdir, profile_size, args.clients)]
        finally:
            watch.stop()
            operator.stop()
    lines += report(args, results, sizes_at_rest, base_rss, idle_cpu)
    if profile_lines:
        lines += ["", f"### Profile of the operator over the {profile_size}-session burst "
                  "(open + end)", "", f"py-spy record --rate {args.profile_rate} --function "
                  "--nonblocking. Milliseconds are each line's share of the samples times the "
                  "operator's measured CPU over the burst (py-spy cannot tell a running thread "
                  "from one waiting for a core; the profiled figures above include py-spy's "
                  "cost to the machine).", "", *profile_lines]
    load_after = os.getloadavg()
    lines += ["", f"Run {started_at:%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs, load average "
              f"{load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end "
              f"(1-minute); SCRAM iterations {args.scram_iterations}, {args.clients} client "
              f"threads, credential access {'off' if args.no_secret_access else 'on'}, the "
              f"chart's session admission policies {'left out' if args.no_admission else 'in'}."]
    report_text = "\n".join(lines)
    stem = "operator-profile" if args.profile else (
        "operator-no-secret-access" if args.no_secret_access else "operator")
    write_report(root, stem, report_text, _jsonable(
        {"results": results, "sizes_at_rest": sizes_at_rest, "base_rss": base_rss,
         "idle_cpu": idle_cpu}))
    print(report_text)
    return 0


def _jsonable(value):
    if isinstance(value, dict):  # request counters are keyed by (verb, resource[, code])
        return {" ".join(k) if isinstance(k, tuple) else k: _jsonable(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def report(args, results: list[dict], sizes_at_rest: list[tuple], base_rss: float,
           idle_cpu: float) -> list[str]:
    lines = ["", "| sessions | to Active (s) | opened/s | floor creates/s | ratio | "
             "to ended (s) | ended/s | floor deletes/s | ratio |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        n = r["size"]
        lines.append(f"| {n} | {r['up']:.1f} | {n / r['up']:.0f} | {n / r['floor_up']:.0f} | "
                     f"{r['floor_up'] / r['up']:.2f} | {r['down']:.1f} | {n / r['down']:.0f} | "
                     f"{n / r['floor_down']:.0f} | {r['floor_down'] / r['down']:.2f} |")
    lines += ["", "CPU per session in ms (open / end), RSS in MB:", "",
              "| sessions | operator | operator open + end | API server | etcd | API server + "
              "etcd, open + end | floor: API server + etcd per bare Secret create + delete | "
              "RSS before → all Active → all ended | KB per Active session |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        n, op, end, floor = r["size"], r["open"]["cpu"], r["end"]["cpu"], r["floor"]["cpu"]
        server = op["kube-apiserver"] + op["etcd"] + end["kube-apiserver"] + end["etcd"]
        lines.append(
            f"| {n}{' (profiled)' if r.get('profiled') else ''} | {ms(op['operator'], n)} / "
            f"{ms(end['operator'], n)} | {ms(op['operator'] + end['operator'], n)} | "
            f"{ms(op['kube-apiserver'], n)} / {ms(end['kube-apiserver'], n)} | "
            f"{ms(op['etcd'], n)} / {ms(end['etcd'], n)} | {ms(server, n)} | "
            f"{ms(floor['kube-apiserver'] + floor['etcd'], n)} | "
            f"{base_rss:.0f} → {r['rss']:.0f} → {r['rss_after']:.0f} | "
            f"{(r['rss'] - base_rss) * 1024 / n:.0f} |")
    lines += ["", f"The operator idles at {idle_cpu * 1000:.1f} ms of CPU per second (lease "
              "loop, health and revalidation timers); the phases are measured until it is "
              "back near that (under 30 ms in 1 s), so trailing writes are counted. API server "
              "and etcd CPU includes serving the bench's own creates, deletes and watch; the "
              "floor column is what one bare create + delete costs them."]
    keys = sorted({key for r in results for phase in ("open", "end")
                   for key in r[phase]["requests"]}, key=lambda k: (k[1], k[0]))
    head = " | ".join(f"open N={r['size']} | end N={r['size']}" for r in results)
    lines += ["", "API requests per session, from apiserver_request_total:", "",
              f"| verb | resource | {head} |", "|---|---|" + "---:|" * (2 * len(results))]
    rare = Counter()
    for verb, resource in keys:
        per_session = [r[phase]["requests"].get((verb, resource), 0) / r["size"]
                       for r in results for phase in ("open", "end")]
        if max(abs(n) for n in per_session) < 0.05:
            # Not per session: the API server's own leases, the Database's status, a watch
            # of the operator's or the bench's that closed.
            for r in results:
                for phase in ("open", "end"):
                    rare[verb, resource] += r[phase]["requests"].get((verb, resource), 0)
            continue
        cells = " | ".join(f"{n:.2f}" for n in per_session)
        lines.append(f"| {verb} | {resource} | {cells} |")
    for label, test in (("writes", lambda v: v in WRITE_VERBS),
                        ("reads", lambda v: v not in WRITE_VERBS)):
        cells = " | ".join(
            f"**{sum(c for (v, _), c in r[phase]['requests'].items() if test(v)) / r['size']:.2f}**"
            for r in results for phase in ("open", "end"))
        lines.append(f"| **{label}** | | {cells} |")
    own = Counter()
    for r in results:
        own.update(r["own_open"])
        own.update(r["own_end"])
    failures = Counter()
    for r in results:
        for phase in ("open", "end"):
            failures.update(r[phase]["failures"])
    lines += ["", "Subtracted, the bench's own requests (it counts them itself): "
              + ", ".join(f"{n} {verb} {res}" for (verb, res), n in sorted(own.items()))
              + " (one create per session opening, one delete per session ending, and its "
              "watch, which the API server counts when it closes). The metric has no client "
              "label (the operator and the bench both use the admin identity), so the rest is "
              "the operator's, plus the API server's own background requests. Under 0.05 per "
              "session, left out of the table, all phases together: "
              + (", ".join(f"{n:.0f} {verb} {res}" for (verb, res), n in sorted(rare.items()))
                 or "none") + "."
              + (" Not 2xx: " + ", ".join(f"{n:.0f} {v} {res} {code}" for (v, res, code), n
                                           in sorted(failures.items())) + "."
                 if failures else " Every counted request succeeded (2xx).")]
    for r in results:
        collect, n = r["collect"], r["size"]
        requests = ", ".join(f"{count / n:.2f} {verb} {resource}"
                             for (verb, resource), count in sorted(collect["requests"].items())
                             if abs(count) / n >= 0.05) or "none"
        how = ("It was held stopped during the end phase, which counts the operator alone, "
               "and measured once resumed (catching up, it re-lists what it watches)"
               if r.get("garbage_collector") == "paused" else
               "It ran during the end phase, as on any cluster (its own CPU there: "
               f"{ms(r['end']['cpu'].get('kube-controller-manager', 0.0), n)} ms per session)")
        lines += ["", f"Garbage collection, N={n}: kube-controller-manager's garbage collector "
                  "deletes what an ended session's owner references leave; the operator "
                  f"deletes what it created itself. {how}. What was left to "
                  "it after the end phase: collected in "
                  f"{r['collected_in']:.1f} s; per session, its CPU "
                  f"{ms(collect['cpu'].get('kube-controller-manager', 0.0), n)} ms, API server "
                  f"{ms(collect['cpu']['kube-apiserver'], n)} ms, etcd "
                  f"{ms(collect['cpu']['etcd'], n)} ms; requests per session: {requests}."]
    if sizes_at_rest:
        lines += ["", "One Active session's objects at rest (compact JSON as served):", "",
                  "| object | bytes | of which managedFields | of which annotations |",
                  "|---|---:|---:|---:|"]
        for kind, size, managed, annotations in sizes_at_rest:
            lines.append(f"| {kind} | {size} | {managed} | {annotations} |")
        lines.append(f"| **total** | **{sum(s[1] for s in sizes_at_rest)}** | "
                     f"{sum(s[2] for s in sizes_at_rest)} | {sum(s[3] for s in sizes_at_rest)} |")
    if len(results) > 1 and results[0]["rss"] > base_rss:
        first, last = results[0], results[-1]

        def per(r, key):
            return r[key] / r["size"]

        def kb(r):
            return (r["rss"] - base_rss) / r["size"]

        def cpu(r):
            return (r["open"]["cpu"]["operator"] + r["end"]["cpu"]["operator"]) / r["size"]

        lines += ["", f"Growth from {first['size']} to {last['size']} sessions, per session: "
                  f"opening time ×{per(last, 'up') / per(first, 'up'):.2f}, ending time "
                  f"×{per(last, 'down') / per(first, 'down'):.2f}, operator CPU "
                  f"×{cpu(last) / cpu(first):.2f}, RSS ×{kb(last) / kb(first):.2f} "
                  f"({kb(first) * 1024:.0f} → {kb(last) * 1024:.0f} KB)."]
    return lines


if __name__ == "__main__":
    sys.exit(main())
