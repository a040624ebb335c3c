"""How ``pgjit sessions`` prints sessions: a table for people, JSON or YAML for programs. Pure.

Machine output is a list of flat records with fixed keys rather than the raw objects: scripts
get the facts (state, who, where, until when) without Kopf's annotations and managedFields, and
``kubectl get dbsession -o yaml`` is there for the whole object.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import yaml

from ..vocabulary import SessionPhase
from .progress import phase, ready_condition


def session_record(session: Mapping[str, Any]) -> dict[str, Any]:
    """The facts about one session that ``pgjit sessions`` shows."""
    metadata, spec = session.get("metadata") or {}, session.get("spec") or {}
    status = session.get("status") or {}
    ready = ready_condition(session)
    return {
        "namespace": metadata.get("namespace"),
        "name": metadata.get("name"),
        "phase": phase(session),
        "reason": ready.get("reason"),
        "message": ready.get("message"),
        "user": spec.get("user"),
        "database": (spec.get("databaseRef") or {}).get("name"),
        "databaseName": spec.get("databaseName"),
        "username": status.get("username"),
        "databaseRoles": status.get("databaseRoles") or [],
        "permissions": status.get("permissions"),
        "expiresAt": status.get("expiresAt"),
        "deleting": bool(metadata.get("deletionTimestamp")),
    }


def to_json(sessions: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps([session_record(s) for s in sessions], indent=2, ensure_ascii=False) + "\n"


def to_yaml(sessions: Sequence[Mapping[str, Any]]) -> str:
    return yaml.safe_dump([session_record(s) for s in sessions], sort_keys=False,
                          allow_unicode=True)


def parse_timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def relative(when: datetime, now: datetime) -> str:
    """``in 42m``, ``3h ago``: the largest two units, as people read an expiry."""
    seconds = int((when - now).total_seconds())
    future, seconds = seconds >= 0, abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m"), (secs, "s"))
             if n][:2] or ["0s"]
    text = "".join(parts)
    return f"in {text}" if future else f"{text} ago"


def expiry_cell(expires_at: str | None, now: datetime) -> str:
    if not expires_at:
        return "-"
    return f"{expires_at} ({relative(parse_timestamp(expires_at), now)})"


def to_table(sessions: Sequence[Mapping[str, Any]], *, all_namespaces: bool = False,
             now: datetime | None = None) -> str:
    """Columns NAME, PHASE, USER, DATABASE, DBNAME, PG USER, EXPIRES (NAMESPACE first with
    ``-A``); a session being deleted shows its phase as ``Ending``."""
    if not sessions:
        return "No DatabaseSessions found.\n"
    now = now or datetime.now(timezone.utc)
    header = ["NAME", "PHASE", "USER", "DATABASE", "DBNAME", "PG USER", "EXPIRES"]
    rows = []
    for session in sessions:
        r = session_record(session)
        state = f"Ending ({r['phase']})" if r["deleting"] else r["phase"]
        if r["reason"] and r["phase"] != SessionPhase.ACTIVE:
            state += f": {r['reason']}"
        rows.append([r["name"], state, r["user"], r["database"], r["databaseName"],
                     r["username"] or "-", expiry_cell(r["expiresAt"], now)])
        if all_namespaces:
            rows[-1].insert(0, r["namespace"])
    if all_namespaces:
        header.insert(0, "NAMESPACE")
    return format_table(header, rows)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """kubectl's layout: left-aligned columns, three spaces apart, no trailing blanks."""
    cells = [[str(c) if c is not None else "-" for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "".join("   ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n"
                   for row in cells)
