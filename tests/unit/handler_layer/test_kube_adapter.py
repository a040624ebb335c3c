"""The Kubernetes adapter puts what the handlers give it into the requests it sends, and reads
the API server's answers the way the handlers expect.

It runs against a small HTTP server on the loopback interface that answers like the API server
(the paths, verbs and status codes the adapter uses); the cluster layer runs the same adapter
against a real kube-apiserver.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import kopf
import pytest
from aiohttp import web

from pgjit.kube import client, transport
from pgjit.kube.client import Kube
from pgjit.kube.transport import Connection

OWNER = {"apiVersion": "pgjit.dev/v1alpha1", "kind": "DatabaseSession", "name": "s",
         "uid": "uid-s"}


class FakeApiServer:
    """Keeps objects by path; records every request (method, path, headers, body)."""

    def __init__(self) -> None:
        self.objects: dict[str, dict] = {}
        self.requests: list[tuple[str, str, dict, dict | None]] = []
        self.raw_paths: list[str] = []
        self.answer_reads_with: int | None = None
        self.uids = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.text()) if request.can_read_body else None
        self.requests.append((request.method, request.path, dict(request.headers), body))
        self.raw_paths.append(request.raw_path)
        path = request.path
        if request.method == "GET" and self.answer_reads_with:
            return web.json_response({"message": "as told"}, status=self.answer_reads_with)
        if request.method == "POST":
            target = f"{path}/{body['metadata']['name']}"
            if target in self.objects:
                return web.json_response({"message": "already exists"}, status=409)
            self.uids += 1
            stored = {**body, "metadata": {**body["metadata"], "uid": f"uid-{self.uids}",
                                           "resourceVersion": "1"}}
            if "stringData" in stored:
                stored["data"] = {k: base64.b64encode(v.encode()).decode()
                                  for k, v in stored.pop("stringData").items()}
            self.objects[target] = stored
            return web.json_response(stored, status=201)
        if request.method == "GET" and path in self.objects:
            return web.json_response(self.objects[path])
        if request.method == "GET" and request.query.get("labelSelector") is not None:
            return web.json_response({"items": [o for p, o in self.objects.items()
                                                if p.startswith(path + "/")]})
        if request.method == "DELETE" and request.query.get("labelSelector") is not None:
            return web.json_response({"items": self._delete_selected(
                path, request.query["labelSelector"])})
        if request.method == "DELETE" and path in self.objects:
            if body["preconditions"]["uid"] != self.objects[path]["metadata"]["uid"]:
                return web.json_response({"message": "uid precondition"}, status=409)
            return web.json_response(self.objects.pop(path))
        if request.method == "PUT" and path in self.objects:
            self.objects[path] = {**body, "metadata": {
                **body["metadata"], "uid": self.objects[path]["metadata"]["uid"]}}
            return web.json_response(self.objects[path])
        if request.method == "PATCH" and path.removesuffix("/status") in self.objects:
            return web.json_response({})
        return web.json_response({"message": "not found"}, status=404)


    def _delete_selected(self, collection: str, selector: str) -> list[dict]:
        """A collection's DELETE, for the one selector form the adapter sends: key in (a,b)."""
        key, _, values = selector.partition(" in ")
        wanted = set(values.strip("()").split(","))
        selected = [p for p, o in self.objects.items() if p.rpartition("/")[0] == collection
                    and o["metadata"].get("labels", {}).get(key) in wanted]
        return [self.objects.pop(p) for p in selected]


@pytest.fixture
async def server() -> AsyncIterator[tuple[FakeApiServer, Kube]]:
    fake = FakeApiServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    kube = Kube(Connection(kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}",
                                               token="secret-token")))
    try:
        yield fake, kube
    finally:
        await kube.close()
        await runner.cleanup()


SECRET = "/api/v1/namespaces/team-a/secrets/s-credentials"


async def test_written_secret_carries_labels_annotations_owner_and_the_token(server):
    fake, kube = server
    await kube.write_secret("team-a", "s-credentials", {"username": "alice"},
                            labels={"pgjit.dev/session": "s"},
                            annotations={"pgjit.dev/session": "s"}, owner=OWNER)
    ((method, path, headers, body),) = fake.requests
    assert (method, path) == ("POST", "/api/v1/namespaces/team-a/secrets")
    assert headers["Authorization"] == "Bearer secret-token"
    assert body["metadata"]["annotations"] == {"pgjit.dev/session": "s"}
    assert body["metadata"]["labels"] == {"pgjit.dev/session": "s",
                                          "pgjit.dev/session-uid": "uid-s"}
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-s"
    assert body["stringData"] == {"username": "alice"}
    assert await kube.read_secret("team-a", "s-credentials") == {"username": b"alice"}


async def test_a_retry_replaces_its_own_secret_and_refuses_someone_elses(server):
    fake, kube = server
    await kube.write_secret("team-a", "s-credentials", {"password": "one"}, labels={},
                            owner=OWNER)
    await kube.write_secret("team-a", "s-credentials", {"password": "two"}, labels={},
                            owner=OWNER)
    assert [m for m, *_ in fake.requests] == ["POST", "POST", "GET", "PUT"]
    assert fake.objects[SECRET]["stringData"] == {"password": "two"}
    fake.objects[SESSION_S] = {"metadata": {"name": "s", "uid": "uid-s"}}  # its owner lives
    with pytest.raises(client.NotOwned, match='Secret "s-credentials" already exists'):
        await kube.write_secret("team-a", "s-credentials", {}, labels={},
                                owner={**OWNER, "name": "t", "uid": "uid-t"})
    assert fake.objects[SECRET]["stringData"] == {"password": "two"}


SESSION_S = "/apis/pgjit.dev/v1alpha1/namespaces/team-a/databasesessions/s"


@pytest.mark.parametrize("owner_now", [None, {"metadata": {"name": "s", "uid": "uid-s2"}}],
                         ids=["owner deleted", "owner re-created under the same name"])
async def test_a_secret_an_ended_session_left_to_the_garbage_collector_is_replaced(server,
                                                                                   owner_now):
    """A session deleted leaves its Secret to the collector; one re-created under the same
    name at once finds it still there, and takes its place instead of failing."""
    fake, kube = server
    await kube.write_secret("team-a", "s-credentials", {"password": "old"}, labels={},
                            owner=OWNER)
    old_uid = fake.objects[SECRET]["metadata"]["uid"]
    if owner_now is not None:
        fake.objects[SESSION_S] = owner_now
    fake.requests.clear()
    await kube.write_secret("team-a", "s-credentials", {"password": "new"}, labels={},
                            owner={**OWNER, "uid": "uid-s2"})
    assert [(m, p) for m, p, *_ in fake.requests] == [
        ("POST", "/api/v1/namespaces/team-a/secrets"), ("GET", SECRET), ("GET", SESSION_S),
        ("DELETE", SECRET), ("POST", "/api/v1/namespaces/team-a/secrets")]
    assert fake.requests[3][3]["preconditions"] == {"uid": old_uid}
    stored = fake.objects[SECRET]
    assert stored["data"] == {"password": base64.b64encode(b"new").decode()}
    assert stored["metadata"]["ownerReferences"][0]["uid"] == "uid-s2"


@pytest.mark.parametrize("owners", [
    [],
    [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "s", "uid": "uid-d"}],
    [{"apiVersion": "pgjit.dev/v1alpha1", "kind": "DatabaseSession", "name": "gone",
      "uid": "uid-g"},
     {"apiVersion": "v1", "kind": "ConfigMap", "name": "keep", "uid": "uid-c"}]],
    ids=["nobody's", "a Deployment's", "also a ConfigMap's"])
async def test_a_secret_with_any_other_owner_is_never_replaced(server, owners):
    fake, kube = server
    fake.objects[SECRET] = {"metadata": {"name": "s-credentials", "uid": "uid-x",
                                         "resourceVersion": "1", "ownerReferences": owners},
                            "data": {}}
    with pytest.raises(client.NotOwned):
        await kube.write_secret("team-a", "s-credentials", {}, labels={}, owner=OWNER)
    assert fake.objects[SECRET]["metadata"]["uid"] == "uid-x"
    assert not [m for m, *_ in fake.requests if m == "DELETE"]


async def test_deletes_of_objects_written_before_a_restart_carry_the_uid_precondition(server):
    """A Secret this process did not write (an earlier process did) is read first, and
    deleted only if the session owns it, by its uid: someone else's is left alone."""
    fake, kube = server
    await kube.write_secret("team-a", "s-credentials", {}, labels={}, owner=OWNER)
    restarted = Kube(kube.connection)
    try:
        await restarted.delete_secret("team-a", "s-credentials", "uid-other")  # not its owner
        assert SECRET in fake.objects
        await restarted.delete_secret("team-a", "s-credentials", "uid-s")
    finally:
        await restarted.close()
    method, path, _headers, body = fake.requests[-1]
    assert (method, path, body["preconditions"]) == ("DELETE", SECRET, {"uid": "uid-1"})
    assert SECRET not in fake.objects


SECRETS = "/api/v1/namespaces/team-a/secrets"


async def test_sessions_ending_together_have_their_secrets_deleted_in_one_request(server):
    fake, kube = server
    owners = [{**OWNER, "name": f"s{i}", "uid": f"uid-s{i}"} for i in range(3)]
    for owner in owners:
        await kube.write_secret("team-a", f"{owner['name']}-credentials", {}, labels={},
                                owner=owner)
    fake.objects[f"{SECRETS}/other"] = {"metadata": {"name": "other", "labels": {
        "pgjit.dev/session-uid": "uid-someone-else"}}}
    fake.requests.clear()
    await asyncio.gather(*(kube.delete_secret("team-a", f"{o['name']}-credentials", o["uid"])
                           for o in owners))
    [(method, path, _headers, body)] = fake.requests
    assert (method, path, body) == ("DELETE", SECRETS, None)
    assert parse_qs(urlsplit(fake.raw_paths[-1]).query) == {
        "labelSelector": ["pgjit.dev/session-uid in (uid-s0,uid-s1,uid-s2)"]}
    assert list(fake.objects) == [f"{SECRETS}/other"]


async def test_a_secret_of_someone_else_under_the_name_is_not_deleted_by_label(server):
    """The label selects a session's own objects only: a same-named Secret written by
    someone else after this session's own was deleted carries no such label."""
    fake, kube = server
    await kube.write_secret("team-a", "s-credentials", {}, labels={}, owner=OWNER)
    del fake.objects[SECRET]  # deleted by hand, and then someone else's of the same name
    fake.objects[SECRET] = {"metadata": {"name": "s-credentials", "uid": "uid-x"}}
    await kube.delete_secret("team-a", "s-credentials", "uid-s")
    assert fake.objects[SECRET]["metadata"]["uid"] == "uid-x"


async def test_access_objects_are_created_role_first_and_removed(server):
    fake, kube = server
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "s-credentials"}, "rules": []}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "s-credentials"}, "subjects": [], "roleRef": {}}
    await kube.write_reader_role("team-a", role, owner=OWNER)
    await kube.bind_reader_role("team-a", binding, owner=OWNER)
    assert [p for _, p, *_ in fake.requests] == [
        "/apis/rbac.authorization.k8s.io/v1/namespaces/team-a/roles",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/team-a/rolebindings"]
    await kube.revoke_secret_access("team-a", "s-credentials", "uid-s")
    assert not fake.objects


async def test_absent_objects_read_as_none(server):
    fake, kube = server
    assert await kube.read_secret("team-a", "missing") is None
    assert await kube.read_configmap("team-a", "missing") is None


async def test_an_unreadable_traits_configmap_reads_as_none(server):
    # The chart grants the ConfigMap read only when traits are configured.
    fake, kube = server
    fake.answer_reads_with = 403
    assert await kube.read_configmap("team-a", "traits") is None


async def test_other_failures_reach_the_caller_with_their_status(server):
    fake, kube = server
    fake.answer_reads_with = 500
    with pytest.raises(transport.ApiError) as raised:
        await kube.read_secret("team-a", "s")
    assert raised.value.status == 500 and "as told" in str(raised.value)
    fake.answer_reads_with = 403
    with pytest.raises(transport.Forbidden):
        await kube.read_secret("team-a", "s")


async def test_names_are_quoted_into_paths(server):
    fake, kube = server
    await kube.read_secret("team-a", "odd/name")
    assert fake.raw_paths[-1] == "/api/v1/namespaces/team-a/secrets/odd%2Fname"


async def test_annotate_merge_patches_the_annotations_and_ignores_a_vanished_object(server):
    fake, kube = server
    path = "/apis/pgjit.dev/v1alpha1/namespaces/team-a/databasesessions/s"
    fake.objects[path] = {"metadata": {"name": "s"}}
    await kube.annotate("pgjit.dev", "v1alpha1", "databasesessions", "team-a", "s",
                        {"approval.pgjit.dev/check": "reviews:1"})
    method, seen, headers, body = fake.requests[-1]
    assert (method, seen) == ("PATCH", path)
    assert headers["Content-Type"] == "application/merge-patch+json"
    assert body == {"metadata": {"annotations": {"approval.pgjit.dev/check": "reviews:1"}}}
    # Deleted meanwhile: nothing left to poke, and no error for the caller.
    await kube.annotate("pgjit.dev", "v1alpha1", "databasesessions", "team-a", "gone",
                        {"approval.pgjit.dev/check": "reviews:1"})
    assert fake.requests[-1][1].endswith("/gone")
