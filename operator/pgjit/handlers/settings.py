"""Operator-wide settings and shared state (Kubernetes client, engines, metrics server)."""

from __future__ import annotations

import os

import kopf

from .. import GROUP
from ..kube.client import Kube, load_client
from ..kube.engines import EngineRegistry
from . import metrics
from .sessions import SharedPasswords

FINALIZER = f"{GROUP}/finalizer"


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_) -> None:
    # Everything Kopf stores on objects lives under pgjit's own API group, not Kopf's defaults,
    # so other Kopf operators never touch pgjit's finalizer or progress (conventions §1.3-1.4).
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.posting.reporting_component = "pgjit"
    settings.posting.reporting_instance = os.environ.get("POD_NAME", "pgjit")
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.execution.max_workers = int(os.environ.get("PGJIT_THREADS", "16"))
    if os.environ.get("PGJIT_NAMESPACED"):
        settings.scanning.disabled = True
    memo.kube = Kube(load_client())
    memo.engines = EngineRegistry(memo.kube)
    memo.shared_passwords = SharedPasswords()
    port = os.environ.get("PGJIT_METRICS_PORT")
    if port:
        metrics.serve(int(port))


@kopf.on.cleanup()
async def close_engines(memo: kopf.Memo, **_) -> None:
    engines = getattr(memo, "engines", None)
    if engines is not None:
        await engines.close()
