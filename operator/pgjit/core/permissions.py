"""Object privileges: which privileges a session gets on which tables.

The rules come from the ``permissions`` sections of the Roles that apply to a session; the objects
come from the session's database. This module only computes; the engine reads the catalog and
issues the GRANTs. Semantics follow Teleport's database permissions (teleport-behaviour.md §3):
privileges are compared upper-cased and trimmed, an unknown privilege is an error, ``*`` in a deny
rule clears everything, rules for kinds other than tables are ignored for now, and the system
schemas never match, whatever the glob (Teleport's catch-all import rule granted on
``pg_catalog``; pgjit cannot).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping

from .globs import glob_matches

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
ALL = "*"
SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast"})


class PermissionError_(ValueError):
    """A rule that cannot be applied; the message is meant for the Role's author."""


def is_system_schema(schema: str) -> bool:
    return (schema in SYSTEM_SCHEMAS or schema.startswith("pg_temp_")
            or schema.startswith("pg_toast_temp_"))


def normalize_privilege(raw: str, *, allow_all: bool) -> str:
    """Upper-cased, trimmed privilege name; ``*`` only where ``allow_all``."""
    name = raw.strip().upper()
    if name == ALL and allow_all:
        return ALL
    if name not in TABLE_PRIVILEGES:
        raise PermissionError_(
            f'unrecognized "table" PostgreSQL privilege: "{raw}" '
            f"(use one of {', '.join(TABLE_PRIVILEGES)}" + (", or * in deny rules)" if not allow_all
                                                             else " or *)"))
    return name


@dataclass(frozen=True)
class ObjectMatch:
    object_kind: str
    schema: str
    name: str

    def matches(self, kind: str, schema: str, name: str) -> bool:
        if kind != self.object_kind or is_system_schema(schema):
            return False
        return glob_matches(self.schema, schema) and glob_matches(self.name, name)


@dataclass(frozen=True)
class PermissionRule:
    match: ObjectMatch
    privileges: frozenset[str]

    @classmethod
    def build(cls, object_kind: str, schema: str, name: str, privileges: Iterable[str],
              *, deny: bool) -> "PermissionRule":
        privs = frozenset(normalize_privilege(p, allow_all=deny) for p in privileges)
        if not privs:
            raise PermissionError_("a permission rule needs at least one privilege")
        return cls(ObjectMatch(object_kind, schema, name), privs)


@dataclass(frozen=True)
class PermissionRules:
    """The allow and deny rules of every Role that applies to one session."""

    allow: tuple[PermissionRule, ...] = ()
    deny: tuple[PermissionRule, ...] = ()
    #: The Database's spec.grantableSchemas: objects outside these schemas never match. None:
    #: no bound.
    schemas: tuple[str, ...] | None = None

    def __bool__(self) -> bool:
        return bool(self.allow)

    def digest(self) -> str:
        """A short fingerprint of the rules: equal rules, equal digest, in any order."""
        def text(rule: PermissionRule) -> str:
            m = rule.match
            return "\x1f".join((m.object_kind, m.schema, m.name, *sorted(rule.privileges)))
        canonical = "\x1e".join(
            ["allow", *sorted(map(text, self.allow)), "deny", *sorted(map(text, self.deny)),
             "schemas", *(sorted(self.schemas) if self.schemas is not None else ["(none)"])])
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def bounds_schema(self, schema: str) -> bool:
        """Whether the Database's bound lets objects of ``schema`` be granted at all."""
        return self.schemas is None or any(glob_matches(g, schema) for g in self.schemas)


TableKey = tuple[str, str]  # (schema, table)


def resolve_table_privileges(tables: Iterable[TableKey], rules: PermissionRules
                             ) -> dict[TableKey, frozenset[str]]:
    """Privileges per table after allow and deny; tables that end up with none are left out."""
    result: dict[TableKey, frozenset[str]] = {}
    for schema, table in tables:
        if not rules.bounds_schema(schema):
            continue
        granted: set[str] = set()
        for rule in rules.allow:
            if rule.match.matches("table", schema, table):
                granted |= rule.privileges
        for rule in rules.deny:
            if granted and rule.match.matches("table", schema, table):
                if ALL in rule.privileges:
                    granted.clear()
                else:
                    granted -= rule.privileges
        if granted:
            result[(schema, table)] = frozenset(granted)
    return result


def schemas_of(grants: Mapping[TableKey, frozenset[str]]) -> frozenset[str]:
    """Schemas that need USAGE for the table grants to be usable (Teleport #51851)."""
    return frozenset(schema for schema, _ in grants)


def summarize(grants: Mapping[TableKey, frozenset[str]]) -> str:
    """Human summary for status, e.g. ``SELECT on 12 tables, INSERT on 1 table``."""
    if not grants:
        return "no object privileges"
    counts = Counter(p for privs in grants.values() for p in privs)
    parts = []
    for privilege in TABLE_PRIVILEGES:
        n = counts.get(privilege)
        if n:
            parts.append(f"{privilege} on {n} table{'s' if n != 1 else ''}")
    return ", ".join(parts)
