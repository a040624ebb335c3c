"""Kopf's connections to the API server have a limit that leaves every watch stream its own.

A watch stream holds its connection for as long as it runs; if the streams alone used up the
limit, no patch could ever be sent. The limit is therefore derived from the kinds pgjit's
handlers watch, counted here from Kopf's registry, times the namespaces watched.
"""

from __future__ import annotations

import kopf
import pytest

import pgjit.handlers  # noqa: F401  # registers every handler with Kopf's default registry
from pgjit.handlers.settings import (REQUEST_CONNECTIONS, WATCH_STREAMS_PER_NAMESPACE,
                                     OperatorMemo, kopf_connection_limit, login)
from pgjit.settings import Settings

#: Kopf's own streams besides the handlers' kinds: namespaces and CRDs, when it scans.
KOPF_SCANNING_STREAMS = 2


def _watched_kinds() -> set[str]:
    registry = kopf.get_default_registry()
    selectors = set()
    for part in (registry._indexing, registry._watching, registry._changing,
                 registry._spawning):
        selectors |= part.get_all_selectors()
    return {selector.plural or selector.any_name for selector in selectors}


def test_the_kinds_watched_and_kopfs_scanning_fit_the_per_namespace_allowance():
    kinds = _watched_kinds()
    assert {"databasesessions", "databases", "roles"} <= kinds  # the count is of real kinds
    assert len(kinds) + KOPF_SCANNING_STREAMS < WATCH_STREAMS_PER_NAMESPACE


@pytest.mark.parametrize("namespaces, limit", [(1, WATCH_STREAMS_PER_NAMESPACE + REQUEST_CONNECTIONS),
                                               (3, 3 * WATCH_STREAMS_PER_NAMESPACE
                                                + REQUEST_CONNECTIONS),
                                               (None, None)])
def test_the_limit_grows_with_the_namespaces_and_is_off_for_patterns(namespaces, limit):
    assert kopf_connection_limit(namespaces) == limit


@pytest.fixture
def kubeconfig(tmp_path, monkeypatch):
    path = tmp_path / "kubeconfig"
    path.write_text(
        "current-context: c\n"
        "contexts: [{name: c, context: {cluster: k, user: u, namespace: team}}]\n"
        "clusters: [{name: k, cluster: {server: 'http://127.0.0.1:6443'}}]\n"
        "users: [{name: u, user: {token: t0k3n}}]\n")
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


async def test_kopf_logs_in_on_a_connector_with_that_limit(kubeconfig):
    memo = OperatorMemo(Settings())
    memo.watched_namespaces = 2
    context = await login(memo=memo)
    assert isinstance(context, kopf.AiohttpSession)
    try:
        assert context.server == "http://127.0.0.1:6443"
        assert context.default_namespace == "team"
        assert context.aiohttp_session.connector.limit == kopf_connection_limit(2)
        assert context.aiohttp_session.headers["Authorization"] == "Bearer t0k3n"
    finally:
        await context.aiohttp_session.close()


async def test_with_a_namespace_pattern_kopf_keeps_its_own_unlimited_connector(kubeconfig):
    memo = OperatorMemo(Settings())
    memo.watched_namespaces = None
    context = await login(memo=memo)
    assert isinstance(context, kopf.ConnectionInfo) and context.token == "t0k3n"
