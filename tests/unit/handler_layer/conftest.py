"""Fixtures of the handler layer: a :class:`World` of fakes per test (see fakes.py).

Mocked: the Kubernetes API and PostgreSQL (fakes.FakeKube, fakes.StubEngine); ``kopf.event`` and
``kopf.warn`` are replaced to collect Events. Observed: the status, Secrets, patches, Events and
metrics the handlers produce.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kopf
import pytest

from pgjit.handlers.sessions import SharedPasswords

from .fakes import FakeKube, StubEngine, StubEngines, World


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(kopf, "event", lambda body, **kw: events.append(kw))
    monkeypatch.setattr(kopf, "warn", lambda body, **kw: events.append(kw))
    kube, engine = FakeKube(), StubEngine()
    memo = kopf.Memo()
    memo.kube = kube
    memo.engines = StubEngines(engine)
    memo.shared_passwords = SharedPasswords()
    yield World(kube=kube, engine=engine, memo=memo, events=events)
