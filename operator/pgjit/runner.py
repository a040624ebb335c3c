"""``pgjit run``: the operator process (Kopf with pgjit's handlers)."""

from __future__ import annotations

import asyncio
import logging
import os

import kopf


def run(*, namespaces: list[str], all_namespaces: bool, liveness: str | None,
        metrics_port: int | None, verbose: bool = False, log_json: bool = False,
        readiness: str | None = None) -> int:
    if metrics_port:
        os.environ["PGJIT_METRICS_PORT"] = str(metrics_port)
    if namespaces and not all_namespaces:
        # Namespaced RBAC has no cluster-wide list/watch of namespaces for Kopf's scanning.
        os.environ["PGJIT_NAMESPACED"] = "1"
    # Every line says when and which object (kopf's own default would print bare messages such
    # as "Handler 'lease' succeeded." with no object name); JSON lines carry it as a field.
    kopf.configure(verbose=verbose,
                   log_format=kopf.LogFormat.JSON if log_json else kopf.LogFormat.FULL,
                   log_prefix=not log_json, log_refkey="object" if log_json else None)
    logging.getLogger("psycopg.pool").setLevel(logging.WARNING)
    from . import handlers  # noqa: F401 - registers the handlers
    asyncio.run(_operate(namespaces=namespaces, clusterwide=all_namespaces or not namespaces,
                         liveness=liveness, readiness=readiness))
    return 0


async def _operate(*, namespaces: list[str], clusterwide: bool, liveness: str | None,
                   readiness: str | None) -> None:
    from .readiness import Readiness

    # Kopf raises this flag once its startup handlers are done and its watchers may start.
    started = asyncio.Event()
    probe = Readiness([] if clusterwide else namespaces)
    side_tasks = ([asyncio.create_task(probe.serve(readiness)),
                   asyncio.create_task(probe.check(started))] if readiness else [])
    try:
        await kopf.operator(standalone=True, clusterwide=clusterwide, namespaces=namespaces,
                            liveness_endpoint=liveness, ready_flag=started)
    finally:
        for task in side_tasks:
            task.cancel()
        await asyncio.gather(*side_tasks, return_exceptions=True)
