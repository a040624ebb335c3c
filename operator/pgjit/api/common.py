"""Building blocks shared by the pgjit kinds: the model base, constrained types and common objects.

Every constraint is written once here and serves two readers: pydantic enforces it when the
operator parses an object, and the CRD generator (``api.crd``) turns the same declaration into the
OpenAPI schema and CEL rules the API server enforces at admission. Regular expressions are kept to
the subset that Python's ``re``, pydantic's Rust regex engine and Go's RE2 (used by the API server
for ``pattern`` and CEL ``matches``) all read the same way.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel

from pgjit import GROUP, VERSION

API_VERSION = f"{GROUP}/{VERSION}"

#: PostgreSQL's NAMEDATALEN - 1: the longest identifier, in bytes (UTF-8), the server keeps.
PG_IDENTIFIER_MAX_BYTES = 63
#: Kubernetes object names (DNS-1123 subdomains) are at most this long.
K8S_NAME_MAX_LENGTH = 253
#: Longest Kubernetes user, group or subject name pgjit accepts. Service account user names
#: (``system:serviceaccount:<namespace>:<name>``) can exceed 300 characters, so 63 would be wrong.
K8S_IDENTITY_MAX_LENGTH = 512
#: Longest accepted session duration or maxSessionDuration (365 days).
MAX_DURATION = timedelta(hours=8760)

DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def _duration_component(unit: str) -> str:
    # At most 6 integer digits per unit keeps every accepted value far below Go's
    # time.Duration limit (~2.5 million hours), so CEL's duration() can never overflow.
    return rf"(?:([0-9]{{1,6}}(?:\.[0-9]{{1,9}})?){unit})?"


#: Go-style duration restricted to hours, minutes and seconds in that order ("30m", "1h30m",
#: "1.5h"). Go's time.ParseDuration (behind CEL's duration()) reads every such string.
DURATION_PATTERN = "^" + "".join(_duration_component(unit) for unit in "hms") + "$"
_DURATION_RE = re.compile(DURATION_PATTERN)


# --------------------------------------------------------------------------------------------
# CEL helpers


def cel_string(value: str) -> str:
    """Quote ``value`` as a CEL string literal (single quotes, backslash escapes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def cel_list(values: list[str] | tuple[str, ...]) -> str:
    """Render a CEL list literal of strings."""
    return "[" + ", ".join(cel_string(v) for v in values) + "]"


def cel_rule(
    rule: str,
    message: str | None = None,
    *,
    message_expression: str | None = None,
    field_path: str | None = None,
    reason: str | None = None,
) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry, with the keys the API server expects."""
    out = {"rule": rule}
    if message is not None:
        out["message"] = message
    if message_expression is not None:
        out["messageExpression"] = message_expression
    if field_path is not None:
        out["fieldPath"] = field_path
    if reason is not None:
        out["reason"] = reason
    return out


def validations(*rules: dict[str, str]) -> Callable[[dict[str, Any]], None]:
    """``json_schema_extra`` that adds CEL rules to a schema node.

    A callable rather than a dict so that it appends to rules already on the node instead of
    replacing them. (Nested ``Field(json_schema_extra=...)`` in ``Annotated`` still replace each
    other: build narrower types with ``pg_identifier(...)`` rather than by wrapping.)
    """

    def add(schema: dict[str, Any]) -> None:
        schema.setdefault("x-kubernetes-validations", []).extend(rules)

    return add


# --------------------------------------------------------------------------------------------
# Model base


def optional_set(max_items: int, description: str) -> Any:
    """An optional list whose order means nothing and whose items are unique: the API server
    checks both (``x-kubernetes-list-type: set``), and server-side apply merges it by value."""
    return Field(default=None, max_length=max_items, description=description,
                 json_schema_extra={"x-kubernetes-list-type": "set"})


def defaulted_object(factory: Callable[[], Any], description: str) -> Any:
    """A nested object that is there even when omitted: the API server defaults it to ``{}``,
    so every field's own default is visible in the stored object."""
    return Field(default_factory=factory, description=description,
                 json_schema_extra={"default": {}})


class ApiModel(BaseModel):
    """Base of every pgjit API object: camelCase on the wire, snake_case in Python.

    Unknown fields are ignored rather than rejected: the operator parses whatever the API server
    returns (object metadata, fields of a newer CRD version), while the CRD schemas themselves are
    strict, so the API server has already refused or pruned anything unknown.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        extra="ignore",
    )

    def to_dict(self) -> dict[str, Any]:
        """The object as the API server expects it: camelCase keys, JSON values, no nulls."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --------------------------------------------------------------------------------------------
# Constrained scalar types


def _check_identifier_bytes(value: str) -> str:
    size = len(value.encode("utf-8"))
    if size > PG_IDENTIFIER_MAX_BYTES:
        raise ValueError(
            f"is {size} bytes in UTF-8; PostgreSQL keeps at most {PG_IDENTIFIER_MAX_BYTES} bytes"
        )
    return value


#: CEL rule shared by every PostgreSQL identifier. maxLength counts characters; the server's
#: limit is bytes, which CEL can count after bytes() conversion.
IDENTIFIER_BYTES_RULE = cel_rule(
    f"size(bytes(self)) <= {PG_IDENTIFIER_MAX_BYTES}",
    # A static message: a messageExpression that prints the byte count exceeds the CEL cost budget.
    message="must be at most 63 bytes in UTF-8, the PostgreSQL limit for identifiers (characters"
    " outside ASCII take 2 to 4 bytes each): use a shorter name",
)


def pg_identifier(*rules: dict[str, str]) -> Any:
    """The PostgreSQL identifier type, with ``rules`` added to the 63-byte rule."""
    return Annotated[
        str,
        Field(
            min_length=1,
            max_length=PG_IDENTIFIER_MAX_BYTES,
            description="A PostgreSQL identifier (role or database name), at most 63 bytes in UTF-8.",
            json_schema_extra=validations(IDENTIFIER_BYTES_RULE, *rules),
        ),
        AfterValidator(_check_identifier_bytes),
    ]


PgIdentifier = pg_identifier()
"""A PostgreSQL role or database name: non-empty, at most 63 bytes of UTF-8."""

def matching_str(pattern: str, message: str, *, max_length: int, description: str) -> Any:
    """A non-empty string type that must match ``pattern``, refused with ``message``.

    A CEL rule rather than the schema's ``pattern`` keyword: the API server reports a pattern
    mismatch by printing the regular expression, while a rule can say what to write instead.
    """

    def check(value: str) -> str:
        if not re.search(pattern, value):
            raise ValueError(message)
        return value

    return Annotated[
        str,
        Field(
            min_length=1,
            max_length=max_length,
            description=description,
            json_schema_extra=validations(
                cel_rule(f"self.matches({cel_string(pattern)})", message=message)
            ),
        ),
        AfterValidator(check),
    ]


# Types built by a function are values to mypy, not aliases; it sees them as the plain ``str``
# they validate to (here and below).
if TYPE_CHECKING:
    ObjectName = str
else:
    ObjectName = matching_str(
        DNS_SUBDOMAIN_PATTERN,
        "must be a Kubernetes object name: lowercase letters, digits, '-' and '.', starting and"
        " ending with a letter or digit",
        max_length=K8S_NAME_MAX_LENGTH,
        description="Name of a Kubernetes object in the same namespace (a DNS-1123 subdomain).",
    )
"""Name of a Kubernetes object in the same namespace."""

Timestamp = Annotated[
    datetime,
    Field(
        description="An RFC 3339 timestamp.",
        json_schema_extra={"maxLength": 64},
    ),
]
"""An RFC 3339 timestamp as written by the API server and the operator."""


def parse_duration(value: str) -> timedelta:
    """Parse a Go-style duration (``30m``, ``1h``, ``1h30m``, ``1.5h``) as the API server does.

    Only the form accepted by the CRD is read: hours, minutes, seconds in that order. Raises
    ValueError on anything else.
    """
    match = _DURATION_RE.fullmatch(value) if value else None
    if match is None:
        raise ValueError(
            f"{value!r} is not a duration: write it like 30m, 1h, 1h30m or 1.5h (units h, m, s)"
        )
    hours, minutes, seconds = (float(number) if number else 0.0 for number in match.groups())
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Render a timedelta in the Go form the CRD accepts, without zero units (``1h30m``)."""
    total = value.total_seconds()
    if total <= 0:
        return "0s"
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    out = ""
    if hours:
        out += f"{int(hours)}h"
    if minutes:
        out += f"{int(minutes)}m"
    if seconds:
        out += f"{seconds:g}s" if seconds != int(seconds) else f"{int(seconds)}s"
    return out


def _to_duration(value: Any) -> Any:
    if isinstance(value, str):
        value = parse_duration(value)
    if isinstance(value, timedelta):
        if value <= timedelta(0):
            raise ValueError("must be positive, like 30m or 1h")
        if value > MAX_DURATION:
            raise ValueError("must be at most 8760h (365 days)")
    return value


_DURATION_FORMAT_OK = f"self.matches({cel_string(DURATION_PATTERN)})"

DURATION_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 32,
    "x-kubernetes-validations": [
        cel_rule(
            _DURATION_FORMAT_OK,
            message="must be a duration like 30m, 1h, 1h30m or 1.5h (units h, m, s in that order)",
        ),
        cel_rule(
            f"!{_DURATION_FORMAT_OK} || duration(self) > duration('0s')",
            message="must be longer than zero, like 30m or 1h",
        ),
        cel_rule(
            f"!{_DURATION_FORMAT_OK} || duration(self) <= duration('8760h')",
            message="must be at most 8760h (365 days)",
        ),
    ],
}

Duration = Annotated[
    timedelta,
    BeforeValidator(_to_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema(DURATION_SCHEMA),
]
"""A positive Go-style duration of at most 8760h; a timedelta in Python, a string on the wire."""


# --------------------------------------------------------------------------------------------
# References


class LocalObjectRef(ApiModel):
    """Reference to an object in the same namespace, by name."""

    name: ObjectName = Field(description="Name of the object, in the same namespace.")


if TYPE_CHECKING:
    SecretKey = str
else:
    SecretKey = matching_str(
        r"^[-._a-zA-Z0-9]+$",
        "must be a Secret data key: letters, digits, '-', '_' and '.'",
        max_length=K8S_NAME_MAX_LENGTH,
        description="A key in the Secret's data.",
    )


class SecretKeyRef(ApiModel):
    """A key of a Secret in the same namespace."""

    name: ObjectName = Field(description="Name of the Secret, in the same namespace.")
    key: SecretKey = Field(description="Key in the Secret's data.")


class PasswordSecretRef(SecretKeyRef):
    """A key of a Secret in the same namespace that holds a password."""

    key: SecretKey = Field(default="password", description="Key in the Secret holding the password.")


class CASecretRef(SecretKeyRef):
    """A key of a Secret in the same namespace that holds PEM-encoded CA certificates."""

    key: SecretKey = Field(
        default="ca.crt", description="Key in the Secret holding the PEM-encoded CA certificate(s)."
    )


# --------------------------------------------------------------------------------------------
# Label selectors


class SelectorOperator(enum.StrEnum):
    """How a label selector requirement compares a label with its values."""

    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


LabelKey = Annotated[
    str,
    Field(min_length=1, max_length=317, description="A label key, such as env or example.com/team."),
]
LabelValue = Annotated[
    str, Field(max_length=63, description="A label value (at most 63 characters).")
]


class LabelSelectorRequirement(ApiModel):
    """A label selector requirement: a key, an operator and (for In/NotIn) the values."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel_rule(
                "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0)"
                " : (!has(self.values) || size(self.values) == 0)",
                message="values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist",
                field_path=".values",
            )
        )
    )

    key: LabelKey = Field(description="The label key the requirement applies to.")
    operator: SelectorOperator = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[LabelValue] | None = Field(
        default=None,
        max_length=64,
        description="Label values; non-empty for In and NotIn, empty for Exists and DoesNotExist.",
    )

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfy this requirement (Kubernetes semantics)."""
        values = self.values or []
        match self.operator:
            case SelectorOperator.IN:
                return self.key in labels and labels[self.key] in values
            case SelectorOperator.NOT_IN:
                return self.key not in labels or labels[self.key] not in values
            case SelectorOperator.EXISTS:
                return self.key in labels
            case SelectorOperator.DOES_NOT_EXIST:
                return self.key not in labels
        raise AssertionError(self.operator)  # pragma: no cover


class LabelSelector(ApiModel):
    """A Kubernetes label selector. All conditions are ANDed; an empty selector matches everything."""

    match_labels: dict[str, LabelValue] | None = Field(
        default=None,
        description="Labels that must all be present with exactly these values.",
        json_schema_extra={"maxProperties": 64},
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, max_length=64, description="Requirements that must all hold."
    )

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether an object with ``labels`` is selected (Kubernetes semantics)."""
        for key, value in (self.match_labels or {}).items():
            if labels.get(key) != value:
                return False
        return all(req.matches(labels) for req in self.match_expressions or [])


# --------------------------------------------------------------------------------------------
# Object metadata and status conditions


class ObjectMeta(ApiModel):
    """The parts of Kubernetes object metadata pgjit reads. Everything else is ignored."""

    name: str | None = Field(default=None, description="Object name.")
    generate_name: str | None = Field(default=None, description="Prefix for a server-generated name.")
    namespace: str | None = Field(default=None, description="Namespace of the object.")
    uid: str | None = Field(default=None, description="Unique id assigned by the API server.")
    resource_version: str | None = Field(default=None, description="Version for optimistic concurrency.")
    generation: int | None = Field(default=None, description="Sequence number of spec changes.")
    labels: dict[str, str] = Field(default_factory=dict, description="Object labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Object annotations.")
    finalizers: list[str] = Field(default_factory=list, description="Finalizers still pending.")
    creation_timestamp: datetime | None = Field(default=None, description="When the object was created.")
    deletion_timestamp: datetime | None = Field(
        default=None, description="When deletion was requested, if it was."
    )


class ConditionStatus(enum.StrEnum):
    """Status of a condition."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """One aspect of the object's state, in the shape of metav1.Condition (kstatus polarity)."""

    type: str = Field(
        min_length=1,
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description="Condition type in CamelCase: Ready, Reconciling or Stalled.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="CamelCase reason for the last transition, for programs.",
    )
    message: str = Field(max_length=32768, description="Explanation for humans; may be empty.")
    last_transition_time: Timestamp = Field(
        description="When the status last changed (not when it was last checked)."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation this condition was computed from."
    )


Conditions = Annotated[
    list[Condition],
    Field(
        max_length=32,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    ),
]


#: Where Kopf keeps its bookkeeping on pgjit's objects: ``status.pgjit`` (handlers.settings).
KOPF_STATUS_FIELD = "pgjit"

KopfBookkeeping = Annotated[
    dict[str, Any],
    WithJsonSchema({
        "type": "object",
        "description": "The operator's own bookkeeping (Kopf's handler progress and the last"
        " configuration it handled). Not for users; never edit it.",
        "x-kubernetes-preserve-unknown-fields": True,
    }),
]


class KindStatus(ApiModel):
    """Status fields every pgjit kind has (kstatus reads these)."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation the operator last acted on."
    )
    conditions: Conditions = Field(
        default_factory=list,
        description="Current state: Ready, Reconciling (work in progress), Stalled (terminal error).",
    )
    pgjit: KopfBookkeeping | None = Field(default=None)

    def condition(self, type_: str) -> Condition | None:
        """The condition of the given type, if present."""
        return next((c for c in self.conditions if c.type == type_), None)


# --------------------------------------------------------------------------------------------
# Kind base and CRD presentation metadata


class PrinterColumn(ApiModel):
    """An additionalPrinterColumns entry of a CRD version."""

    name: str
    type: str
    json_path: str
    description: str
    priority: int = 0
    format: str | None = None


READY_COLUMNS = (
    PrinterColumn(
        name="Ready",
        type="string",
        json_path='.status.conditions[?(@.type=="Ready")].status',
        description="Status of the Ready condition.",
    ),
    PrinterColumn(
        name="Reason",
        type="string",
        json_path='.status.conditions[?(@.type=="Ready")].reason',
        description="Reason of the Ready condition.",
    ),
    PrinterColumn(
        name="Message",
        type="string",
        json_path='.status.conditions[?(@.type=="Ready")].message',
        description="Message of the Ready condition.",
        priority=1,
    ),
)
AGE_COLUMN = PrinterColumn(
    name="Age", type="date", json_path=".metadata.creationTimestamp", description="Time since creation."
)


class KindModel(ApiModel):
    """Base of the top-level kinds. Subclasses declare spec, status (unless ``has_status`` is
    false) and CRD metadata."""

    plural: ClassVar[str]
    singular: ClassVar[str]
    short_names: ClassVar[tuple[str, ...]]
    categories: ClassVar[tuple[str, ...]] = ("pgjit",)
    printer_columns: ClassVar[tuple[PrinterColumn, ...]]
    selectable_fields: ClassVar[tuple[str, ...]] = ()
    root_validations: ClassVar[tuple[dict[str, str], ...]] = ()
    #: Whether the operator writes a status (the status subresource); reviews have none.
    has_status: ClassVar[bool] = True

    api_version: str = Field(default=API_VERSION, description="pgjit.dev/v1alpha1")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")

    @classmethod
    def crd_name(cls) -> str:
        """The CustomResourceDefinition's name, ``<plural>.<group>``."""
        return f"{cls.plural}.{GROUP}"
