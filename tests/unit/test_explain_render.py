"""`pgjit explain`'s report: every item the issue asks for, read from the policy's Decision.

Each test builds Roles as manifests write them, evaluates them with the operator's policy and
checks what a person reads: allow, deny, no match, trait templates, the effective mode and the
duration cap.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from pgjit.api import Database, Role
from pgjit.client.explaining import parse_extra
from pgjit.client.traits import parse_configmap_ref
from pgjit.core.traits import user_traits
from pgjit.core.explain import render_explanation
from pgjit.core.policy import AccessRequest, evaluate

ANY_DB = {"databaseSelector": {}, "databaseNames": ["*"]}
DATABASE = Database.model_validate({
    "metadata": {"name": "orders", "labels": {"env": "prod"}},
    "spec": {"host": "pg", "admin": {"username": "a", "passwordSecretRef": {"name": "s"}}}})


def role(name: str, *, group: str = "analysts", mode: str = "keep", **spec: Any) -> Role:
    return Role.model_validate({"metadata": {"name": name}, "spec": {
        "subjects": [{"kind": "Group", "name": group}], "userProvisioning": mode, **spec}})


def report(*roles: Role, groups: tuple[str, ...] = ("analysts",), extra=None,
           internal=None, duration: timedelta = timedelta(hours=1), db_roles=(),
           **kwargs: Any) -> tuple[str, bool]:
    request = AccessRequest(user="alice", database_name="orders", groups=groups,
                            extra=extra or {}, database_roles=db_roles, duration=duration)
    decision = evaluate(request, DATABASE, roles, internal_traits=internal)
    return render_explanation(decision, **kwargs), decision.allowed


def line(text: str, *words: str) -> str:
    found = [l for l in text.splitlines() if all(w in l for w in words)]
    assert found, f"no line with {words} in:\n{text}"
    return found[0]


def test_allow() -> None:
    text, allowed = report(role("readers", allow={**ANY_DB, "databaseRoles": ["reader"]}))
    assert allowed
    line(text, "Result:", "ALLOWED", "allowed by Role(s) readers")
    line(text, "readers", "group analysts", "yes", "keep")
    line(text, "allow:", "applies", 'matches "*"')
    line(text, "allowed:", "reader")
    line(text, "granted:", "reader")


def test_deny_that_removes_and_deny_that_refuses() -> None:
    grant = role("grant", allow={**ANY_DB, "databaseRoles": ["reader", "writer"]})
    text, allowed = report(grant, role("no-writes", mode="off",
                                       deny={"databaseRoles": ["writer"]}))
    assert allowed
    line(text, "no-writes", "removes writer")       # table
    line(text, "removed:", "writer")                # the Role's block
    line(text, "denied:", "writer (by Role no-writes)")
    line(text, "granted:", "reader")
    assert "writer" not in line(text, "granted:")

    text, allowed = report(grant, role("freeze", deny={"databaseSelector": {
        "matchLabels": {"env": "prod"}}}))
    assert not allowed
    line(text, "freeze", "REFUSES")
    line(text, "Result:", "REFUSED", "AccessDenied", "freeze")


def test_deny_on_permissions_is_listed() -> None:
    allow = {**ANY_DB, "permissions": [{"match": {"schema": "public"}, "privileges": ["SELECT"]}]}
    deny = {"permissions": [{"match": {"schema": "public", "name": "secret_*"},
                             "privileges": ["*"]}]}
    text, allowed = report(role("tables", allow=allow), role("hide", deny=deny))
    assert allowed
    line(text, "allow", "SELECT on table public.*", "tables")
    line(text, "deny", "ALL (*) on table public.secret_*", "hide")


def test_no_role_matches() -> None:
    text, allowed = report(role("others", group="admins",
                                allow={**ANY_DB, "databaseRoles": ["reader"]}))
    assert not allowed
    line(text, "others", "no match")
    line(text, "Result:", "REFUSED", "AccessDenied", "no Role in this namespace names")
    line(text, "Mode:", "off", "no Role allows")
    line(text, "Duration:", "no allowing Role, so no cap")


def test_selector_that_does_not_match_says_why() -> None:
    text, allowed = report(role("dev", allow={"databaseSelector": {"matchLabels": {"env": "dev"}},
                                              "databaseNames": ["*"]}))
    assert not allowed
    line(text, "allow:", "does not apply", "env=dev", "env=prod")


def test_internal_and_external_templates() -> None:
    allow = {**ANY_DB, "databaseRoles": ["{{internal.db_roles}}", "{{external.teams}}",
                                         "{{external.unset}}"]}
    text, allowed = report(role("templated", allow=allow), extra={"teams": ("finance",)},
                           internal={"db_roles": ["auditor", "reader"]})
    assert allowed
    line(text, "granted:", "auditor, finance, reader")
    line(text, "{{internal.db_roles}} expanded to auditor, reader")
    line(text, "{{external.teams}} expanded to finance")
    line(text, "{{external.unset}} expanded to nothing")
    line(text, "Extra:", "teams=finance")


def test_mode_is_the_highest_of_the_roles_that_take_part() -> None:
    roles = (role("k", mode="keep", allow={**ANY_DB, "databaseRoles": ["a"]}),
             role("d", mode="best_effort_drop", allow={**ANY_DB, "databaseRoles": ["b"]}),
             role("o", mode="off", allow={**ANY_DB, "databaseRoles": ["c"]}))
    text, allowed = report(*roles)
    assert allowed
    line(text, "Mode:", "best_effort_drop", "d, k")
    line(text, "o ", "yes, but mode off", "off (not counted)")
    line(text, "granted:", "a, b")

    text, allowed = report(roles[2])
    assert not allowed
    line(text, "Result:", "ProvisioningDisabled")


def test_duration_cap_is_shown_whether_or_not_it_bites() -> None:
    roles = (role("short", maxSessionDuration="30m", allow={**ANY_DB, "databaseRoles": ["a"]}),
             role("long", maxSessionDuration="8h", allow={**ANY_DB, "databaseRoles": ["a"]}))
    text, _ = report(*roles, duration=timedelta(minutes=10))
    line(text, "Duration:", "10m", "as requested", "cap 30m", "short")
    text, _ = report(*roles, duration=timedelta(hours=2))
    line(text, "Duration:", "30m", "shortened", "Role short")


def test_requested_role_outside_the_allowed_set() -> None:
    text, allowed = report(role("r", allow={**ANY_DB, "databaseRoles": ["reader"]}),
                           db_roles=("writer",))
    assert not allowed
    line(text, "Result:", 'access to database role "writer" denied')
    line(text, "requested:", "writer")


def test_context_rows_and_leaving_out_other_peoples_roles() -> None:
    roles = (role("mine", allow={**ANY_DB, "databaseRoles": ["a"]}), role("theirs", group="x"))
    text, _ = report(*roles, context=[("Identity", "you (SelfSubjectReview)"),
                                      ("Traits", "internal: none")], include_unmatched=False)
    line(text, "Identity:", "SelfSubjectReview")
    line(text, "Traits:", "internal: none")
    assert "theirs" not in text


# --------------------------------------------------------------------------------------------
# Command-line inputs of explain


def test_parse_extra() -> None:
    assert parse_extra(["teams=a,b", "teams=c", "flag="]) == {"teams": ("a", "b", "c"),
                                                               "flag": ()}
    with pytest.raises(ValueError):
        parse_extra(["novalue"])


def test_traits_configmap_entries() -> None:
    data = {"alice": "db_roles: [reader, auditor]\n", "bob": "not: [valid", "carol": "- a list"}
    assert user_traits(data, "alice") == {"db_roles": ["reader", "auditor"]}
    assert user_traits(data, "bob") == {} and user_traits(data, "carol") == {}
    assert user_traits(data, "dave") == {} and user_traits(None, "alice") == {}
    assert parse_configmap_ref("pgjit-system/traits") == ("pgjit-system", "traits")
    for bad in ("traits", "/traits", "a/b/c"):
        with pytest.raises(ValueError):
            parse_configmap_ref(bad)


APPROVAL = {"reviewers": [{"kind": "User", "name": "bob"}, {"kind": "Group", "name": "dba"}],
            "required": 2, "pendingTimeout": "30m"}


def test_approval_is_said_with_whom_and_how_many() -> None:
    asks = role("asks", allow={**ANY_DB, "databaseRoles": ["reader"]}, approval=APPROVAL)
    text, allowed = report(asks)
    assert allowed
    assert line(text, "Approval:") == (
        "Approval: required: 2 distinct approvals from group dba, user bob (Role(s) asks),"
        " within 30m of the request; the duration counts from the approval")
    plain, _ = report(role("plain", allow={**ANY_DB, "databaseRoles": ["reader"]}))
    assert "Approval: not required" in line(plain, "Approval:")


def test_a_required_reason_missing_is_pointed_out() -> None:
    asks = role("asks", allow={**ANY_DB, "databaseRoles": ["reader"]},
                approval={**APPROVAL, "requireReason": True,
                          "reviewers": [{"kind": "User", "name": "bob"}]})
    text, _ = report(asks)
    approval = line(text, "Approval:")
    assert "a reason (spec.reason) is required" in approval
    assert "this request gives none, so it would be refused (--reason TEXT)" in approval
    # bob alone cannot give two approvals.
    assert "only 1 user(s) may review but 2 approvals are required" in approval
    request = AccessRequest(user="alice", database_name="orders", groups=("analysts",),
                            reason="INC-3")
    given = render_explanation(evaluate(request, DATABASE, [asks]))
    assert "would be refused" not in line(given, "Approval:")
