"""How Kopf calls pgjit's index functions: inline on the event loop, and with what result.

Kopf runs a plain function in its thread pool (a thread hop and a shielded task per object and
event), a coroutine function in place. The index functions are registered through coroutine
wrappers; these tests call them the way Kopf does, through its own invocation.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
from kopf._core.actions import invocation

import pgjit.handlers  # noqa: F401  # registers every handler with Kopf's default registry
from pgjit.handlers.indexes import SESSION_INDEX
from pgjit.vocabulary import SessionPhase

NAMESPACE = "team"


def _index_handlers() -> dict[str, Any]:
    registry = kopf.get_default_registry()
    return {str(handler.id): handler for handler in registry._indexing.get_all_handlers()}


EXPECTED = {"roles_by_namespace", "label_rules_by_namespace", "databases_by_name",
            "reviews_by_session", "session_index"}
SESSION_PARTS = {"live_sessions_by_database", "live_sessions_by_id", "active_sessions_by_user",
                 "active_sessions_by_database", "unopened_sessions", "awaiting_approval",
                 "queued_sessions"}


def test_every_index_is_registered_under_its_function_name():
    assert EXPECTED <= set(_index_handlers())


def test_sessions_have_one_index_with_every_part():
    # Kopf runs each index of a kind for each of its watch events: the session indexes are one.
    registry = kopf.get_default_registry()
    session_indexes = [h for h in registry._indexing.get_all_handlers()
                       if str(h.id) in SESSION_PARTS | {"session_index"}]
    assert [str(h.id) for h in session_indexes] == ["session_index"]
    assert set(SESSION_INDEX.views({})) == SESSION_PARTS


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_kopf_runs_the_index_inline(name: str):
    handler = _index_handlers()[name]
    assert invocation.is_async_fn(handler.fn), f"{name} would run in Kopf's thread pool"


def _session_body() -> dict:
    return {"apiVersion": "pgjit.dev/v1alpha1", "kind": "DatabaseSession",
            "metadata": {"name": "s1", "namespace": NAMESPACE, "uid": "u-1",
                         "creationTimestamp": "2026-12-01T10:00:00Z"},
            "spec": {"user": "alice", "databaseRef": {"name": "orders"},
                     "databaseName": "app", "duration": "1h"},
            "status": {"phase": SessionPhase.ACTIVE, "username": "alice",
                       "secretName": "s1-credentials",
                       "expiresAt": "2026-12-01T11:00:00Z"}}


def _invoke(name: str, body: dict) -> Any:
    """The index's result as Kopf gets it: through ``invocation.invoke``, awaited."""
    handler = _index_handlers()[name]
    meta = body["metadata"]
    kwargs = {"body": body, "meta": meta, "spec": body.get("spec", {}),
              "status": body.get("status", {}), "name": meta["name"],
              "namespace": meta["namespace"], "uid": meta["uid"],
              "labels": meta.get("labels", {}), "annotations": meta.get("annotations", {})}
    return asyncio.run(invocation.invoke(handler.fn, kwargs=kwargs))


def test_kopf_gets_the_index_entries_not_a_coroutine():
    entries = _invoke("session_index", _session_body())
    # Kopf files a result that is not a dict under the key None: an unawaited coroutine would
    # have been indexed so, and every handler reading the index would then fail.
    assert isinstance(entries, dict) and entries
    assert None not in entries
    parts = {key[0] for key in entries}
    assert parts == {"live_sessions_by_database", "live_sessions_by_id", "active_sessions_by_user",
                     "active_sessions_by_database"}  # Active: neither unopened nor waiting
    assert all(str(key[1][0] if isinstance(key[1], tuple) else key[1]).startswith(NAMESPACE)
               for key in entries)
