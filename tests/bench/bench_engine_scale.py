"""Engine rates against the number of managed users that exist at once (`make bench-engine-scale`).

For each PostgreSQL major, a fresh throwaway server (as `make bench-engine`), and for each size N:
N users activated (64 at a time, on the engine's 4-connection pool, one role, best_effort_drop,
4096 SCRAM iterations), all of them held, then all ended (64 at a time, terminating
connections, as a Database does by default). It reports activations and ends per second at each
size and their ratio from the smallest to the largest size: what a burst of N sessions on one
server meets in PostgreSQL, whatever the operator does.

Not a test: figures depend on the machine. The table is printed and written to
.cache/bench/engine-scale.md.

    .venv/bin/python tests/bench/bench_engine_scale.py [--majors 15,16,18] [--sizes 500,5000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import SERVER_SETTINGS, SSLMODE, Credential, _request, prepare  # noqa: E402
from pgjit.devstack.postgres import start_postgres  # noqa: E402
from pgjit.engine import Engine, ServerConfig  # noqa: E402

OUTPUT = Path(__file__).resolve().parents[2] / ".cache" / "bench" / "engine-scale.md"
CONNECTIONS = 4
AT_ONCE = 64
CREDENTIAL = Credential("password, 4096 iterations", 4096)


async def _all(n: int, step) -> float:
    """Run ``step(i)`` for i < n, AT_ONCE at a time; the rate per second."""
    gate = asyncio.Semaphore(AT_ONCE)

    async def one(i: int) -> None:
        async with gate:
            await step(i)
    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.monotonic() - started)


async def measure(server, n: int, stewards: int) -> tuple[float, float]:
    """Activations and ends per second with n users existing at once."""
    config = ServerConfig(host=server.host, port=server.port, admin_user=server.admin_user,
                          admin_password=server.admin_password, sslmode=SSLMODE,
                          max_connections=CONNECTIONS, scram_iterations=4096,
                          managed_role=f"pgjit-scale-{n}", steward_roles=stewards)
    async with Engine(config) as engine:
        async def activate(i: int) -> None:
            await engine.activate(_request(f"scale-{n}-{i}", f"s-{i}", CREDENTIAL))

        async def end(i: int) -> None:
            teardown = await engine.end(f"scale-{n}-{i}", f"s-{i}", mode="best_effort_drop",
                                        terminate_connections=True)
            assert teardown.action == "Dropped", teardown
        return await _all(n, activate), await _all(n, end)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--majors", default="15,16,18")
    parser.add_argument("--sizes", default="500,5000")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--stewards", type=int, default=ServerConfig.steward_roles,
                        help="steward roles on 16+ (PGJIT_STEWARD_ROLES; 0: the admin creates "
                             "the users itself, as before session 16)")
    args = parser.parse_args(argv)
    majors = [m.strip() for m in args.majors.split(",") if m.strip()]
    sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())
    root = Path(tempfile.mkdtemp(prefix="pgjit-bench-scale-"))
    root.chmod(0o711)  # the postgres OS user must reach its own work dir
    lines = [f"# Engine rates against the users existing at once ({CONNECTIONS} admin "
             f"connections, {AT_ONCE} operations at a time, {CREDENTIAL.label}, "
             f"{args.stewards} steward roles)", "",
             "| version | users at once | activations/s | ends/s |", "|---|---:|---:|---:|"]
    ratios = []
    for major in majors:
        with start_postgres(major, root / f"pg{major}", settings=SERVER_SETTINGS) as server:
            prepare(server)
            rates = {}
            for n in sizes:
                rates[n] = asyncio.run(measure(server, n, args.stewards))
                print(f"PostgreSQL {server.server_version}: {n} users: activations "
                      f"{rates[n][0]:.0f}/s, ends {rates[n][1]:.0f}/s", flush=True)
                lines.append(f"| {server.server_version} | {n:,} | {rates[n][0]:,.0f} "
                             f"| {rates[n][1]:,.0f} |")
            small, large = rates[sizes[0]], rates[sizes[-1]]
            ratios.append(f"PostgreSQL {server.server_version}: activations "
                          f"×{large[0] / small[0]:.2f}, ends ×{large[1] / small[1]:.2f}")
    lines += ["", f"From {sizes[0]:,} to {sizes[-1]:,} users at once: " + "; ".join(ratios)
              + ".", "",
              f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs, "
              f"load average at the end {os.getloadavg()[0]:.1f}.", ""]
    report = "\n".join(lines)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
