"""The session index's parts read as the separate indexes they replace.

Each part is checked against the index it replaces: the part's own function, its entries kept
in Kopf's real ``OperatorIndexer`` (as before the merge), against the part view of one combined
``OperatorIndexer`` fed the same objects, including objects that change and go.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kopf._cogs.structs.bodies import Body
from kopf._core.engines.indexing import OperatorIndexer

from pgjit.handlers import approvals, indexes
from pgjit.handlers.databases import LiveSessions
from pgjit.handlers.indexes import SESSION_INDEX
from pgjit.handlers.triggers import IndexParts
from pgjit.vocabulary import Reason, SessionPhase

NAMESPACE = "team"


def _session(name: str, *, user: str, database: str, phase: str | None,
             awaiting: bool = False) -> dict:
    status: dict[str, Any] = {}
    if phase:
        status = {"phase": phase, "username": user, "secretName": f"{name}-credentials",
                  "expiresAt": "2026-12-01T11:00:00Z"}
    if awaiting:
        status["conditions"] = [{"type": "Ready", "status": "False",
                                 "reason": Reason.AWAITING_APPROVAL}]
        status["approval"] = {"deadline": "2026-12-01T10:30:00Z"}
    return {"apiVersion": "pgjit.dev/v1alpha1", "kind": "DatabaseSession",
            "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}",
                         "creationTimestamp": "2026-12-01T10:00:00Z"},
            "spec": {"user": user, "databaseRef": {"name": database}, "databaseName": "app",
                     "duration": "1h"},
            "status": status}


def _kwargs(body: dict) -> dict[str, Any]:
    meta = body["metadata"]
    return {"body": body, "meta": meta, "spec": body["spec"], "status": body["status"],
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]}


PARTS = {"live_sessions_by_database": indexes.live_sessions_by_database,
         "live_sessions_by_id": indexes.live_sessions_by_id,
         "active_sessions_by_user": indexes.active_sessions_by_user,
         "active_sessions_by_database": indexes.active_sessions_by_database,
         "unopened_sessions": approvals.unopened_sessions,
         "awaiting_approval": approvals.awaiting_approval}


def _as_dict(mapping) -> dict:
    return {key: sorted(map(repr, values)) for key, values in mapping.items()}


def test_each_part_reads_as_its_own_index_would_through_changes_and_deletions():
    separate = {name: OperatorIndexer() for name in PARTS}
    combined = OperatorIndexer()

    def observe(body: dict) -> None:
        key = (NAMESPACE, body["metadata"]["name"])
        for name, fn in PARTS.items():
            separate[name].replace(key, fn(**_kwargs(body)))
        combined.replace(key, SESSION_INDEX.entries(**_kwargs(body)))

    def forget(name: str) -> None:
        for indexer in (*separate.values(), combined):
            indexer.discard((NAMESPACE, name))

    def same() -> None:
        views = SESSION_INDEX.views(combined.index)
        for name in PARTS:
            own, view = separate[name].index, views[name]
            assert _as_dict(view) == _as_dict(own), name
            assert len(view) == len(own), name
            for key in own:
                assert key in view and sorted(map(repr, view[key])) == \
                    sorted(map(repr, own[key]))
            assert view.get(("elsewhere", "nothing"), ()) == ()

    observe(_session("s1", user="alice", database="orders", phase=None))
    observe(_session("s2", user="bob", database="orders", phase=SessionPhase.PENDING,
                     awaiting=True))
    observe(_session("s3", user="alice", database="billing", phase=SessionPhase.ACTIVE))
    observe(_session("s4", user="carol", database="orders", phase=SessionPhase.PENDING,
                     awaiting=True))
    same()
    assert len(SESSION_INDEX.views(combined.index)["awaiting_approval"]) == 2
    observe(_session("s1", user="alice", database="orders", phase=SessionPhase.ACTIVE))
    observe(_session("s2", user="bob", database="orders", phase=SessionPhase.ENDED))
    same()
    forget("s3")
    forget("s4")
    same()
    views = SESSION_INDEX.views(combined.index)
    assert len(views["awaiting_approval"]) == 0 and not list(views["awaiting_approval"])
    assert set(views["live_sessions_by_database"][(NAMESPACE, "orders")]) == {"team/s1/uid-s1"}
    # The sweep's question, one lease id at a time: a key lookup, not a pass over the index.
    live = LiveSessions(views["live_sessions_by_id"])
    assert "team/s1/uid-s1" in live
    assert "team/s2/uid-s2" not in live  # ended
    assert "team/s3/uid-s3" not in live  # gone


def test_a_listed_part_may_give_one_entry_per_object_only():
    parts = IndexParts.__new__(IndexParts)  # not registered with Kopf: only its entries
    parts.id, parts._parts, parts._listed = "test", {}, set()

    @parts.part(listed=True)
    def two(**_):
        return {"a": 1, "b": 2}

    try:
        parts.entries()
    except AssertionError as error:
        assert "two" in str(error)
    else:
        raise AssertionError("two entries of a listed part were accepted")


def test_handlers_get_each_part_by_name_from_the_combined_index():
    combined = OperatorIndexer()
    combined.replace((NAMESPACE, "s1"), SESSION_INDEX.entries(**_kwargs(
        _session("s1", user="alice", database="orders", phase=SessionPhase.ACTIVE))))
    seen: dict[str, Any] = {}

    @SESSION_INDEX.as_kwargs
    async def handler(live_sessions_by_database, active_sessions_by_user, **_):
        seen["live"] = set(live_sessions_by_database.get((NAMESPACE, "orders"), ()))
        seen["user"] = list(active_sessions_by_user.get((NAMESPACE, "alice"), ()))
        return "done"

    assert asyncio.run(handler(session_index=combined.index)) == "done"
    assert seen == {"live": {"team/s1/uid-s1"},
                    "user": [("s1", "s1-credentials", "orders")]}
    # What a caller passes itself (the tests' fakes) is what the handler gets.
    asyncio.run(handler(session_index=combined.index, live_sessions_by_database={},
                        active_sessions_by_user={}))
    assert seen == {"live": set(), "user": []}
    assert (handler.__name__, handler.__module__) == ("handler", __name__)


def test_a_part_that_fails_leaves_the_object_in_the_other_parts():
    """Kopf leaves an object out of an index whose function fails; merged, one failing part
    must not take the object out of the others (the sweep would see a live session as gone)."""
    body = _session("s1", user="alice", database="orders", phase=SessionPhase.ACTIVE)
    body["status"]["conditions"] = "not a list"  # what a hand-made status patch could hold
    body["status"]["phase"] = SessionPhase.PENDING
    try:
        approvals.awaiting_approval(**_kwargs(body))
    except AttributeError:
        pass
    else:
        raise AssertionError("the example must make a part fail")
    entries = SESSION_INDEX.entries(**_kwargs(body))
    assert entries[("live_sessions_by_database", (NAMESPACE, "orders"))] == "team/s1/uid-s1"
    assert entries[("live_sessions_by_id", "team/s1/uid-s1")] is True
    assert not [key for key in entries if key[0] == "awaiting_approval"]


def _viewed(body: dict) -> dict[str, Any]:
    """The keyword arguments as Kopf gives them: views over the body, not its dicts."""
    view = Body(body)
    meta = body["metadata"]
    return {"body": view, "meta": view.metadata, "spec": view.spec, "status": view.status,
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]}


def _probe_parts() -> tuple[IndexParts, dict[str, Any]]:
    parts = IndexParts.__new__(IndexParts)  # not registered with Kopf: only its entries
    parts.id, parts._parts, parts._listed = "test", {}, set()
    seen: dict[str, Any] = {}

    @parts.part()
    def probe(body, meta, spec, status, **_):
        seen.update(body=body, meta=meta, spec=spec, status=status)
        return {}
    return parts, seen


def test_the_parts_read_the_event_s_own_dicts_and_find_what_kopf_s_views_show():
    body = _session("s1", user="alice", database="orders", phase=SessionPhase.ACTIVE)
    parts, seen = _probe_parts()
    parts.entries(**_viewed(body))
    assert {name: type(value) for name, value in seen.items()} == dict.fromkeys(seen, dict)
    assert seen["spec"] is body["spec"] and seen["status"] is body["status"]
    assert seen["meta"] is body["metadata"] and seen["body"] == body
    assert SESSION_INDEX.entries(**_viewed(body)) == SESSION_INDEX.entries(**_kwargs(body))


def test_a_field_that_is_not_an_object_reads_as_empty():
    body = _session("s1", user="alice", database="orders", phase=SessionPhase.ACTIVE)
    body["status"] = "garbage"  # what no schema allows, but a part must not fail on
    del body["spec"]
    parts, seen = _probe_parts()
    parts.entries(**_viewed(body))
    assert seen["status"] == {} and seen["spec"] == {}
