"""The lean diff base builds Kopf's own essence of an object, without copying what it drops."""

from __future__ import annotations

import copy

import kopf
import pytest

from pgjit.api.common import KOPF_STATUS_FIELD
from pgjit.handlers.settings import LeanDiffBaseStorage


class NotToBeCopied:
    """A value that fails when deep-copied: status and managedFields must not be."""

    def __deepcopy__(self, memo):
        raise AssertionError("copied what the essence drops")


def _body(status_value=None, managed=None) -> dict:
    return {
        "apiVersion": "pgjit.dev/v1alpha1", "kind": "DatabaseSession",
        "metadata": {
            "name": "s1", "namespace": "team", "uid": "u-1", "resourceVersion": "42",
            "generation": 1, "creationTimestamp": "2026-12-01T10:00:00Z",
            "finalizers": ["pgjit.dev/finalizer"],
            "labels": {"app": "x"},
            "annotations": {"approval.pgjit.dev/check": "reviews:ab",
                            "kubectl.kubernetes.io/last-applied-configuration": "{}",
                            "note": "kept"},
            "managedFields": managed if managed is not None else [{"manager": "kubectl"}]},
        "spec": {"user": "alice", "databaseRef": {"name": "orders"}, "duration": "1h"},
        "extra": {"top-level": ["kept", "too"]},
        "status": {"phase": "Active",
                   KOPF_STATUS_FIELD: {"last-handled-configuration": '{"spec":{}}'},
                   "deep": status_value if status_value is not None else {"a": [1, 2]}}}


def _both(body: dict, extra_fields) -> tuple[dict, dict]:
    """Kopf's essence of a copy of ``body``, and the lean one of ``body`` itself."""
    kopfs = kopf.StatusDiffBaseStorage(name=KOPF_STATUS_FIELD).build(
        body=copy.deepcopy(body), extra_fields=extra_fields)
    lean = LeanDiffBaseStorage(name=KOPF_STATUS_FIELD).build(body=body,
                                                             extra_fields=extra_fields)
    return kopfs, lean


FIELD_SETS = [None, [], ["spec"], [("metadata", "annotations", "approval.pgjit.dev/check")],
              ["metadata.labels"], [("spec", "user")]]


@pytest.mark.parametrize("extra_fields", FIELD_SETS)
def test_the_essence_is_kopfs_own(extra_fields):
    body = _body()
    kopfs, lean = _both(body, extra_fields)
    assert lean == kopfs
    assert lean["metadata"]["annotations"] == {"approval.pgjit.dev/check": "reviews:ab",
                                               "note": "kept"}
    # A copy: the essence kept as the diff base never changes with the body.
    body["spec"]["user"] = "mallory"
    assert lean["spec"]["user"] == "alice"


@pytest.mark.parametrize("extra_fields", FIELD_SETS)
def test_status_and_managed_fields_are_not_copied(extra_fields):
    body = _body(status_value=NotToBeCopied(), managed=[NotToBeCopied()])
    LeanDiffBaseStorage(name=KOPF_STATUS_FIELD).build(body=body, extra_fields=extra_fields)
    with pytest.raises(AssertionError, match="copied"):
        kopf.StatusDiffBaseStorage(name=KOPF_STATUS_FIELD).build(body=body,
                                                                 extra_fields=extra_fields)


@pytest.mark.parametrize("extra_fields", [["status.phase"], [("metadata", "finalizers")]])
def test_a_field_outside_the_essence_gets_kopfs_build(extra_fields):
    body = _body()
    kopfs, lean = _both(body, extra_fields)
    assert lean == kopfs
    assert "phase" in lean.get("status", {}) or "finalizers" in lean["metadata"]


def _other_operators_body() -> dict:
    body = _body()
    body["metadata"]["annotations"].update({
        "kopf.zalando.org/last-handled-configuration": '{"spec":{}}',
        "other.example/kopf-managed": "yes", "other.example/progress": "{}",
        "team.kopf.zalando.org/x": "1", "kept.example/note": "kept"})
    return body


@pytest.mark.parametrize("body", [
    _other_operators_body(),
    {"apiVersion": "v1", "kind": "X", "spec": {"a": [{"b": None}, 1.5, True]}},  # no metadata
    {"metadata": {"labels": {}, "annotations": {}}, "spec": {}, "status": {"phase": "x"}},
    {"metadata": {"labels": {"l": "1"}}, "spec": {"user": "alice"}, "top": "level"},
], ids=["other-operators", "no-metadata", "empty-stanzas", "labels-only"])
@pytest.mark.parametrize("extra_fields", FIELD_SETS + [
    [("metadata", "annotations", "kubectl.kubernetes.io/last-applied-configuration")],
    [("metadata", "annotations", "other.example/progress")], [("spec", "absent", "deeper")]])
def test_kopfs_essence_for_any_body_and_field(body, extra_fields):
    kopfs, lean = _both(body, extra_fields)
    assert lean == kopfs


def test_an_annotation_a_field_handler_names_is_kept_as_kopf_keeps_it():
    field = ("metadata", "annotations", "kubectl.kubernetes.io/last-applied-configuration")
    kopfs, lean = _both(_body(), [field])
    assert lean["metadata"]["annotations"][field[2]] == "{}" == \
        kopfs["metadata"]["annotations"][field[2]]


def test_kopfs_body_view_gives_the_same_essence():
    raw = _other_operators_body()
    view = kopf.Body(copy.deepcopy(raw))
    lean = LeanDiffBaseStorage(name=KOPF_STATUS_FIELD).build(body=view, extra_fields=None)
    assert lean == kopf.StatusDiffBaseStorage(name=KOPF_STATUS_FIELD).build(body=raw)


def test_the_kept_fields_are_copied_without_deepcopy():
    """Kopf's build deep-copies even the fields it keeps; the lean one copies JSON values
    itself (dicts and lists), which is where the time went."""
    body = _body()
    body["spec"]["opaque"] = NotToBeCopied()
    body["metadata"]["labels"]["opaque"] = NotToBeCopied()
    lean = LeanDiffBaseStorage(name=KOPF_STATUS_FIELD).build(body=body, extra_fields=None)
    assert lean["spec"]["opaque"] is body["spec"]["opaque"]
    assert lean["spec"] is not body["spec"] and lean["metadata"]["labels"] is not \
        body["metadata"]["labels"]


def test_a_field_through_a_value_that_is_not_an_object_fails_as_in_kopf():
    body = _body()
    with pytest.raises(TypeError):
        kopf.StatusDiffBaseStorage(name=KOPF_STATUS_FIELD).build(
            body=copy.deepcopy(body), extra_fields=[("spec", "user", "first")])
    with pytest.raises(TypeError):
        LeanDiffBaseStorage(name=KOPF_STATUS_FIELD).build(
            body=body, extra_fields=[("spec", "user", "first")])


def test_ignored_fields_get_kopfs_build():
    storage = LeanDiffBaseStorage(name=KOPF_STATUS_FIELD, ignored_fields=["spec.duration"])
    lean = storage.build(body=_body(), extra_fields=None)
    assert "duration" not in lean["spec"] and lean["spec"]["user"] == "alice"
