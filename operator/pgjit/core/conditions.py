"""kstatus-compliant status conditions, computed from the previous ones. Pure: no I/O.

Every pgjit kind reports three conditions (api.md, conventions §3.1-3.2):

- ``Ready``: the summary for humans and printer columns. Always present, ``True`` or ``False``
  (``Unknown`` only through :func:`build_conditions`).
- ``Reconciling``: abnormal-true. Present, ``True``, while the operator is still working towards
  the desired state (first activation, retrying a transient error).
- ``Stalled``: abnormal-true. Present, ``True``, when the operator gave up on a terminal error
  that needs a person to act.

Decision: ``Reconciling`` and ``Stalled`` are *removed* rather than set ``False`` when they do not
hold. kstatus only looks for ``=True`` so both forms read the same to Flux, but the kstatus README
recommends that abnormal-true conditions be present only when true, and Flux's own controllers
delete them. An absent condition then means "no abnormal state", and ``kubectl get -o yaml``
shows only what matters. At most one of the two is present at a time.

kstatus (cli-utils ``status.Compute``, checked with a real build in the GitOps tests) reads
``Stalled=True`` as *Failed*, ``Reconciling=True`` as *InProgress*, and otherwise looks at
``Ready``: ``True`` is *Current*, ``False`` is *InProgress*. So a session that ended or expired
is reported :func:`stalled` (Failed: it will not become Ready again until someone replaces it),
while a suspended Database uses :func:`not_ready` (InProgress: it waits, on purpose, for
``spec.suspended`` to be lifted, and a Flux ``wait`` should wait with it).

``lastTransitionTime`` is the time ``status`` last changed, not the time of the last reconcile, so
it is carried over whenever the status is unchanged even if the reason or message moved.
Messages pass through :func:`redact_secrets` before they are stored: conditions are readable by
anyone who can ``get`` the object, far more people than can read the credentials Secret.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from pgjit.api.common import Condition, ConditionStatus

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
#: The condition types this module owns; any other type in the previous list is kept as it was.
MANAGED_TYPES = (READY, RECONCILING, STALLED)

#: metav1.Condition's limit on ``message``, mirrored by the CRD schema. A longer message would make
#: the whole status patch fail, losing the state update along with the diagnostic.
MAX_MESSAGE_LENGTH = 32768
_TRUNCATION_MARK = " …(truncated)"

# metav1.Condition's reason pattern, as in the CRD schema (api.common.Condition).
_REASON_RE = re.compile(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?")
_MAX_REASON_LENGTH = 1024

ConditionDict = dict[str, Any]
PreviousConditions = Iterable[Mapping[str, Any] | Condition] | None


class Progress(enum.Enum):
    """Where the reconciliation stands, which decides the abnormal-true conditions."""

    #: Nothing left to do for this generation: neither Reconciling nor Stalled.
    SETTLED = "settled"
    #: Work in progress or a transient error being retried: Reconciling=True.
    RECONCILING = "reconciling"
    #: A terminal error needing a person: Stalled=True.
    STALLED = "stalled"


@dataclass(frozen=True)
class DesiredConditions:
    """The state to report; :func:`build_conditions` turns it into the condition list.

    The abnormal condition (if any) carries the same reason and message as ``Ready``: one
    explanation, readable from whichever condition a tool looks at.
    """

    ready: ConditionStatus
    reason: str
    message: str
    progress: Progress


# --------------------------------------------------------------------------------------------
# Timestamps


def rfc3339(moment: datetime) -> str:
    """``moment`` as an RFC 3339 UTC timestamp with ``Z`` and whole seconds.

    Whole seconds because that is how the API server serializes metav1.Time, so a value written
    here reads back unchanged and does not cause a spurious diff on the next patch. Naive
    datetimes are refused: guessing their zone is how expiry times end up hours off.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("timestamp must be timezone-aware (use datetime.now(timezone.utc))")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------
# Secret guard


_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # A whole PEM private key; checked first so the key body is gone before the other rules run.
    (
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|$)",
            re.DOTALL,
        ),
        "[private key redacted]",
    ),
    # A SCRAM verifier allows offline password guessing and impersonating the server.
    (re.compile(r"SCRAM-SHA-256\$\S*"), "SCRAM-SHA-256$***"),
    # The password part of a URI's userinfo: scheme://user:secret@host. The scheme's length is
    # bounded so that a long run of letters cannot make the search quadratic.
    (re.compile(r"([A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s:/?#@]*):[^\s/?#@]*@"), r"\1:***@"),
    # key=value as in conninfo strings and JDBC query strings, and key:value. Not "key: value":
    # English messages say "password: not set" far more often than anything leaks in that form.
    (
        re.compile(
            r"(?i)\b(password|passwd|pwd|sslpassword)(\s*=\s*|:)('[^']*'|\"[^\"]*\"|[^\s&;,]+)"
        ),
        r"\1\2***",
    ),
)


def redact_secrets(message: str) -> str:
    """``message`` with anything that looks like a credential replaced by ``***``.

    A safety net, not a sanitizer: callers must not put secrets into messages in the first place.
    It masks rather than raises because a condition is usually written while reporting some other
    failure; raising here would lose that report, and the status with it. It catches PEM private
    keys, SCRAM verifiers, ``scheme://user:password@``, ``password=…`` and ``password:…``.
    """
    for pattern, replacement in _SECRET_PATTERNS:
        message = pattern.sub(replacement, message)
    return message


def _fit_message(message: str) -> str:
    """Redacted, and cut to what the API server accepts.

    Cut before redacting too, so the work is bounded whatever a server error message holds; a
    secret split by the cut is still masked (the patterns accept a truncated tail).
    """
    message = redact_secrets(message[: MAX_MESSAGE_LENGTH + 1])
    if len(message) > MAX_MESSAGE_LENGTH:
        message = message[: MAX_MESSAGE_LENGTH - len(_TRUNCATION_MARK)] + _TRUNCATION_MARK
    return message


def _check_reason(reason: str) -> str:
    """Reasons are programmatic identifiers (CamelCase); a bad one is a bug in the caller, and the
    API server would reject the whole status patch over it, so fail loudly here instead."""
    if len(reason) > _MAX_REASON_LENGTH or not _REASON_RE.fullmatch(reason):
        raise ValueError(f"condition reason {reason!r} is not CamelCase (letters, digits, '_')")
    return reason


# --------------------------------------------------------------------------------------------
# Reading conditions


def _as_dict(condition: Mapping[str, Any] | Condition) -> ConditionDict:
    # Kopf hands status out as read-only mappings and handlers may hold parsed models: accept
    # both, return plain dicts that can go straight into a patch.
    if isinstance(condition, Condition):
        return condition.to_dict()
    return dict(condition)


def find_condition(conditions: PreviousConditions, type_: str) -> ConditionDict | None:
    """The condition of ``type_`` in ``conditions`` (the first, should a list carry duplicates)."""
    for condition in conditions or ():
        as_dict = _as_dict(condition)
        if as_dict.get("type") == type_:
            return as_dict
    return None


def condition_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> bool:
    """Whether a condition went through a transition worth an Event.

    A transition is the condition appearing, disappearing, or changing ``status`` or ``reason``.
    A new message alone (an updated retry count, a reworded detail) is not one: posting an Event
    for it would repeat the same news on every retry, which conventions §5.2 warns against.
    """
    if old is None or new is None:
        return (old is None) != (new is None)
    return old.get("status") != new.get("status") or old.get("reason") != new.get("reason")


# --------------------------------------------------------------------------------------------
# Building conditions


def _condition(
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    previous: ConditionDict | None,
    now: datetime,
) -> ConditionDict:
    same_status = previous is not None and previous.get("status") == status.value
    transition_time = previous.get("lastTransitionTime") if previous and same_status else None
    condition: ConditionDict = {
        "type": type_,
        "status": status.value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition_time or rfc3339(now),
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def build_conditions(
    previous: PreviousConditions,
    generation: int | None,
    desired: DesiredConditions,
    *,
    now: datetime | None = None,
) -> list[ConditionDict]:
    """The full new ``status.conditions`` list for ``desired``.

    ``previous`` is the object's current list (dicts, Kopf mappings or ``Condition`` models; may
    be ``None``). ``generation`` is ``metadata.generation`` of the object the state was computed
    from, recorded as each condition's ``observedGeneration``. Condition types other than Ready,
    Reconciling and Stalled are kept unchanged after the managed ones, so other code may add its
    own. The managed ones come first in a fixed order so an unchanged state yields an identical
    list and no needless status patch.
    """
    now = now or datetime.now(timezone.utc)
    reason = _check_reason(desired.reason)
    message = _fit_message(desired.message)
    previous_list = [_as_dict(c) for c in previous or ()]

    def old(type_: str) -> ConditionDict | None:
        return find_condition(previous_list, type_)

    conditions = [_condition(READY, desired.ready, reason, message, generation, old(READY), now)]
    abnormal = {Progress.RECONCILING: RECONCILING, Progress.STALLED: STALLED}.get(desired.progress)
    if abnormal is not None:
        conditions.append(_condition(
            abnormal, ConditionStatus.TRUE, reason, message, generation, old(abnormal), now
        ))
    seen: set[object] = set(MANAGED_TYPES)
    for condition in previous_list:
        type_ = condition.get("type")
        if type_ not in seen:
            seen.add(type_)
            conditions.append(condition)
    return conditions


class ConditionSetter(Protocol):
    """The signature of :func:`ready`, :func:`in_progress`, :func:`stalled`, :func:`not_ready`."""

    def __call__(self, previous: PreviousConditions, generation: int | None, reason: str,
                 message: str = "", *, now: datetime | None = None) -> list[ConditionDict]: ...


def _setter(name: str, ready_status: ConditionStatus, progress: Progress,
            doc: str) -> ConditionSetter:
    """One of the four ways to report a state: they differ only in Ready and the progress."""

    def set_conditions(previous: PreviousConditions, generation: int | None, reason: str,
                       message: str = "", *, now: datetime | None = None) -> list[ConditionDict]:
        desired = DesiredConditions(ready_status, reason, message, progress)
        return build_conditions(previous, generation, desired, now=now)

    set_conditions.__name__ = set_conditions.__qualname__ = name
    set_conditions.__doc__ = doc
    return set_conditions


ready = _setter("ready", ConditionStatus.TRUE, Progress.SETTLED, """\
Desired state reached: ``Ready=True``; Reconciling and Stalled removed.""")

in_progress = _setter("in_progress", ConditionStatus.FALSE, Progress.RECONCILING, """\
Still working (or retrying a transient error): ``Ready=False`` and ``Reconciling=True``, both
with ``reason``; Stalled removed. kstatus reports the object as InProgress.""")

stalled = _setter("stalled", ConditionStatus.FALSE, Progress.STALLED, """\
Gave up on a terminal error: ``Ready=False`` and ``Stalled=True``, both with ``reason``;
Reconciling removed. kstatus reports the object as Failed. The message should say what a person
has to do.""")

not_ready = _setter("not_ready", ConditionStatus.FALSE, Progress.SETTLED, """\
Not usable on purpose, and not an error (a ``Suspended`` Database): ``Ready=False``, neither
Reconciling nor Stalled. kstatus reports InProgress, which is right for a pause: whoever waits
for the object waits for the pause to end.""")
