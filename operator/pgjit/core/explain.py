"""Plain-text rendering of a policy Decision for ``pgjit explain`` (Teleport's ``tsh db ls -v``).

The text answers, in order: may this user open this database, with which mode, roles and
permissions, for how long; then, Role by Role, why each applies or not. It reads only the
Decision, so what it prints is exactly what the operator acts on. No terminal library: the output
must survive pipes, logs and copy-paste into tickets.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..api.common import format_duration
from .approval import has_reason
from .permissions import PermissionRule
from .policy import AccessRequest, Decision, RoleExplanation, describe_rule


def render_explanation(decision: Decision, *, include_unmatched: bool = True,
                       context: Sequence[tuple[str, str]] = ()) -> str:
    """The decision as a readable report. ``include_unmatched=False`` leaves out Roles whose
    subjects do not name the user, which helps in namespaces with many Roles. ``context`` rows
    (label, text) join the summary: where the identity and the traits came from, which the
    Decision cannot know."""
    explanations = [e for e in decision.explanations if include_unmatched or e.subjects_match]
    sections = [
        _summary(decision, context),
        _role_table(explanations),
        _role_details(explanations),
        _database_roles(decision),
        _permissions(decision),
        _notes(decision),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


# --------------------------------------------------------------------------------------------
# Sections


def _summary(decision: Decision, context: Sequence[tuple[str, str]]) -> str:
    request = decision.request
    verdict = "ALLOWED" if decision.allowed else "REFUSED"
    rows = [
        *_user_rows(request),
        *context,
        ("Database", f'{decision.database}, database name "{request.database_name}"'),
        ("Result", f"{verdict} ({decision.reason}): {decision.message}"),
        ("Mode", _mode_line(decision)),
        ("Duration", _duration_line(decision)),
        ("Approval", _approval_line(decision)),
    ]
    if decision.expires_at is not None:
        rows.append(("Expires", decision.expires_at.isoformat()))
    rows.append(("Bound", _bound_line(decision)))
    width = max(len(label) for label, _ in rows) + 1
    return "\n".join(f"{label + ':':<{width}} {value}" for label, value in rows)


def _approval_line(decision: Decision) -> str:
    """Whether the session waits for reviewers, and whom (core.approval)."""
    requirement = decision.approval
    if requirement is None:
        return "not required (no allowing Role has spec.approval)"
    line = f"required: {requirement.summary()}"
    if requirement.require_reason and not has_reason(decision.request.reason):
        line += "; this request gives none, so it would be refused (--reason TEXT)"
    line += "; the duration counts from the approval"
    return "; ".join([line, *requirement.notes()])


def _bound_line(decision: Decision) -> str:
    """The Database's own limit on what any session there may get (core.boundaries)."""
    def globs(values: Sequence[str] | None) -> str:
        return "any" if values is None else (", ".join(values) or "none")
    return (f"roles {globs(decision.grantable_roles)}; schemas "
            f"{globs(decision.grantable_schemas)} (Database spec.grantableRoles/Schemas; "
            "superuser-like roles only by exact name)")


def _user_rows(request: AccessRequest) -> list[tuple[str, str]]:
    rows = [("User", f"{request.user} (groups: {', '.join(request.groups) or 'none'})")]
    if request.extra:
        rows.append(("Extra", "; ".join(f"{key}={','.join(values)}"
                                        for key, values in sorted(request.extra.items()))))
    return rows


def _mode_line(decision: Decision) -> str:
    if not decision.matched_roles:
        return f"{decision.mode} (no Role allows with provisioning on)"
    return (f"{decision.mode} (highest userProvisioning among Role(s)"
            f" {', '.join(decision.matched_roles)})")


def _duration_line(decision: Decision) -> str:
    duration = format_duration(decision.duration)
    if decision.duration_capped:
        return f"{duration}: {decision.duration_message}"
    participants = [e for e in decision.explanations if e.takes_part]
    if not participants:
        return f"{duration} (as requested; no allowing Role, so no cap applies)"
    cap = min(e.max_session_duration for e in participants)
    limiting = ", ".join(e.role for e in participants if e.max_session_duration == cap)
    return (f"{duration} (as requested; cap {format_duration(cap)}, the smallest"
            f" maxSessionDuration of the allowing Roles: {limiting})")


def _role_table(explanations: Sequence[RoleExplanation]) -> str:
    if not explanations:
        return "Roles: none in this namespace"
    header = ("ROLE", "SUBJECTS", "ALLOW", "DENY", "MODE", "MAX DURATION")
    rows = [
        (e.role, _subjects_cell(e), _allow_cell(e), _deny_cell(e), _mode_cell(e),
         format_duration(e.max_session_duration))
        for e in explanations
    ]
    return "Roles:\n" + _table(header, rows)


def _role_details(explanations: Sequence[RoleExplanation]) -> str:
    blocks = [_role_block(e) for e in explanations if e.subjects_match]
    return "Why:\n" + "\n".join(blocks) if blocks else ""


def _role_block(explanation: RoleExplanation) -> str:
    e = explanation
    lines = [f"  {e.role}",
             f"    subjects: {e.subjects_why}",
             f"    allow:    {_yes_no(e.allow_applies)}: {e.allow_why}",
             f"    deny:     {_yes_no(e.deny_applies)}: {e.deny_why}"]
    if e.allow_applies:
        lines.append(f"    grants:   {_grants(e.granted_roles, e.granted_permissions)}")
    if e.deny_applies and not e.deny_refuses:
        lines.append(f"    denies:   {_grants(e.denied_roles, e.denied_permissions)}")
    if e.removed_roles:
        lines.append(f"    removed:  {', '.join(e.removed_roles)}")
    if e.error:
        lines.append(f"    error:    {e.error}")
    lines += [f"    note:     {note}" for note in e.notes]
    return "\n".join(lines)


def _database_roles(decision: Decision) -> str:
    removals = [f"{role} (by Role {e.role})"
                for e in decision.explanations for role in e.removed_roles]
    requested = ", ".join(decision.request.database_roles) or "none (all allowed roles)"
    lines = [
        "Database roles:",
        f"  allowed:   {', '.join(decision.allowed_database_roles) or 'none'}",
        f"  requested: {requested}",
        f"  granted:   {', '.join(decision.database_roles) or 'none'}",
    ]
    if removals:
        lines.append(f"  denied:    {', '.join(removals)}")
    return "\n".join(lines)


def _permissions(decision: Decision) -> str:
    rows = [("allow", describe_rule(rule), e.role)
            for e in decision.explanations if e.takes_part for rule in e.granted_permissions]
    rows += [("deny", describe_rule(rule), e.role)
             for e in decision.explanations if e.deny_applies for rule in e.denied_permissions]
    if not rows:
        return "Permissions: none"
    return f"Permissions ({_permissions_state(decision)}):\n" + _table(("", "PRIVILEGES", "ROLE"), rows)


def _permissions_state(decision: Decision) -> str:
    if decision.permissions:
        return "granted"
    if decision.allowed_permissions:
        return "not granted: session refused"
    return "no allow rule takes effect"


def _notes(decision: Decision) -> str:
    if not decision.notes:
        return ""
    return "Notes:\n" + "\n".join(f"  {note}" for note in decision.notes)


# --------------------------------------------------------------------------------------------
# Cells and layout


def _subjects_cell(e: RoleExplanation) -> str:
    return e.subjects_why if e.subjects_match else "no match"


def _allow_cell(e: RoleExplanation) -> str:
    if not e.subjects_match:
        return "-"
    if e.takes_part:
        return "yes"
    return "yes, but mode off" if e.allow_applies else "no"


def _deny_cell(e: RoleExplanation) -> str:
    if not e.subjects_match:
        return "-"
    if e.deny_refuses:
        return "REFUSES"
    if e.removed_roles:
        return "removes " + ", ".join(e.removed_roles)
    return "applies" if e.deny_applies else "no"


def _mode_cell(e: RoleExplanation) -> str:
    return str(e.mode) if e.takes_part else f"{e.mode} (not counted)"


def _grants(roles: Sequence[str], rules: Sequence[PermissionRule]) -> str:
    parts = []
    if roles:
        parts.append("database roles " + ", ".join(roles))
    parts += [describe_rule(rule) for rule in rules]
    return "; ".join(parts) or "nothing"


def _yes_no(flag: bool) -> str:
    return "applies" if flag else "does not apply"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart, indented by two."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  " + "  ".join(f"{cell:<{w}}" for cell, w in zip(cells, widths)).rstrip()

    return "\n".join(line(row) for row in [header, *rows])
