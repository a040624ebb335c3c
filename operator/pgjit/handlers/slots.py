"""How many sessions of one Database are opened at once (``PGJIT_CONCURRENT_OPENINGS``).

Without a bound, a burst of sessions is opened all at once: each holds its parsed session, its
decision, its password hashing, its requests and its wait for an admin connection, so the
operator's memory follows the size of the burst (about 20 KiB a session in flight, README
Performance), not the sessions it keeps. Past the bound a session waits its turn, in arrival
order, before any of that exists. The bound is per Database: sessions of a Database that does not
answer wait on their own server and never hold up another Database's.
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
    #: Openings holding or waiting for a slot: the gate is dropped when none are left.
    users: int = 0


@dataclass
class OpeningSlots:
    per_database: int
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
                with metrics.OPENINGS_WAITING.track_inprogress():
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

    def __len__(self) -> int:
        """Databases with an opening in flight or waiting."""
        return len(self._gates)
