"""The policy: which Roles apply to a session and what they grant (api.md, Role "Semantics")."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from pgjit.api import Database, DatabaseSession, Role, UserProvisioning
from pgjit.api.examples import manifest
from pgjit.core.explain import render_explanation
from pgjit.core.permissions import PermissionRule, PermissionRules, resolve_table_privileges
from pgjit.core.policy import (
    MUTUALLY_EXCLUSIVE_MESSAGE,
    AccessRequest,
    Decision,
    evaluate,
    glob_matches,
    roles_granted_on,
)
from pgjit.vocabulary import Reason

EVERYTHING = {"databaseSelector": {}, "databaseNames": ["*"]}


def make_role(name: str = "r", *, users: tuple[str, ...] = ("alice",), groups: tuple[str, ...] = (),
              mode: str = "keep", max_duration: str | None = None,
              allow: dict[str, Any] | None = None, deny: dict[str, Any] | None = None,
              roles: list[str] | None = None) -> Role:
    """A Role as a manifest would write it. ``roles`` is a shortcut for an allow section that
    covers every Database and name and grants these database roles."""
    spec: dict[str, Any] = {
        "subjects": [{"kind": "User", "name": u} for u in users]
        + [{"kind": "Group", "name": g} for g in groups],
        "userProvisioning": mode,
    }
    if max_duration is not None:
        spec["maxSessionDuration"] = max_duration
    if roles is not None:
        allow = {**EVERYTHING, "databaseRoles": roles}
    if allow is not None:
        spec["allow"] = allow
    if deny is not None:
        spec["deny"] = deny
    return Role.model_validate({"metadata": {"name": name}, "spec": spec})


def make_database(labels: dict[str, str] | None = None, databases: list[str] | None = None,
                  name: str = "orders") -> Database:
    spec: dict[str, Any] = {"host": "pg", "admin": {"username": "admin",
                                                   "passwordSecretRef": {"name": "s"}}}
    if databases is not None:
        spec["databases"] = databases
    return Database.model_validate({
        "metadata": {"name": name, "labels": {"env": "prod"} if labels is None else labels},
        "spec": spec,
    })


def request(user: str = "alice", *, groups: tuple[str, ...] = (), name: str = "orders",
            roles: tuple[str, ...] = (), extra: dict[str, tuple[str, ...]] | None = None,
            duration: timedelta = timedelta(hours=1)) -> AccessRequest:
    return AccessRequest(user=user, database_name=name, groups=groups, extra=extra or {},
                         database_roles=roles, duration=duration)


def decide(*roles: Role, req: AccessRequest | None = None, database: Database | None = None,
           **kwargs: Any) -> Decision:
    return evaluate(req or request(), database or make_database(), roles, **kwargs)


# --------------------------------------------------------------------------------------------
# Subjects


@pytest.mark.parametrize(
    ("users", "groups", "req", "allowed"),
    [
        (("alice",), (), request("alice"), True),
        (("alice",), (), request("bob"), False),
        ((), ("analysts",), request("bob", groups=("analysts",)), True),
        ((), ("analysts",), request("bob", groups=("dev",)), False),
        # A User subject never matches a group of the same name, nor the reverse.
        (("analysts",), (), request("bob", groups=("analysts",)), False),
        ((), ("alice",), request("alice"), False),
    ],
    ids=["user", "other-user", "group", "other-group", "user-not-group", "group-not-user"],
)
def test_subjects_match_by_user_name_or_group(users: tuple[str, ...], groups: tuple[str, ...],
                                              req: AccessRequest, allowed: bool) -> None:
    decision = decide(make_role(users=users, groups=groups, roles=["reader"]), req=req)
    assert decision.allowed is allowed
    assert decision.explanations[0].subjects_match is allowed


def test_subject_explanation_names_what_matched() -> None:
    role = make_role(users=("alice",), groups=("analysts", "ops"), roles=["reader"])
    decision = decide(role, req=request(groups=("ops",)))
    assert decision.explanations[0].subjects_why == "user alice, group ops"


def test_nobody_matching_is_access_denied_and_says_so() -> None:
    decision = decide(make_role(users=("bob",), roles=["reader"]))
    assert not decision.allowed
    assert decision.reason == Reason.ACCESS_DENIED
    assert "no Role allows user alice" in decision.message
    assert "names that user or one of its groups" in decision.message


# --------------------------------------------------------------------------------------------
# Allow: databaseSelector and databaseNames


@pytest.mark.parametrize(
    ("selector", "labels", "allowed"),
    [
        (None, {"env": "prod"}, False),
        ({}, {}, True),
        ({}, {"env": "prod"}, True),
        ({"matchLabels": {"env": "prod"}}, {"env": "prod", "team": "x"}, True),
        ({"matchLabels": {"env": "prod"}}, {"env": "dev"}, False),
        ({"matchLabels": {"env": "prod"}}, {}, False),
        ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "qa"]}]},
         {"env": "qa"}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["pii"]}]},
         {"tier": "pii"}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["pii"]}]},
         {}, True),
        ({"matchExpressions": [{"key": "env", "operator": "Exists"}]}, {"env": "x"}, True),
        ({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}, {"env": "x"}, False),
        ({"matchLabels": {"env": "prod"},
          "matchExpressions": [{"key": "team", "operator": "Exists"}]}, {"env": "prod"}, False),
    ],
    ids=["absent", "empty-no-labels", "empty", "labels", "labels-differ", "labels-missing", "in",
         "notin-hit", "notin-missing", "exists", "doesnotexist", "labels-and-expressions"],
)
def test_allow_database_selector(selector: dict | None, labels: dict, allowed: bool) -> None:
    allow: dict[str, Any] = {"databaseNames": ["*"], "databaseRoles": ["reader"]}
    if selector is not None:
        allow["databaseSelector"] = selector
    decision = decide(make_role(allow=allow), database=make_database(labels))
    assert decision.allowed is allowed
    assert decision.explanations[0].allow_applies is allowed


def test_absent_selector_explains_how_to_select_everything() -> None:
    decision = decide(make_role(allow={"databaseNames": ["*"], "databaseRoles": ["reader"]}))
    why = decision.explanations[0].allow_why
    assert "absent" in why and "{}" in why
    assert why in decision.message


def test_selector_mismatch_names_selector_and_labels() -> None:
    role = make_role(allow={"databaseSelector": {"matchLabels": {"env": "dev"}},
                            "databaseNames": ["*"], "databaseRoles": ["reader"]})
    why = decide(role, database=make_database({"env": "prod"})).explanations[0].allow_why
    assert "env=dev" in why and "env=prod" in why


@pytest.mark.parametrize(
    ("names", "database_name", "allowed"),
    [
        (None, "orders", False),
        ([], "orders", False),
        (["*"], "anything", True),
        (["orders"], "orders", True),
        (["orders"], "orders2", False),
        (["report*"], "reporting", True),
        (["report*"], "orders", False),
        (["*-prod"], "billing-prod", True),
        (["a", "b*"], "bob", True),
        # Only * is a wildcard: ? and [] are literal, as PostgreSQL names may contain them.
        (["ord?rs"], "orders", False),
        (["ord?rs"], "ord?rs", True),
        (["[ab]"], "a", False),
        # PostgreSQL database names are case-sensitive.
        (["Orders"], "orders", False),
    ],
)
def test_allow_database_names(names: list[str] | None, database_name: str, allowed: bool) -> None:
    allow: dict[str, Any] = {"databaseSelector": {}, "databaseRoles": ["reader"]}
    if names is not None:
        allow["databaseNames"] = names
    decision = decide(make_role(allow=allow), req=request(name=database_name))
    assert decision.allowed is allowed


def test_absent_database_names_explains_star() -> None:
    decision = decide(make_role(allow={"databaseSelector": {}, "databaseRoles": ["reader"]}))
    assert '["*"]' in decision.explanations[0].allow_why


def test_glob_matches() -> None:
    assert glob_matches("*", "")
    assert glob_matches("a*b*c", "aXXbYc")
    assert not glob_matches("a*b", "ab-c")
    assert glob_matches("a.b", "a.b") and not glob_matches("a.b", "aXb")


def test_database_allow_list_is_enforced() -> None:
    database = make_database(databases=["orders", "reporting"])
    assert decide(make_role(roles=["reader"]), database=database).allowed
    refused = decide(make_role(roles=["reader"]), database=database, req=request(name="secrets"))
    assert refused.reason == Reason.ACCESS_DENIED
    assert "does not offer database \"secrets\"" in refused.message
    assert '"orders", "reporting"' in refused.message


# --------------------------------------------------------------------------------------------
# Modes


@pytest.mark.parametrize(
    ("modes", "expected", "matched"),
    [
        (["keep"], UserProvisioning.KEEP, ["r0"]),
        (["best_effort_drop"], UserProvisioning.BEST_EFFORT_DROP, ["r0"]),
        (["keep", "best_effort_drop"], UserProvisioning.BEST_EFFORT_DROP, ["r0", "r1"]),
        (["best_effort_drop", "keep"], UserProvisioning.BEST_EFFORT_DROP, ["r0", "r1"]),
        (["off", "keep"], UserProvisioning.KEEP, ["r1"]),
        (["off", "best_effort_drop", "keep"], UserProvisioning.BEST_EFFORT_DROP, ["r1", "r2"]),
    ],
)
def test_effective_mode_is_highest_among_allowing_roles(modes: list[str], expected: UserProvisioning,
                                                         matched: list[str]) -> None:
    roles = [make_role(f"r{i}", mode=mode, roles=["reader"]) for i, mode in enumerate(modes)]
    decision = decide(*roles)
    assert decision.allowed
    assert decision.mode is expected
    assert list(decision.matched_roles) == matched


def test_non_allowing_role_does_not_raise_the_mode() -> None:
    drop_elsewhere = make_role("drop", mode="best_effort_drop",
                               allow={"databaseSelector": {"matchLabels": {"env": "dev"}},
                                      "databaseNames": ["*"], "databaseRoles": ["writer"]})
    decision = decide(make_role("keep", roles=["reader"]), drop_elsewhere)
    assert decision.mode is UserProvisioning.KEEP
    assert decision.matched_roles == ("keep",)
    assert decision.database_roles == ("reader",)


def test_roles_with_mode_off_grant_nothing() -> None:
    decision = decide(make_role("on", roles=["reader"]), make_role("off", mode="off", roles=["writer"]))
    assert decision.allowed
    assert decision.allowed_database_roles == ("reader",)
    off = decision.explanation("off")
    assert off is not None and off.allow_applies and not off.takes_part
    assert off.contributed_mode is None
    assert "userProvisioning is off" in off.allow_why


def test_only_mode_off_roles_allowing_is_provisioning_disabled() -> None:
    decision = decide(make_role("a", mode="off", roles=["reader"]),
                      make_role("b", mode="off", roles=["reader"]),
                      make_role("c", users=("bob",), roles=["reader"]))
    assert not decision.allowed
    assert decision.reason == Reason.PROVISIONING_DISABLED
    assert decision.mode is UserProvisioning.OFF
    assert "a, b" in decision.message and "keep or best_effort_drop" in decision.message
    assert decision.database_roles == ()


def test_nothing_allowing_is_access_denied_listing_the_roles_considered() -> None:
    decision = decide(
        make_role("wrong-db", allow={"databaseSelector": {"matchLabels": {"env": "dev"}},
                                     "databaseNames": ["*"]}),
        make_role("wrong-name", allow={"databaseSelector": {}, "databaseNames": ["billing"]}),
        make_role("someone-else", users=("bob",), roles=["reader"]),
    )
    assert decision.reason == Reason.ACCESS_DENIED
    assert 'no Role allows user alice on database "orders" on Database orders' in decision.message
    assert "wrong-db:" in decision.message and "wrong-name:" in decision.message
    assert "someone-else" not in decision.message


def test_no_roles_at_all_is_access_denied() -> None:
    decision = decide()
    assert decision.reason == Reason.ACCESS_DENIED
    assert decision.explanations == ()


# --------------------------------------------------------------------------------------------
# Deny


@pytest.mark.parametrize(
    ("deny_scope", "labels", "database_name", "applies"),
    [
        ({}, {"env": "prod"}, "orders", True),
        ({"databaseSelector": {}}, {"env": "prod"}, "orders", True),
        ({"databaseSelector": {"matchLabels": {"tier": "pii"}}}, {"tier": "pii"}, "orders", True),
        ({"databaseSelector": {"matchLabels": {"tier": "pii"}}}, {"env": "prod"}, "orders", False),
        ({"databaseNames": ["ord*"]}, {}, "orders", True),
        ({"databaseNames": ["billing"]}, {}, "orders", False),
        ({"databaseNames": []}, {}, "orders", False),
        ({"databaseSelector": {"matchLabels": {"env": "prod"}}, "databaseNames": ["billing"]},
         {"env": "prod"}, "orders", False),
    ],
    ids=["absent-both", "empty-selector", "selector-hit", "selector-miss", "names-hit",
         "names-miss", "names-empty-list", "selector-hit-names-miss"],
)
def test_deny_scope(deny_scope: dict, labels: dict, database_name: str, applies: bool) -> None:
    role = make_role(roles=["reader", "writer"], deny={**deny_scope, "databaseRoles": ["writer"]})
    decision = decide(role, database=make_database(labels), req=request(name=database_name))
    assert decision.allowed
    assert decision.explanations[0].deny_applies is applies
    expected = ("reader",) if applies else ("reader", "writer")
    assert decision.allowed_database_roles == expected


def test_deny_listing_nothing_refuses_and_names_the_role() -> None:
    blocker = make_role("blocker", mode="off", deny={"databaseNames": ["orders"]})
    decision = decide(make_role("grant", roles=["reader"]), blocker)
    assert not decision.allowed
    assert decision.reason == Reason.ACCESS_DENIED
    assert "blocker" in decision.message and "neither databaseRoles nor permissions" in decision.message
    assert decision.database_roles == () and not decision.permissions
    assert decision.explanation("blocker").deny_refuses


def test_deny_with_empty_lists_lists_nothing_and_refuses() -> None:
    blocker = make_role("blocker", deny={"databaseRoles": [], "permissions": []})
    assert decide(make_role("grant", roles=["reader"]), blocker).reason == Reason.ACCESS_DENIED


def test_refusing_deny_out_of_scope_does_not_refuse() -> None:
    blocker = make_role("blocker", deny={"databaseNames": ["billing"]})
    assert decide(make_role("grant", roles=["reader"]), blocker).allowed


def test_refusing_deny_of_someone_else_does_not_refuse() -> None:
    blocker = make_role("blocker", users=("bob",), deny={})
    assert decide(make_role("grant", roles=["reader"]), blocker).allowed


def test_deny_whose_templates_expand_to_nothing_does_not_refuse() -> None:
    role = make_role("r", roles=["reader"], deny={"databaseRoles": ["{{external.blocked}}"]})
    decision = decide(role)
    assert decision.allowed and decision.database_roles == ("reader",)


def test_deny_applies_from_roles_with_mode_off() -> None:
    denier = make_role("denier", mode="off", deny={"databaseRoles": ["writer"]})
    decision = decide(make_role("grant", roles=["reader", "writer"]), denier)
    assert decision.allowed_database_roles == ("reader",)
    assert decision.explanation("denier").removed_roles == ("writer",)


def test_deny_removes_templated_roles_and_records_what_it_removed() -> None:
    role = make_role("grant", roles=["reader", "{{external.db_roles}}"])
    denier = make_role("denier", deny={"databaseRoles": ["{{internal.forbidden}}", "absent"]})
    decision = decide(role, denier, req=request(extra={"db_roles": ("writer", "admin")}),
                      internal_traits={"forbidden": ["admin"]})
    assert decision.allowed_database_roles == ("reader", "writer")
    explanation = decision.explanation("denier")
    assert explanation.denied_roles == ("absent", "admin")
    assert explanation.removed_roles == ("admin",)


def test_deny_permissions_with_star_are_kept_as_deny_rules() -> None:
    allow = {**EVERYTHING, "permissions": [
        {"match": {"objectKind": "table", "schema": "public", "name": "*"}, "privileges": ["select"]}]}
    deny = {"permissions": [{"match": {"schema": "public", "name": "secret_*"}, "privileges": ["*"]}]}
    decision = decide(make_role(allow=allow, deny=deny))
    assert decision.allowed
    assert decision.permissions.allow == (PermissionRule.build("table", "public", "*", ["SELECT"],
                                                               deny=False),)
    assert decision.permissions.deny == (PermissionRule.build("table", "public", "secret_*", ["*"],
                                                              deny=True),)
    grants = resolve_table_privileges([("public", "orders"), ("public", "secret_x")],
                                      decision.permissions)
    assert grants == {("public", "orders"): frozenset({"SELECT"})}


def test_deny_permissions_come_from_every_applying_deny() -> None:
    allow = {**EVERYTHING, "permissions": [{"match": {}, "privileges": ["SELECT", "INSERT"]}]}
    denier = make_role("denier", mode="off", users=(), groups=("contractors",),
                       deny={"permissions": [{"match": {"schema": "hr"}, "privileges": ["INSERT"]}]})
    decision = decide(make_role(allow=allow), denier, req=request(groups=("contractors",)))
    assert [r.match.schema for r in decision.permissions.deny] == ["hr"]


# --------------------------------------------------------------------------------------------
# Requested database roles


def test_no_roles_requested_gets_all_allowed_sorted_and_deduplicated() -> None:
    decision = decide(make_role("a", roles=["writer", "reader"]), make_role("b", roles=["reader", "audit"]))
    assert decision.database_roles == ("audit", "reader", "writer")
    assert decision.allowed_database_roles == ("audit", "reader", "writer")


def test_requested_subset_is_granted() -> None:
    decision = decide(make_role(roles=["reader", "writer", "audit"]),
                      req=request(roles=("writer", "audit", "writer")))
    assert decision.allowed
    assert decision.database_roles == ("audit", "writer")
    assert decision.allowed_database_roles == ("audit", "reader", "writer")


@pytest.mark.parametrize(
    ("requested", "outside"),
    [(("admin",), "admin"), (("reader", "admin"), "admin"), (("writer",), "writer"),
     (("Reader",), "Reader")],
    ids=["unknown", "one-of-two", "denied", "case-sensitive"],
)
def test_requested_role_outside_allowed_set_is_refused_with_exact_message(
        requested: tuple[str, ...], outside: str) -> None:
    role = make_role(roles=["reader", "writer"], deny={"databaseRoles": ["writer"]})
    decision = decide(role, req=request(roles=requested))
    assert not decision.allowed
    assert decision.reason == Reason.ACCESS_DENIED
    assert decision.message == f'access to database role "{outside}" denied'
    assert decision.database_roles == ()


def test_requesting_roles_where_only_permissions_are_allowed_is_refused() -> None:
    allow = {**EVERYTHING, "permissions": [{"match": {}, "privileges": ["SELECT"]}]}
    decision = decide(make_role(allow=allow), req=request(roles=("reader",)))
    assert decision.message == 'access to database role "reader" denied'


# --------------------------------------------------------------------------------------------
# Database roles and permissions are mutually exclusive


PERMISSIONS = [{"match": {"schema": "public"}, "privileges": ["SELECT"]}]


def test_roles_and_permissions_together_are_refused() -> None:
    decision = decide(make_role("roles", roles=["reader"]),
                      make_role("perms", allow={**EVERYTHING, "permissions": PERMISSIONS}))
    assert not decision.allowed
    assert decision.reason == Reason.CONFLICTING_GRANTS
    assert decision.message.startswith(MUTUALLY_EXCLUSIVE_MESSAGE)
    assert "reader (from Role(s) roles)" in decision.message
    assert "permissions (from Role(s) perms)" in decision.message
    assert not decision.permissions and decision.allowed_permissions


def test_permissions_only_are_allowed() -> None:
    decision = decide(make_role(allow={**EVERYTHING, "permissions": PERMISSIONS}))
    assert decision.allowed
    assert decision.database_roles == ()
    assert len(decision.permissions.allow) == 1


def test_denying_all_roles_leaves_permissions_alone() -> None:
    role = make_role(allow={**EVERYTHING, "databaseRoles": ["reader"], "permissions": PERMISSIONS},
                     deny={"databaseRoles": ["reader"]})
    decision = decide(role)
    assert decision.allowed and decision.database_roles == () and decision.permissions


def test_deny_that_cancels_every_permission_leaves_roles_alone() -> None:
    role = make_role(allow={**EVERYTHING, "databaseRoles": ["reader"], "permissions": PERMISSIONS})
    denier = make_role("no-fine-grained", deny={
        "permissions": [{"match": {"schema": "*", "name": "*"}, "privileges": ["*"]}]})
    decision = decide(role, denier)
    assert decision.allowed
    assert decision.database_roles == ("reader",)
    assert not decision.permissions
    assert any("entirely removed by deny rules" in note for note in decision.notes)


def test_partly_cancelled_permission_still_counts() -> None:
    role = make_role(allow={**EVERYTHING, "databaseRoles": ["reader"], "permissions": [
        {"match": {"schema": "public"}, "privileges": ["SELECT", "INSERT"]}]},
        deny={"permissions": [{"match": {"schema": "public"}, "privileges": ["INSERT"]}]})
    assert decide(role).reason == Reason.CONFLICTING_GRANTS


def test_contract_example_role_grants_both_and_is_refused() -> None:
    # The example Role in api.md lists databaseRoles and permissions together; by the contract's
    # own rule, a session it allows gets both and is refused.
    session = DatabaseSession.model_validate(manifest("DatabaseSession"))
    decision = evaluate(session.spec, Database.model_validate(manifest("Database")),
                        [Role.model_validate(manifest("Role"))])
    assert decision.reason == Reason.CONFLICTING_GRANTS
    assert decision.matched_roles == ("analysts",)
    assert decision.allowed_database_roles == ("reader", "reporting")


def test_contract_example_without_permissions_is_allowed() -> None:
    role = manifest("Role")
    del role["spec"]["allow"]["permissions"]
    session = DatabaseSession.model_validate(manifest("DatabaseSession"))
    decision = evaluate(session.spec, Database.model_validate(manifest("Database")),
                        [Role.model_validate(role)], internal_traits={"db_roles": ["ops"]})
    assert decision.allowed and decision.reason == Reason.ALLOWED
    assert decision.mode is UserProvisioning.KEEP
    assert decision.allowed_database_roles == ("ops", "reader", "reporting")
    assert decision.database_roles == ("reader",)
    assert decision.duration == timedelta(hours=1)


# --------------------------------------------------------------------------------------------
# Invalid Role content


def test_unknown_privilege_that_slipped_past_admission_refuses_with_role_name() -> None:
    role = make_role("broken", allow={**EVERYTHING, "permissions": PERMISSIONS})
    role.spec.allow.permissions[0].privileges = ["SELEC"]  # as if admission had been bypassed
    decision = decide(role)
    assert decision.reason == Reason.INVALID_ROLE
    assert "Role broken: allow.permissions:" in decision.message
    assert 'unrecognized "table" PostgreSQL privilege: "SELEC"' in decision.message


def test_unknown_privilege_in_a_role_that_does_not_apply_is_ignored() -> None:
    broken = make_role("broken", users=("bob",), allow={**EVERYTHING, "permissions": PERMISSIONS})
    broken.spec.allow.permissions[0].privileges = ["SELEC"]
    assert decide(make_role("ok", roles=["reader"]), broken).allowed


# --------------------------------------------------------------------------------------------
# Duration


@pytest.mark.parametrize(
    ("requested", "maxima", "expected", "capped"),
    [
        (timedelta(hours=1), [None], timedelta(hours=1), False),
        (timedelta(hours=8), [None], timedelta(hours=8), False),
        (timedelta(hours=24), [None], timedelta(hours=8), True),
        (timedelta(hours=3), ["2h", "30m"], timedelta(minutes=30), True),
        (timedelta(minutes=20), ["2h", "30m"], timedelta(minutes=20), False),
        (timedelta(hours=10), ["12h", None], timedelta(hours=8), True),
    ],
    ids=["default-request", "equal-to-default-cap", "default-cap-8h", "smallest", "under",
         "default-is-smallest"],
)
def test_duration_capped_by_smallest_max_session_duration(
        requested: timedelta, maxima: list[str | None], expected: timedelta, capped: bool) -> None:
    roles = [make_role(f"r{i}", roles=["reader"], max_duration=m) for i, m in enumerate(maxima)]
    decision = decide(*roles, req=request(duration=requested))
    assert decision.duration == expected
    assert decision.duration_capped is capped
    assert decision.requested_duration == requested
    if capped:
        assert "shortened to" in decision.duration_message
        assert decision.duration_message in decision.message
    else:
        assert decision.duration_message is None


def test_duration_message_names_the_limiting_role() -> None:
    decision = decide(make_role("long", roles=["reader"], max_duration="4h"),
                      make_role("short", roles=["reader"], max_duration="30m"),
                      req=request(duration=timedelta(hours=2)))
    assert decision.duration_message == ("requested duration 2h shortened to 30m, the smallest"
                                         " maxSessionDuration of the allowing Roles (Role short)")


def test_roles_that_do_not_take_part_do_not_cap() -> None:
    decision = decide(make_role("on", roles=["reader"]),
                      make_role("off", mode="off", roles=["reader"], max_duration="5m"),
                      make_role("other", users=("bob",), roles=["reader"], max_duration="5m"),
                      req=request(duration=timedelta(hours=2)))
    assert decision.duration == timedelta(hours=2) and not decision.duration_capped


def test_expires_at_is_now_plus_duration() -> None:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    decision = decide(make_role(roles=["reader"], max_duration="30m"), now=now,
                      req=request(duration=timedelta(hours=1)))
    assert decision.expires_at == now + timedelta(minutes=30)
    assert decide(make_role(roles=["reader"])).expires_at is None


# --------------------------------------------------------------------------------------------
# Trait templates


@pytest.mark.parametrize(
    ("entries", "internal", "extra", "expected"),
    [
        (["{{internal.db_roles}}"], {"db_roles": ["a", "b"]}, {}, ("a", "b")),
        (["{{external.db_roles}}"], {}, {"db_roles": ("x",)}, ("x",)),
        (["{{ external.db_roles }}"], {}, {"db_roles": ("x",)}, ("x",)),
        (["{{internal.db_roles}}"], {"db_roles": []}, {}, ()),
        (["{{internal.db_roles}}"], {}, {}, ()),
        (["{{external.db_roles}}"], {"db_roles": ["internal-only"]}, {}, ()),
        (["{{internal.db_roles}}"], {}, {"db_roles": ("external-only",)}, ()),
        (["{{internal.db_roles}}"], {"db_roles": "scalar"}, {}, ("scalar",)),
        (["reader", "{{internal.r}}", "{{external.r}}"], {"r": ["reader", "b"]}, {"r": ("b", "c")},
         ("b", "c", "reader")),
        (["{{internal.r}}"], {"r": ["", "x" * 64, "ok"]}, {}, ("ok",)),
        (["{{external.example.com/groups}}"], {}, {"example.com/groups": ("g",)}, ("g",)),
    ],
    ids=["internal", "external", "whitespace", "empty", "missing", "external-is-not-internal",
         "internal-is-not-external", "scalar-trait", "dedup", "unusable-values", "key-with-dots"],
)
def test_trait_templates(entries: list[str], internal: dict, extra: dict,
                         expected: tuple[str, ...]) -> None:
    role = make_role(roles=entries)
    decision = decide(role, req=request(extra=extra), internal_traits=internal)
    assert decision.allowed_database_roles == expected
    assert decision.explanations[0].granted_roles == expected


def test_template_notes_say_what_each_template_became() -> None:
    role = make_role(roles=["{{internal.a}}", "{{internal.missing}}", "{{internal.empty}}"])
    decision = decide(role, internal_traits={"a": ["x", "y"], "empty": []})
    notes = decision.explanations[0].notes
    assert "allow.databaseRoles: {{internal.a}} expanded to x, y" in notes
    assert any("{{internal.missing}} expanded to nothing" in n and "not set" in n for n in notes)
    assert any("{{internal.empty}} expanded to nothing" in n and "empty" in n for n in notes)


@pytest.mark.parametrize("entry", ["prefix-{{external.team}}", "{{other.key}}", "{{external.}}"])
def test_admission_rejects_embedded_or_unknown_templates(entry: str) -> None:
    with pytest.raises(ValidationError):
        make_role(roles=[entry])


@pytest.mark.parametrize("entry", ["prefix-{{external.team}}", "{{other.key}}", "{oops"])
def test_templates_that_slipped_past_admission_are_ignored_with_a_note(entry: str) -> None:
    role = make_role(roles=["reader"])
    role.spec.allow.database_roles = ["reader", entry]  # as if admission had been bypassed
    decision = decide(role, req=request(extra={"team": ("t",)}))
    assert decision.allowed
    assert decision.allowed_database_roles == ("reader",)
    assert any(entry in note and "ignored" in note for note in decision.explanations[0].notes)


def test_session_spec_extra_feeds_external_traits() -> None:
    session = DatabaseSession.model_validate({
        "metadata": {"name": "s"},
        "spec": {"user": "alice", "groups": ["analysts"], "extra": {"db_roles": ["reporting"]},
                 "databaseRef": {"name": "orders"}, "databaseName": "orders", "duration": "2h"},
    })
    role = make_role(users=(), groups=("analysts",), roles=["{{external.db_roles}}"])
    decision = evaluate(session.spec, make_database(), [role])
    assert decision.database_roles == ("reporting",)
    assert decision.request.groups == ("analysts",)
    assert decision.requested_duration == timedelta(hours=2)


# --------------------------------------------------------------------------------------------
# Explanations and ordering


def test_explanations_cover_every_role_sorted_by_name() -> None:
    decision = decide(make_role("zeta", roles=["reader"]), make_role("alpha", users=("bob",)),
                      make_role("mid", mode="off", roles=["x"]))
    assert [e.role for e in decision.explanations] == ["alpha", "mid", "zeta"]
    alpha, mid, zeta = decision.explanations
    assert not alpha.subjects_match and "no subject names user alice" in alpha.subjects_why
    assert "not evaluated" in alpha.allow_why
    assert mid.allow_applies and not mid.takes_part
    assert zeta.takes_part and zeta.contributed_mode is UserProvisioning.KEEP
    assert zeta.granted_roles == ("reader",)
    assert zeta.max_session_duration == timedelta(hours=8)


def test_explanation_of_applying_and_non_applying_deny() -> None:
    role = make_role("r", roles=["reader", "writer"],
                     deny={"databaseSelector": {"matchLabels": {"env": "prod"}},
                           "databaseRoles": ["writer"]})
    applies = decide(role).explanations[0]
    assert applies.deny_applies and "env=prod" in applies.deny_why
    assert "every database name" in applies.deny_why
    assert applies.removed_roles == ("writer",)
    misses = decide(role, database=make_database({"env": "dev"})).explanations[0]
    assert not misses.deny_applies and "does not match" in misses.deny_why
    assert misses.denied_roles == () and misses.removed_roles == ()


def test_role_without_deny_section_explains_it() -> None:
    assert decide(make_role(roles=["r"])).explanations[0].deny_why == "the Role has no deny section"


def test_duplicate_role_objects_count_once() -> None:
    role = make_role("same", roles=["reader"])
    decision = decide(role, role)
    assert decision.matched_roles == ("same",)
    assert len(decision.explanations) == 1


def test_success_message_summarizes() -> None:
    decision = decide(make_role("r", roles=["reader"]))
    assert decision.reason == Reason.ALLOWED
    assert decision.message == ("allowed by Role(s) r; userProvisioning keep; database roles reader;"
                                " duration 1h")


def test_decision_is_immutable() -> None:
    decision = decide(make_role(roles=["reader"]))
    with pytest.raises(AttributeError):
        decision.allowed = False  # type: ignore[misc]
    assert isinstance(decision.permissions, PermissionRules)


# --------------------------------------------------------------------------------------------
# pgjit explain: the rendered report (content, not exact whitespace)


def explain(*roles: Role, **kwargs: Any) -> str:
    return render_explanation(decide(*roles, **kwargs))


def lines_with(text: str, *words: str) -> list[str]:
    return [line for line in text.splitlines() if all(word in line for word in words)]


def test_explain_allowed_session() -> None:
    text = explain(make_role("analysts", roles=["reader", "{{external.db_roles}}"]),
                   req=request(groups=("team",), extra={"db_roles": ("reporting",)}))
    assert "alice (groups: team)" in text
    assert 'orders, database name "orders"' in text
    assert lines_with(text, "ALLOWED", "Allowed")
    assert lines_with(text, "Mode:", "keep", "analysts")
    assert lines_with(text, "Duration:", "1h", "as requested")
    assert lines_with(text, "allowed:", "reader, reporting")
    assert lines_with(text, "granted:", "reader, reporting")
    assert lines_with(text, "{{external.db_roles}} expanded to reporting")
    assert "Permissions: none" in text


def test_explain_table_has_a_row_per_role() -> None:
    text = explain(make_role("grant", roles=["reader"]), make_role("stranger", users=("bob",)),
                   make_role("lazy", mode="off", roles=["x"]))
    header = lines_with(text, "ROLE", "SUBJECTS", "ALLOW", "DENY", "MODE")
    assert len(header) == 1
    assert lines_with(text, "grant", "user alice", "yes", "keep", "8h")
    assert lines_with(text, "stranger", "no match")
    assert lines_with(text, "lazy", "yes, but mode off", "off (not counted)")


def test_explain_can_leave_out_roles_for_other_people() -> None:
    decision = decide(make_role("grant", roles=["reader"]), make_role("stranger", users=("bob",)))
    assert "stranger" in render_explanation(decision)
    assert "stranger" not in render_explanation(decision, include_unmatched=False)


def test_explain_says_why_a_role_does_not_apply() -> None:
    role = make_role("dev-only", allow={"databaseSelector": {"matchLabels": {"env": "dev"}},
                                        "databaseNames": ["*"], "databaseRoles": ["reader"]})
    text = explain(role)
    assert lines_with(text, "REFUSED", "AccessDenied")
    assert lines_with(text, "allow:", "does not apply", "env=dev", "env=prod")
    assert lines_with(text, "Mode:", "off", "no Role allows")


def test_explain_shows_deny_removals_and_refusals() -> None:
    text = explain(make_role("grant", roles=["reader", "writer"]),
                   make_role("no-writes", deny={"databaseRoles": ["writer"]}))
    assert lines_with(text, "no-writes", "removes writer")
    assert lines_with(text, "denied:", "writer (by Role no-writes)")
    assert lines_with(text, "removed:", "writer")

    refused = explain(make_role("grant", roles=["reader"]), make_role("blocker", deny={}))
    assert lines_with(refused, "blocker", "REFUSES")
    assert lines_with(refused, "REFUSED", "blocker")


def test_explain_lists_permissions_with_their_roles() -> None:
    allow = {**EVERYTHING, "permissions": [
        {"match": {"schema": "public"}, "privileges": ["insert", "SELECT"]}]}
    deny = {"permissions": [{"match": {"schema": "public", "name": "secret_*"}, "privileges": ["*"]}]}
    text = explain(make_role("perms", allow=allow), make_role("hide", deny=deny))
    assert "Permissions (granted)" in text
    assert lines_with(text, "allow", "SELECT, INSERT on table public.*", "perms")
    assert lines_with(text, "deny", "ALL (*) on table public.secret_*", "hide")


def test_explain_shows_the_duration_cap() -> None:
    text = explain(make_role("short", roles=["reader"], max_duration="30m"),
                   req=request(duration=timedelta(hours=2)))
    assert lines_with(text, "Duration:", "30m", "shortened", "Role short")


def test_explain_shows_expiry_when_known() -> None:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    text = explain(make_role(roles=["reader"]), now=now)
    assert lines_with(text, "Expires:", "2026-01-01T01:00:00+00:00")


def test_explain_shows_notes_and_role_errors() -> None:
    role = make_role("both", allow={**EVERYTHING, "databaseRoles": ["reader"],
                                    "permissions": PERMISSIONS})
    denier = make_role("no-fine", deny={"permissions": [{"match": {}, "privileges": ["*"]}]})
    text = explain(role, denier)
    assert lines_with(text, "Notes:")
    assert lines_with(text, "entirely removed by deny rules")

    broken = make_role("broken", allow={**EVERYTHING, "permissions": PERMISSIONS})
    broken.spec.allow.permissions[0].privileges = ["SELEC"]
    assert lines_with(explain(broken), "error:", "SELEC")


def test_explain_with_no_roles() -> None:
    assert "Roles: none" in explain()


# --------------------------------------------------------------------------------------------
# The roles a Database's health check asks the server about


def test_roles_granted_on_a_database_are_the_literal_entries_of_selecting_roles() -> None:
    prod = make_database(labels={"env": "prod"})
    roles = [
        make_role("a", roles=["reader", "{{internal.db_roles}}", "writer"]),
        make_role("b", allow={"databaseSelector": {"matchLabels": {"env": "prod"}},
                              "databaseNames": ["orders"], "databaseRoles": ["auditor"]}),
        make_role("elsewhere", allow={"databaseSelector": {"matchLabels": {"env": "dev"}},
                                      "databaseNames": ["*"], "databaseRoles": ["dev_only"]}),
        make_role("off", mode="off", roles=["never"]),
        make_role("unselective", allow={"databaseNames": ["*"], "databaseRoles": ["nowhere"]}),
        make_role("deny-only", deny={"databaseRoles": ["reader"]}),
    ]
    assert roles_granted_on(prod, roles) == ("auditor", "reader", "writer")
    assert roles_granted_on(make_database(labels={"env": "dev"}), roles) == \
        ("dev_only", "reader", "writer")
    assert roles_granted_on(prod, []) == ()
