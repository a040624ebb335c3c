"""``--readiness``: an HTTP endpoint that answers 200 only once the operator is watching.

Kopf's ``/healthz`` (``--liveness``) proves that the event loop answers; it answers as soon as
the process is up, also while the operator cannot watch anything (startup handlers still
running, or RBAC that lets it start but not list its kinds). Readiness here means: Kopf's
startup handlers have finished, which is when Kopf starts its watch streams, and the operator,
with its own credentials, has listed each kind it watches (Databases, Roles, DatabaseSessions,
DatabaseSessionReviews)
in every namespace it watches: the request each watch stream begins with. From then on the
endpoint stays ready; a failing watch later on is Kopf's to retry, and restarting the process
is liveness's job. Until then it answers 503 with what it is waiting for.

With leader election, a standby is ready too once it has listed the kinds (it could take over):
a rolling update with ``maxUnavailable: 0`` waits for the new pod to be Ready before it stops
the old one, and a standby that never became Ready would block every rollout. The answer says
which it is (``"role": "leader"`` or ``"standby"``), and ``/leader`` answers this process's
election identity: what a standby asks to tell a dead leader from a slow one
(kube/leadership.py).
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp.web

from . import GROUP, VERSION

if TYPE_CHECKING:
    from .kube.transport import RestClient

KINDS = ("databases", "roles", "databasesessions", "databasesessionreviews")
RETRY_SECONDS = 2.0

logger = logging.getLogger(__name__)


class Readiness:
    def __init__(self, namespaces: list[str], *, identity: str | None = None) -> None:
        self.namespaces = namespaces
        self.waiting_for = "startup handlers"
        self.ready = False
        #: "leader" or "standby" with leader election; None without.
        self.role: str | None = None
        self.identity = identity

    async def check(self, started: asyncio.Event,
                    lister: Callable[[str, str | None], None] | None = None) -> None:
        """Wait for Kopf's startup, then list every watched kind once with the operator's client.

        ``lister(plural, namespace)`` raises when the list fails; by default it is a limit=1
        list through the operator's own Kubernetes client.
        """
        await started.wait()
        if lister is None:
            from .kube.transport import RestClient, load_connection

            rest = RestClient(load_connection())

            def lister(plural: str, namespace: str | None) -> None:
                self._list(rest, plural, namespace)

        while True:
            try:
                for plural in KINDS:
                    everywhere: list[str | None] = [None]  # one cluster-wide list
                    for namespace in self.namespaces or everywhere:
                        self.waiting_for = f"list {plural}" + (f" in {namespace}" if namespace else "")
                        await asyncio.to_thread(lister, plural, namespace)
            except Exception as error:  # noqa: BLE001 - any failure means: not watching yet
                logger.warning("Not ready: %s failed: %s", self.waiting_for, error)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            self.ready, self.waiting_for = True, ""
            logger.info("Ready: watching %s", ", ".join(KINDS))
            return

    @staticmethod
    def _list(rest: RestClient, plural: str, namespace: str | None) -> None:
        scope = f"/namespaces/{namespace}" if namespace else ""
        rest.request("GET", f"/apis/{GROUP}/{VERSION}{scope}/{plural}", params={"limit": "1"},
                     timeout=10)

    async def _respond(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        role = {"role": self.role} if self.role else {}
        if self.ready:
            return aiohttp.web.json_response({"ready": True, **role})
        return aiohttp.web.json_response({"ready": False, "waitingFor": self.waiting_for,
                                          **role}, status=503)

    async def _leader(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"identity": self.identity, "role": self.role})

    async def serve(self, url: str) -> None:
        """Serve the endpoint at ``url`` (``http://HOST:PORT/PATH``) until cancelled."""
        path = urllib.parse.urlsplit(url).path or "/readyz"
        await _serve(url, [aiohttp.web.get(path, self._respond),
                           aiohttp.web.get("/leader", self._leader)])


async def serve_liveness(url: str) -> None:
    """``/healthz`` answering while the event loop runs, as Kopf's does, for a process whose
    Kopf is not always running (a standby; a shard restarting its watches)."""

    async def alive(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({})

    await _serve(url, [aiohttp.web.get(urllib.parse.urlsplit(url).path or "/healthz", alive)])


async def _serve(url: str, routes: list) -> None:
    """Serve ``routes`` on the host and port of ``url`` until cancelled."""
    parts = urllib.parse.urlsplit(url)
    app = aiohttp.web.Application()
    app.add_routes(routes)
    runner = aiohttp.web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await aiohttp.web.TCPSite(runner, parts.hostname, parts.port).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
