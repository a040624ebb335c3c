"""Handing the leader-election Lease over as soon as this process has stopped acting.

Kopf runs cleanup handlers once its watchers, workers and daemons have stopped: from then on
nothing of this process acts, and a standby may take over at once instead of waiting out the
lease (the runner would release it anyway, but only after Kopf's wait for leftover tasks, which
takes seconds). Not on a shard's restart of its watches: the process carries on leading.
"""

from __future__ import annotations

import asyncio

import kopf


@kopf.on.cleanup()
async def release_leadership(memo, **_) -> None:
    if memo.release_leadership is not None and not memo.shard.restart_requested:
        await asyncio.to_thread(memo.release_leadership)
    # Kopf's stop-flag waiter would otherwise hold its shutdown for 5 s (runner.py).
    memo.shard.restart.set()
