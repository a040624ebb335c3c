"""``pgjit run``: the operator process (Kopf with pgjit's handlers)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import kopf

from .settings import Settings, SettingsError


def _tracemalloc_on_sigusr2(path: str) -> None:
    """Opt-in memory profiling (PGJIT_TRACEMALLOC_FILE, used by `make bench-profile`).

    Tracing must start before the handlers import to see their allocations, and it makes every
    allocation slower, so it is never on unless asked for. One frame per trace: deeper ones made
    the operator too slow to start on two busy cores. Each SIGUSR2 writes the top allocation
    sites to ``path`` and the whole snapshot to ``path.snapshot`` (for
    ``tracemalloc.Snapshot.load`` and diffs), each by rename so a reader never sees half; the
    event loop stands still while it writes.
    """
    import tracemalloc

    tracemalloc.start()

    def dump(signum: int, frame: object) -> None:
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)])
        snapshot.dump(path + ".snapshot.tmp")
        os.replace(path + ".snapshot.tmp", path + ".snapshot")
        stats = snapshot.statistics("lineno")
        lines = [f"total {sum(s.size for s in stats) / 1024:.0f} KiB in "
                 f"{sum(s.count for s in stats)} blocks"]
        lines += [f"{s.size / 1024:10.1f} KiB {s.count:8d} {s.traceback[0]}" for s in stats[:50]]
        with open(path + ".tmp", "w") as out:
            out.write("\n".join(lines) + "\n")
        os.replace(path + ".tmp", path)

    signal.signal(signal.SIGUSR2, dump)


def run(*, namespaces: list[str], all_namespaces: bool, liveness: str | None,
        metrics_port: int | None, verbose: bool = False, log_json: bool = False,
        readiness: str | None = None) -> int:
    try:
        # Namespaced RBAC has no cluster-wide list/watch of namespaces for Kopf's scanning.
        settings = Settings.load(os.environ, metrics_port=metrics_port or None,
                                 namespaced=bool(namespaces and not all_namespaces) or None)
    except SettingsError as error:
        print(f"pgjit run: invalid setting: {error}", file=sys.stderr)
        return 2
    # Every line says when and which object (kopf's own default would print bare messages such
    # as "Handler 'lease' succeeded." with no object name); JSON lines carry it as a field.
    kopf.configure(verbose=verbose,
                   log_format=kopf.LogFormat.JSON if log_json else kopf.LogFormat.FULL,
                   log_prefix=not log_json, log_refkey="object" if log_json else None)
    logging.getLogger("psycopg.pool").setLevel(logging.WARNING)
    if settings.tracemalloc_file:
        _tracemalloc_on_sigusr2(settings.tracemalloc_file)
    from . import handlers

    handlers.register(settings)
    asyncio.run(_operate(settings, namespaces=namespaces,
                         clusterwide=all_namespaces or not namespaces, liveness=liveness,
                         readiness=readiness))
    return 0


async def _operate(settings: Settings, *, namespaces: list[str], clusterwide: bool,
                   liveness: str | None, readiness: str | None) -> None:
    from .handlers.settings import OperatorMemo
    from .readiness import Readiness

    # Kopf raises this flag once its startup handlers are done and its watchers may start.
    started = asyncio.Event()
    probe = Readiness([] if clusterwide else namespaces)
    side_tasks = ([asyncio.create_task(probe.serve(readiness)),
                   asyncio.create_task(probe.check(started))] if readiness else [])
    try:
        await kopf.operator(standalone=True, clusterwide=clusterwide, namespaces=namespaces,
                            liveness_endpoint=liveness, ready_flag=started,
                            memo=OperatorMemo(settings))
    finally:
        for task in side_tasks:
            task.cancel()
        await asyncio.gather(*side_tasks, return_exceptions=True)
