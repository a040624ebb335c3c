"""How many sessions of one Database are opened, and ended, at once (``PGJIT_CONCURRENT_OPENINGS``,
``PGJIT_CONCURRENT_ENDINGS``).

Without a bound, a burst of sessions is worked on all at once: each holds its parsed session, its
decision, its password hashing, its requests and its wait for an admin connection, so the
operator's memory follows the size of the burst (about 20 KiB a session in flight, README
Performance), not the sessions it keeps: ending 10,000 sessions at once took the operator from
403 to 644 MB (559 MB with the bound). Past the bound a session waits its turn, in arrival
order, before any of that exists.

The bound is per Database, so that sessions of a Database that does not answer wait on their own
server and never hold up another Database's; openings and endings have a bound each, so that a
burst of openings never delays an ending.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from . import metrics


@dataclass
class _Gate:
    semaphore: asyncio.Semaphore
    #: Sessions holding or waiting for a slot: the gate is dropped when none are left.
    users: int = 0


@dataclass
class DatabaseSlots:
    """At most ``per_database`` holders per Database key; ``step`` labels the waiting gauge."""

    step: str
    per_database: int
    #: How many more may wait in memory for a slot; None: any number.
    queue: int | None = None
    _gates: dict[Hashable, _Gate] = field(default_factory=dict, repr=False)

    @asynccontextmanager
    async def slot(self, database: Hashable) -> AsyncIterator[None]:
        """Hold one of ``database``'s slots for the body; wait for one first if all are taken."""
        gate = self._gates.get(database)
        if gate is None:
            gate = self._gates[database] = _Gate(asyncio.Semaphore(self.per_database))
        gate.users += 1
        try:
            if gate.semaphore.locked():
                with metrics.WAITING_FOR_SLOT.labels(self.step).track_inprogress():
                    await gate.semaphore.acquire()
            else:
                await gate.semaphore.acquire()
            try:
                yield
            finally:
                gate.semaphore.release()
        finally:
            gate.users -= 1
            if not gate.users:
                del self._gates[database]

    def crowded(self, database: Hashable) -> bool:
        """Whether another session of ``database`` would wait past the queue bound."""
        return self.room(database) <= 0

    def room(self, database: Hashable) -> int:
        """How many more sessions of ``database`` may hold or wait for a slot in memory."""
        if self.queue is None:
            return self.per_database  # no bound: always room
        gate = self._gates.get(database)
        return self.per_database + self.queue - (gate.users if gate else 0)

    def __len__(self) -> int:
        """Databases with a session holding or waiting for a slot."""
        return len(self._gates)
