"""The Role kind: who may open sessions on which databases, with which roles and privileges.

The trait-template and privilege grammars live here once and are enforced twice: by pydantic
when the operator parses a Role, and by the CEL rules generated from the same constants when the
API server admits one.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from ..vocabulary import UserProvisioning as UserProvisioning
from .common import (
    optional_set,
    AGE_COLUMN,
    K8S_IDENTITY_MAX_LENGTH,
    PG_IDENTIFIER_MAX_BYTES,
    READY_COLUMNS,
    ApiModel,
    Duration,
    KindModel,
    KindStatus,
    LabelSelector,
    PrinterColumn,
    cel_list,
    cel_rule,
    cel_string,
    validations,
)

#: Table privileges a permission may name (case-insensitive), as PostgreSQL spells them.
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
#: In deny, removes every privilege. Not accepted in allow: grants are listed explicitly.
ALL_PRIVILEGES = "*"

#: Trait namespaces a template may read: the operator's traits ConfigMap and the requester's
#: Kubernetes user extra attributes.
TRAIT_NAMESPACES = ("internal", "external")
#: Any ``{{ns.KEY}}``-shaped entry, whatever the namespace (namespaces are checked separately so
#: the message can say which part is wrong).
TEMPLATE_SHAPE_PATTERN = r"^\{\{\s*[A-Za-z0-9_]+\.[^{}\s]+\s*\}\}$"
#: The start of a template in a known namespace.
TEMPLATE_NAMESPACE_PATTERN = r"^\{\{\s*(internal|external)\."
_TEMPLATE_START_PATTERN = r"^\{\{\s*[A-Za-z0-9_]+\."
_TEMPLATE_RE = re.compile(
    r"^\{\{\s*(?P<namespace>internal|external)\.(?P<key>[^{}\s]+)\s*\}\}$"
)
_TEMPLATE_SHAPE_RE = re.compile(TEMPLATE_SHAPE_PATTERN)


class SubjectKind(enum.StrEnum):
    """Whether a subject names a Kubernetes user or a group."""

    USER = "User"
    GROUP = "Group"


class ObjectKind(enum.StrEnum):
    """Kind of database object a permission applies to."""

    TABLE = "table"
    VIEW = "view"
    MATERIALIZED_VIEW = "materializedView"
    SEQUENCE = "sequence"
    FUNCTION = "function"
    PROCEDURE = "procedure"
    SCHEMA = "schema"
    DATABASE = "database"


#: The privileges each kind takes, in the order PostgreSQL's documentation lists them. Views
#: take the table privileges that act through them; a materialized view can only be read.
KIND_PRIVILEGES: dict[ObjectKind, tuple[str, ...]] = {
    ObjectKind.TABLE: TABLE_PRIVILEGES,
    ObjectKind.VIEW: ("SELECT", "INSERT", "UPDATE", "DELETE", "TRIGGER"),
    ObjectKind.MATERIALIZED_VIEW: ("SELECT",),
    ObjectKind.SEQUENCE: ("USAGE", "SELECT", "UPDATE"),
    ObjectKind.FUNCTION: ("EXECUTE",),
    ObjectKind.PROCEDURE: ("EXECUTE",),
    ObjectKind.SCHEMA: ("USAGE", "CREATE"),
    ObjectKind.DATABASE: ("CONNECT", "TEMPORARY", "CREATE"),
}
#: Kinds whose objects are named by match.name alone (match.schema stays *).
UNQUALIFIED_KINDS = (ObjectKind.SCHEMA, ObjectKind.DATABASE)
#: Every privilege some kind takes.
KNOWN_PRIVILEGES = tuple(dict.fromkeys(p for ps in KIND_PRIVILEGES.values() for p in ps))
_PRIVILEGE_LIST = ", ".join(KNOWN_PRIVILEGES)


def kind_privileges_text(kind: ObjectKind) -> str:
    return ", ".join(KIND_PRIVILEGES[kind])


# --------------------------------------------------------------------------------------------
# Trait templates in databaseRoles


def parse_template(entry: str) -> tuple[str, str] | None:
    """``(namespace, key)`` if ``entry`` is a trait template such as ``{{internal.db_roles}}``.

    Returns None for a plain role name. Entries are validated when parsed into a Role, so a
    malformed template never reaches this function through the models.
    """
    match = _TEMPLATE_RE.fullmatch(entry)
    return (match["namespace"], match["key"]) if match else None


def _check_role_entry(entry: str) -> str:
    if "{" in entry or "}" in entry:
        if not _TEMPLATE_SHAPE_RE.fullmatch(entry):
            raise ValueError(
                f"{entry!r} is a malformed trait template: write {{{{internal.KEY}}}} or"
                " {{external.KEY}} as the whole entry, or a role name without braces"
            )
        if not _TEMPLATE_RE.fullmatch(entry):
            raise ValueError(
                f"{entry!r} uses an unknown trait namespace: only internal and external exist"
            )
        return entry
    if len(entry.encode("utf-8")) > PG_IDENTIFIER_MAX_BYTES:
        raise ValueError(f"{entry!r} is longer than 63 bytes, the PostgreSQL limit for role names")
    return entry


_HAS_BRACE = "(self.contains('{') || self.contains('}'))"

RoleEntry = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        description="A PostgreSQL role name, or a trait template {{internal.KEY}} or"
        " {{external.KEY}} that expands to a list of role names.",
        json_schema_extra=validations(
            cel_rule(
                f"!{_HAS_BRACE} || self.matches({cel_string(TEMPLATE_SHAPE_PATTERN)})",
                message_expression=(
                    "'\"' + self + '\" is a malformed trait template: write {{internal.KEY}} or"
                    " {{external.KEY}} as the whole entry, or a role name without braces'"
                ),
            ),
            cel_rule(
                f"!self.matches({cel_string(_TEMPLATE_START_PATTERN)})"
                f" || self.matches({cel_string(TEMPLATE_NAMESPACE_PATTERN)})",
                message_expression=(
                    "'\"' + self + '\" uses an unknown trait namespace: only {{internal.KEY}}"
                    " (the operator traits ConfigMap) and {{external.KEY}} (the requester user"
                    " extra attributes) exist'"
                ),
            ),
            cel_rule(
                f"{_HAS_BRACE} || size(bytes(self)) <= {PG_IDENTIFIER_MAX_BYTES}",
                message="role names are at most 63 bytes in UTF-8 (PostgreSQL limit)",
            ),
        ),
    ),
    AfterValidator(_check_role_entry),
]
"""An entry of databaseRoles: a role name or a trait template."""


# --------------------------------------------------------------------------------------------
# Privileges


def _normalize_privilege(value: str, *, allow_all: bool) -> str:
    if value == ALL_PRIVILEGES:
        if not allow_all:
            raise ValueError("'*' is only allowed in deny; list the privileges to grant")
        return value
    upper = value.upper()
    if upper not in KNOWN_PRIVILEGES:
        raise ValueError(f"unknown privilege {value!r}: use one of {_PRIVILEGE_LIST}")
    return upper


_KNOWN_PRIVILEGE = f"self == '*' || self.upperAscii() in {cel_list(KNOWN_PRIVILEGES)}"

AllowedPrivilege = Annotated[
    str,
    Field(
        min_length=1,
        max_length=16,
        description="A privilege to grant (case-insensitive), one the object kind takes.",
        json_schema_extra=validations(
            cel_rule(
                "self != '*'",
                message="'*' is only allowed in deny, where it removes every privilege: list the"
                f" privileges to grant, from {_PRIVILEGE_LIST}",
            ),
            cel_rule(
                _KNOWN_PRIVILEGE,
                message_expression=(
                    f"'unknown privilege \"' + self + '\": use one of {_PRIVILEGE_LIST}'"
                ),
            ),
        ),
    ),
    AfterValidator(lambda v: _normalize_privilege(v, allow_all=False)),
]

DeniedPrivilege = Annotated[
    str,
    Field(
        min_length=1,
        max_length=16,
        description="A privilege to remove (case-insensitive), one the object kind takes, or *"
        " for all.",
        json_schema_extra=validations(
            cel_rule(
                _KNOWN_PRIVILEGE,
                message_expression=(
                    f"'unknown privilege \"' + self + '\": use one of {_PRIVILEGE_LIST},"
                    " or * to remove all'"
                ),
            ),
        ),
    ),
    AfterValidator(lambda v: _normalize_privilege(v, allow_all=True)),
]

NameGlob = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        description="A name, or a glob where * matches any run of characters.",
    ),
]


class ObjectMatch(ApiModel):
    """Which database objects a permission applies to. System schemas (pg_catalog,
    information_schema, pg_toast) never match."""

    model_config = {
        "json_schema_extra": validations(
            cel_rule(
                f"!(self.objectKind in {cel_list(UNQUALIFIED_KINDS)}) || self.schema == '*'",
                message="objectKind schema and database are named by match.name alone: leave"
                " match.schema unset (*)",
                field_path=".schema",
            ),
        )
    }

    object_kind: ObjectKind = Field(
        default=ObjectKind.TABLE,
        description="Kind of object: table (default), view, materializedView, sequence, function,"
        " procedure (every signature of a matching name), schema, or database (the session's"
        " database, matched by name).",
    )
    schema_name: NameGlob = Field(
        default="*", alias="schema", description="Schema name glob (default *: every schema)."
    )
    name: NameGlob = Field(default="*", description="Object name glob (default *: every object).")

    @model_validator(mode="after")
    def _unqualified_kinds_have_no_schema(self) -> "ObjectMatch":
        if self.object_kind in UNQUALIFIED_KINDS and self.schema_name != "*":
            raise ValueError(f"objectKind {self.object_kind} is named by match.name alone: leave"
                             " match.schema unset (*)")
        return self


def _kind_rules() -> list[dict[str, str]]:
    """One CEL rule per object kind: the privileges listed are ones that kind takes."""
    return [
        cel_rule(
            f"self.match.objectKind != '{kind.value}' || self.privileges.all(p, p == '*' ||"
            f" p.upperAscii() in {cel_list(privileges)})",
            message=f"objectKind {kind.value} takes only {', '.join(privileges)}"
            + (" (or * in deny)" if kind is ObjectKind.TABLE else ""),
            field_path=".privileges",
        )
        for kind, privileges in KIND_PRIVILEGES.items()
    ]


class _Permission(ApiModel):
    match: "PermissionMatch" = Field(description="Objects the privileges apply to.")

    @model_validator(mode="after")
    def _privileges_fit_the_kind(self) -> "_Permission":
        allowed = KIND_PRIVILEGES[self.match.object_kind]
        wrong = [p for p in getattr(self, "privileges") if p != ALL_PRIVILEGES and p not in allowed]
        if wrong:
            raise ValueError(f"objectKind {self.match.object_kind} takes only"
                             f" {', '.join(allowed)}, not {', '.join(wrong)}")
        return self


class PermissionMatch(ObjectMatch):
    """Which objects a permission applies to: by kind, schema and name, and optionally by the
    labels ObjectLabelRules give them."""

    labels: LabelSelector | None = Field(
        default=None,
        description="Label selector over object labels (from ObjectLabelRules); with it, an"
        " object must match the selector as well as kind, schema and name.",
    )


class AllowPermission(_Permission):
    """Object privileges granted on the matching objects."""

    model_config = {"json_schema_extra": validations(*_kind_rules())}

    privileges: list[AllowedPrivilege] = Field(
        min_length=1,
        max_length=16,
        description="Privileges to grant (case-insensitive), those the kind takes: table"
        f" {kind_privileges_text(ObjectKind.TABLE)}; view"
        f" {kind_privileges_text(ObjectKind.VIEW)}; materializedView SELECT; sequence"
        f" {kind_privileges_text(ObjectKind.SEQUENCE)}; function and procedure EXECUTE; schema"
        f" {kind_privileges_text(ObjectKind.SCHEMA)}; database"
        f" {kind_privileges_text(ObjectKind.DATABASE)}.",
    )


class DenyPermission(_Permission):
    """Object privileges removed from what allow rules grant on the matching objects."""

    model_config = {"json_schema_extra": validations(*_kind_rules())}

    privileges: list[DeniedPrivilege] = Field(
        min_length=1,
        max_length=16,
        description="Privileges to remove (case-insensitive), those the kind takes, or * for all.",
    )


# --------------------------------------------------------------------------------------------
# Allow and deny sections


class RoleAllow(ApiModel):
    """What a session may get from this Role. A Role allows a session when its subjects match,
    databaseSelector matches the Database and databaseNames matches the database name."""

    database_selector: LabelSelector | None = Field(
        default=None,
        description="Label selector over Database objects. {} matches every Database; absent"
        " matches none.",
    )
    database_names: list[NameGlob] | None = optional_set(
        256,
        "Globs over PostgreSQL database names; * matches any. Absent matches none.",
    )
    database_roles: list[RoleEntry] | None = optional_set(
        256,
        "PostgreSQL roles to grant (they must exist on the server), or trait"
        " templates {{internal.KEY}} / {{external.KEY}} that expand to role names.",
    )
    permissions: list[AllowPermission] | None = Field(
        default=None,
        max_length=64,
        description="Object privileges to grant. A session gets either database roles or"
        " permissions, not both.",
    )


class RoleDeny(ApiModel):
    """What this Role takes away; deny always wins. It applies when the subjects match,
    databaseSelector matches the Database (absent: every Database) and databaseNames matches the
    name (absent: every name). If it lists neither databaseRoles nor permissions, it refuses the
    session."""

    database_selector: LabelSelector | None = Field(
        default=None,
        description="Label selector over Database objects. Absent or {} matches every Database.",
    )
    database_names: list[NameGlob] | None = optional_set(
        256,
        "Globs over PostgreSQL database names; * matches any. Absent matches every name.",
    )
    database_roles: list[RoleEntry] | None = optional_set(
        256,
        "PostgreSQL roles never to grant, or trait templates that expand to them.",
    )
    permissions: list[DenyPermission] | None = Field(
        default=None,
        max_length=64,
        description="Object privileges to remove; * removes every privilege on the matching objects.",
    )


class Subject(ApiModel):
    """A Kubernetes user or group a Role applies to."""

    kind: SubjectKind = Field(description="User or Group.")
    name: str = Field(
        min_length=1,
        max_length=K8S_IDENTITY_MAX_LENGTH,
        description="Kubernetes user name (as authenticated, e.g. alice@example.com or"
        " system:serviceaccount:ns:name) or group name.",
    )


class RoleApproval(ApiModel):
    """Sessions this Role allows wait for reviewers' approval before anything is created in
    PostgreSQL (docs/access-requests.md)."""

    reviewers: list[Subject] = Field(
        min_length=1,
        max_length=256,
        description="Who may approve or deny: Kubernetes users and groups, as in subjects. The"
        " session's own user never counts, whatever group it is in.",
    )
    required: int = Field(
        default=1,
        ge=1,
        le=16,
        description="How many distinct reviewers must approve (default 1). One denial by a"
        " reviewer ends the session.",
    )
    require_reason: bool = Field(
        default=False,
        description="Sessions must say why in spec.reason; one without is refused.",
    )
    pending_timeout: Duration = Field(
        default="1h",
        validate_default=True,
        description="How long a session may wait for approval, from its creation (default 1h);"
        " then it fails with ApprovalExpired.",
    )


class RoleSpec(ApiModel):
    """Policy: subjects, provisioning mode, and what is allowed and denied."""

    model_config = {
        "json_schema_extra": validations(
            cel_rule(
                "has(self.allow) || has(self.deny)",
                message="a Role needs an allow or a deny section, or both; without them it has no effect",
            )
        )
    }

    subjects: list[Subject] = Field(
        min_length=1,
        max_length=256,
        description="Who this Role applies to: Kubernetes users and groups.",
    )
    user_provisioning: UserProvisioning = Field(
        default=UserProvisioning.OFF,
        description="off (default): this Role does not let sessions create users; keep: lock the"
        " user when its sessions end; best_effort_drop: drop it, or lock it when objects depend"
        " on it. The effective mode is the highest among the allowing Roles.",
    )
    max_session_duration: Duration = Field(
        default="8h",
        validate_default=True,
        description="Longest session this Role allows, as a duration like 8h or 30m (default 8h);"
        " longer requests are shortened.",
    )
    approval: RoleApproval | None = Field(
        default=None,
        description="Sessions this Role allows need reviewers' approval first. When several"
        " allowing Roles ask for it, the strictest applies: the largest required, the shortest"
        " pendingTimeout, a reason if any asks for one, and the reviewers of all of them.",
    )
    allow: RoleAllow | None = Field(default=None, description="What sessions may get.")
    deny: RoleDeny | None = Field(default=None, description="What sessions never get; deny wins.")


class RoleStatus(KindStatus):
    """Whether the Role is valid and in effect."""

    selected_databases: list[
        Annotated[str, Field(max_length=253, description="A Database name.")]
    ] | None = Field(
        default=None,
        max_length=1024,
        description="Databases in this namespace that allow.databaseSelector currently selects.",
    )


class Role(KindModel):
    """Policy: who may open DatabaseSessions on which databases, with which PostgreSQL roles and
    object privileges, and what happens to the user when the session ends."""

    plural = "roles"
    singular = "role"
    short_names = ("pgrole",)
    printer_columns = (
        PrinterColumn(
            name="Provisioning",
            type="string",
            json_path=".spec.userProvisioning",
            description="User provisioning mode.",
        ),
        PrinterColumn(
            name="Approvals",
            type="integer",
            json_path=".spec.approval.required",
            description="Approvals a session needs (empty: none).",
            priority=1,
        ),
        PrinterColumn(
            name="Max Duration",
            type="string",
            json_path=".spec.maxSessionDuration",
            description="Longest session allowed.",
            priority=1,
        ),
        *READY_COLUMNS,
        AGE_COLUMN,
    )

    kind: Literal["Role"] = Field(default="Role", description="Role")
    spec: RoleSpec = Field(description="Desired state.")
    status: RoleStatus = Field(default_factory=RoleStatus, description="Observed state.")
