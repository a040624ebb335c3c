"""The ObjectLabelRule kind: labels for database objects, so permissions can match by label.

Teleport attaches labels to database objects with import rules (``db_object_import_rule``) and
lets a role grant on "objects labelled pii: false". An ObjectLabelRule does the same for the
Databases it selects: each rule gives labels to the objects its ``match`` names (kind, schema and
name globs). Several rules merge; where two give one label different values on the same object,
the label is left off that object (never one of them silently) and the rule applied later says so
in its status. Labels are computed from the catalog at each activation, so objects created after
the rule are covered by the next session.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import (
    AGE_COLUMN,
    READY_COLUMNS,
    ApiModel,
    KindModel,
    KindStatus,
    LabelKey,
    LabelSelector,
    LabelValue,
)
from .role import NameGlob, ObjectMatch


class LabelRule(ApiModel):
    """Labels given to the objects that ``match`` names."""

    match: ObjectMatch = Field(description="Objects that get the labels: kind, schema and name"
                               " globs, as in Role permissions.")
    labels: dict[str, LabelValue] = Field(
        description="Labels to give, such as pii: \"false\" or team: payments.",
        json_schema_extra={"minProperties": 1, "maxProperties": 64},
    )


class ObjectLabelRuleSpec(ApiModel):
    """Which Databases the rules apply to, and the rules."""

    database_selector: LabelSelector = Field(
        description="Label selector over Database objects of this namespace; {} selects every"
        " Database."
    )
    rules: list[LabelRule] = Field(min_length=1, max_length=256,
                                   description="The rules; all of them apply.")


class LabelConflict(ApiModel):
    """Another rule that gives a label a different value on objects both may match."""

    rule: str = Field(max_length=253, description="The other ObjectLabelRule.")
    label: LabelKey = Field(description="The label.")
    values: list[LabelValue] = Field(max_length=2, description="This rule's value, then the other's.")
    objects: NameGlob = Field(description="The objects both may match, as kind schema.name.")


class ObjectLabelRuleStatus(KindStatus):
    """Whether the rule is in effect, and where it conflicts with an earlier one."""

    conflicts: list[LabelConflict] | None = Field(
        default=None, max_length=256,
        description="Labels this rule gives that an earlier rule gives other values; such a label"
        " is left off the objects both match.",
    )


class ObjectLabelRule(KindModel):
    """Labels for database objects on the selected Databases, for permissions that match by label."""

    plural = "objectlabelrules"
    singular = "objectlabelrule"
    short_names = ("pglabel",)
    printer_columns = (*READY_COLUMNS, AGE_COLUMN)

    kind: Literal["ObjectLabelRule"] = Field(default="ObjectLabelRule",
                                             description="ObjectLabelRule")
    spec: ObjectLabelRuleSpec = Field(description="Desired state.")
    status: ObjectLabelRuleStatus = Field(default_factory=ObjectLabelRuleStatus,
                                          description="Observed state.")
