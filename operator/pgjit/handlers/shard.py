"""A sharded instance's watches: only its Databases, and only their sessions (core/sharding.py).

The API server filters both watch streams (Kopf's ``settings.watching.label_selectors``), so the
other shards' objects never reach this process, neither its CPU nor Kopf, which would otherwise
strip pgjit's finalizer from objects that no handler of this instance matches.

The session watch names the served Databases, so it is fixed when Kopf starts. When the set
changes (a Database created, deleted or relabelled into or out of the shard) this module asks the
runner to restart Kopf with a new session watch: a re-list, a few seconds, on an event that is
rare next to sessions. Roles and ObjectLabelRules are watched whole: a Role may select Databases
of several shards, and they are few.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import kopf

from .. import GROUP, VERSION
from ..api.database import Database
from ..api.session import DatabaseSession
from ..core.sharding import ShardSelector, session_selector

log = logging.getLogger(__name__)


@dataclass
class ShardState:
    """What one run of Kopf watches, and how it asks the runner for another run."""

    selector: ShardSelector = field(default_factory=ShardSelector)
    #: The (namespace, name) Databases the session watch was built for.
    watched: frozenset[tuple[str, str]] = frozenset()
    #: Set to stop this run of Kopf: with ``restart_requested`` the runner starts the next.
    restart: asyncio.Event = field(default_factory=asyncio.Event)
    restart_requested: bool = False

    @property
    def sharded(self) -> bool:
        return self.selector.sharded

    def request_restart(self, reason: str) -> None:
        """Stop this run of Kopf and start another: its watches begin with a fresh list."""
        if not self.restart_requested:
            log.info("Restarting the watches: %s", reason)
            self.restart_requested = True
            self.restart.set()


@kopf.on.startup()
async def shard_watches(settings: kopf.OperatorSettings, memo, **_) -> None:
    shard: ShardState = memo.shard
    if not shard.sharded:
        return
    settings.watching.label_selectors[GROUP, Database.plural] = shard.selector.render()
    settings.watching.label_selectors[GROUP, DatabaseSession.plural] = \
        session_selector(shard.watched)
    log.info("Shard: serving Databases matching %s (%d now); sessions selected by %s",
             shard.selector.describe(), len(shard.watched), session_selector(shard.watched))


@kopf.on.event(GROUP, VERSION, Database.plural, id="shard")  # type: ignore[arg-type]  # index kwargs
async def follow_served(memo, databases_by_name, **_) -> None:
    """Restart the watches when the served Databases are no longer those watched."""
    shard: ShardState = memo.shard
    if not shard.sharded or shard.restart_requested:
        return
    served = frozenset(key for key, bodies in databases_by_name.items() if bodies)
    if served != shard.watched:
        shard.request_restart(
            f"Shard: the served Databases changed ({sorted(served - shard.watched)} added, "
            f"{sorted(shard.watched - served)} gone)")
