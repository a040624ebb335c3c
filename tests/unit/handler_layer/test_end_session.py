"""Ending a session: what becomes of its Secret and of the requester's access to it.

A session being deleted leaves its Secret to Kubernetes' garbage collector (the session owns
it), except when deleted with ``propagationPolicy: Orphan``; access to the Secret is revoked
by the operator either way, before the session goes. A session that ends and stays has its
Secret deleted at once. The cluster layer shows the collector doing its part.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from pgjit.core.credentials_secret import left_to_garbage_collector
from pgjit.handlers import sessions
from pgjit.handlers.ending import end_lease

from .fakes import NAMESPACE, World, database_body, role_body, session_body
from .test_open_session import open_session

SECRET = (NAMESPACE, "alice-orders-credentials")


@pytest.mark.parametrize("metadata, left", [
    ({"deletionTimestamp": "2026-12-01T10:00:00Z", "finalizers": ["pgjit.dev/finalizer"]}, True),
    ({"deletionTimestamp": "2026-12-01T10:00:00Z",
      "finalizers": ["orphan", "pgjit.dev/finalizer"]}, False),
    ({"finalizers": ["pgjit.dev/finalizer"]}, False),
    ({}, False)], ids=["deleted", "deleted, orphaning", "ending in place", "bare"])
def test_only_a_session_being_deleted_without_orphaning_leaves_its_secret(metadata, left):
    assert left_to_garbage_collector(metadata) is left


async def _opened(world: World) -> dict:
    world.memo.settings = replace(world.memo.settings, secret_access=True)
    world.databases.append(database_body())
    world.roles.append(role_body())
    body = session_body()
    body["status"] = await open_session(world, body)
    assert body["status"]["phase"] == "Active"
    assert SECRET in world.kube.secrets and SECRET in world.kube.access
    return body


async def test_a_deleted_session_revokes_access_and_leaves_the_secret_to_the_collector(world):
    body = await _opened(world)
    body["metadata"].update(deletionTimestamp="2026-12-01T10:00:00Z",
                            finalizers=["pgjit.dev/finalizer"])
    await sessions.end_on_delete(body=body, name=body["metadata"]["name"], namespace=NAMESPACE,
                                 uid=body["metadata"]["uid"], memo=world.memo,
                                 databases_by_name=world.databases_by_name)
    assert SECRET not in world.kube.access  # revoked now, by the operator
    assert world.kube.left_to_gc == [("Secret", *SECRET, body["metadata"]["uid"])]
    assert SECRET in world.kube.secrets  # until the collector runs
    world.kube.collect_garbage()
    assert SECRET not in world.kube.secrets


async def test_a_session_deleted_with_orphaning_has_its_secret_deleted_by_the_operator(world):
    body = await _opened(world)
    body["metadata"].update(deletionTimestamp="2026-12-01T10:00:00Z",
                            finalizers=["orphan", "pgjit.dev/finalizer"])
    await sessions.end_on_delete(body=body, name=body["metadata"]["name"], namespace=NAMESPACE,
                                 uid=body["metadata"]["uid"], memo=world.memo,
                                 databases_by_name=world.databases_by_name)
    assert SECRET not in world.kube.secrets and SECRET not in world.kube.access
    assert world.kube.left_to_gc == []


async def test_a_session_that_ends_in_place_has_its_secret_deleted_at_once(world):
    body = await _opened(world)
    await end_lease(body, NAMESPACE, body["metadata"]["name"], body["metadata"]["uid"],
                    world.memo, world.databases_by_name, reason="expired")
    assert SECRET not in world.kube.secrets and SECRET not in world.kube.access
    assert world.kube.left_to_gc == []
