"""`pgjit connect`'s promise, with the API server replaced by a recorder: whatever happens after
the session is created (errors, Ctrl-C, SIGTERM, psql's exit), the session is ended, except
with --keep-session once psql has run; psql's exit code is pgjit's."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from pgjit.client import connect as connect_module
from pgjit.client.connect import ConnectOptions, connect
from pgjit.client.identity import Identity
from pgjit.client.sessions import SessionError

CREDS = {"username": "alice", "password": "pw", "host": "127.0.0.1", "port": "5432",
         "dbname": "app", "sslmode": "disable"}
ACTIVE = {"status": {"phase": "Active", "username": "alice", "databaseRoles": ["reader"],
                     "expiresAt": "2030-01-01T00:00:00Z", "secretName": "s-credentials"}}


class FakeSessions:
    """Records what connect does with sessions; behaviours are swapped in per test."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.on_create = lambda: None
        self.on_wait = lambda: ACTIVE
        self.creds = dict(CREDS)

    def __call__(self, api, namespace):  # stands in for the Sessions class
        return self

    def create(self, body):
        self.calls.append(("create", body["spec"]["user"]))
        self.on_create()
        return {"metadata": {"name": "s"}}

    def wait_active(self, name, *, timeout, report):
        self.calls.append(("wait", name))
        return self.on_wait()

    def credentials(self, secret_name):
        self.calls.append(("credentials", secret_name))
        return self.creds

    def delete(self, name):
        self.calls.append(("delete", name))
        return True

    def wait_gone(self, name, *, timeout, report):
        self.calls.append(("gone", name))


@pytest.fixture
def sessions(monkeypatch) -> FakeSessions:
    fake = FakeSessions()
    monkeypatch.setattr(connect_module, "Sessions", fake)
    monkeypatch.setattr(connect_module, "whoami", lambda api: Identity("alice", ("analysts",)))
    return fake


def fake_psql(tmp_path: Path, script: str) -> str:
    path = tmp_path / "psql"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return str(path)


def options(tmp_path: Path, script: str = "exit 0", **kwargs) -> ConnectOptions:
    return ConnectOptions(database="db", database_name="app", namespace="ns",
                          psql_path=fake_psql(tmp_path, script), environ={"PATH": "/usr/bin:/bin"},
                          **kwargs)


def test_psql_exit_code_is_returned_and_the_session_ended(sessions, tmp_path) -> None:
    # The fake psql checks what the real one would get: a service file and a password file.
    script = ('grep -q "^user=alice$" "$PGSERVICEFILE" && [ "$PGSERVICE" = pgjit ]'
              ' && grep -q ":alice:pw$" "$PGPASSFILE" && exit 3; exit 99')
    assert connect(None, options(tmp_path, script)) == 3
    assert sessions.calls == [("create", "alice"), ("wait", "s"),
                              ("credentials", "s-credentials"), ("delete", "s"), ("gone", "s")]


def test_keep_session_skips_the_end_once_psql_ran(sessions, tmp_path) -> None:
    assert connect(None, options(tmp_path, keep_session=True)) == 0
    assert ("delete", "s") not in sessions.calls


def test_a_session_that_fails_is_deleted(sessions, tmp_path, capsys) -> None:
    def refuse():
        raise SessionError("session s is Failed: AccessDenied: no Role allows")
    sessions.on_wait = refuse
    assert connect(None, options(tmp_path, keep_session=True)) == 1
    assert sessions.calls[-2:] == [("delete", "s"), ("gone", "s")]
    assert "AccessDenied: no Role allows" in capsys.readouterr().err


def test_ctrl_c_while_waiting_deletes_and_exits_130(sessions, tmp_path) -> None:
    def interrupted():
        raise KeyboardInterrupt
    sessions.on_wait = interrupted
    assert connect(None, options(tmp_path)) == 130
    assert sessions.calls[-2:] == [("delete", "s"), ("gone", "s")]


def test_a_broken_secret_still_ends_the_session(sessions, tmp_path) -> None:
    sessions.creds = {"username": "alice"}
    assert connect(None, options(tmp_path)) == 1
    assert sessions.calls[-2:] == [("delete", "s"), ("gone", "s")]


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raising KeyboardInterrupt, as in a terminal. A shell starts background jobs
    with SIGINT ignored, and Python then leaves it ignored: `make test &` would not see it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(params=["main thread only", "another thread"])
def other_thread(request):
    """The process alone, or with another thread (a library's, a test runner's): a signal sent
    to the process goes to any thread that does not block it, so blocking it in the main
    thread alone does not hold it back."""
    if request.param == "main thread only":
        yield None
        return
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()
    yield other
    stop.set()
    other.join()


def _pending_in(thread: threading.Thread, signum: int) -> bool:
    with open(f"/proc/self/task/{thread.native_id}/status") as status:
        line = next(line for line in status if line.startswith("SigPnd:"))
    return bool(int(line.split()[1], 16) & (1 << (signum - 1)))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_creation_is_held_until_the_name_is_known(sessions, tmp_path, signum,
                                                                   ctrl_c_raises, other_thread
                                                                   ) -> None:
    def interrupt():
        if other_thread is None:
            os.kill(os.getpid(), signum)
            return
        # Where the kernel would deliver the process's signal: the thread not blocking it.
        signal.pthread_kill(other_thread.ident, signum)
        deadline = time.monotonic() + 5
        while _pending_in(other_thread, signum) and time.monotonic() < deadline:
            time.sleep(0.001)
        # Delivered there; Python runs the handler in this thread at its next check.
        time.sleep(0.001)
    sessions.on_create = interrupt
    expected = 130 if signum == signal.SIGINT else 128 + signum
    assert connect(None, options(tmp_path)) == expected
    assert sessions.calls == [("create", "alice"), ("delete", "s"), ("gone", "s")]


def test_no_psql_means_no_session(sessions, tmp_path) -> None:
    opts = ConnectOptions(database="db", database_name="app", namespace="ns",
                          psql_path=str(tmp_path / "missing"))
    assert connect(None, opts) == 1
    assert sessions.calls == []
