"""When the handlers that keep an object's status true run: one rule for every kind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import kopf

F = TypeVar("F", bound=Callable[..., Any])


def on_spec(group: str, version: str, plural: str, *, id: str) -> Callable[[F], F]:
    """Run the handler when an object is created, when the operator starts (resume), and when
    its spec changes: whatever it concludes from the spec is then never stale."""
    def register(fn: F) -> F:
        kopf.on.update(group, version, plural, id=id, field="spec")(fn)
        kopf.on.create(group, version, plural, id=id)(fn)
        kopf.on.resume(group, version, plural, id=id)(fn)
        return fn
    return register
