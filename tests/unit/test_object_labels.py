"""Object labels from ObjectLabelRules, and permissions that match by them (pure)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from pgjit.api import Database
from pgjit.api.labels import ObjectLabelRule
from pgjit.core.object_labels import _may_overlap, assignments_for, conflicts, labels_of
from pgjit.core.permissions import DbObject, PermissionRules, resolve_privileges
from pgjit.core.policy import AccessRequest, evaluate
from pgjit.api import Role


def label_rule(name: str, *entries: tuple[dict, dict], selector: dict | None = None,
               created: int = 0) -> ObjectLabelRule:
    return ObjectLabelRule.model_validate({
        "metadata": {"name": name, "creationTimestamp":
                     datetime(2026, 12, 1, 9, created, tzinfo=timezone.utc).isoformat()},
        "spec": {"databaseSelector": selector if selector is not None else {},
                 "rules": [{"match": m, "labels": labels} for m, labels in entries]}})


DB = Database.model_validate({"metadata": {"name": "orders", "labels": {"team": "payments"}},
                              "spec": {"host": "pg", "admin": {
                                  "username": "a", "passwordSecretRef": {"name": "s"}}}})
TABLES = [DbObject("table", "public", n) for n in ("orders", "orders_2026", "customer_a", "misc")]


def test_labels_merge_and_a_disagreement_leaves_the_label_off():
    rules = [label_rule("base", ({"schema": "public"}, {"team": "payments"})),
             label_rule("pii", ({"schema": "public", "name": "orders*"}, {"pii": "false"}),
                        ({"schema": "public", "name": "customer_*"}, {"pii": "true"}),
                        created=1),
             label_rule("wrong", ({"schema": "public", "name": "*"}, {"pii": "false"}),
                        created=2)]
    assignments = assignments_for(DB, rules)
    assert labels_of(TABLES[0], assignments) == {"team": "payments", "pii": "false"}
    # customer_a: "true" from pii, "false" from wrong: neither holds.
    assert labels_of(TABLES[2], assignments) == {"team": "payments"}
    assert labels_of(DbObject("view", "public", "orders"), assignments) == {}
    found = conflicts(rules)
    assert [(c.rule, c.other, c.label, c.values) for c in found] == [
        ("wrong", "pii", "pii", ("false", "true"))]


def test_rules_for_other_databases_give_no_labels():
    rules = [label_rule("elsewhere", ({}, {"pii": "false"}),
                        selector={"matchLabels": {"team": "hr"}})]
    assert assignments_for(DB, rules) == ()


def test_permissions_match_by_labels_through_the_policy():
    role = Role.model_validate({"metadata": {"name": "r"}, "spec": {
        "subjects": [{"kind": "User", "name": "alice"}], "userProvisioning": "keep",
        "allow": {"databaseSelector": {}, "databaseNames": ["*"], "permissions": [
            {"match": {"labels": {"matchLabels": {"pii": "false"}}}, "privileges": ["SELECT"]},
            {"match": {"labels": {"matchExpressions": [{"key": "pii",
                                                        "operator": "DoesNotExist"}]},
                       "name": "misc"}, "privileges": ["INSERT"]}]}}})
    decision = evaluate(AccessRequest(user="alice", database_name="orders"), DB, [role])
    assert decision.allowed and decision.permissions.match_labels
    rules = [label_rule("pii", ({"name": "orders*"}, {"pii": "false"}),
                        ({"name": "customer_*"}, {"pii": "true"}))]
    from dataclasses import replace
    permissions = replace(decision.permissions, object_labels=assignments_for(DB, rules))
    granted = resolve_privileges(TABLES, permissions)
    assert {(o.name, p) for o, ps in granted.items() for p in ps} == {
        ("orders", "SELECT"), ("orders_2026", "SELECT"), ("misc", "INSERT")}
    assert permissions.digest() != decision.permissions.digest(), \
        "other labels, other grants: the digest must tell"


def test_without_label_selectors_no_labels_are_computed():
    assert not PermissionRules().match_labels


@pytest.mark.parametrize(("a", "b", "overlap"), [
    ("*", "x", True), ("orders*", "customer_*", False), ("orders*", "order*", True),
    ("*_log", "*_tmp", False), ("a*z", "ab*", True), ("t1", "t1", True), ("t1", "t2", False),
    ("pre*", "prefix", True), ("pre*", "other", False),
])
def test_glob_overlap(a: str, b: str, overlap: bool):
    assert _may_overlap(a, b) is overlap and _may_overlap(b, a) is overlap


def test_the_example_rule_has_no_conflict():
    from pgjit.api.examples import manifest
    assert conflicts([ObjectLabelRule.model_validate(manifest("ObjectLabelRule"))]) == ()
