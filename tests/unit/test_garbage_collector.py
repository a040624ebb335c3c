"""The operator's garbage collector: fewer collections, startup's objects frozen, cycles
still collected."""

from __future__ import annotations

import gc
import weakref

import pytest

from pgjit import runner


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture
def restored_collector():
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def _tracked(obj) -> bool:
    return any(o is obj for o in gc.get_objects())


def test_startup_objects_are_frozen_and_collections_rarer(restored_collector):
    from_startup = {"a": [1, 2]}
    assert _tracked(from_startup)
    frozen_before = gc.get_freeze_count()

    runner.tune_garbage_collector()

    assert gc.get_threshold() == runner.GC_THRESHOLDS
    assert runner.GC_THRESHOLDS[0] > 700  # rarer than Python's default
    assert gc.get_freeze_count() > frozen_before
    assert not _tracked(from_startup)  # no collection walks it again


def test_cycles_made_after_startup_are_still_collected(restored_collector):
    runner.tune_garbage_collector()
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    assert gone() is not None  # only the cycle collector can free a cycle
    gc.collect()
    assert gone() is None
