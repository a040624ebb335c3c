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


def index(group: str, version: str, plural: str) -> Callable[[F], F]:
    """Register a pure index function with Kopf, to be run inline on the event loop.

    Kopf runs a plain function in its thread pool, each call a hop to a thread and a shielded
    task; it runs a coroutine function in place. Index functions run for every watch event of
    their kind, and ours are quick and pure (a dict built from the body), so the hop cost far
    more than the call: Kopf gets a coroutine wrapper, named after the function (the index's
    name), and the function itself stays plain for whoever calls it directly.

    Not ``functools.wraps``: Kopf follows ``__wrapped__`` to decide how to call a function, and
    would call the wrapper as the plain function it wraps (indexing an unawaited coroutine).
    """
    def register(fn: F) -> F:
        async def inline(**kwargs: Any) -> Any:
            return fn(**kwargs)
        inline.__name__ = inline.__qualname__ = fn.__name__
        inline.__doc__ = fn.__doc__
        kopf.index(group, version, plural, id=fn.__name__)(inline)
        return fn
    return register
