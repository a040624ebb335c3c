"""The test kit's own hygiene: what it writes for a test goes with the test."""

from __future__ import annotations

import gc
import tempfile

from operatorkit import Env


def test_certificate_key_directory_is_made_on_demand_and_removed_with_its_env(monkeypatch,
                                                                              tmp_path):
    """A certificate login writes the session's private key to disk; the directory must not
    outlast the Env, and an Env that never logs in with a certificate makes none."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # other layers' kits share /tmp
    env = Env(api=None, namespace="unused", server=None, operator=None)
    assert list(tmp_path.iterdir()) == []

    directory = env.tmpdir
    assert env.tmpdir == directory  # one directory per Env
    (directory / "client.key").write_text("a key")
    assert list(tmp_path.glob("pgjit-login-*")) == [directory]

    del env
    gc.collect()
    assert not directory.exists()
