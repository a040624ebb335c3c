"""When the handlers that keep an object's status true run: one rule for every kind."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import kopf

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger(__name__)


def on_spec(group: str, version: str, plural: str, *, id: str) -> Callable[[F], F]:
    """Run the handler when an object is created, when the operator starts (resume), and when
    its spec changes: whatever it concludes from the spec is then never stale."""
    def register(fn: F) -> F:
        kopf.on.update(group, version, plural, id=id, field="spec")(fn)
        kopf.on.create(group, version, plural, id=id)(fn)
        kopf.on.resume(group, version, plural, id=id)(fn)
        return fn
    return register


def index(group: str, version: str, plural: str, *, id: str | None = None
          ) -> Callable[[F], F]:
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
        kopf.index(group, version, plural, id=id or fn.__name__)(inline)
        return fn
    return register


class IndexParts:
    """Several index functions of one kind, registered with Kopf as one index.

    Kopf runs every index function of a kind through its handler machinery (a state, the
    keyword arguments, context variables) for every watch event of that kind: about 0.1 ms a
    call, which for five session indexes and four events per session came to 2.4 ms of a
    session's CPU (README, Performance). One index running the five functions directly costs
    one such call per event. Each function's entries are filed under its name, and the
    handlers get each part back, by its name, as the mapping its own index would have been.

    A part registered ``listed`` files all its entries under the one key ``(name,)``, each
    value a pair ``(key, value)``: for a part that is iterated whole (a scan of every
    object's keys would otherwise cost a pass over the whole index), whose objects give one
    entry each.
    """

    def __init__(self, group: str, version: str, plural: str, *, id: str):
        self.id = id
        self._parts: dict[str, Callable[..., Mapping]] = {}
        self._listed: set[str] = set()
        index(group, version, plural, id=id)(self.entries)

    def part(self, *, listed: bool = False) -> Callable[[F], F]:
        def register(fn: F) -> F:
            self._parts[fn.__name__] = fn
            if listed:
                self._listed.add(fn.__name__)
            return fn
        return register

    def entries(self, **kwargs: Any) -> dict:
        """The combined index function: every part's entries, under the part's name."""
        kwargs.update(_plain_fields(kwargs.get("body")))
        entries: dict = {}
        for name, fn in self._parts.items():
            try:
                found = fn(**kwargs)
            except Exception:  # noqa: BLE001 - one part's failure must not empty the others
                # As Kopf does for an index function that fails: the object is left out of
                # that part only. Dropping it from every part would, for one, make the sweep
                # see a live session as gone and lock its user.
                log.exception("index %s failed for %s/%s; left out of it", name,
                              kwargs.get("namespace"), kwargs.get("name"))
                continue
            if name in self._listed:
                assert len(found) <= 1, f"the listed index part {name} gave several entries"
                for key, value in found.items():
                    entries[(name,)] = (key, value)
            else:
                for key, value in found.items():
                    entries[(name, key)] = value
        return entries

    def views(self, combined: Mapping) -> dict[str, Mapping]:
        return {name: (_ListedPart if name in self._listed else _Part)(combined, name)
                for name in self._parts}

    def as_kwargs(self, handler: F) -> F:
        """The handler gets each part as a keyword argument named after it, as it got the
        part's own index before. Arguments given explicitly (the tests' fakes) are kept."""
        assert inspect.iscoroutinefunction(handler), handler

        async def with_parts(**kwargs: Any) -> Any:
            combined = kwargs.get(self.id)
            if combined is not None:
                for name, view in self.views(combined).items():
                    kwargs.setdefault(name, view)
            return await handler(**kwargs)
        # Kopf names a handler without an explicit id after its function.
        with_parts.__name__, with_parts.__qualname__ = handler.__name__, handler.__qualname__
        with_parts.__module__ = handler.__module__
        with_parts.__doc__ = handler.__doc__
        return with_parts  # type: ignore[return-value]


def _plain_fields(body: Any) -> dict[str, Any]:
    """``body``, ``meta``, ``spec`` and ``status`` as the event's own dicts, not Kopf's views.

    Every read of a Kopf view walks the path from the body down again, through mapping ABC
    checks at each level, and the parts read ``status`` and ``spec`` a dozen times per event.
    Copying the body's top level once gives the same values (the nested ones are the event's
    dicts either way): an Active session's event took the parts 45 µs through the views, 27 µs
    through the dicts, copy included. A field that is not an object (no schema allows one)
    reads as empty.
    """
    if body is None:
        return {}
    plain = dict(body)

    def field(name: str) -> dict:
        value = plain.get(name)
        return value if isinstance(value, dict) else {}
    return {"body": plain, "meta": field("metadata"), "spec": field("spec"),
            "status": field("status")}


class _Part(Mapping):
    """One part of a combined index: its keys, without the part's name."""

    def __init__(self, combined: Mapping, name: str):
        self._combined, self._name = combined, name

    def __getitem__(self, key: Any) -> Any:
        return self._combined[(self._name, key)]

    def __contains__(self, key: object) -> bool:
        return (self._name, key) in self._combined

    def __iter__(self) -> Iterator:
        for key in list(self._combined):
            if len(key) == 2 and key[0] == self._name:
                yield key[1]

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _ListedPart(Mapping):
    """A listed part: every entry in one store, as (key, value) pairs."""

    def __init__(self, combined: Mapping, name: str):
        self._combined, self._name = combined, name

    def _pairs(self) -> list:
        return list(self._combined.get((self._name,), ()))

    def __getitem__(self, key: Any) -> list:
        values = [value for found, value in self._pairs() if found == key]
        if not values:
            raise KeyError(key)
        return values

    def __iter__(self) -> Iterator:
        return iter(dict.fromkeys(found for found, _ in self._pairs()))

    def __len__(self) -> int:
        # One entry per object: the store's length, read in one step (the metrics server's
        # thread reads it while the event loop may change the index).
        return len(self._combined.get((self._name,), ()))

    def items(self) -> Any:
        grouped: dict = {}
        for found, value in self._pairs():
            grouped.setdefault(found, []).append(value)
        return grouped.items()
