"""``pgjit run``: the operator process (Kopf with pgjit's handlers)."""

from __future__ import annotations

import asyncio
import logging
import os

import kopf


def run(*, namespaces: list[str], all_namespaces: bool, liveness: str | None,
        metrics_port: int | None, verbose: bool = False, log_json: bool = False) -> int:
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
    asyncio.run(kopf.operator(
        standalone=True, clusterwide=all_namespaces or not namespaces,
        namespaces=namespaces, liveness_endpoint=liveness))
    return 0
