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

from pgjit.handlers.settings import OperatorMemo
from pgjit.settings import Settings

from .fakes import FakeKube, StubEngine, StubEngines, World


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    events: list[dict[str, Any]] = []
    # Each Event with the kind and name of the object it is about, as "kind/name".
    def post(body, **kw):
        events.append({**kw, "about": f"{body.get('kind')}/{body['metadata']['name']}"})
    monkeypatch.setattr(kopf, "event", post)
    monkeypatch.setattr(kopf, "warn", post)
    kube, engine = FakeKube(), StubEngine()
    # Ticks fast enough for a test to see several; revalidation on every tick.
    memo = OperatorMemo(Settings(expiry_tick_seconds=0.01, revalidate_seconds=0.0))
    memo.kube = kube  # type: ignore[assignment]
    memo.engines = StubEngines(engine)  # type: ignore[assignment]
    yield World(kube=kube, engine=engine, memo=memo, events=events)
