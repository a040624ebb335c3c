"""Sharding: which Databases (and so which sessions) one operator instance serves.

An instance started with a shard selector (``shard.databaseSelector`` in the chart) serves only
the Databases whose labels match it. The API server filters both watches, so another shard's
objects never reach this process:

- Databases by the shard selector itself;
- DatabaseSessions by the label ``pgjit.dev/database``, whose value names the session's
  Database as ``<namespace>.<name>`` (set by the chart's MutatingAdmissionPolicy, checked by its
  ValidatingAdmissionPolicy): the instance asks for ``pgjit.dev/database in (...)`` with the
  Databases it serves. A session carries nothing else of its Database, and a label selector can
  only look at the object's own labels, so the Database has to be named in a label of the
  session. The namespace is part of the value because Databases of the same name in different
  namespaces (a ``main`` per team) may well belong to different shards.

A namespace (63 characters at most), a dot and a Database name must fit a label value (63): a
session whose pair does not fit cannot be selected by any shard, and is reported as not served.

Pure: the runner and the handlers decide when to use these rules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from ..api.common import LabelSelector, LabelSelectorRequirement, SelectorOperator

__all__ = ["SESSION_DATABASE_LABEL", "Instance", "ShardSelector", "ShardSelectorError",
           "database_label_value", "live_instances", "not_served_message", "session_selector"]

#: The label that names a session's Database (``<namespace>.<name>``) for the shards' watches.
SESSION_DATABASE_LABEL = "pgjit.dev/database"
#: Kubernetes' limit on a label value.
LABEL_VALUE_LIMIT = 63
#: A selector no object matches: the key both present and absent (``in ()`` is not valid).
NOTHING = f"{SESSION_DATABASE_LABEL},!{SESSION_DATABASE_LABEL}"


class ShardSelectorError(ValueError):
    """The shard selector is neither a LabelSelector in JSON nor a valid ``-l`` expression."""


def database_label_value(namespace: str, name: str) -> str | None:
    """The ``pgjit.dev/database`` value of a session of Database ``namespace/name``, or None
    when the pair is too long for a label value (such a session cannot be sharded)."""
    value = f"{namespace}.{name}"
    return value if len(value) <= LABEL_VALUE_LIMIT else None


def session_selector(served: Iterable[tuple[str, str]]) -> str:
    """The label selector of the sessions of the served (namespace, name) Databases."""
    values = sorted({value for namespace, name in served
                     if (value := database_label_value(namespace, name)) is not None})
    if not values:
        return NOTHING
    return f"{SESSION_DATABASE_LABEL} in ({','.join(values)})"


# One requirement of kubectl's -l syntax: `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
# `k notin (a,b)`. Keys are prefix/name, values the label value characters.
_KEY = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_REQUIREMENT = re.compile(
    rf"\s*(?:(?P<absent>!)\s*(?P<akey>{_KEY})"
    rf"|(?P<skey>{_KEY})\s*(?P<setop>in|notin)\s*\((?P<values>[^)]*)\)"
    rf"|(?P<ekey>{_KEY})\s*(?P<eqop>==|=|!=)\s*(?P<value>{_VALUE})"
    rf"|(?P<key>{_KEY}))\s*(?:,|$)")


def _parse_expression(text: str) -> LabelSelector:
    labels: dict[str, str] = {}
    expressions: list[LabelSelectorRequirement] = []
    position = 0
    while position < len(text):
        match = _REQUIREMENT.match(text, position)
        if match is None or match.end() == position:
            raise ShardSelectorError(f"not a label selector at {text[position:]!r}")
        position = match.end()
        if match["absent"]:
            expressions.append(LabelSelectorRequirement(
                key=match["akey"], operator=SelectorOperator.DOES_NOT_EXIST))
        elif match["setop"]:
            values = [v.strip() for v in match["values"].split(",") if v.strip()]
            if not values or not all(re.fullmatch(_VALUE, v) for v in values):
                raise ShardSelectorError(f"bad value list in {match.group(0).strip()!r}")
            expressions.append(LabelSelectorRequirement(
                key=match["skey"], values=values, operator=SelectorOperator.IN
                if match["setop"] == "in" else SelectorOperator.NOT_IN))
        elif match["eqop"]:
            if match["eqop"] == "!=":
                expressions.append(LabelSelectorRequirement(
                    key=match["ekey"], operator=SelectorOperator.NOT_IN, values=[match["value"]]))
            else:
                labels[match["ekey"]] = match["value"]
        else:
            expressions.append(LabelSelectorRequirement(key=match["key"],
                                                        operator=SelectorOperator.EXISTS))
    return LabelSelector(match_labels=labels or None, match_expressions=expressions or None)


@dataclass(frozen=True)
class ShardSelector:
    """The Databases one instance serves; ``selector`` None serves every Database."""

    selector: LabelSelector | None = None

    @classmethod
    def parse(cls, text: str | None) -> ShardSelector:
        """From ``PGJIT_SHARD_DATABASE_SELECTOR``: a LabelSelector as JSON (what the chart
        writes), or kubectl's ``-l`` syntax. Unset, empty, or an empty selector: everything."""
        if text is None or not text.strip():
            return cls()
        stripped = text.strip()
        try:
            if stripped.startswith("{"):
                data = json.loads(stripped)
                # The models ignore unknown fields; a misspelt matchLabels would then select
                # every Database, the very overlap sharding is meant to prevent.
                unknown = set(data) - {"matchLabels", "matchExpressions"} \
                    if isinstance(data, dict) else set()
                if unknown:
                    raise ShardSelectorError(f"unknown fields {sorted(unknown)}")
                selector = LabelSelector.model_validate(data)
            else:
                selector = _parse_expression(stripped)
        except (ValueError, ValidationError) as error:
            raise ShardSelectorError(str(error)) from None
        for requirement in selector.match_expressions or ():
            # The CRDs' CEL checks this for Roles; a selector from the environment has no
            # API server in front of it.
            with_values = requirement.operator in (SelectorOperator.IN, SelectorOperator.NOT_IN)
            if with_values != bool(requirement.values):
                raise ShardSelectorError(
                    f"{requirement.key}: values must be non-empty for In and NotIn, and empty "
                    "for Exists and DoesNotExist")
        if not selector.match_labels and not selector.match_expressions:
            return cls()
        return cls(selector)

    @property
    def sharded(self) -> bool:
        return self.selector is not None

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        return self.selector is None or self.selector.matches(labels or {})

    def render(self) -> str:
        """The selector as the API server's ``labelSelector`` parameter ("" for everything)."""
        if self.selector is None:
            return ""
        parts = [f"{key}={value}" for key, value in sorted(
            (self.selector.match_labels or {}).items())]
        for requirement in self.selector.match_expressions or ():
            values = ",".join(requirement.values or ())
            parts.append({
                SelectorOperator.IN: f"{requirement.key} in ({values})",
                SelectorOperator.NOT_IN: f"{requirement.key} notin ({values})",
                SelectorOperator.EXISTS: requirement.key,
                SelectorOperator.DOES_NOT_EXIST: f"!{requirement.key}",
            }[requirement.operator])
        return ",".join(parts)

    def describe(self) -> str:
        return self.render() or "every Database"


# --------------------------------------------------------------------------------------------
# Coverage: which Databases some instance serves (kube/coverage.py reports the others)

#: An instance whose Lease has not been renewed for this long counts as gone.
INSTANCE_GONE_SECONDS = 60.0


@dataclass(frozen=True)
class Instance:
    """One operator instance (a release of the chart) as its leader-election Lease shows it."""

    lease: str  # namespace/name
    selector: ShardSelector

    def describe(self) -> str:
        return f"{self.lease} ({self.selector.describe()})"


def live_instances(leases: Iterable[Mapping[str, object]], now: datetime,
                   selector_annotation: str) -> list[Instance]:
    """The instances whose Lease was renewed recently, by Lease name (a Lease just released
    in a rolling update still counts: a standby takes it over within seconds)."""
    instances = []
    for lease in leases:
        metadata = lease.get("metadata")
        spec = lease.get("spec")
        if not isinstance(metadata, Mapping) or not isinstance(spec, Mapping):
            continue
        renewed = spec.get("renewTime")
        if not isinstance(renewed, str):
            continue
        age = (now - datetime.fromisoformat(renewed.replace("Z", "+00:00"))).total_seconds()
        if age > INSTANCE_GONE_SECONDS:
            continue
        annotations = metadata.get("annotations")
        text = annotations.get(selector_annotation) if isinstance(annotations, Mapping) else None
        try:
            selector = ShardSelector.parse(text if isinstance(text, str) else None)
        except ShardSelectorError:
            continue  # written by a newer pgjit this one cannot read; its own instance works
        instances.append(Instance(f"{metadata.get('namespace')}/{metadata.get('name')}",
                                  selector))
    return sorted(instances, key=lambda instance: instance.lease)


def not_served_message(namespace: str, database: str, labels: Mapping[str, str] | None,
                       instances: Iterable[Instance], *, exists: bool = True) -> str:
    """Why no instance serves this Database (the NotServed condition's message)."""
    if database_label_value(namespace, database) is None:
        return (f'namespace "{namespace}" and Database "{database}" are '
                f"{len(namespace) + 1 + len(database)} characters together: "
                "sharded pgjit instances select sessions by the label "
                f"pgjit.dev/database=<namespace>.<Database>, at most {LABEL_VALUE_LIMIT}; use a "
                "shorter name")
    if not exists:
        return (f'Database "{database}" does not exist in namespace "{namespace}", so no '
                "sharded pgjit instance watches this session")
    shown = ",".join(f"{key}={value}" for key, value in sorted((labels or {}).items())) or "none"
    return (f'no pgjit instance serves Database "{database}": no shard.databaseSelector '
            f"matches its labels ({shown}); instances: "
            + "; ".join(instance.describe() for instance in instances))
