"""Sessions queued in their status: a burst larger than the operator should hold in memory.

A session waiting for an opening slot (slots.py) waits inside Kopf's worker for its event:
about 37 KiB each (README, Performance), so 10,000 sessions created at once took the operator
to 396 MB while PostgreSQL opened them ten a second. Past ``PGJIT_OPENING_QUEUE`` sessions of
one Database waiting in memory, the opening handler writes the session ``Pending`` with reason
``Queued`` and is done: Kopf's worker exits and the session holds only its index entries.

The Database's lease loop hands queued sessions back in arrival order as the opening slots
free, by poking them as access requests are poked (approvals.py): the ``approval`` update
handler then opens the session past the bound, since the loop poked no more than there was
room for. A queued session costs two writes more (its Queued status and the poke: the Queued
transition posts no Event, status.SILENT_REASONS) and holds no lease, no Secret and no login:
it is opened later, never more than was decided.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Mapping

from .. import GROUP, VERSION
from ..api.session import DatabaseSession
from ..vocabulary import Reason, SessionPhase
from .indexes import SESSION_INDEX, session_database

SESSIONS = (GROUP, VERSION, DatabaseSession.plural)
#: A poke counts against the room until its session leaves the queue: a handed-back session
#: waits its turn behind those already waiting, which at ten openings a second can take
#: minutes. Past this long it is poked again, in case its handler never ran.
POKE_PATIENCE = 600.0


def is_queued(status: Mapping) -> bool:
    ready: dict = next((c for c in status.get("conditions") or () if c.get("type") == "Ready"), {})
    return status.get("phase") == SessionPhase.PENDING and ready.get("reason") == Reason.QUEUED


@SESSION_INDEX.part()
def queued_sessions(namespace, name, spec, status, meta, **_):
    """Queued sessions per (namespace, Database), with what orders them: their creation."""
    if not is_queued(status) or meta.get("deletionTimestamp"):
        return {}
    return {session_database(namespace, spec): (meta.get("creationTimestamp") or "", name)}


class QueuePokes:
    """One Database's pokes of its queued sessions, kept by its lease loop.

    A poked session leaves the queue only when its own watch event shows it opened (or gone);
    until then it counts against the room, so the loop never hands back more sessions than the
    opening slots and their queue can take, and never pokes one twice while it waits its turn.
    """

    def __init__(self, namespace: str, database: str):
        self.key = (namespace, database)
        self._poked: dict[str, float] = {}

    def due(self, queued_sessions, openings) -> list[str]:
        """The queued sessions to poke now, oldest first.

        Called on every tick of the lease loop, which in a burst of 10,000 finds about 9,000
        queued and, most ticks, no room: the queue is ordered only when something is due, and
        then only as far as the room (5.2 ms a tick for a full sort of 9,000, README
        Performance, session 20)."""
        queued = queued_sessions.get(self.key, ())
        now = time.monotonic()
        names = {name for _, name in queued}
        self._poked = {name: at for name, at in self._poked.items()
                       if name in names and now - at < POKE_PATIENCE}
        room = openings.room(self.key) - len(self._poked)
        if room <= 0:
            return []
        waiting = {entry for entry in queued if entry[1] not in self._poked}
        return [name for _, name in heapq.nsmallest(room, waiting)]

    async def poke(self, memo, queued_sessions) -> None:
        """Poke what is due; a poke is remembered once written, so one that failed (the API
        server away) is made again on the next tick."""
        from .approvals import CHECK_ANNOTATION

        for name in self.due(queued_sessions, memo.openings):
            await memo.kube.annotate(*SESSIONS, self.key[0], name,
                                     {CHECK_ANNOTATION: f"queue:{time.time_ns()}"})
            self._poked[name] = time.monotonic()
