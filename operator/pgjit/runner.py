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


#: What each TLS connection's asyncio protocol reads into at a time. asyncio's default of
#: 256 KiB per connection stays allocated for every connection Kopf opens in a burst (its
#: connector has no limit): 66 connections with 500 sessions opened at once, 8 MiB of the
#: traced heap and 9 MB of RSS (README, Performance, session 8). A TLS record carries at
#: most 16 KiB, so a 32 KiB read still takes whole records.
TLS_READ_BUFFER = 32 * 1024


def small_tls_read_buffers() -> None:
    """Every TLS connection of the process reads through a ``TLS_READ_BUFFER`` buffer
    (asyncio's ``SSLProtocol.max_size``, a class attribute since Python 3.11)."""
    from asyncio import sslproto

    if hasattr(sslproto.SSLProtocol, "max_size"):
        sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


def run(*, namespaces: list[str], all_namespaces: bool, liveness: str | None,
        metrics_port: int | None, verbose: bool = False, log_json: bool = False,
        readiness: str | None = None) -> int:
    try:
        # Namespaced RBAC has no cluster-wide list/watch of namespaces for Kopf's scanning.
        settings = Settings.load(os.environ, metrics_port=metrics_port or None,
                                 namespaced=bool(namespaces and not all_namespaces) or None)
        from .core.sharding import ShardSelector, ShardSelectorError

        try:
            shard = ShardSelector.parse(settings.shard_database_selector)
        except ShardSelectorError as error:
            raise SettingsError(f"PGJIT_SHARD_DATABASE_SELECTOR: {error}") from None
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
    small_tls_read_buffers()
    asyncio.run(_operate(settings, shard, namespaces=namespaces,
                         clusterwide=all_namespaces or not namespaces, liveness=liveness,
                         readiness=readiness))
    return 0


def _election(settings: Settings, readiness: str | None):
    """The elector for ``PGJIT_LEADER_ELECTION_LEASE``, publishing where a standby can ask
    this process who it is: the readiness server's /leader, at the pod's IP."""
    import urllib.parse

    from .kube.transport import RestClient, load_connection
    from .kube.leadership import SHARD_ANNOTATION, ElectionConfig, LeaderElector, new_identity

    endpoint = None
    if readiness:
        parts = urllib.parse.urlsplit(readiness)
        host = settings.pod_ip or (parts.hostname if parts.hostname not in (None, "0.0.0.0", "::")
                                   else None)
        if host:
            host = f"[{host}]" if ":" in host else host
            endpoint = f"http://{host}:{parts.port}/leader"
    assert settings.leader_election_lease and settings.namespace  # Settings checks both
    config = ElectionConfig(
        namespace=settings.namespace, name=settings.leader_election_lease,
        identity=new_identity(settings.pod_name), lease_duration=settings.lease_duration_seconds,
        renew_deadline=settings.renew_deadline_seconds,
        retry_period=settings.retry_period_seconds, endpoint=endpoint,
        probe=settings.leader_probe,
        annotations={SHARD_ANNOTATION: settings.shard_database_selector or ""})
    return LeaderElector(RestClient(load_connection()), config)


async def _stand_by(elector) -> bool:
    """Wait for the Lease in a thread; SIGTERM or SIGINT while standing by ends the wait (the
    standby has nothing to finish) and the process."""
    import threading

    stop = threading.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        return await asyncio.to_thread(elector.acquire, stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def _served(shard, namespaces: list[str], clusterwide: bool) -> frozenset[tuple[str, str]]:
    """The Databases the shard selector matches now, listed before Kopf starts so that its
    session watch is right from the first list (handlers/shard.py)."""
    from . import GROUP, VERSION
    from .kube.transport import RestClient, load_connection

    rest = RestClient(load_connection())
    params = {"labelSelector": shard.render()}
    api = f"/apis/{GROUP}/{VERSION}"
    paths = [f"{api}/databases"] if clusterwide else [
        f"{api}/namespaces/{namespace}/databases" for namespace in namespaces]

    def listed() -> frozenset[tuple[str, str]]:
        return frozenset((item["metadata"]["namespace"], item["metadata"]["name"])
                         for path in paths
                         for item in rest.request("GET", path, params=params,
                                                  timeout=60)["items"])

    while True:
        try:
            return await asyncio.to_thread(listed)
        except Exception as error:  # noqa: BLE001 - the API server may be restarting
            logging.getLogger(__name__).warning("Listing this shard's Databases failed: %s",
                                                error)
            await asyncio.sleep(2)


async def _operate(settings: Settings, shard_selector, *, namespaces: list[str],
                   clusterwide: bool, liveness: str | None, readiness: str | None) -> None:
    from .handlers import metrics
    from .handlers.settings import OperatorMemo
    from .handlers.shard import ShardState
    from .readiness import Readiness, serve_liveness

    elector = _election(settings, readiness) if settings.leader_election_lease else None
    # Kopf raises this flag once its startup handlers are done and its watchers may start.
    started = asyncio.Event()
    probe = Readiness([] if clusterwide else namespaces,
                      identity=elector.config.identity if elector else None)
    side_tasks = [asyncio.create_task(probe.serve(readiness))] if readiness else []
    if elector is not None and liveness:
        # Kopf serves /healthz only while it runs: the standby, and the moments between two
        # runs of Kopf (a shard's restart), need it too.
        side_tasks.append(asyncio.create_task(serve_liveness(liveness)))
        liveness = None
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    #: This run of Kopf's state, for restarts asked for from outside Kopf.
    current = [ShardState(shard_selector)]
    try:
        if elector is not None:
            probe.role = "standby"
            metrics.LEADER.set(0)
            if readiness:
                # A standby is ready once it could take over (readiness.py).
                now = asyncio.Event()
                now.set()
                side_tasks.append(asyncio.create_task(probe.check(now)))
            if not await _stand_by(elector):
                return
            loop = asyncio.get_running_loop()
            # Watch streams resumed after the API server was away can miss events for good
            # (a session whose finalizer patch landed during a restart was never handled:
            # tests/faults); a fresh list sees everything.
            elector.on_reconnected = lambda: loop.call_soon_threadsafe(
                lambda: current[0].request_restart("the API server was unreachable"))
            elector.start_renewing()
            probe.role = "leader"
            metrics.LEADER.set(1)
            side_tasks.append(asyncio.create_task(
                _coverage(settings, None if clusterwide else namespaces)))
        elif readiness:
            side_tasks.append(asyncio.create_task(probe.check(started)))
        while True:
            shard = current[0] = ShardState(shard_selector)
            if shard.sharded:
                shard.watched = await _served(shard_selector, namespaces, clusterwide)
            memo = OperatorMemo(settings)
            memo.shard = shard
            memo.release_leadership = elector.release if elector is not None else None
            # Counted afresh by this run's resume handlers.
            metrics.ACTIVE_SESSIONS.set(0)
            await kopf.operator(standalone=True, clusterwide=clusterwide, namespaces=namespaces,
                                liveness_endpoint=liveness, ready_flag=started, memo=memo,
                                # Only a shard or a leader restarts Kopf. A stop flag still
                                # unset at shutdown costs Kopf's 5 s wait for leftover tasks;
                                # the cleanup handler sets it (handlers/leadership.py).
                                stop_flag=shard.restart if shard.sharded or elector else None)
            if not shard.restart_requested:
                break
            started.clear()
    finally:
        for task in side_tasks:
            task.cancel()
        await asyncio.gather(*side_tasks, return_exceptions=True)
        if elector is not None:
            await asyncio.to_thread(elector.release)


async def _coverage(settings: Settings, watched: list[str] | None) -> None:
    """The leader's share of the coverage report (kube/coverage.py): every instance runs it,
    the one whose Lease sorts first writes it."""
    from .kube.coverage import CoverageReport
    from .kube.transport import RestClient, load_connection

    assert settings.namespace and settings.leader_election_lease
    report = CoverageReport(RestClient(load_connection()), lease=settings.leader_election_lease,
                            namespace=settings.namespace, reporting_instance=settings.pod_name,
                            watched=watched)
    await report.run(settings.health_seconds)
