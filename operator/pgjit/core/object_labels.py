"""Object labels from ObjectLabelRules: which labels an object has, and where rules disagree.
Pure; no I/O.

An object's labels are the union of what every applying rule gives it. A label that two rules
give different values on the same object is left off that object: neither value holds, so a
permission that selects on it does not match (never resolved silently in favour of one rule).
Which rule is "later" only decides whose status reports the conflict.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..api.database import Database
from ..api.labels import ObjectLabelRule
from ..api.role import UNQUALIFIED_KINDS
from .globs import glob_matches
from .permissions import DbObject, ObjectMatch


@dataclass(frozen=True)
class LabelAssignment:
    """One rule entry: labels for the objects ``match`` names, from ObjectLabelRule ``source``."""

    match: ObjectMatch
    labels: tuple[tuple[str, str], ...]
    source: str


def assignments_for(database: Database, rules: Iterable[ObjectLabelRule]
                    ) -> tuple[LabelAssignment, ...]:
    """The assignments of the rules whose databaseSelector selects ``database``."""
    labels = database.metadata.labels or {}
    found = []
    for rule in sorted(rules, key=_order):
        if not rule.spec.database_selector.matches(labels):
            continue
        for entry in rule.spec.rules:
            m = entry.match
            kind = str(m.object_kind)
            found.append(LabelAssignment(
                ObjectMatch(kind, "*" if m.object_kind in UNQUALIFIED_KINDS else m.schema_name,
                            m.name),
                tuple(sorted(entry.labels.items())), rule.metadata.name or "?"))
    return tuple(found)


def labels_of(obj: DbObject, assignments: Sequence[LabelAssignment]) -> dict[str, str]:
    """The labels ``obj`` has; a label given two values is left off."""
    values: dict[str, set[str]] = {}
    for assignment in assignments:
        if assignment.match.matches(obj.kind, obj.schema, obj.name):
            for key, value in assignment.labels:
                values.setdefault(key, set()).add(value)
    return {key: next(iter(vals)) for key, vals in values.items() if len(vals) == 1}


@dataclass(frozen=True)
class Conflict:
    rule: str          # the rule that reports it (applied later)
    other: str         # the earlier rule it disagrees with
    label: str
    values: tuple[str, str]
    objects: str       # the objects both may match, "kind schema.name" of the later rule


def conflicts(rules: Iterable[ObjectLabelRule]) -> tuple[Conflict, ...]:
    """Pairs of rule entries that may match a common object and give one label two values.

    Judged on the patterns (the objects are known only at activation): two globs may overlap
    unless their literal prefixes and suffixes rule it out. Entries are ordered by their rule's
    creation time (then name) and their place in it; a conflict is reported on the later one.
    """
    entries = [(rule.metadata.name or "?", entry) for rule in sorted(rules, key=_order)
               for entry in rule.spec.rules]
    found: list[Conflict] = []
    for index, (later_rule, b) in enumerate(entries):
        for earlier_rule, a in entries[:index]:
            if a.match.object_kind != b.match.object_kind or not (
                    _may_overlap(a.match.schema_name, b.match.schema_name)
                    and _may_overlap(a.match.name, b.match.name)):
                continue
            for key, value in sorted(b.labels.items()):
                other = a.labels.get(key)
                if other is not None and other != value:
                    found.append(Conflict(
                        later_rule, earlier_rule, key, (value, other),
                        f"{b.match.object_kind} {b.match.schema_name}.{b.match.name}"))
    return tuple(found)


def _order(rule: ObjectLabelRule) -> tuple[str, str]:
    created = rule.metadata.creation_timestamp
    return (created.isoformat() if created is not None else "", rule.metadata.name or "")


def _may_overlap(a: str, b: str) -> bool:
    """Whether two globs (only ``*`` is special) can match one common name."""
    if "*" not in a:
        return glob_matches(b, a)
    if "*" not in b:
        return glob_matches(a, b)
    prefix_a, prefix_b = a.split("*", 1)[0], b.split("*", 1)[0]
    suffix_a, suffix_b = a.rsplit("*", 1)[1], b.rsplit("*", 1)[1]
    return ((prefix_a.startswith(prefix_b) or prefix_b.startswith(prefix_a))
            and (suffix_a.endswith(suffix_b) or suffix_b.endswith(suffix_a)))


def describe(conflicts_: Sequence[Conflict]) -> str:
    return "; ".join(f'label "{c.label}" is "{c.values[0]}" here and "{c.values[1]}" in'
                     f" ObjectLabelRule {c.other} for {c.objects}" for c in conflicts_)
