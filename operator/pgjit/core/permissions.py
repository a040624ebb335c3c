"""Object privileges: which privileges a session gets on which database objects.

The rules come from the ``permissions`` sections of the Roles that apply to a session; the objects
come from the session's database. This module only computes; the engine reads the catalog and
issues the GRANTs. Semantics follow Teleport's database permissions (teleport-behaviour.md §3):
privileges are compared upper-cased and trimmed, an unknown privilege (or one the object kind does
not take) is an error, ``*`` in a deny rule clears everything, and the system schemas never match,
whatever the glob (Teleport's catch-all import rule granted on ``pg_catalog``; pgjit cannot).

Object kinds (``api.role.KIND_PRIVILEGES`` says which privileges each takes): tables, views,
materialized views and sequences by schema and name; functions and procedures by schema and name,
every signature of that name; schemas and the session's database by name alone. Objects inside a
schema also need USAGE on it to be usable (Teleport #51851): that USAGE is implied.
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..api.common import LabelSelector
from ..api.role import KIND_PRIVILEGES, TABLE_PRIVILEGES, ObjectKind, UNQUALIFIED_KINDS
from .globs import glob_matches

if TYPE_CHECKING:
    from .object_labels import LabelAssignment

__all__ = ["ALL", "KIND_PRIVILEGES", "TABLE_PRIVILEGES", "ObjectKind", "SYSTEM_SCHEMAS", "DbObject",
           "PermissionError_", "PermissionRule", "PermissionRules", "normalize_privilege",
           "resolve_privileges", "resolve_table_privileges", "implied_schema_usage",
           "schemas_of", "summarize", "summarize_objects"]

ALL = "*"
SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast"})

#: Plural nouns for the status summary, per kind.
_NOUNS = {ObjectKind.TABLE: ("table", "tables"), ObjectKind.VIEW: ("view", "views"),
          ObjectKind.MATERIALIZED_VIEW: ("materialized view", "materialized views"),
          ObjectKind.SEQUENCE: ("sequence", "sequences"),
          ObjectKind.FUNCTION: ("function", "functions"),
          ObjectKind.PROCEDURE: ("procedure", "procedures"),
          ObjectKind.SCHEMA: ("schema", "schemas"), ObjectKind.DATABASE: ("database", "databases")}


class PermissionError_(ValueError):
    """A rule that cannot be applied; the message is meant for the Role's author."""


def is_system_schema(schema: str) -> bool:
    return (schema in SYSTEM_SCHEMAS or schema.startswith("pg_temp_")
            or schema.startswith("pg_toast_temp_"))


def _kind(kind: str) -> ObjectKind:
    try:
        return ObjectKind(kind)
    except ValueError:
        raise PermissionError_(f'unknown object kind "{kind}" (use one of '
                               f"{', '.join(k.value for k in ObjectKind)})") from None


def normalize_privilege(raw: str, *, allow_all: bool, kind: str = "table") -> str:
    """Upper-cased, trimmed privilege name; ``*`` only where ``allow_all``."""
    name = raw.strip().upper()
    if name == ALL and allow_all:
        return ALL
    allowed = KIND_PRIVILEGES[_kind(kind)]
    if name not in allowed:
        raise PermissionError_(
            f'unrecognized "{kind}" PostgreSQL privilege: "{raw}" '
            f"(use one of {', '.join(allowed)}" + (", or * in deny rules)" if not allow_all
                                                    else " or *)"))
    return name


@dataclass(frozen=True, order=True)
class DbObject:
    """One object in the session's database. ``args`` are a function's or procedure's argument
    types as (schema, type name) pairs: the signature that GRANT needs. Schemas and the database
    have ``schema`` "" and their own name in ``name``."""

    kind: str
    schema: str
    name: str
    args: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        if self.kind in UNQUALIFIED_KINDS:
            return f"{self.kind} {self.name}"
        signature = (f"({', '.join(t for _, t in self.args)})"
                     if self.kind in (ObjectKind.FUNCTION, ObjectKind.PROCEDURE) else "")
        return f"{self.kind} {self.schema}.{self.name}{signature}"


@functools.lru_cache(maxsize=1024)
def _selector(canonical: str) -> LabelSelector:
    return LabelSelector.model_validate_json(canonical)


def canonical_selector(selector: LabelSelector | None) -> str | None:
    """A label selector as hashable text (rules live in sets and digests)."""
    return None if selector is None else selector.model_dump_json(by_alias=True,
                                                                  exclude_none=True)


@dataclass(frozen=True)
class ObjectMatch:
    object_kind: str
    schema: str
    name: str
    #: canonical_selector() of a label selector over object labels, or None.
    labels: str | None = None

    def matches(self, kind: str, schema: str, name: str,
                object_labels: Mapping[str, str] | None = None) -> bool:
        if kind != self.object_kind:
            return False
        if self.labels is not None and not _selector(self.labels).matches(object_labels or {}):
            return False
        if kind == ObjectKind.DATABASE:
            return glob_matches(self.name, name)
        if kind == ObjectKind.SCHEMA:
            return not is_system_schema(name) and glob_matches(self.name, name)
        if is_system_schema(schema):
            return False
        return glob_matches(self.schema, schema) and glob_matches(self.name, name)


@dataclass(frozen=True)
class PermissionRule:
    match: ObjectMatch
    privileges: frozenset[str]

    @classmethod
    def build(cls, object_kind: str, schema: str, name: str, privileges: Iterable[str],
              *, deny: bool, labels: LabelSelector | None = None) -> "PermissionRule":
        kind = _kind(object_kind)
        privs = frozenset(normalize_privilege(p, allow_all=deny, kind=kind) for p in privileges)
        if not privs:
            raise PermissionError_("a permission rule needs at least one privilege")
        return cls(ObjectMatch(kind.value, "*" if kind in UNQUALIFIED_KINDS else schema, name,
                               canonical_selector(labels)), privs)


@dataclass(frozen=True)
class PermissionRules:
    """The allow and deny rules of every Role that applies to one session."""

    allow: tuple[PermissionRule, ...] = ()
    deny: tuple[PermissionRule, ...] = ()
    #: The Database's spec.grantableSchemas: objects outside these schemas never match. None:
    #: no bound.
    schemas: tuple[str, ...] | None = None
    #: What the Database's ObjectLabelRules say, for rules that match by labels.
    object_labels: tuple["LabelAssignment", ...] = ()

    def __bool__(self) -> bool:
        return bool(self.allow)

    @property
    def kinds(self) -> frozenset[str]:
        """The object kinds the allow rules name: the catalog need not be read for others."""
        return frozenset(rule.match.object_kind for rule in self.allow)

    def digest(self) -> str:
        """A short fingerprint of the rules: equal rules, equal digest, in any order."""
        def text(rule: PermissionRule) -> str:
            m = rule.match
            return "\x1f".join((m.object_kind, m.schema, m.name, m.labels or "",
                                *sorted(rule.privileges)))
        labelling = sorted(f"{a.source}\x1f{a.match}\x1f{a.labels}" for a in self.object_labels)
        canonical = "\x1e".join(
            ["allow", *sorted(map(text, self.allow)), "deny", *sorted(map(text, self.deny)),
             "schemas", *(sorted(self.schemas) if self.schemas is not None else ["(none)"]),
             "labels", *labelling])
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    @property
    def match_labels(self) -> bool:
        """Whether any rule selects objects by label (the labels must then be computed)."""
        return any(r.match.labels is not None for r in self.allow + self.deny)

    def labels_of(self, obj: "DbObject") -> dict[str, str]:
        from .object_labels import labels_of
        return labels_of(obj, self.object_labels)

    def bounds_schema(self, schema: str) -> bool:
        """Whether the Database's bound lets objects of ``schema`` be granted at all."""
        return self.schemas is None or any(glob_matches(g, schema) for g in self.schemas)


def resolve_privileges(objects: Iterable[DbObject], rules: PermissionRules
                       ) -> dict[DbObject, frozenset[str]]:
    """Privileges per object after allow and deny; objects that end up with none are left out.

    The Database's schema bound applies to schemas themselves and to what is inside them; the
    session's database is not in a schema.
    """
    result: dict[DbObject, frozenset[str]] = {}
    for obj in objects:
        in_schema = obj.name if obj.kind == ObjectKind.SCHEMA else obj.schema
        if obj.kind != ObjectKind.DATABASE and not rules.bounds_schema(in_schema):
            continue
        labels = rules.labels_of(obj) if rules.match_labels else None
        granted: set[str] = set()
        for rule in rules.allow:
            if rule.match.matches(obj.kind, obj.schema, obj.name, labels):
                granted |= rule.privileges
        for rule in rules.deny:
            if granted and rule.match.matches(obj.kind, obj.schema, obj.name, labels):
                if ALL in rule.privileges:
                    granted.clear()
                else:
                    granted -= rule.privileges
        if granted:
            result[obj] = frozenset(granted)
    return result


TableKey = tuple[str, str]  # (schema, table)


def resolve_table_privileges(tables: Iterable[TableKey], rules: PermissionRules
                             ) -> dict[TableKey, frozenset[str]]:
    """``resolve_privileges`` for tables given as (schema, table) pairs."""
    resolved = resolve_privileges((DbObject(ObjectKind.TABLE.value, s, t) for s, t in tables),
                                  rules)
    return {(obj.schema, obj.name): privileges for obj, privileges in resolved.items()}


def implied_schema_usage(grants: Mapping[DbObject, frozenset[str]]) -> frozenset[str]:
    """Schemas that need USAGE for the grants on objects inside them to be usable."""
    return frozenset(obj.schema for obj in grants if obj.kind not in UNQUALIFIED_KINDS)


def with_implied_usage(grants: Mapping[DbObject, frozenset[str]]
                       ) -> dict[DbObject, frozenset[str]]:
    """The grants plus USAGE on each schema that holds a granted object."""
    result = dict(grants)
    for schema in implied_schema_usage(grants):
        key = DbObject(ObjectKind.SCHEMA.value, "", schema)
        result[key] = result.get(key, frozenset()) | {"USAGE"}
    return result


def schemas_of(grants: Mapping[TableKey, frozenset[str]]) -> frozenset[str]:
    """Schemas that need USAGE for the table grants to be usable (Teleport #51851)."""
    return frozenset(schema for schema, _ in grants)


def summarize_objects(grants: Mapping[DbObject, frozenset[str]]) -> str:
    """Human summary for status, e.g. ``SELECT on 12 tables, EXECUTE on 3 functions``."""
    if not grants:
        return "no object privileges"
    counts = Counter((obj.kind, p) for obj, privs in grants.items() for p in privs)
    parts = []
    for kind, privileges in KIND_PRIVILEGES.items():
        singular, plural = _NOUNS[kind]
        for privilege in privileges:
            n = counts.get((kind.value, privilege))
            if n:
                parts.append(f"{privilege} on {n} {singular if n == 1 else plural}")
    return ", ".join(parts)


def summarize(grants: Mapping[TableKey, frozenset[str]]) -> str:
    """``summarize_objects`` for table grants keyed by (schema, table)."""
    return summarize_objects({DbObject(ObjectKind.TABLE.value, s, t): privs
                              for (s, t), privs in grants.items()})
