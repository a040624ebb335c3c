"""The Kubernetes adapter puts what the handlers give it into the objects it sends."""

from __future__ import annotations

from types import SimpleNamespace

import kubernetes

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
