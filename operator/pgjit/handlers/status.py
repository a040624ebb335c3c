"""Writing conditions and posting the matching Event, the same way for every kind."""

from __future__ import annotations

from typing import MutableMapping

import kopf

from ..api.common import KindModel, KindStatus
from ..core import conditions
from ..vocabulary import Reason

# Reasons that end an object's work normally: reported as Normal Events, not Warnings.
NORMAL_REASONS = frozenset({Reason.EXPIRED, Reason.SUSPENDED, Reason.SESSIONS_ACTIVE,
                            Reason.AWAITING_APPROVAL})
# Reasons whose transitions post no Event: flow control that the status shows and that ends in
# a transition of its own (a queued session's opening posts one). A burst of 10,000 sessions
# queues 8,900 of them; an Event each was a write per session for nothing a person acts on.
SILENT_REASONS = frozenset({Reason.QUEUED})


def written(status_model: type[KindStatus], **fields: object) -> dict:
    """Status fields as the API server will hold them: checked against the kind's status model
    (the CRD's own schema), by their JSON names. Only the fields given are written; a field
    given as None is removed."""
    return status_model(**fields).model_dump(mode="json", by_alias=True, exclude_unset=True)


def set_conditions(body, status: MutableMapping, ready: bool, reason: str, message: str, *,
                   stalled: bool = False, settled: bool = False) -> None:
    """Write Ready (+ Reconciling or Stalled) into ``status``; post an Event on a transition
    (unless its reason is one of ``SILENT_REASONS``).

    ``stalled``: nothing will change until a person acts (a terminal error, or a session that
    ended or expired). ``settled``: not ready on purpose and nothing is wrong (a suspended
    Database). Otherwise not-ready means the operator is still working on it.
    """
    previous = body.get("status", {}).get("conditions")
    generation = body.get("metadata", {}).get("generation")
    if ready:
        new = conditions.ready(previous, generation, reason, message)
    elif settled:
        new = conditions.not_ready(previous, generation, reason, message)
    elif stalled:
        new = conditions.stalled(previous, generation, reason, message)
    else:
        new = conditions.in_progress(previous, generation, reason, message)
    if reason not in SILENT_REASONS and conditions.condition_changed(
            conditions.find_condition(previous, "Ready"), conditions.find_condition(new, "Ready")):
        kopf.event(body, type="Normal" if ready or reason in NORMAL_REASONS else "Warning",
                   reason=reason, message=message)
    status["conditions"] = new
    status["observedGeneration"] = generation


def conditions_of(model: KindModel) -> list[dict]:
    """An indexed object's conditions as the API server holds them, for ``core.conditions``
    (which keeps a condition's lastTransitionTime when its status does not change)."""
    status = getattr(model, "status", None)
    return [c.model_dump(mode="json", by_alias=True, exclude_none=True)
            for c in getattr(status, "conditions", None) or ()]
