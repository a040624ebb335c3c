"""The private connection files of `pgjit connect`, psql's environment, and its signals."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pgjit.client import psql
from pgjit.client.psql import (PsqlExit, connection_files, psql_environment, run_psql,
                               service_file_text)

PASSWORD_CREDS = {"username": "alice", "password": "p:a\\ss*", "host": "db.example",
                  "port": "5432", "dbname": "orders", "sslmode": "require",
                  "uri": "postgresql://alice:secret@db.example:5432/orders"}
CERT_CREDS = {"username": "alice", "host": "db.example", "port": "5432", "dbname": "orders",
              "sslmode": "verify-full", "tls.crt": "CERT", "tls.key": "KEY", "ca.crt": "CA"}


def parse_service_file(text: str) -> dict[str, str]:
    """Read a service file as libpq does: a [section] line, then key=value lines."""
    lines = text.splitlines()
    assert lines[0] == "[pgjit]"
    return dict(line.split("=", 1) for line in lines[1:])


def test_password_session_files(tmp_path: Path) -> None:
    files = connection_files(PASSWORD_CREDS, tmp_path)
    assert files.has_password
    assert set(files.files) == {"pg_service.conf", "pgpass"}
    assert parse_service_file(files.files["pg_service.conf"]) == {
        "host": "db.example", "port": "5432", "dbname": "orders", "user": "alice",
        "sslmode": "require"}
    # The password only in the pgpass file, escaped the way libpq reads it back.
    assert files.files["pgpass"] == "db.example:5432:orders:alice:p\\:a\\\\ss*\n"
    assert "p:a" not in files.files["pg_service.conf"]
    assert all("secret" not in content for content in files.files.values())  # no uri


def test_certificate_session_files(tmp_path: Path) -> None:
    files = connection_files(CERT_CREDS, tmp_path)
    assert not files.has_password
    assert files.files["client.crt"] == "CERT" and files.files["client.key"] == "KEY"
    assert files.files["ca.crt"] == "CA" and "pgpass" not in files.files
    params = parse_service_file(files.files["pg_service.conf"])
    assert params["sslcert"] == str(tmp_path / "client.crt")
    assert params["sslkey"] == str(tmp_path / "client.key")
    assert params["sslrootcert"] == str(tmp_path / "ca.crt")
    assert params["sslmode"] == "verify-full"


def test_host_and_port_overrides_reach_the_pgpass_line_too(tmp_path: Path) -> None:
    files = connection_files(PASSWORD_CREDS, tmp_path, host="[::1]", port=15432)
    params = parse_service_file(files.files["pg_service.conf"])
    assert (params["host"], params["port"]) == ("::1", "15432")
    assert files.files["pgpass"].startswith("\\:\\:1:15432:")


@pytest.mark.parametrize("broken", [
    {k: v for k, v in PASSWORD_CREDS.items() if k != "host"},
    {k: v for k, v in PASSWORD_CREDS.items() if k != "password"},
    {k: v for k, v in CERT_CREDS.items() if k != "tls.key"},
])
def test_incomplete_secrets_are_refused(tmp_path: Path, broken: dict) -> None:
    with pytest.raises(ValueError):
        connection_files(broken, tmp_path)


@pytest.mark.parametrize("value", ["two\nlines", "trailing ", "nul\x00"])
def test_values_a_service_file_cannot_hold_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        service_file_text({"dbname": value})


def test_values_with_equals_signs_and_inner_spaces_are_kept() -> None:
    assert parse_service_file(service_file_text({"dbname": "a=b c"})) == {"dbname": "a=b c"}


def test_psql_environment_keeps_only_paths() -> None:
    base = {"PATH": "/usr/bin", "PGPASSWORD": "leak", "PGHOST": "elsewhere", "PGUSER": "root",
            "PGSERVICEFILE": "/etc/other", "PGCLIENTENCODING": "UTF8", "HOME": "/root"}
    env = psql_environment(base, Path("/d"), has_password=True)
    assert env == {"PATH": "/usr/bin", "PGCLIENTENCODING": "UTF8", "HOME": "/root",
                   "PGSERVICEFILE": "/d/pg_service.conf", "PGSERVICE": "pgjit",
                   "PGPASSFILE": "/d/pgpass"}
    assert "PGPASSFILE" not in psql_environment(base, Path("/d"), has_password=False)


def test_private_directory_and_files(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    with psql.private_directory() as directory:
        assert directory.parent == tmp_path
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        psql.write_private_files(directory, {"pgpass": "x\n", "tls.key": "k"})
        for name in ("pgpass", "tls.key"):
            assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
        with pytest.raises(FileExistsError):  # never writes into a file placed there first
            psql.write_private_files(directory, {"pgpass": "y\n"})
    assert not directory.exists()


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_private_directory_names_its_process(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    with psql.private_directory() as directory:
        assert directory.name.startswith(f"pgjit-connect-{os.getpid()}-")


def test_a_killed_runs_directory_is_removed_by_the_next_run(monkeypatch, tmp_path: Path) -> None:
    """SIGKILL leaves the directory and its pgpass behind; the next run removes it, and nothing
    that is not provably an abandoned directory of this user's."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    dead = _dead_pid()
    abandoned = tmp_path / f"pgjit-connect-{dead}-abc123"
    abandoned.mkdir(mode=0o700)
    (abandoned / "pgpass").write_text("h:5432:app:alice:secret\n")
    running = tmp_path / f"pgjit-connect-{os.getpid()}-def456"  # a live run's (this process)
    running.mkdir(mode=0o700)
    unnamed = tmp_path / "pgjit-connect-ghi789"  # no process id: an older release's, or not ours
    unnamed.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("x")
    link = tmp_path / f"pgjit-connect-{dead}-link"  # a link is never followed or removed
    link.symlink_to(elsewhere)
    stray_file = tmp_path / f"pgjit-connect-{dead}-file"
    stray_file.write_text("x")

    with psql.private_directory() as directory:
        assert directory.exists()
        assert not abandoned.exists()
        for kept in (running, unnamed, link, stray_file, elsewhere / "keep"):
            assert kept.exists() or kept.is_symlink(), kept
    assert not directory.exists()


def test_another_users_directory_is_not_removed(monkeypatch, tmp_path: Path) -> None:
    abandoned = tmp_path / f"pgjit-connect-{_dead_pid()}-abc123"
    abandoned.mkdir(mode=0o700)
    monkeypatch.setattr(psql.os, "getuid", lambda: os.stat(abandoned).st_uid + 1)
    assert psql.remove_abandoned_directories(tmp_path) == []
    assert abandoned.exists()
    monkeypatch.undo()
    assert psql.remove_abandoned_directories(tmp_path) == [abandoned]
    assert not abandoned.exists()


def test_find_psql(tmp_path: Path) -> None:
    with pytest.raises(psql.PsqlNotFound, match="--psql"):
        psql.find_psql(str(tmp_path / "nope"))
    fake = tmp_path / "psql"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert psql.find_psql(str(fake)) == str(fake)


@pytest.mark.parametrize(("exit", "code"), [
    (PsqlExit(0), 0), (PsqlExit(2), 2), (PsqlExit(-9), 137),
    (PsqlExit(-15, signal.SIGTERM), 143), (PsqlExit(0, signal.SIGHUP), 129),
])
def test_exit_codes(exit: PsqlExit, code: int) -> None:
    assert exit.exit_code == code


# --------------------------------------------------------------------------------------------
# Signals, with a stand-in for psql (a shell that reports how it sees SIGINT)


def _wait_for_file(path: Path, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


def _fake_psql(tmp_path: Path) -> tuple[list[str], Path]:
    # dash cannot trap a signal that was ignored when it started: the trap firing proves the
    # child got SIGINT with its default disposition, as psql needs for Ctrl-C.
    pid_file = tmp_path / "pid"
    script = f'trap "exit 7" INT; echo $$ > {pid_file}; while :; do sleep 0.05; done'
    return ["/bin/sh", "-c", script], pid_file


def test_sigint_belongs_to_psql(tmp_path: Path) -> None:
    argv, pid_file = _fake_psql(tmp_path)
    before = signal.getsignal(signal.SIGINT)

    def ctrl_c() -> None:
        child = int(_wait_for_file(pid_file))
        os.kill(os.getpid(), signal.SIGINT)  # pgjit must shrug it off...
        os.kill(child, signal.SIGINT)        # ...while psql decides what it means
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        if Path(f"/proc/{child}").exists():  # SIGINT was ignored: fail instead of hanging
            os.kill(child, signal.SIGKILL)

    threading.Thread(target=ctrl_c).start()
    assert run_psql(argv, dict(os.environ)) == PsqlExit(7)
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_end_psql(tmp_path: Path, signum: int) -> None:
    argv, pid_file = _fake_psql(tmp_path)

    def stop() -> None:
        _wait_for_file(pid_file)
        os.kill(os.getpid(), signum)

    threading.Thread(target=stop).start()
    outcome = run_psql(argv, dict(os.environ))
    assert outcome.terminated_by == signum and outcome.exit_code == 128 + signum
    assert outcome.returncode == -signal.SIGTERM  # psql was sent SIGTERM
