"""The Active index keeps each session as a small record, and gives the parsed session back
unchanged when the lease loop needs it."""

from __future__ import annotations

import gc
import json
import tracemalloc
from typing import Any

from pgjit.api.session import DatabaseSession
from pgjit.handlers import indexes
from pgjit.handlers.indexes import ActiveSession

NAMESPACE = "team"


def _event_body(i: int) -> dict[str, Any]:
    """An Active session as a watch event brings it: managedFields, Kopf's bookkeeping and all,
    decoded from JSON as Kopf decodes it (so every string is the event's own)."""
    managed = {"manager": "kopf", "operation": "Update", "apiVersion": "pgjit.dev/v1alpha1",
               "time": "2026-12-02T02:33:10Z", "fieldsType": "FieldsV1",
               "fieldsV1": {"f:status": {"f:phase": {}, "f:username": {}, "f:conditions": {}}}}
    condition = {"status": "True", "reason": "Active", "observedGeneration": 1,
                 "message": "the user can log in until 2026-12-02T03:33:10Z",
                 "lastTransitionTime": "2026-12-02T02:33:10Z"}
    return json.loads(json.dumps({
        "apiVersion": "pgjit.dev/v1alpha1", "kind": "DatabaseSession",
        "metadata": {"name": f"s-{i}", "namespace": NAMESPACE, "uid": f"uid-{i:030d}",
                     "generation": 1, "resourceVersion": str(1000 + i),
                     "creationTimestamp": "2026-12-02T02:33:10Z",
                     "annotations": {"note": "x" * 200}, "managedFields": [managed] * 4},
        "spec": {"user": f"u-{i}", "groups": ["bench"], "databaseRef": {"name": "orders"},
                 "databaseName": "app", "databaseRoles": ["reader"], "duration": "1h"},
        "status": {"phase": "Active", "username": f"u-{i}", "databaseRoles": ["reader"],
                   "userProvisioning": "keep", "matchedRoles": ["analysts"],
                   "expiresAt": "2026-12-02T03:33:10Z", "secretName": f"s-{i}-credentials",
                   "conditions": [dict(condition, type=kind)
                                  for kind in ("Ready", "Reconciling", "Stalled")],
                   "pgjit": {"progress": {"open": {"success": True}}}}}))


def _indexed(body: dict) -> ActiveSession:
    entries = indexes.active_sessions_by_database(namespace=NAMESPACE, spec=body["spec"],
                                                  status=body["status"], body=body)
    [(key, record)] = entries.items()
    assert key == (NAMESPACE, "orders")
    return record


def test_the_record_gives_back_the_session_the_index_parsed():
    body = _event_body(7)
    record = _indexed(body)
    assert record.parsed() == DatabaseSession.model_validate(indexes._slim(body))
    assert record.name == "s-7"
    assert record.expires_at == record.parsed().status.expires_at is not None


def test_the_record_keeps_neither_managed_fields_nor_kopfs_bookkeeping():
    document = json.loads(_indexed(_event_body(1)).document)
    assert "managedFields" not in document["metadata"]
    assert not document["metadata"].get("annotations")
    assert "pgjit" not in document["status"]
    assert document["spec"]["user"] == "u-1"


def test_a_session_without_an_expiry_is_kept_without_one():
    body = _event_body(2)
    del body["status"]["expiresAt"]
    assert _indexed(body).expires_at is None


def test_what_the_index_holds_per_active_session_stays_small():
    """The parsed model held with the event's strings cost about 10 KB a session; the
    bound leaves room for Python's versions, not for the model (README, Performance)."""
    bodies = [_event_body(i) for i in range(300)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        held = [_indexed(bodies.pop()) for _ in range(300)]
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    per_session = sum(stat.size_diff for stat in after.compare_to(before, "filename")) / 300
    assert len(held) == 300
    assert per_session < 3000, f"{per_session:.0f} bytes held per Active session"
