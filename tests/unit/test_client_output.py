"""`pgjit sessions` output and the progress lines of connect/disconnect."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import yaml

from pgjit.client import output
from pgjit.client.progress import (ChangeReporter, active_line, failure_message, phase,
                                   state_line)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def session(name: str = "alice-db-abcde", *, phase_: str | None = "Active", reason: str | None =
            "Active", message: str | None = "ok", namespace: str = "team", deleting: bool = False,
            expires: str | None = "2026-01-01T12:42:00Z") -> dict:
    status: dict = {}
    if phase_:
        status.update(phase=phase_, username="alice", databaseRoles=["reader"],
                      expiresAt=expires)
    if reason:
        status["conditions"] = [{"type": "Reconciling", "status": "False"},
                                {"type": "Ready", "status": "True", "reason": reason,
                                 "message": message}]
    metadata = {"name": name, "namespace": namespace}
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    return {"metadata": metadata, "status": status,
            "spec": {"user": "alice", "databaseRef": {"name": "db"}, "databaseName": "app"}}


def test_table() -> None:
    text = output.to_table([session(), session("s2", phase_="Failed", reason="AccessDenied",
                                               expires=None)], now=NOW)
    header, first, second = text.splitlines()
    assert header.split() == ["NAME", "PHASE", "USER", "DATABASE", "DBNAME", "PG", "USER",
                              "EXPIRES"]
    assert first.split() == ["alice-db-abcde", "Active", "alice", "db", "app", "alice",
                             "2026-01-01T12:42:00Z", "(in", "42m)"]
    assert second.split()[:2] == ["s2", "Failed:"] and "AccessDenied" in second
    # Columns line up: every row's second column starts where the header's does.
    column = header.index("PHASE")
    assert first[column:].startswith("Active") and second[column:].startswith("Failed")


def test_table_across_namespaces_and_while_ending() -> None:
    text = output.to_table([session(deleting=True)], all_namespaces=True, now=NOW)
    header, row = text.splitlines()
    assert header.startswith("NAMESPACE") and row.startswith("team")
    assert "Ending (Active)" in row


def test_empty_table() -> None:
    assert output.to_table([]) == "No DatabaseSessions found.\n"


def test_json_and_yaml_records() -> None:
    items = [session(), session("new", phase_=None, reason=None)]
    records = json.loads(output.to_json(items))
    assert yaml.safe_load(output.to_yaml(items)) == records
    assert records[0] == {
        "namespace": "team", "name": "alice-db-abcde", "phase": "Active", "reason": "Active",
        "message": "ok", "user": "alice", "database": "db", "databaseName": "app",
        "username": "alice", "databaseRoles": ["reader"], "permissions": None,
        "expiresAt": "2026-01-01T12:42:00Z", "deleting": False}
    assert records[1]["phase"] == "Pending" and records[1]["expiresAt"] is None


def test_relative_times() -> None:
    at = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    assert output.relative(datetime(2026, 1, 1, 13, 30, 5, tzinfo=timezone.utc), at) == "in 1h30m"
    assert output.relative(datetime(2026, 1, 1, 11, 59, 50, tzinfo=timezone.utc), at) == "10s ago"
    assert output.relative(datetime(2026, 1, 3, 12, 0, tzinfo=timezone.utc), at) == "in 2d"
    assert output.relative(at, at) == "in 0s"


# --------------------------------------------------------------------------------------------
# Progress


def test_state_lines() -> None:
    assert state_line(session(phase_=None, reason=None)) == "Pending (waiting for the operator)"
    pending = session(phase_="Pending", reason="DatabaseNotReady", message='Database "x" is gone')
    assert state_line(pending) == 'Pending (DatabaseNotReady: Database "x" is gone)'
    assert phase({}) == "Pending"
    failed = session(phase_="Failed", reason="AccessDenied", message="no Role allows")
    assert failure_message(failed) == "AccessDenied: no Role allows"
    assert failure_message(session(phase_="Expired", reason=None)).startswith("Expired:")


def test_active_line_names_user_grants_and_expiry() -> None:
    line = active_line("s", session())
    assert line == ("session s is Active: PostgreSQL user alice, granted reader,"
                    " expires 2026-01-01T12:42:00Z")


def test_change_reporter_prints_changes_and_reminders_only() -> None:
    lines: list[str] = []
    reporter = ChangeReporter(lines.append, remind_every=10)
    for elapsed, line in [(0, "a"), (1, "a"), (2, "b"), (5, "b"), (12.4, "b"), (13, "b"),
                          (14, "a")]:
        reporter.update(line, elapsed)
    assert lines == ["a", "b", "still b after 12s", "a"]
