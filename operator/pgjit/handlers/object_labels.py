"""ObjectLabelRule: validated, and conflicts with earlier rules of its namespace reported.

The labels themselves are computed at each activation from the catalog (core.object_labels);
this handler only keeps each rule's status true: Ready, or LabelConflict naming the earlier rule
and the label when two rules give one label different values on objects both may match.
"""

from __future__ import annotations

import kopf
from pydantic import ValidationError

from .. import GROUP, VERSION
from ..api.labels import ObjectLabelRule
from ..core import conditions
from ..core.object_labels import Conflict, conflicts, describe
from ..vocabulary import Reason
from . import metrics

RESOURCE = (GROUP, VERSION, ObjectLabelRule.plural)


def valid_rules(bodies) -> list[ObjectLabelRule]:
    rules = []
    for body in bodies:
        try:
            rules.append(ObjectLabelRule.model_validate(body))
        except ValidationError:
            continue  # the API server's schema makes this rare; such a rule gives no labels
    return rules


def rule_status(body, found: list[Conflict]) -> dict:
    previous = body.get("status", {}).get("conditions")
    generation = body.get("metadata", {}).get("generation")
    mine = [c for c in found if c.rule == body["metadata"]["name"]]
    status: dict = {"observedGeneration": generation, "conflicts": [
        {"rule": c.other, "label": c.label, "values": list(c.values), "objects": c.objects[:128]}
        for c in mine[:256]] or None}
    if mine:
        # Stalled: nothing changes until one of the rules does.
        status["conditions"] = conditions.stalled(
            previous, generation, Reason.LABEL_CONFLICT,
            (describe(mine) + "; such a label is left off the objects both rules match: change"
             " one of the rules")[:2048])
    else:
        status["conditions"] = conditions.ready(previous, generation, Reason.VALID,
                                                f"{len(body['spec'].get('rules') or ())} rule(s)")
    return status


@kopf.on.resume(*RESOURCE, id="validate")
@kopf.on.create(*RESOURCE, id="validate")
@kopf.on.update(*RESOURCE, id="validate", field="spec")  # type: ignore[arg-type]  # index kwargs
async def validate(body, namespace, patch, label_rules_by_namespace, **_):
    with metrics.reconcile("objectlabelrule"):
        bodies = [b for b in label_rules_by_namespace.get(namespace, ())
                  if b["metadata"]["name"] != body["metadata"]["name"]] + [body]
        patch.status.update(rule_status(body, list(conflicts(valid_rules(bodies)))))


@kopf.on.event(*RESOURCE, id="conflicts")  # type: ignore[arg-type]  # index kwargs
async def refresh_conflicts(namespace, memo, label_rules_by_namespace, **_):
    """A rule that changed or went away changes the other rules' conflicts too."""
    bodies = list(label_rules_by_namespace.get(namespace, ()))
    found = list(conflicts(valid_rules(bodies)))
    for body in bodies:
        current = body.get("status") or {}
        if current.get("observedGeneration") != body.get("metadata", {}).get("generation"):
            continue  # not validated yet: the validate handler writes its status
        status = rule_status(body, found)
        if status["conflicts"] != current.get("conflicts"):
            await memo.kube.patch_status(GROUP, VERSION, ObjectLabelRule.plural, namespace,
                                         body["metadata"]["name"], status)
