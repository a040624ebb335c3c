"""Policy: which Roles apply to a session, and what they grant. Pure; no I/O.

This is the one place that turns a request (who, which database, which roles, how long), a
Database and the namespace's Roles into a decision. The operator acts on the decision and
``pgjit explain`` prints it, so both always agree on why a session is allowed or refused.

The rules are the contract's (shared/spec/api.md, Role "Semantics"), which follow Teleport's
(teleport-behaviour.md §1.1, §3):

* A Role's subjects match when a ``User`` subject names the requester or a ``Group`` subject
  names one of its groups.
* A Role *allows* when its subjects match, ``allow.databaseSelector`` matches the Database's
  labels (absent: no Database, ``{}``: every Database) and ``allow.databaseNames`` matches the
  database name (absent: no name). Only allowing Roles whose ``userProvisioning`` is not ``off``
  take part: they give the mode (the highest), the database roles, the permissions and the
  duration cap.
* A Role's deny section applies when its subjects match (whatever its mode), its selector matches
  (absent: every Database) and its names match (absent: every name). One that lists neither
  databaseRoles nor permissions refuses the session; otherwise it removes what it lists.

Reasons (``Decision.reason``, meant for the session's ``Ready`` condition):

* ``Allowed``: the policy permits the session. The operator reports ``Active`` once it has
  actually provisioned the user; this module only decides.
* ``AccessDenied``: no Role allows, a deny section refuses, a requested database role is not
  allowed, or the Database's ``spec.databases`` does not offer the database name.
* ``ProvisioningDisabled``: Roles allow the session, but all of them with ``userProvisioning: off``.
* ``InvalidRole``: an applying Role holds something the API server should have refused (an
  unknown privilege); the Role's author must fix it.
* ``ConflictingGrants``: the Roles grant both database roles and object permissions, which are
  mutually exclusive for one session (as in Teleport).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from ..api.common import LabelSelector, SelectorOperator, format_duration
from ..api.database import Database
from ..api.role import (
    AllowPermission,
    RoleApproval,
    DenyPermission,
    ObjectKind,
    Role,
    RoleAllow,
    RoleDeny,
    SubjectKind,
    UNQUALIFIED_KINDS,
    UserProvisioning,
    parse_template,
)
from ..api.session import DatabaseSessionSpec
from ..vocabulary import Reason
from .approval import Requirement as ApprovalRequirement
from .approval import requirement as approval_requirement
from .boundaries import pattern_within, within
from .globs import glob_matches
from .permissions import ALL, KIND_PRIVILEGES, PermissionError_, PermissionRule, PermissionRules

#: What a session lasts when it does not say (the DatabaseSession default).
DEFAULT_SESSION_DURATION = timedelta(hours=1)
#: PostgreSQL keeps at most this many bytes of an identifier and silently truncates the rest.
_PG_IDENTIFIER_MAX_BYTES = 63
_UNNAMED_ROLE = "<unnamed>"

#: Teleport's wording, kept so people searching for it find the same cause.
MUTUALLY_EXCLUSIVE_MESSAGE = (
    "fine-grained database permissions and database roles are mutually exclusive, yet both were"
    " provided"
)


def denied_role_message(role: str) -> str:
    """The refusal for a requested database role the Roles do not allow (contract wording)."""
    return f'access to database role "{role}" denied'


# --------------------------------------------------------------------------------------------
# Input


@dataclass(frozen=True)
class AccessRequest:
    """What a session asks for: the parts of a DatabaseSession spec the policy reads.

    Its own type rather than the spec so that ``pgjit explain`` can ask "what would this user
    get" without inventing a session object.
    """

    user: str
    database_name: str
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    database_roles: tuple[str, ...] = ()
    duration: timedelta = DEFAULT_SESSION_DURATION
    #: Why access is needed (spec.reason), for reviewers; Roles may require one.
    reason: str | None = None

    @classmethod
    def from_session(cls, spec: DatabaseSessionSpec) -> AccessRequest:
        """The request a DatabaseSession spec makes."""
        return cls(
            user=spec.user,
            database_name=spec.database_name,
            groups=tuple(spec.groups or ()),
            extra={key: tuple(values) for key, values in (spec.extra or {}).items()},
            database_roles=tuple(spec.database_roles or ()),
            duration=spec.duration,
            reason=spec.reason,
        )


# --------------------------------------------------------------------------------------------
# Output


@dataclass(frozen=True)
class RoleExplanation:
    """How one Role was read for one request; a row of ``pgjit explain``.

    Every ``*_why`` field is a short sentence saying why the corresponding flag is what it is.
    """

    role: str
    mode: UserProvisioning
    max_session_duration: timedelta
    subjects_match: bool
    subjects_why: str
    allow_applies: bool = False
    allow_why: str = "not evaluated: subjects do not match"
    deny_applies: bool = False
    deny_why: str = "not evaluated: subjects do not match"
    deny_refuses: bool = False
    #: allow.databaseRoles after template expansion (whether or not the Role takes part).
    granted_roles: tuple[str, ...] = ()
    granted_permissions: tuple[PermissionRule, ...] = ()
    #: deny.databaseRoles after template expansion, when the deny section applies.
    denied_roles: tuple[str, ...] = ()
    #: The denied roles that some allowing Role had granted: what this deny actually took away.
    removed_roles: tuple[str, ...] = ()
    denied_permissions: tuple[PermissionRule, ...] = ()
    #: Template expansions, ignored entries and other remarks, in reading order.
    notes: tuple[str, ...] = ()
    #: Set when the Role holds something unusable (an unknown privilege).
    error: str | None = None
    #: The Role's spec.approval: sessions it allows wait for reviewers.
    approval: RoleApproval | None = None

    @property
    def takes_part(self) -> bool:
        """Whether this Role allows the session and provisions users (mode is not off)."""
        return self.allow_applies and self.mode is not UserProvisioning.OFF

    @property
    def contributed_mode(self) -> UserProvisioning | None:
        """The mode this Role puts into the effective one, or None if it does not take part."""
        return self.mode if self.takes_part else None


@dataclass(frozen=True)
class Decision:
    """Whether a session may be opened, with what, for how long, and why.

    On refusal nothing is to be granted: ``database_roles`` is empty and ``permissions`` has no
    rules. The other fields still say what the Roles would allow, for ``pgjit explain``.
    """

    allowed: bool
    reason: str
    message: str
    request: AccessRequest
    database: str
    #: Effective userProvisioning: the highest among the Roles that take part (off if none).
    mode: UserProvisioning
    #: Roles that allow the session with a mode other than off, sorted.
    matched_roles: tuple[str, ...]
    #: Union of allow.databaseRoles of the matched Roles minus every applying deny, sorted.
    allowed_database_roles: tuple[str, ...]
    #: What the session gets: the requested subset, or all allowed roles; sorted.
    database_roles: tuple[str, ...]
    #: Object privilege rules to apply (allow from matched Roles, deny from applying denies).
    permissions: PermissionRules
    #: The same rules, kept on refusal too.
    allowed_permissions: PermissionRules
    requested_duration: timedelta
    duration: timedelta
    duration_capped: bool
    #: Says the duration was shortened and by which Role(s); None when it was not.
    duration_message: str | None
    expires_at: datetime | None
    explanations: tuple[RoleExplanation, ...]
    #: Remarks about the whole decision (e.g. allow rules a deny rule cancels entirely).
    notes: tuple[str, ...] = ()
    #: The Database's bound (spec.grantableRoles, spec.grantableSchemas); None: no bound.
    grantable_roles: tuple[str, ...] | None = None
    grantable_schemas: tuple[str, ...] | None = None
    #: What the session must get from reviewers before it is opened (the strictest of the
    #: allowing Roles' spec.approval); None: it is opened at once.
    approval: ApprovalRequirement | None = None

    def explanation(self, role: str) -> RoleExplanation | None:
        """The explanation for the Role named ``role``, if it was considered."""
        return next((e for e in self.explanations if e.role == role), None)


# --------------------------------------------------------------------------------------------
# Matching helpers


def _first_matching_glob(globs: Sequence[str], name: str) -> str | None:
    return next((glob for glob in globs if glob_matches(glob, name)), None)


def describe_selector(selector: LabelSelector) -> str:
    """A selector in kubectl's ``-l`` syntax, e.g. ``env=prod,tier notin (pii)``."""
    parts = [f"{key}={value}" for key, value in sorted((selector.match_labels or {}).items())]
    for requirement in selector.match_expressions or []:
        values = ",".join(requirement.values or [])
        match requirement.operator:
            case SelectorOperator.IN:
                parts.append(f"{requirement.key} in ({values})")
            case SelectorOperator.NOT_IN:
                parts.append(f"{requirement.key} notin ({values})")
            case SelectorOperator.EXISTS:
                parts.append(requirement.key)
            case SelectorOperator.DOES_NOT_EXIST:
                parts.append(f"!{requirement.key}")
    return ",".join(parts) if parts else "{} (every Database)"


def describe_labels(labels: Mapping[str, str]) -> str:
    """Labels as ``k=v,k=v``, or ``no labels``."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "no labels"


def describe_rule(rule: PermissionRule) -> str:
    """A permission rule for people, e.g. ``SELECT, INSERT on table public.*``."""
    privileges = (
        "ALL (*)"
        if ALL in rule.privileges
        else ", ".join(p for p in KIND_PRIVILEGES[ObjectKind(rule.match.object_kind)]
                       if p in rule.privileges)
    )
    match = rule.match
    if ObjectKind(match.object_kind) in UNQUALIFIED_KINDS:
        return f"{privileges} on {match.object_kind} {match.name}"
    return f"{privileges} on {match.object_kind} {match.schema}.{match.name}"


def _quoted_list(values: Iterable[str]) -> str:
    return ", ".join(f'"{value}"' for value in values)


def _subject_matches(role: Role, request: AccessRequest) -> tuple[str, ...]:
    """Descriptions of the subjects that name the requester, e.g. ``group analysts``."""
    groups = set(request.groups)
    found = []
    for subject in role.spec.subjects:
        if subject.kind is SubjectKind.USER and subject.name == request.user:
            found.append(f"user {subject.name}")
        elif subject.kind is SubjectKind.GROUP and subject.name in groups:
            found.append(f"group {subject.name}")
    return tuple(found)


def _allow_verdict(allow: RoleAllow | None, labels: Mapping[str, str], database: str,
                   name: str) -> tuple[bool, str]:
    """Whether an allow section covers the Database and name, and why (not)."""
    if allow is None:
        return False, "the Role has no allow section"
    if allow.database_selector is None:
        return False, ("allow.databaseSelector is absent, which selects no Database"
                       " (write {} to select every Database)")
    selector = describe_selector(allow.database_selector)
    if not allow.database_selector.matches(labels):
        return False, (f"allow.databaseSelector {selector} does not match Database"
                       f" {database} ({describe_labels(labels)})")
    if allow.database_names is None:
        return False, ("allow.databaseNames is absent, which matches no database name"
                       ' (write ["*"] for any)')
    glob = _first_matching_glob(allow.database_names, name)
    if glob is None:
        return False, (f"allow.databaseNames [{_quoted_list(allow.database_names)}] does not"
                       f' match "{name}"')
    return True, f'databaseSelector {selector} matches Database {database}; "{name}" matches "{glob}"'


def _deny_verdict(deny: RoleDeny | None, labels: Mapping[str, str], database: str,
                  name: str) -> tuple[bool, str]:
    """Whether a deny section covers the Database and name, and why (not).

    Absent scope fields widen a deny rather than narrow it: a deny that forgets its selector
    errs on the side of taking away.
    """
    if deny is None:
        return False, "the Role has no deny section"
    if deny.database_selector is None:
        scope = "every Database (no databaseSelector)"
    else:
        selector = describe_selector(deny.database_selector)
        if not deny.database_selector.matches(labels):
            return False, (f"deny.databaseSelector {selector} does not match Database"
                           f" {database} ({describe_labels(labels)})")
        scope = f"databaseSelector {selector} matches Database {database}"
    if deny.database_names is None:
        return True, f"{scope}; every database name (no databaseNames)"
    glob = _first_matching_glob(deny.database_names, name)
    if glob is None:
        return False, (f"deny.databaseNames [{_quoted_list(deny.database_names)}] does not"
                       f' match "{name}"')
    return True, f'{scope}; "{name}" matches "{glob}"'


def _deny_lists_nothing(deny: RoleDeny) -> bool:
    # Judged on what is written, not on what templates expand to: a deny of
    # "{{external.blocked}}" that happens to expand to nothing must not lock the person out.
    return not deny.database_roles and not deny.permissions


# --------------------------------------------------------------------------------------------
# Trait templates


@dataclass(frozen=True)
class _Traits:
    internal: Mapping[str, Sequence[str] | str]
    external: Mapping[str, Sequence[str]]

    def lookup(self, namespace: str, key: str) -> tuple[str, ...] | None:
        source = self.internal if namespace == "internal" else self.external
        if key not in source:
            return None
        values = source[key]
        # The traits ConfigMap is written by hand; a scalar where a list belongs is read as a
        # one-element list rather than as its characters.
        if isinstance(values, str):
            return (values,)
        return tuple(str(value) for value in values or ())


def _expand_entries(entries: Sequence[str] | None, traits: _Traits, where: str
                    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Role names from ``entries`` with trait templates expanded (unique, sorted), and notes on
    what happened.

    Never raises: the API server rejects malformed templates, and an object that slipped past it
    should cost the requester what that entry would have granted, not break every session.
    """
    names: list[str] = []
    notes: list[str] = []
    for entry in entries or ():
        parsed = parse_template(entry)
        if parsed is None:
            if "{" in entry or "}" in entry:
                notes.append(f"{where}: ignored {entry!r}: not a trait template pgjit reads"
                             " (write {{internal.KEY}} or {{external.KEY}} as the whole entry)")
            else:
                names.append(entry)
            continue
        namespace, key = parsed
        values = traits.lookup(namespace, key)
        if values is None:
            notes.append(f"{where}: {entry} expanded to nothing ({namespace} trait {key!r} is not set)")
            continue
        kept = [value for value in values if _usable_role_name(value, entry, where, notes)]
        if kept:
            notes.append(f"{where}: {entry} expanded to {', '.join(kept)}")
        elif not values:
            notes.append(f"{where}: {entry} expanded to nothing ({namespace} trait {key!r} is empty)")
        names.extend(kept)
    return tuple(sorted(set(names))), tuple(notes)


def _usable_role_name(value: str, entry: str, where: str, notes: list[str]) -> bool:
    # PostgreSQL would silently truncate a longer name and could grant a different role.
    if not value:
        notes.append(f"{where}: {entry} yielded an empty value, ignored")
        return False
    if len(value.encode("utf-8")) > _PG_IDENTIFIER_MAX_BYTES:
        notes.append(f"{where}: {entry} yielded {value!r}, longer than 63 bytes, ignored")
        return False
    return True


# --------------------------------------------------------------------------------------------
# Permissions


def _build_rules(permissions: Sequence[AllowPermission | DenyPermission] | None, *, deny: bool
                 ) -> tuple[PermissionRule, ...]:
    """The core permission rules of one section. Raises PermissionError_ on a bad privilege."""
    return tuple(
        PermissionRule.build(str(p.match.object_kind), p.match.schema_name, p.match.name,
                             p.privileges, deny=deny, labels=p.match.labels)
        for p in permissions or ()
    )


def _pattern_covers(wide: str, narrow: str) -> bool:
    return wide == "*" or wide == narrow


def _cancelled_by(rule: PermissionRule, denies: Iterable[PermissionRule]) -> bool:
    """Whether deny rules take away every privilege of ``rule`` on every object it matches.

    Only patterns that are "*" or identical are recognised; a rule that survives here may still
    grant nothing on the actual tables, which only the engine can tell.
    """
    removed: set[str] = set()
    for deny in denies:
        if (deny.match.object_kind == rule.match.object_kind
                and _pattern_covers(deny.match.schema, rule.match.schema)
                and _pattern_covers(deny.match.name, rule.match.name)):
            removed |= deny.privileges
    return ALL in removed or rule.privileges <= removed


def _unique_sorted_rules(rules: Iterable[PermissionRule]) -> tuple[PermissionRule, ...]:
    def key(rule: PermissionRule) -> tuple[str, str, str, tuple[str, ...]]:
        m = rule.match
        return (m.object_kind, m.schema, m.name, tuple(sorted(rule.privileges)))

    return tuple(sorted(set(rules), key=key))


# --------------------------------------------------------------------------------------------
# Per-Role evaluation


def _role_name(role: Role) -> str:
    return role.metadata.name or _UNNAMED_ROLE


@dataclass(frozen=True)
class _SectionContents:
    """What an applying allow or deny section lists, with templates expanded."""

    roles: tuple[str, ...] = ()
    rules: tuple[PermissionRule, ...] = ()
    notes: tuple[str, ...] = ()
    error: str | None = None


def _read_section(section: RoleAllow | RoleDeny, traits: _Traits, *, deny: bool
                  ) -> _SectionContents:
    side = "deny" if deny else "allow"
    roles, notes = _expand_entries(section.database_roles, traits, f"{side}.databaseRoles")
    try:
        rules = _build_rules(section.permissions, deny=deny)
    except PermissionError_ as exc:
        return _SectionContents(roles, (), notes, f"{side}.permissions: {exc}")
    return _SectionContents(roles, rules, notes)


def _explain_role(role: Role, request: AccessRequest, database: Database, traits: _Traits
                  ) -> RoleExplanation:
    """Read one Role against the request, before Roles are combined.

    ``removed_roles`` is filled in later, once the union of allowed roles is known.
    """
    spec = role.spec
    base = RoleExplanation(role=_role_name(role), mode=spec.user_provisioning,
                           max_session_duration=spec.max_session_duration,
                           subjects_match=False, subjects_why="", approval=spec.approval)
    matched = _subject_matches(role, request)
    if not matched:
        groups = ", ".join(request.groups) or "none"
        return replace(base, subjects_why=f"no subject names user {request.user} or one of"
                                           f" its groups ({groups})")

    labels = database.metadata.labels
    db_name = database.metadata.name or "?"
    allow_applies, allow_why = _allow_verdict(spec.allow, labels, db_name, request.database_name)
    deny_applies, deny_why = _deny_verdict(spec.deny, labels, db_name, request.database_name)
    if allow_applies and spec.user_provisioning is UserProvisioning.OFF:
        allow_why += "; but userProvisioning is off, so this Role does not take part"
    deny_refuses = deny_applies and spec.deny is not None and _deny_lists_nothing(spec.deny)
    if deny_refuses:
        deny_why += "; it lists neither databaseRoles nor permissions, so it refuses the session"

    granted = (_read_section(spec.allow, traits, deny=False)
               if allow_applies and spec.allow is not None else _SectionContents())
    denied = (_read_section(spec.deny, traits, deny=True)
              if deny_applies and spec.deny is not None else _SectionContents())
    errors = [error for error in (granted.error, denied.error) if error]
    return replace(
        base, subjects_match=True, subjects_why=", ".join(matched),
        allow_applies=allow_applies, allow_why=allow_why,
        deny_applies=deny_applies, deny_why=deny_why, deny_refuses=deny_refuses,
        granted_roles=granted.roles, granted_permissions=granted.rules,
        denied_roles=denied.roles, denied_permissions=denied.rules,
        notes=granted.notes + denied.notes, error="; ".join(errors) or None,
    )


# --------------------------------------------------------------------------------------------
# Combining Roles


@dataclass(frozen=True)
class _Refusal:
    reason: str
    message: str


def _who(request: AccessRequest) -> str:
    groups = f" (groups: {', '.join(request.groups)})" if request.groups else ""
    return f"user {request.user}{groups}"


def _target(request: AccessRequest, database: str) -> str:
    return f'database "{request.database_name}" on Database {database}'


def _offered_by_database(database: Database, name: str) -> _Refusal | None:
    """Refusal when the Database's own allow-list does not offer ``name``.

    Checked here, not only by the operator, so that ``pgjit explain`` gives the same answer.
    """
    offered = database.spec.databases
    if offered is None or name in offered:
        return None
    return _Refusal(
        Reason.ACCESS_DENIED,
        f'Database {database.metadata.name} does not offer database "{name}": its spec.databases'
        f" lists {_quoted_list(offered) or 'nothing'}",
    )


def _no_allowing_role(request: AccessRequest, database: str,
                      explanations: Sequence[RoleExplanation]) -> _Refusal:
    """Why nothing allows: ProvisioningDisabled if only mode-off Roles allow, else AccessDenied."""
    off_only = [e.role for e in explanations if e.allow_applies]
    if off_only:
        return _Refusal(
            Reason.PROVISIONING_DISABLED,
            f"Role(s) {', '.join(off_only)} allow {_who(request)} on {_target(request, database)}"
            " but with userProvisioning: off; set userProvisioning to keep or best_effort_drop"
            " in one of them, or add a Role that does",
        )
    considered = [e for e in explanations if e.subjects_match]
    if not considered:
        return _Refusal(
            Reason.ACCESS_DENIED,
            f"no Role allows {_who(request)} on {_target(request, database)}: no Role in this"
            " namespace names that user or one of its groups in its subjects; ask for a Role"
            " that does",
        )
    why = "; ".join(f"{e.role}: {e.allow_why}" for e in considered)
    return _Refusal(
        Reason.ACCESS_DENIED,
        f"no Role allows {_who(request)} on {_target(request, database)}. Roles naming the user"
        f" or its groups: {why}",
    )


def _deny_refusal(request: AccessRequest, database: str,
                  explanations: Sequence[RoleExplanation]) -> _Refusal | None:
    refusing = [e.role for e in explanations if e.deny_refuses]
    if not refusing:
        return None
    return _Refusal(
        Reason.ACCESS_DENIED,
        f"Role(s) {', '.join(refusing)} deny {_who(request)} access to"
        f" {_target(request, database)}: the deny section applies and lists neither databaseRoles"
        " nor permissions",
    )


def _invalid_role(explanations: Sequence[RoleExplanation]) -> _Refusal | None:
    broken = [e for e in explanations if e.error and (e.takes_part or e.deny_applies)]
    if not broken:
        return None
    return _Refusal(
        Reason.INVALID_ROLE,
        "; ".join(f"Role {e.role}: {e.error}" for e in broken) + " (fix the Role)",
    )


def _requested_outside(request: AccessRequest, allowed: Iterable[str]) -> _Refusal | None:
    allowed_set = set(allowed)
    outside = next((role for role in request.database_roles if role not in allowed_set), None)
    if outside is None:
        return None
    return _Refusal(Reason.ACCESS_DENIED, denied_role_message(outside))


def _outside_bound(database: Database, roles: Sequence[str], rules: PermissionRules
                   ) -> _Refusal | None:
    """Refusal when the session would get a role, or a schema, the Database does not allow."""
    spec, name = database.spec, database.metadata.name
    outside = [role for role in roles if not within(spec.grantable_roles, role)]
    if outside:
        return _Refusal(
            Reason.ACCESS_DENIED,
            f"database role(s) {_quoted_list(outside)} are outside what Database {name} allows:"
            f" its spec.grantableRoles lists {_quoted_list(spec.grantable_roles or ())};"
            " request only roles inside it (--db-roles), or ask the Database's owner",
        )
    schemas = sorted({r.match.schema for r in rules.allow if "*" not in r.match.schema
                      and not within(spec.grantable_schemas, r.match.schema)})
    if schemas:
        return _Refusal(
            Reason.ACCESS_DENIED,
            f"permissions on schema(s) {_quoted_list(schemas)} are outside what Database {name}"
            f" allows: its spec.grantableSchemas lists"
            f" {_quoted_list(spec.grantable_schemas or ())}",
        )
    return None


def _needs_inheritor(database: Database, mode: UserProvisioning) -> _Refusal | None:
    if mode is not UserProvisioning.BEST_EFFORT_REASSIGN_AND_DROP or \
            database.spec.objects_inheritor is not None:
        return None
    return _Refusal(
        Reason.OBJECTS_INHERITOR_MISSING,
        f"userProvisioning best_effort_reassign_and_drop hands what the user created to the"
        f" Database's objectsInheritor, and Database {database.metadata.name} names none: set"
        " spec.objectsInheritor (a role the admin can act for), or use another mode",
    )


def _conflict(roles: Sequence[str], explanations: Sequence[RoleExplanation]) -> _Refusal:
    role_sources = [e.role for e in explanations if e.takes_part and set(e.granted_roles) & set(roles)]
    permission_sources = [e.role for e in explanations if e.takes_part and e.granted_permissions]
    return _Refusal(
        Reason.CONFLICTING_GRANTS,
        f"{MUTUALLY_EXCLUSIVE_MESSAGE}: database roles {', '.join(roles)} (from Role(s)"
        f" {', '.join(role_sources)}) and permissions (from Role(s)"
        f" {', '.join(permission_sources)}); change the Roles so that only one kind applies to"
        " this session",
    )


def _with_removed_roles(explanations: Sequence[RoleExplanation], granted: set[str]
                        ) -> tuple[RoleExplanation, ...]:
    return tuple(
        replace(e, removed_roles=tuple(sorted(granted & set(e.denied_roles))))
        if e.deny_applies else e
        for e in explanations
    )


def _effective_mode(participants: Sequence[RoleExplanation]) -> UserProvisioning:
    return max((e.mode for e in participants), key=lambda mode: mode.rank,
               default=UserProvisioning.OFF)


@dataclass(frozen=True)
class _DurationOutcome:
    duration: timedelta
    capped: bool
    message: str | None


def _cap_duration(requested: timedelta, participants: Sequence[RoleExplanation]
                  ) -> _DurationOutcome:
    """Shorten ``requested`` to the smallest maxSessionDuration among the participants."""
    if not participants:
        return _DurationOutcome(requested, False, None)
    cap = min(e.max_session_duration for e in participants)
    if requested <= cap:
        return _DurationOutcome(requested, False, None)
    limiting = sorted(e.role for e in participants if e.max_session_duration == cap)
    return _DurationOutcome(
        cap, True,
        f"requested duration {format_duration(requested)} shortened to {format_duration(cap)},"
        f" the smallest maxSessionDuration of the allowing Roles (Role {', '.join(limiting)})",
    )


def _permission_rules(participants: Sequence[RoleExplanation],
                      explanations: Sequence[RoleExplanation]) -> tuple[PermissionRules, list[str]]:
    """Allow rules of the participants and deny rules of every applying deny, with notes on
    allow rules that deny rules cancel entirely (those do not count as granted permissions)."""
    deny = _unique_sorted_rules(r for e in explanations if e.deny_applies
                                for r in e.denied_permissions)
    allow = []
    notes = []
    for rule in _unique_sorted_rules(r for e in participants for r in e.granted_permissions):
        if _cancelled_by(rule, deny):
            notes.append(f"permission {describe_rule(rule)} is entirely removed by deny rules")
        else:
            allow.append(rule)
    return PermissionRules(allow=tuple(allow), deny=deny), notes


def _success_message(matched: Sequence[str], mode: UserProvisioning, roles: Sequence[str],
                     permissions: PermissionRules, duration: _DurationOutcome) -> str:
    grants = (f"database roles {', '.join(roles)}" if roles
              else f"{len(permissions.allow)} permission rule(s)" if permissions
              else "no database roles or permissions")
    message = (f"allowed by Role(s) {', '.join(matched)}; userProvisioning {mode}; {grants};"
               f" duration {format_duration(duration.duration)}")
    if duration.message:
        message += f" ({duration.message})"
    return message


# --------------------------------------------------------------------------------------------
# Entry point


def evaluate(
    request: AccessRequest | DatabaseSessionSpec,
    database: Database,
    roles: Iterable[Role],
    *,
    internal_traits: Mapping[str, Sequence[str] | str] | None = None,
    now: datetime | None = None,
) -> Decision:
    """Decide whether ``request`` may open a session on ``database`` under ``roles``.

    ``roles`` are the Roles of the session's namespace (all of them: those whose subjects do not
    match are explained too). ``internal_traits`` are the operator's traits for this user name
    (one entry of the traits ConfigMap). With ``now``, ``expires_at`` is ``now + duration``.
    """
    if isinstance(request, DatabaseSessionSpec):
        request = AccessRequest.from_session(request)
    traits = _Traits(internal=internal_traits or {}, external=request.extra)
    database_label = database.metadata.name or "?"

    unique_roles: dict[str, Role] = {}
    for role in roles:
        unique_roles.setdefault(_role_name(role), role)
    explanations = [_explain_role(role, request, database, traits)
                    for _, role in sorted(unique_roles.items())]
    participants = [e for e in explanations if e.takes_part]

    granted = {name for e in participants for name in e.granted_roles}
    denied = {name for e in explanations if e.deny_applies for name in e.denied_roles}
    allowed_roles = tuple(sorted(granted - denied))
    explanations = list(_with_removed_roles(explanations, granted))
    participants = [e for e in explanations if e.takes_part]

    rules, notes = _permission_rules(participants, explanations)
    if database.spec.grantable_schemas is not None:
        # Globs that reach outside the bound are narrowed to it where objects are resolved.
        rules = replace(rules, schemas=tuple(database.spec.grantable_schemas))
    session_roles = (tuple(sorted(set(request.database_roles))) if request.database_roles
                     else allowed_roles)
    duration = _cap_duration(request.duration, participants)

    refusal = (
        _offered_by_database(database, request.database_name)
        or _deny_refusal(request, database_label, explanations)
        or (None if participants else _no_allowing_role(request, database_label, explanations))
        or _invalid_role(explanations)
        or _requested_outside(request, allowed_roles)
        or _outside_bound(database, session_roles, rules)
        or _needs_inheritor(database, _effective_mode(participants))
        or (_conflict(session_roles, explanations) if session_roles and rules else None)
    )
    matched = tuple(e.role for e in participants)
    mode = _effective_mode(participants)
    return Decision(
        allowed=refusal is None,
        reason=refusal.reason if refusal else Reason.ALLOWED,
        message=(refusal.message if refusal
                 else _success_message(matched, mode, session_roles, rules, duration)),
        request=request,
        database=database_label,
        mode=mode,
        matched_roles=matched,
        allowed_database_roles=allowed_roles,
        database_roles=() if refusal else session_roles,
        permissions=PermissionRules() if refusal else rules,
        allowed_permissions=rules,
        requested_duration=request.duration,
        duration=duration.duration,
        duration_capped=duration.capped,
        duration_message=duration.message,
        expires_at=now + duration.duration if now is not None else None,
        explanations=tuple(explanations),
        notes=tuple(notes),
        grantable_roles=_optional_tuple(database.spec.grantable_roles),
        grantable_schemas=_optional_tuple(database.spec.grantable_schemas),
        approval=approval_requirement((e.role, e.approval) for e in participants),
    )


def _optional_tuple(values: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)


def roles_granted_on(database: Database, roles: Iterable[Role]) -> tuple[str, ...]:
    """The PostgreSQL role names Roles may hand out on ``database``, literal entries only.

    What the Database's health check asks the server about, so that a role the admin cannot
    grant (no ADMIN OPTION on PostgreSQL 16+) or that does not exist shows on the Database before
    a session is refused for it. Template entries depend on the requester and are checked when a
    session asks; roles in mode ``off`` are left out, since they never grant.
    """
    names = {entry for _, allow in _granting_on(database, roles)
             for entry in allow.database_roles or () if _literal(entry)}
    return tuple(sorted(names))


def _granting_on(database: Database, roles: Iterable[Role]) -> Iterator[tuple[Role, RoleAllow]]:
    """The Roles whose allow section can grant on ``database`` (selector matches, mode not off),
    whoever asks."""
    labels = database.metadata.labels or {}
    for role in roles:
        allow = role.spec.allow
        if allow is not None and allow.database_selector is not None and \
                role.spec.user_provisioning != UserProvisioning.OFF and \
                allow.database_selector.matches(labels):
            yield role, allow


def _literal(entry: str) -> bool:
    """A role name as written, not a trait template (whose value depends on the requester)."""
    return parse_template(entry) is None and "{" not in entry and "}" not in entry


@dataclass(frozen=True)
class Violation:
    """A Role asking for a database role or schema outside a Database's bound."""

    role: str
    kind: str  # "databaseRole" | "schema"
    name: str
    reason: str


def bound_violations(database: Database, roles: Iterable[Role]) -> tuple[Violation, ...]:
    """What the Roles that can reach ``database`` ask for outside its grantable bounds.

    Literal entries only (a template depends on the requester and is judged when a session
    asks); a schema glob counts as outside unless it is provably inside the bound.
    """
    spec = database.spec
    if spec.grantable_roles is None and spec.grantable_schemas is None:
        return ()
    found: list[Violation] = []
    for role, allow in _granting_on(database, roles):
        name = _role_name(role)
        for entry in allow.database_roles or ():
            if _literal(entry) and not within(spec.grantable_roles, entry):
                found.append(Violation(name, "databaseRole", entry,
                                       "not in spec.grantableRoles"))
        for permission in allow.permissions or ():
            schema = permission.match.schema_name
            if not pattern_within(spec.grantable_schemas, schema):
                found.append(Violation(name, "schema", schema,
                                       "not within spec.grantableSchemas"
                                       + (" (narrowed to it)" if "*" in schema else "")))
    return tuple(sorted(set(found), key=lambda v: (v.role, v.kind, v.name)))
