"""The operator's memo (settings and shared state) and Kopf's own settings, at start."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import kopf

from .. import GROUP
from ..api.common import KOPF_STATUS_FIELD
from ..kube.client import Kube
from ..kube.engines import EngineRegistry
from ..kube.transport import load_connection
from ..settings import Settings
from . import metrics
from .passwords import SharedPasswords
from .shard import ShardState

FINALIZER = f"{GROUP}/finalizer"


@dataclass
class OperatorMemo:
    """What every handler gets as ``memo``: Kopf hands each object a shallow copy, so these are
    shared by all. ``kube`` and ``engines`` exist from the startup handler on."""

    settings: Settings
    kube: Kube = field(init=False)
    engines: EngineRegistry = field(init=False)
    shared_passwords: SharedPasswords = field(default_factory=SharedPasswords)
    #: Which Databases this instance serves (handlers/shard.py); everything by default.
    shard: ShardState = field(default_factory=ShardState)
    #: Gives the leader-election Lease up (None without election; handlers/leadership.py).
    release_leadership: Callable[[], None] | None = None
    #: How many namespaces Kopf watches each kind in (1: cluster-wide); None when a pattern
    #: makes it open-ended. It bounds Kopf's connections to the API server (see login).
    watched_namespaces: int | None = 1


#: Watch streams Kopf may hold open per watched namespace: the kinds pgjit's handlers and
#: indexes watch (tests/unit/handler_layer/test_kopf_connections.py counts them) plus Kopf's
#: own scanning of namespaces and CRDs, with room to spare.
WATCH_STREAMS_PER_NAMESPACE = 8
#: Connections beyond the watch streams, for Kopf's patches and Events: a burst of sessions
#: queues for them instead of opening a TLS connection per concurrent patch.
REQUEST_CONNECTIONS = 16


def kopf_connection_limit(watched_namespaces: int | None) -> int | None:
    """Kopf's own connector has no limit: a burst of 500 sessions opened 52 to 274 TLS
    connections, each holding a 128 KiB read buffer until it idles out (README, Performance).
    Every watch stream holds a connection for good, so the limit leaves one for each, and
    none at all when the number of namespaces is open-ended (a pattern)."""
    if watched_namespaces is None:
        return None
    return WATCH_STREAMS_PER_NAMESPACE * max(1, watched_namespaces) + REQUEST_CONNECTIONS


@kopf.on.login()
async def login(memo: OperatorMemo, **_) -> kopf.ConnectionInfo | kopf.AiohttpSession:
    """Kopf's credentials, found as pgjit's own client finds them (kube/transport.py), on a
    connector with a limit. Kopf calls it again after a 401, so a rotated ServiceAccount
    token is read afresh (and Kopf closes the session it replaces)."""
    connection = load_connection()
    limit = kopf_connection_limit(getattr(memo, "watched_namespaces", None))
    if limit is None:
        return connection.info
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, ssl=connection.ssl_context()),
        headers=connection.headers())
    return kopf.AiohttpSession(aiohttp_session=session, server=connection.server,
                               default_namespace=connection.info.default_namespace)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: OperatorMemo, **_) -> None:
    # Everything Kopf stores on objects lives under pgjit's own API group, not Kopf's defaults,
    # so other Kopf operators never touch pgjit's finalizer or progress (conventions §1.3-1.4).
    settings.persistence.finalizer = FINALIZER
    # Kopf's bookkeeping goes in status.pgjit, next to the status the handlers write: the
    # patch that records a handler as done is then one status patch, not a status patch plus
    # a patch of the object's annotations (one API write less per session opened).
    settings.persistence.progress_storage = kopf.StatusProgressStorage(name=KOPF_STATUS_FIELD)
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(name=KOPF_STATUS_FIELD)
    settings.posting.reporting_component = "pgjit"
    settings.posting.reporting_instance = memo.settings.pod_name
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.execution.max_workers = memo.settings.threads
    # A handler's unexpected errors are almost always the API server or the network being away
    # for a moment (a restart, a failover); Kopf's default 60 s left a session opened during
    # an API server restart waiting a minute after the server was back (tests/faults).
    settings.execution.default_backoff = 10
    if memo.settings.namespaced:
        settings.scanning.disabled = True
    memo.kube = Kube(load_connection())
    memo.engines = EngineRegistry(memo.kube,
                                  prepared_statements=memo.settings.prepared_statements)
    if memo.settings.metrics_port:
        metrics.serve(memo.settings.metrics_port)


@kopf.on.cleanup()
async def close_engines(memo: OperatorMemo, **_) -> None:
    engines = getattr(memo, "engines", None)
    if engines is not None:
        await engines.close()
    kube = getattr(memo, "kube", None)
    if kube is not None:
        await kube.close()
