"""Fixtures for the fault layer: each test a control plane, a PostgreSQL and operator pods of
its own, because it restarts, stops or partitions them. Marked ``faults``; nothing skips."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
# The cluster layer's helpers (session Env, CRDs, wait_for) apply unchanged.
sys.path.insert(0, str(HERE.parent / "cluster"))

from faultkit import Stack, start_stack, stop_stack  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.faults)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    stack = start_stack(tmp_path)
    yield stack
    stop_stack(stack)
