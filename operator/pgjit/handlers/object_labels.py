"""ObjectLabelRule: validated, and conflicts with earlier rules of its namespace reported.

The labels themselves are computed at each activation from the catalog (core.object_labels);
this handler only keeps each rule's status true: Ready, or LabelConflict naming the earlier rule
and the label when two rules give one label different values on objects both may match.
"""

from __future__ import annotations

import kopf
from pydantic import ValidationError

from .. import GROUP, VERSION
from ..api.labels import ObjectLabelRule, ObjectLabelRuleStatus
from ..core import conditions
from ..core.object_labels import Conflict, conflicts, describe
from ..vocabulary import Reason
from . import metrics
from .triggers import on_spec
from .status import conditions_of, written

RESOURCE = (GROUP, VERSION, ObjectLabelRule.plural)


def rule_status(rule: ObjectLabelRule, found: list[Conflict]) -> dict:
    previous = conditions_of(rule)
    generation = rule.metadata.generation
    mine = [c for c in found if c.rule == rule.metadata.name]
    status = written(ObjectLabelRuleStatus, observed_generation=generation, conflicts=[
        {"rule": c.other, "label": c.label, "values": list(c.values), "objects": c.objects[:128]}
        for c in mine[:256]] or None)
    if mine:
        # Stalled: nothing changes until one of the rules does.
        status["conditions"] = conditions.stalled(
            previous, generation, Reason.LABEL_CONFLICT,
            (describe(mine) + "; such a label is left off the objects both rules match: change"
             " one of the rules")[:2048])
    else:
        status["conditions"] = conditions.ready(previous, generation, Reason.VALID,
                                                f"{len(rule.spec.rules or ())} rule(s)")
    return status


@on_spec(*RESOURCE, id="validate")
async def validate(body, name, namespace, patch, label_rules_by_namespace, **_):
    with metrics.reconcile("objectlabelrule"):
        try:
            rule = ObjectLabelRule.model_validate(body)
        except ValidationError:
            return  # the API server's schema makes this rare; such a rule gives no labels
        rules = [r for r in label_rules_by_namespace.get(namespace, ())
                 if r.metadata.name != name] + [rule]
        patch.status.update(rule_status(rule, list(conflicts(rules))))


@kopf.on.event(*RESOURCE, id="conflicts")  # type: ignore[arg-type]  # index kwargs
async def refresh_conflicts(namespace, memo, label_rules_by_namespace, **_):
    """A rule that changed or went away changes the other rules' conflicts too."""
    rules = list(label_rules_by_namespace.get(namespace, ()))
    found = list(conflicts(rules))
    for rule in rules:
        if rule.status.observed_generation != rule.metadata.generation:
            continue  # not validated yet: the validate handler writes its status
        status = rule_status(rule, found)
        current = [c.model_dump(mode="json", by_alias=True, exclude_none=True)
                   for c in rule.status.conflicts or ()] or None
        if status["conflicts"] != current:
            await memo.kube.patch_status(GROUP, VERSION, ObjectLabelRule.plural, namespace,
                                         rule.metadata.name, status)
