"""``/readyz``: 503 with what it waits for until Kopf's startup is done and every watched kind
was listed in every watched namespace; 200 from then on."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest

from pgjit.devstack.ports import free_port
from pgjit.readiness import KINDS, Readiness


async def _get(url: str) -> tuple[int, dict]:
    def get() -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())
    return await asyncio.to_thread(get)


async def _until(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("namespaces", [[], ["team-a", "team-b"]])
async def test_ready_only_after_startup_and_every_list(namespaces, monkeypatch) -> None:
    monkeypatch.setattr("pgjit.readiness.RETRY_SECONDS", 0.01)
    url = f"http://127.0.0.1:{free_port()}/readyz"
    probe = Readiness(namespaces)
    started = asyncio.Event()
    listed: list[tuple[str, str | None]] = []
    refusals = {"roles": 2}  # the API refuses Roles twice (RBAC not there yet)

    def lister(plural: str, namespace: str | None) -> None:
        if refusals.get(plural):
            refusals[plural] -= 1
            raise PermissionError("403 Forbidden")
        listed.append((plural, namespace))

    server = asyncio.create_task(probe.serve(url))
    checker = asyncio.create_task(probe.check(started, lister))
    try:
        await _until(lambda: probe.waiting_for == "startup handlers")
        status, body = await _get_when_serving(url)
        assert (status, body) == (503, {"ready": False, "waitingFor": "startup handlers"})
        assert listed == []
        started.set()
        await asyncio.wait_for(checker, 5)
        status, body = await _get(url)
        assert (status, body) == (200, {"ready": True})
        assert refusals == {"roles": 0}
        expected = {(plural, ns) for plural in KINDS for ns in (namespaces or [None])}
        assert expected <= set(listed)
    finally:
        server.cancel()
        checker.cancel()
        await asyncio.gather(server, checker, return_exceptions=True)


async def _get_when_serving(url: str) -> tuple[int, dict]:
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        try:
            return await _get(url)
        except (urllib.error.URLError, ConnectionError):
            assert asyncio.get_running_loop().time() < deadline, "the endpoint never answered"
            await asyncio.sleep(0.01)
