"""Role: validated, and the Databases it currently selects reported in status."""

from __future__ import annotations

import kopf
from pydantic import ValidationError

from .. import GROUP, VERSION
from ..api.database import Database
from ..api.role import Role, RoleStatus
from ..core import conditions
from ..core.permissions import PermissionError_, PermissionRule
from ..vocabulary import Reason
from . import metrics
from .triggers import on_spec
from .status import conditions_of, written

RESOURCE = (GROUP, VERSION, Role.plural)


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


def _role_status(body, namespace: str, databases_by_name) -> tuple[dict, list[str]]:
    """The Role's status (validation and selection) and its validation problems; without
    ``databases_by_name`` (a sharded instance, which sees only its own) no selection."""
    previous = body.get("status", {}).get("conditions")
    generation = body.get("metadata", {}).get("generation")
    try:
        role = Role.model_validate(body)
        problems = validation_problems(role)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        role = None
    if problems or role is None:
        message = "; ".join(problems)[:2048]
        status = written(RoleStatus, observed_generation=generation)
        status["conditions"] = conditions.stalled(previous, generation, Reason.INVALID_ROLE,
                                                  message)
        return status, problems
    if databases_by_name is None:
        status = written(RoleStatus, observed_generation=generation)
        status["conditions"] = conditions.ready(previous, generation, Reason.VALID, "valid")
        return status, problems
    return _selection_status(role, previous, namespace, databases_by_name), problems


def _selection_status(role: Role, previous, namespace: str, databases_by_name) -> dict:
    """A valid Role's status: the Databases its allow selects."""
    generation = role.metadata.generation
    selector = role.spec.allow.database_selector if role.spec.allow else None
    selected = sorted(
        name for (ns, name), databases in databases_by_name.items() if ns == namespace
        and selector is not None
        and any(isinstance(d, Database) and selector.matches(d.metadata.labels)
                for d in databases))
    status = written(RoleStatus, observed_generation=generation, selected_databases=selected)
    status["conditions"] = conditions.ready(previous, generation, Reason.VALID,
                                            f"selects {len(selected)} Database(s)")
    return status


@on_spec(*RESOURCE, id="validate")
async def validate(body, namespace, patch, memo, databases_by_name, **_):
    with metrics.reconcile("role") as reconciliation:
        # A shard sees only its own Databases; the coverage report writes the selection from
        # all of them (kube/coverage.py), or the shards would overwrite each other's.
        status, problems = _role_status(body, namespace,
                                        None if memo.shard.sharded else databases_by_name)
        if problems:
            reconciliation.failed_terminally()
        previous = body.get("status", {}).get("conditions")
        ready = conditions.find_condition(status["conditions"], "Ready")
        if conditions.condition_changed(conditions.find_condition(previous, "Ready"), ready):
            kopf.event(body, type="Warning" if problems else "Normal",
                       reason=Reason.INVALID_ROLE if problems else Reason.VALID,
                       message=ready["message"] if ready else "")
        patch.status.update(status)


@kopf.on.event(GROUP, VERSION, Database.plural, id="role-selection")  # type: ignore[arg-type]  # index kwargs
async def refresh_selections(namespace, memo, roles_by_namespace, databases_by_name, **_):
    """Keep each valid Role's ``selectedDatabases`` current as Databases come, go or relabel.

    Driven by Database events rather than a timer on Roles: Kopf puts a finalizer on every
    object with a timer, and a finalizer on Roles would keep them (and their namespace) from
    being deleted whenever the operator is not running, for the sake of a status field.
    """
    if memo.shard.sharded:
        return  # see validate
    for role in list(roles_by_namespace.get(namespace, ())):
        previous = conditions_of(role)
        ready = conditions.find_condition(previous, "Ready") or {}
        if ready.get("reason") != Reason.VALID or \
                role.status.observed_generation != role.metadata.generation:
            continue  # not validated yet (or invalid): the validate handler writes its status
        status = _selection_status(role, previous, namespace, databases_by_name)
        if status["selectedDatabases"] != (role.status.selected_databases or []):
            await memo.kube.patch_status(GROUP, VERSION, Role.plural, namespace,
                                         role.metadata.name, status)
