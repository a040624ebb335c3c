"""Deleting what ended sessions leave, several sessions' objects of a kind in one request.

An ended session's Secret, Role and RoleBinding were three DELETE requests. Each carries the
API server's whole request path (authentication, authorization, admission, audit, the answer)
and the operator's own (a request, its JSON, a task). One DELETE of a collection, with a label
selector naming the sessions, removes the objects of all of them for much of the price of one:
ending a session cost the operator 2.5 ms of CPU less, and the API server and etcd 1.8 ms less,
in runs alternated with the code before (README, Performance, session 11).

The batching costs no wait: the first session's delete is sent at once; the sessions that end
while it is in flight go together in the next request, as soon as it returns. A session's
delete returns only once the request that carried it has, so a session is never let go (its
finalizer removed) before its objects are gone, as before.

Only objects that carry their owner's uid in :data:`OWNER_UID_LABEL` are selected, and the
client sets it on every object it writes for a session: a label selector cannot check owner
references, and the label is what keeps the request from touching anything else (another
session's objects, someone else's objects of the same name).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..core.credentials_secret import OWNER_UID_LABEL

#: Sessions in one request at most: the selector goes in the URL (37 bytes a session).
MOST_PER_REQUEST = 100

Request = Callable[..., Awaitable[Any]]

#: A label value (what the API server lets an object carry): nothing that could end the value
#: and go on as more of the selector (``,``, ``)``, spaces), so one uid selects one session.
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")


class BatchedDeletes:
    """Deletes of the objects of a collection (one kind in one namespace) by owner uid."""

    def __init__(self, request: Request, *, most: int = MOST_PER_REQUEST):
        self._request = request
        self._most = most
        self._waiting: dict[str, list[tuple[str, asyncio.Future[None]]]] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}

    async def delete(self, collection: str, owner_uid: str) -> None:
        """Delete the objects of ``collection`` (an API path) labelled with ``owner_uid``;
        raise what the request that carried them raised."""
        if not _LABEL_VALUE.fullmatch(owner_uid):
            raise ValueError(f"not a label value, so not a uid this client labelled: {owner_uid!r}")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Retrieved even when its waiter was cancelled, so it is not reported as lost.
        done.add_done_callback(lambda future: future.cancelled() or future.exception())
        self._waiting.setdefault(collection, []).append((owner_uid, done))
        if collection not in self._senders:
            self._senders[collection] = asyncio.create_task(self._send(collection))
        # Shielded: a handler cancelled while waiting does not cancel the others' request.
        await asyncio.shield(done)

    def selector(self, owner_uids: list[str]) -> str:
        return f"{OWNER_UID_LABEL} in ({','.join(sorted(set(owner_uids)))})"

    async def _send(self, collection: str) -> None:
        try:
            while waiting := self._waiting.get(collection):
                batch, self._waiting[collection] = waiting[:self._most], waiting[self._most:]
                params: Mapping[str, str] = {"labelSelector": self.selector(
                    [uid for uid, _ in batch])}
                try:
                    await self._request("DELETE", collection, params=params)
                except Exception as error:  # noqa: BLE001 - every waiter gets it, to retry
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(error)
                else:
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            left = self._waiting.pop(collection, [])
            del self._senders[collection]
            for _, done in left:  # only if the sender itself was cancelled (shutdown)
                if not done.done():
                    done.cancel()
