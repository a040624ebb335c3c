"""Role: validated, and the Databases it currently selects reported in status."""

from __future__ import annotations

import kopf
from pydantic import ValidationError

from .. import GROUP, VERSION
from ..api.role import Role
from ..core import conditions
from ..core.permissions import PermissionError_, PermissionRule
from . import metrics

RESOURCE = (GROUP, VERSION, "roles")


def validation_problems(role: Role) -> list[str]:
    """What the API server's schema could not catch; each entry is actionable."""
    problems = []
    for section_name in ("allow", "deny"):
        section = getattr(role.spec, section_name)
        for index, permission in enumerate(getattr(section, "permissions", None) or ()):
            try:
                PermissionRule.build(str(permission.match.object_kind), permission.match.schema_name,
                                     permission.match.name, permission.privileges,
                                     deny=section_name == "deny")
            except PermissionError_ as exc:
                problems.append(f"spec.{section_name}.permissions[{index}]: {exc}")
    return problems


@kopf.on.resume(*RESOURCE, id="validate")
@kopf.on.create(*RESOURCE, id="validate")
@kopf.on.update(*RESOURCE, id="validate", field="spec")
@kopf.timer(*RESOURCE, id="selection", interval=60.0, idle=10.0)
async def validate(body, namespace, patch, databases_by_name, **_):
    with metrics.reconcile("role"):
        previous = body.get("status", {}).get("conditions")
        generation = body.get("metadata", {}).get("generation")
        try:
            role = Role.model_validate(body)
            problems = validation_problems(role)
        except ValidationError as exc:
            problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
            role = None
        patch.status["observedGeneration"] = generation
        if problems:
            message = "; ".join(problems)[:2048]
            new = conditions.stalled(previous, generation, "InvalidRole", message)
        else:
            selector = role.spec.allow.database_selector if role.spec.allow else None
            selected = sorted(
                name for (ns, name), bodies in databases_by_name.items() if ns == namespace
                and selector is not None
                and any(selector.matches(b.get("metadata", {}).get("labels") or {}) for b in bodies))
            patch.status["selectedDatabases"] = selected
            new = conditions.ready(previous, generation, "Valid",
                                   f"selects {len(selected)} Database(s)")
        ready = conditions.find_condition(new, "Ready")
        if conditions.condition_changed(conditions.find_condition(previous, "Ready"), ready):
            kopf.event(body, type="Warning" if problems else "Normal",
                       reason="InvalidRole" if problems else "Valid",
                       message=ready["message"] if ready else "")
        patch.status["conditions"] = new
