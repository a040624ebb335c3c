"""Privilege boundaries, the pure part: the Database's bound in the policy, and the judgement of
the privileged membership paths the engine reads (core/boundaries.py)."""

from __future__ import annotations

from typing import Any

import pytest

from pgjit.api import Database, Role
from pgjit.core.boundaries import (PrivilegedPath, exact_names, pattern_within, privileged_path,
                                   refusals, within)
from pgjit.core.explain import render_explanation
from pgjit.core.permissions import resolve_table_privileges
from pgjit.core.policy import AccessRequest, bound_violations, evaluate
from pgjit.vocabulary import Reason


def database(**spec: Any) -> Database:
    return Database.model_validate({"metadata": {"name": "orders", "labels": {"env": "prod"}},
                                    "spec": {"host": "pg", "admin": {
                                        "username": "admin", "passwordSecretRef": {"name": "s"}},
                                        **spec}})


def role(name: str, **allow: Any) -> Role:
    return Role.model_validate({"metadata": {"name": name}, "spec": {
        "subjects": [{"kind": "User", "name": "alice"}], "userProvisioning": "keep",
        "allow": {"databaseSelector": {}, "databaseNames": ["*"], **allow}}})


def ask(db: Database, *roles: Role, database_roles: tuple[str, ...] = (),
        extra: dict | None = None):
    return evaluate(AccessRequest(user="alice", database_name="app",
                                  database_roles=database_roles, extra=extra or {}), db, roles)


# -- the bound in the policy -------------------------------------------------------------------

def test_roles_outside_grantable_roles_refuse_the_session():
    db = database(grantableRoles=["app_*", "reporting"])
    inside = ask(db, role("r", databaseRoles=["app_reader", "reporting"]))
    assert inside.allowed and inside.database_roles == ("app_reader", "reporting")
    outside = ask(db, role("r", databaseRoles=["app_reader", "auditor"]))
    assert not outside.allowed and outside.reason == Reason.ACCESS_DENIED
    assert '"auditor"' in outside.message and "spec.grantableRoles" in outside.message
    assert outside.database_roles == ()
    # Asking only for what is inside works even when the Role allows more.
    subset = ask(db, role("r", databaseRoles=["app_reader", "auditor"]),
                 database_roles=("app_reader",))
    assert subset.allowed


def test_a_trait_expanding_outside_the_bound_is_refused():
    db = database(grantableRoles=["app_*"])
    decision = ask(db, role("r", databaseRoles=["{{external.db_roles}}"]),
                   extra={"db_roles": ("superpowers",)})
    assert not decision.allowed and '"superpowers"' in decision.message


def test_without_a_bound_nothing_changes():
    decision = ask(database(), role("r", databaseRoles=["anything"]))
    assert decision.allowed and decision.grantable_roles is None


def test_grantable_schemas_refuse_literal_schemas_and_narrow_globs():
    db = database(grantableSchemas=["public", "sales_*"])
    literal = ask(db, role("r", permissions=[{"match": {"schema": "hr", "name": "*"},
                                              "privileges": ["SELECT"]}]))
    assert not literal.allowed and '"hr"' in literal.message
    glob = ask(db, role("r", permissions=[{"match": {"schema": "*", "name": "*"},
                                           "privileges": ["SELECT"]}]))
    assert glob.allowed and glob.permissions.schemas == ("public", "sales_*")
    resolved = resolve_table_privileges(
        [("public", "t"), ("sales_eu", "t"), ("hr", "payroll")], glob.permissions)
    assert set(resolved) == {("public", "t"), ("sales_eu", "t")}


def test_the_bound_changes_the_permissions_digest():
    rule = {"match": {"schema": "*", "name": "*"}, "privileges": ["SELECT"]}
    bounded = ask(database(grantableSchemas=["public"]), role("r", permissions=[rule]))
    free = ask(database(), role("r", permissions=[rule]))
    assert bounded.permissions.digest() != free.permissions.digest()
    assert free.permissions.digest() == ask(database(), role("r", permissions=[rule])) \
        .permissions.digest()


def test_bound_violations_list_what_roles_ask_outside_the_bound():
    db = database(grantableRoles=["app_*"], grantableSchemas=["public", "sales_*"])
    roles = [
        role("fine", databaseRoles=["app_reader", "{{external.x}}"]),
        role("greedy", databaseRoles=["app_reader", "auditor"]),
        role("tables", permissions=[
            {"match": {"schema": "hr", "name": "*"}, "privileges": ["SELECT"]},
            {"match": {"schema": "sales_eu*", "name": "*"}, "privileges": ["SELECT"]},
            {"match": {"schema": "*", "name": "*"}, "privileges": ["SELECT"]}]),
        Role.model_validate({"metadata": {"name": "elsewhere"}, "spec": {
            "subjects": [{"kind": "User", "name": "alice"}], "userProvisioning": "keep",
            "allow": {"databaseSelector": {"matchLabels": {"env": "dev"}},
                      "databaseNames": ["*"], "databaseRoles": ["auditor"]}}}),
    ]
    found = [(v.role, v.kind, v.name) for v in bound_violations(db, roles)]
    assert found == [("greedy", "databaseRole", "auditor"), ("tables", "schema", "*"),
                     ("tables", "schema", "hr")]
    assert bound_violations(database(), roles) == ()


def test_explain_prints_the_bound():
    text = render_explanation(ask(database(grantableRoles=["app_*"]),
                                  role("r", databaseRoles=["app_reader"])))
    assert "Bound:" in text and "roles app_*" in text and "schemas any" in text


@pytest.mark.parametrize(("globs", "pattern", "inside"), [
    (None, "anything", True), (["*"], "a*", True), (["public"], "public", True),
    (["public"], "pub*", False), (["sales_*"], "sales_eu*", True), (["sales_*"], "sal*", False),
    (["sales_*"], "sales_eu", True), ([], "public", False), (["a*b"], "axb", True),
    (["a*b"], "a*", False),
])
def test_pattern_within(globs, pattern, inside):
    assert pattern_within(globs, pattern) is inside


def test_within_and_exact_names():
    assert within(None, "x") and within(["x*"], "xy") and not within(["x*"], "y")
    assert exact_names(["app_*", "pg_read_server_files", "*", "reporting"]) == (
        "pg_read_server_files", "reporting")
    assert exact_names(None) == ()


# -- judging the paths ---------------------------------------------------------------------------

def path(wanted: str, role: str, depth: int, **kind: Any) -> PrivilegedPath:
    return privileged_path(wanted, role, depth, is_admin=kind.get("admin", False),
                           is_managed=kind.get("managed", False),
                           attributes=kind.get("attributes", ()),
                           predefined=kind.get("server"))


def test_refusals_name_the_shortest_path_and_why():
    paths = [path("reader_plus", "pg_execute_server_program", 2, server="runs programs"),
             path("reader_plus", "ops", 1, attributes=("CREATEDB",)),
             path("boss", "boss", 0, attributes=("SUPERUSER", "CREATEDB"))]
    assert refusals(paths, ()) == ['"boss" has SUPERUSER',
                                   '"reader_plus" is a member of "ops", which has CREATEDB '
                                   "(it can create databases)"]


def test_exact_name_opt_in_exempts_the_role_but_never_the_operators_own():
    paths = [path("files", "pg_read_server_files", 0, server="reads"),
             path("helper", "helper", 0, attributes=("CREATEROLE",)),
             path("helper", "pgjit_admin", 1, admin=True),
             path("mine", "pgjit-auto-user", 0, managed=True)]
    assert refusals(paths, ("files", "helper", "mine")) == [
        '"helper" is a member of "pgjit_admin", which is the admin role pgjit logs in as',
        '"mine" is the managed role, pgjit\'s ownership marker (its members are pgjit\'s users)']
    assert refusals(paths[:2], ("files", "helper")) == []


def test_the_reassign_mode_needs_an_objects_inheritor():
    reassigning = Role.model_validate({"metadata": {"name": "r"}, "spec": {
        "subjects": [{"kind": "User", "name": "alice"}],
        "userProvisioning": "best_effort_reassign_and_drop",
        "allow": {"databaseSelector": {}, "databaseNames": ["*"], "databaseRoles": ["x"]}}})
    refused = ask(database(), reassigning)
    assert not refused.allowed and refused.reason == "ObjectsInheritorMissing"
    assert "spec.objectsInheritor" in refused.message
    allowed = ask(database(objectsInheritor="team-objects"), reassigning, role("k",
                  databaseRoles=["x"]))
    assert allowed.allowed and str(allowed.mode) == "best_effort_reassign_and_drop"
