"""The Kubernetes adapter puts what the handlers give it into the objects it sends."""

from __future__ import annotations

from types import SimpleNamespace

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from pgjit.kube import client
from pgjit.kube.client import Kube


class RecordingCoreApi:
    def __init__(self) -> None:
        self.created: list[dict] = []

    def create_namespaced_secret(self, namespace: str, body: dict) -> SimpleNamespace:
        self.created.append(body)
        return SimpleNamespace(metadata=SimpleNamespace(uid="uid-secret"))

    # Only needed when the create conflicts, which it does not here.
    def read_namespaced_secret(self, name: str, namespace: str) -> None:
        raise AssertionError("not expected")

    replace_namespaced_secret = read_namespaced_secret


async def _inline(function, *args, **kwargs):
    return function(*args, **kwargs)


async def test_written_secret_carries_labels_annotations_and_owner(monkeypatch):
    # Calls run inline, not in asyncio's worker threads: a thread left behind would receive the
    # signals other unit tests send to this process (test_client_connect.py).
    monkeypatch.setattr(client.asyncio, "to_thread", _inline)
    kube = Kube(kubernetes.client.ApiClient())
    core = RecordingCoreApi()
    kube.core = core  # type: ignore[assignment]
    await kube.write_secret("team-a", "s-credentials", {"username": "alice"},
                            labels={"pgjit.dev/session": "s"},
                            annotations={"pgjit.dev/session": "s"},
                            owner={"apiVersion": "pgjit.dev/v1alpha1", "kind": "DatabaseSession",
                                   "name": "s", "uid": "uid-s"})
    (body,) = core.created
    assert body["metadata"]["annotations"] == {"pgjit.dev/session": "s"}
    assert body["metadata"]["labels"] == {"pgjit.dev/session": "s"}
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-s"
    assert body["stringData"] == {"username": "alice"}


class AnsweringCoreApi(RecordingCoreApi):
    """Answers every read with the given HTTP status."""

    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status

    def read_namespaced_secret(self, name: str, namespace: str) -> None:
        raise ApiException(status=self.status, reason="test")

    read_namespaced_config_map = read_namespaced_secret


def _kube_answering(monkeypatch, status: int) -> Kube:
    monkeypatch.setattr(client.asyncio, "to_thread", _inline)
    kube = Kube(kubernetes.client.ApiClient())
    kube.core = AnsweringCoreApi(status)  # type: ignore[assignment]
    return kube


async def test_absent_objects_read_as_none(monkeypatch):
    kube = _kube_answering(monkeypatch, 404)
    assert await kube.read_secret("team-a", "missing") is None
    assert await kube.read_configmap("team-a", "missing") is None


async def test_an_unreadable_traits_configmap_reads_as_none(monkeypatch):
    # The chart grants the ConfigMap read only when traits are configured.
    assert await _kube_answering(monkeypatch, 403).read_configmap("team-a", "traits") is None


async def test_other_failures_reach_the_caller_as_the_client_raised_them(monkeypatch):
    kube = _kube_answering(monkeypatch, 500)
    with pytest.raises(ApiException) as raised:
        await kube.read_secret("team-a", "s")
    assert raised.value.status == 500
    with pytest.raises(client.Forbidden):
        await _kube_answering(monkeypatch, 403).read_secret("team-a", "s")
