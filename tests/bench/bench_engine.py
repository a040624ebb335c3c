"""Engine throughput against the raw floor of the same statements (`make bench-engine`).

For each PostgreSQL major this starts a fresh, throwaway server (start_postgres's settings, no
statement logging) and measures, in the same run:

- the raw floor: pgbench running the bare statements of one activate + end cycle
  (shared/reference/performance-notes.md) on 4 connections as the non-superuser admin;
- pgjit: the Engine doing activate (one role, best_effort_drop) + end cycles from 4 concurrent
  asyncio workers on a 4-connection pool, for the same credential setting;
- admin round trips per activation and per end (engine.stats.round_trips), from a sequential
  calibration pass, so that concurrent operations do not blur the split.

Both sides connect over loopback TCP with sslmode=disable: the pgbench builds of 16 and 18 here
(PyPI wheels) have no OpenSSL, and the comparison must pay the same transport cost on both sides.

Not a test: figures depend on the machine. The table is printed and written to
.cache/bench/engine.md. Passwords are never printed; the pgbench script (which embeds a SCRAM
verifier, not a password) lives in a temporary directory only the invoking user (root here)
can read, removed at exit.

    .venv/bin/python tests/bench/bench_engine.py [--majors 15,16,18] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
from psycopg import sql

from pgjit.core.credentials import generate_password, scram_sha256_verifier
from pgjit.devstack.postgres import PostgresServer, start_postgres
from pgjit.engine import ActivationRequest, Engine, ServerConfig

ROOT = Path(__file__).resolve().parents[2]

CLIENTS = 4
PGBENCH_THREADS = 2
READER = "reader"
SSLMODE = "disable"
# Statement logging off, whatever a caller's defaults: logging every statement is a cost the
# floor would pay too, but it is not what either side is measured for.
SERVER_SETTINGS = {"log_statement": "none", "log_min_duration_statement": "-1"}
CALIBRATION_CYCLES = 30
OUTPUT = ROOT / ".cache" / "bench" / "engine.md"


@dataclass(frozen=True)
class Credential:
    label: str
    iterations: int | None  # None: no password (client-certificate credentials)


CREDENTIALS = (
    Credential("no password", None),
    Credential("SCRAM, 1 iteration", 1),
    Credential("SCRAM, 4096 iterations", 4096),
)
# The setting that also gets a row with terminate_connections=True.
TERMINATE_ROW_FOR = "SCRAM, 1 iteration"


@dataclass
class Row:
    major: str
    version: str
    setting: str
    floor: float
    pgjit: float
    rt_activate: float
    rt_end: float
    activate_ms: float
    end_ms: float
    failures: int
    floor_server_cpu: float
    pgjit_server_cpu: float
    pgjit_own_cpu: float

    @property
    def ratio(self) -> float:
        return self.pgjit / self.floor if self.floor else float("nan")


# -- CPU accounting ------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _children(server: PostgresServer) -> dict[int, list[str]]:
    """/proc/<pid>/stat fields (after the command name) of the postmaster and its children."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(entry) == server.pid or int(fields[1]) == server.pid:  # fields[1]: ppid
            found[int(entry)] = fields
    return found


def server_cpu_seconds(server: PostgresServer, settle_from: set[int] | None = None) -> float:
    """CPU used so far by all of the server's processes: the postmaster, its live children
    (backends, autovacuum, WAL writer, ...) and the children it already reaped.

    ``settle_from``: child pids that existed before a run; waits (bounded) until every other
    child has exited and been reaped, so that a backend's CPU is counted exactly once, in the
    postmaster's reaped-children total.
    """
    deadline = time.monotonic() + 10
    while True:
        procs = _children(server)
        newcomers = set(procs) - {server.pid} - (settle_from or set())
        if settle_from is None or not newcomers or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    ticks = 0
    for pid, fields in procs.items():
        # [11], [12]: utime, stime; [13], [14]: the reaped children's (postmaster only).
        ticks += sum(int(f) for f in fields[11:15 if pid == server.pid else 13])
    return ticks / _TICK


# -- the floor -----------------------------------------------------------------------------------


def _pgbench_safe_verifier(iterations: int) -> str:
    """A SCRAM verifier for a random password in which pgbench finds no variable reference.

    pgbench substitutes ``:name`` anywhere in a simple-protocol script, quotes included; a
    verifier has two colons, each followed by base64. Drawing until neither is followed by a
    letter or underscore rules out any substitution. The password itself is discarded: nobody
    logs in as these roles, only PostgreSQL's check of the verifier matters.
    """
    while True:
        verifier = scram_sha256_verifier(generate_password(), iterations)
        if not re.search(r":[A-Za-z_]", verifier):
            return verifier


def _pgbench_script(credential: Credential) -> str:
    password = ""
    if credential.iterations is not None:
        password = f" PASSWORD '{_pgbench_safe_verifier(credential.iterations)}'"
    # "b-:client_id-:n": pgbench substitutes variables inside the quoted identifier; the "-"
    # ends each variable name. Unique per transaction (random n, per-client prefix).
    role = '"b-:client_id-:n"'
    return "\n".join([
        r"\set n random(1, 1000000000)",
        "BEGIN;",
        "SELECT pg_advisory_xact_lock(:n);",
        f"CREATE ROLE {role} LOGIN{password};",
        f"GRANT {READER} TO {role};",
        "COMMIT;",
        "BEGIN;",
        f"ALTER ROLE {role} NOLOGIN;",
        f"DROP ROLE {role};",
        "COMMIT;",
        "",
    ])


def run_floor(server: PostgresServer, credential: Credential, seconds: float,
              script_dir: Path) -> tuple[float, int, float]:
    """pgbench cycles per second, failed transactions, server CPU ms per cycle."""
    script = script_dir / "cycle.sql"
    fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(_pgbench_script(credential))
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "PGPASSWORD": server.admin_password,
           "PGSSLMODE": SSLMODE, "PGAPPNAME": "pgjit-bench-floor"}
    argv = [str(server.pgbench_path), "-n", "-f", str(script), "-c", str(CLIENTS),
            "-j", str(PGBENCH_THREADS), "-T", str(max(1, round(seconds))),
            "-h", server.host, "-p", str(server.port), "-U", server.admin_user, "postgres"]
    before = set(_children(server))
    cpu_before = server_cpu_seconds(server)
    result = subprocess.run(argv, env=env, capture_output=True, text=True,
                            timeout=seconds + 60, stdin=subprocess.DEVNULL)
    # pgbench's backends exit after it does: wait until the postmaster has reaped them.
    cpu = server_cpu_seconds(server, settle_from=before) - cpu_before
    script.unlink()
    output = result.stdout + result.stderr
    tps = re.search(r"tps = ([0-9.]+) \((?:without initial connection time|excluding)", output)
    if result.returncode != 0 or not tps:
        raise RuntimeError(f"pgbench failed ({result.returncode}):\n{output[-2000:]}")
    failed = re.search(r"number of failed transactions: (\d+)", output)
    processed = re.search(r"number of transactions actually processed: (\d+)", output)
    cycles = int(processed.group(1)) if processed else 0
    return (float(tps.group(1)), int(failed.group(1)) if failed else 0,
            1000 * cpu / cycles if cycles else float("nan"))


# -- pgjit ---------------------------------------------------------------------------------------


def _engine(server: PostgresServer, credential: Credential, managed_role: str) -> Engine:
    return Engine(ServerConfig(
        host=server.host, port=server.port, admin_user=server.admin_user,
        admin_password=server.admin_password, sslmode=SSLMODE, max_connections=CLIENTS,
        scram_iterations=credential.iterations or 4096, managed_role=managed_role))


def _request(identity: str, session: str, credential: Credential) -> ActivationRequest:
    return ActivationRequest(
        session_id=session, identity=identity, database="postgres", roles=(READER,),
        expires_at=datetime.now(timezone.utc) + timedelta(hours=1), mode="best_effort_drop",
        password=generate_password() if credential.iterations is not None else None)


async def calibrate(engine: Engine, credential: Credential, terminate: bool, tag: str
                    ) -> tuple[float, float, float, float]:
    """Sequential cycles: round trips and milliseconds per activation and per end."""
    rt_a = rt_e = 0
    t_a = t_e = 0.0
    for i in range(CALIBRATION_CYCLES):
        identity = f"cal-{tag}-{i}"
        before, started = engine.stats.round_trips, time.perf_counter()
        await engine.activate(_request(identity, "s", credential))
        middle, halfway = engine.stats.round_trips, time.perf_counter()
        teardown = await engine.end(identity, "s", terminate_connections=terminate)
        assert teardown.action == "Dropped", teardown
        rt_a += middle - before
        rt_e += engine.stats.round_trips - middle
        t_a += halfway - started
        t_e += time.perf_counter() - halfway
    n = CALIBRATION_CYCLES
    return rt_a / n, rt_e / n, 1000 * t_a / n, 1000 * t_e / n


async def run_pgjit(engine: Engine, credential: Credential, terminate: bool, seconds: float,
                    tag: str) -> tuple[float, int, int]:
    """Cycles per second from CLIENTS concurrent workers, failed and completed cycles."""
    deadline = time.monotonic() + seconds
    failures = 0

    async def worker(w: int) -> int:
        nonlocal failures
        done = 0
        while time.monotonic() < deadline:
            identity = f"bench-{tag}-{w}-{done}"
            try:
                await engine.activate(_request(identity, "s", credential))
                await engine.end(identity, "s", terminate_connections=terminate)
                done += 1
            except Exception as exc:  # counted and shown, the run goes on
                failures += 1
                print(f"  cycle failed: {exc!r}", file=sys.stderr)
                if failures > 20:
                    raise
        return done

    started = time.monotonic()
    counts = await asyncio.gather(*(worker(w) for w in range(CLIENTS)))
    return sum(counts) / (time.monotonic() - started), failures, sum(counts)


async def measure_pgjit(server: PostgresServer, credential: Credential, terminate: bool,
                        seconds: float, tag: str) -> tuple[float, int, tuple, float, float]:
    """Rate, failures, calibration, and CPU ms per cycle of this process and of the server."""
    async with _engine(server, credential, "pgjit-bench-managed") as engine:
        calibration = await calibrate(engine, credential, terminate, tag)
        # process_time counts every thread: the verifier's PBKDF2 runs in one.
        own, srv = time.process_time(), server_cpu_seconds(server)
        rate, failures, cycles = await run_pgjit(engine, credential, terminate, seconds, tag)
        own, srv = time.process_time() - own, server_cpu_seconds(server) - srv
    per = (lambda cpu: 1000 * cpu / cycles) if cycles else (lambda cpu: float("nan"))
    return rate, failures, calibration, per(own), per(srv)


# -- per server ----------------------------------------------------------------------------------


def prepare(server: PostgresServer) -> None:
    with psycopg.connect(server.superuser_conninfo(), autocommit=True) as conn:
        admin = sql.Identifier(server.admin_user)
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(READER)))
        if int(server.major) >= 16:
            conn.execute(sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
                sql.Identifier(READER), admin))
        # For the terminate_connections row (pg_terminate_backend on the ended user's backends).
        conn.execute(sql.SQL("GRANT pg_signal_backend TO {}").format(admin))


def leftover_roles(server: PostgresServer) -> int:
    with psycopg.connect(server.superuser_conninfo(), autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'b-%' "
                            "OR rolname LIKE 'bench-%' OR rolname LIKE 'cal-%'").fetchone()[0]


def bench_major(major: str, seconds: float, root: Path, script_dir: Path) -> list[Row]:
    rows = []
    with start_postgres(major, root / f"pg{major}", settings=SERVER_SETTINGS) as server:
        print(f"PostgreSQL {server.server_version} ({server.source}), "
              f"pgbench {server.pgbench_path}", flush=True)
        prepare(server)
        for credential in CREDENTIALS:
            floor, floor_failed, floor_cpu = run_floor(server, credential, seconds, script_dir)
            print(f"  {credential.label:<24} floor {floor:8.1f} cycles/s; server CPU "
                  f"{floor_cpu:.2f} ms/cycle"
                  + (f" ({floor_failed} failed)" if floor_failed else ""), flush=True)
            runs = [False] + ([True] if credential.label == TERMINATE_ROW_FOR else [])
            for terminate in runs:
                tag = f"{credential.iterations or 0}{'t' if terminate else ''}"
                rate, failures, (rt_a, rt_e, ms_a, ms_e), own_cpu, srv_cpu = asyncio.run(
                    measure_pgjit(server, credential, terminate, seconds, tag))
                label = credential.label + (" + terminate" if terminate else "")
                row = Row(major, server.server_version, label, floor, rate, rt_a, rt_e,
                          ms_a, ms_e, failures + floor_failed, floor_cpu, srv_cpu, own_cpu)
                print(f"  {label:<24} pgjit {rate:8.1f} cycles/s = {row.ratio:5.0%} of the "
                      f"floor; round trips {rt_a:.1f} + {rt_e:.1f}; sequential "
                      f"{ms_a:.2f} + {ms_e:.2f} ms; CPU ms/cycle server {srv_cpu:.2f}, "
                      f"pgjit process {own_cpu:.2f}", flush=True)
                rows.append(row)
        left = leftover_roles(server)
        if left:
            print(f"  warning: {left} benchmark roles were left behind", file=sys.stderr)
    return rows


def render(rows: list[Row], seconds: float) -> str:
    lines = [
        f"# pgjit engine vs raw floor ({CLIENTS} connections, {seconds:g} s per measurement, "
        f"sslmode={SSLMODE})",
        "",
        "| version | credential setting | floor cycles/s | pgjit cycles/s | ratio "
        "| round trips / activation | round trips / end | sequential ms activation + end "
        "| server CPU ms/cycle floor → pgjit | pgjit process CPU ms/cycle | failures |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.version} | {r.setting} | {r.floor:,.0f} | {r.pgjit:,.0f} | {r.ratio:.0%} "
            f"| {r.rt_activate:.1f} | {r.rt_end:.1f} | {r.activate_ms:.2f} + {r.end_ms:.2f} "
            f"| {r.floor_server_cpu:.2f} → {r.pgjit_server_cpu:.2f} | {r.pgjit_own_cpu:.2f} "
            f"| {r.failures} |")
    lines += [
        "",
        "floor: pgbench, `BEGIN; SELECT pg_advisory_xact_lock(n); CREATE ROLE u LOGIN "
        "[PASSWORD '<verifier>']; GRANT reader TO u; COMMIT; BEGIN; ALTER ROLE u NOLOGIN; "
        "DROP ROLE u; COMMIT;` as the non-superuser admin. pgjit: Engine.activate (role reader, "
        "best_effort_drop) + Engine.end (terminate_connections=False unless the row says "
        "otherwise) from 4 asyncio workers. Round trips and sequential latencies come from "
        f"{CALIBRATION_CYCLES} sequential cycles on the same engine. CPU per cycle: all "
        "PostgreSQL processes (server) and this Python process including its threads (pgjit "
        "process), over the timed run.",
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs, "
        f"load average at the end {os.getloadavg()[0]:.1f}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--majors", default="15,16,18")
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="duration of each measurement (default 8)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    majors = [m.strip() for m in args.majors.split(",") if m.strip()]

    # Under /tmp and searchable: the postgres OS user must reach its own work dir.
    root = Path(tempfile.mkdtemp(prefix="pgjit-bench-"))
    root.chmod(0o711)
    script_dir = Path(tempfile.mkdtemp(prefix="pgjit-bench-script-"))  # 0700, this user only
    rows: list[Row] = []
    try:
        for major in majors:
            rows += bench_major(major, args.seconds, root, script_dir)
    finally:
        shutil.rmtree(script_dir, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    table = render(rows, args.seconds)
    print()
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table)
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
