"""The admin's PEM material for libpq: private to this process, and gone when it is."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pgjit.engine import connections


@pytest.fixture
def private_tmp(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_in_memory_files_never_touch_the_disk(private_tmp):
    assert connections._IN_MEMORY, "this Linux host offers memfd_create and /proc"
    files = connections._PrivateFiles()
    path = files.write("admin.key", b"-----BEGIN PRIVATE KEY-----\n" * 2000)
    assert path.startswith("/proc/self/fd/")
    assert Path(path).read_bytes() == b"-----BEGIN PRIVATE KEY-----\n" * 2000  # all of it
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert list(private_tmp.iterdir()) == []
    files.close()
    assert files._fds == []


def test_a_killed_process_leaves_no_key_behind(private_tmp):
    script = ("import sys\n"
              "from pgjit.engine.connections import _PrivateFiles\n"
              "files = _PrivateFiles()\n"
              "print(files.write('admin.key', b'secret key'), flush=True)\n"
              "sys.stdin.readline()\n")
    env = dict(os.environ, TMPDIR=str(private_tmp))
    with subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, env=env, text=True) as child:
        try:
            path = child.stdout.readline().strip()
            assert path.startswith("/proc/self/fd/")
            # From outside, the file is reachable only through the child's descriptor table.
            fd_path = Path(f"/proc/{child.pid}/fd/{path.rsplit('/', 1)[1]}")
            assert fd_path.read_bytes() == b"secret key"
        finally:
            child.kill()
    assert not fd_path.exists()
    assert list(private_tmp.iterdir()) == []


def test_without_memfd_a_private_directory_removed_on_close(private_tmp, monkeypatch):
    monkeypatch.setattr(connections, "_IN_MEMORY", False)
    files = connections._PrivateFiles()
    path = Path(files.write("admin.key", b"k"))
    assert path.read_bytes() == b"k"
    assert path.parent.parent == private_tmp and path.parent.name.startswith("pgjit-tls-")
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    files.close()
    assert list(private_tmp.iterdir()) == []


def test_a_refused_memfd_falls_back_to_the_private_directory(private_tmp, monkeypatch):
    def refused(name, flags=0):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "memfd_create", refused)
    files = connections._PrivateFiles()
    path = Path(files.write("ca.crt", b"ca"))
    assert path.read_bytes() == b"ca" and path.parent.parent == private_tmp
    files.close()
    assert list(private_tmp.iterdir()) == []
