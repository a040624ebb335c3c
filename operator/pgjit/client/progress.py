"""What the command line says about a session while it waits. Pure.

One line per change of state (not per poll), so a slow activation prints a handful of lines and
a log of it stays readable; a reminder line every so often shows the command is not stuck.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..vocabulary import TERMINAL_PHASES, SessionPhase

#: Phases after which a session never becomes Active.
FINAL_PHASES = TERMINAL_PHASES


def ready_condition(session: Mapping[str, Any]) -> Mapping[str, Any]:
    """The session's Ready condition, or an empty mapping before the operator wrote one."""
    for condition in (session.get("status") or {}).get("conditions") or ():
        if condition.get("type") == "Ready":
            return condition
    return {}


def phase(session: Mapping[str, Any]) -> str:
    """The session's phase; ``Pending`` until the operator has written one."""
    # The plain string, not the enum member: callers put it into YAML output.
    return (session.get("status") or {}).get("phase") or SessionPhase.PENDING.value


def state_line(session: Mapping[str, Any]) -> str:
    """Where the session stands, e.g. ``Pending (DatabaseNotReady: Database "x" does not
    exist)``; without a condition yet: ``Pending (waiting for the operator)``."""
    ready = ready_condition(session)
    reason, message = ready.get("reason"), ready.get("message")
    if not reason:
        return f"{phase(session)} (waiting for the operator)"
    return f"{phase(session)} ({reason}: {message})" if message else f"{phase(session)} ({reason})"


def failure_message(session: Mapping[str, Any]) -> str:
    """Why a session in a final phase will not become Active: its Ready condition's words."""
    ready = ready_condition(session)
    reason = ready.get("reason") or phase(session)
    message = ready.get("message") or "no message from the operator"
    return f"{reason}: {message}"


def active_line(name: str, session: Mapping[str, Any]) -> str:
    """The line printed when the session is Active: who, with what, until when."""
    status = session.get("status") or {}
    grants = ", ".join(status.get("databaseRoles") or ()) or status.get("permissions") or "none"
    return (f"session {name} is Active: PostgreSQL user {status.get('username')},"
            f" granted {grants}, expires {status.get('expiresAt')}")


class ChangeReporter:
    """Calls ``emit`` with a state line when it differs from the last one, and otherwise at most
    once every ``remind_every`` seconds with how long the wait has lasted."""

    def __init__(self, emit, remind_every: float = 10.0) -> None:
        self._emit = emit
        self._remind_every = remind_every
        self._last: str | None = None
        self._last_emitted_at = 0.0

    def update(self, line: str, elapsed: float) -> None:
        if line != self._last:
            self._last = line
            self._last_emitted_at = elapsed
            self._emit(line)
        elif elapsed - self._last_emitted_at >= self._remind_every:
            self._last_emitted_at = elapsed
            self._emit(f"still {line} after {elapsed:.0f}s")
