"""The password-sharing protocol: one PostgreSQL user, one password, several sessions.

A PostgreSQL role has one password, and every live session of its user must hand out the one in
effect. The session that activates a user sets its own password (or the one it wrote before);
a session that finds the user shared takes the password this process remembers, or the one in
the Secret of another live session of the user on the same server.
"""

from __future__ import annotations

import asyncio

from ..api.database import Database
from ..api.session import DatabaseSession
from ..core.credentials import generate_password
from .indexes import database_in


class SharedPasswords:
    """What this process knows about the password of each shared PostgreSQL user.

    A PostgreSQL role has one password, and sessions sharing a user must all hand out the one in
    effect. Activations of one user are serialized here (per server and user name) so that the
    session that sets the password records it before another session of the user looks for it;
    the Kopf index only learns that the first session is Active a watch event later. Lives in the
    operator's memo, in memory only: after a restart the live sessions' Secrets are the source.
    """

    def __init__(self) -> None:
        self._locks: dict[tuple, asyncio.Lock] = {}
        self._passwords: dict[tuple, str] = {}

    def lock(self, key: tuple) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def get(self, key: tuple) -> str | None:
        return self._passwords.get(key)

    def remember(self, key: tuple, password: str) -> None:
        self._passwords[key] = password

    def __repr__(self) -> str:  # never print a password, even by accident
        return f"<SharedPasswords users={len(self._passwords)}>"


def server_key(database: Database, username: str) -> tuple:
    return (database.spec.host, database.spec.port, username)


async def own_password(memo, namespace: str, session: DatabaseSession, *,
                       first_attempt: bool = False) -> str:
    """The password this session sets when it is the one activating the user: the one it wrote
    before (a retry, or a restart after the Secret was written), else a new one.

    On the first attempt of a session nothing has been written yet, so there is nothing to read
    (a GET that answered 404 for every session). Should a crash have come between an earlier
    Secret and any status, the session was never Active: a new password, set on the user and
    written to the Secret in this attempt, leaves the two agreeing again.
    """
    if first_attempt:
        return generate_password()
    existing = await memo.kube.read_secret(namespace, session.credentials_secret_name)
    return (existing or {}).get("password", b"").decode("utf-8") or generate_password()


async def shared_password(memo, namespace: str, session: DatabaseSession, database: Database,
                           username: str, databases_by_name, active_sessions_by_user
                           ) -> str | None:
    """The password in effect for a user other live sessions hold, or None if unknown.

    Known when this process set it (it is remembered until the user is activated afresh), or
    from the Secret of a live session of the same user on the same server, which handed it out.
    """
    known = memo.shared_passwords.get(server_key(database, username))
    if known is not None:
        return known
    for other_name, secret_name, other_db in active_sessions_by_user.get(
            (namespace, session.spec.user), ()):
        if other_name == session.metadata.name or not secret_name:
            continue
        other = database_in(databases_by_name, namespace, other_db)
        if not isinstance(other, Database) or server_key(other, username) != server_key(
                database, username):
            continue  # another server: another PostgreSQL role of that name
        data = await memo.kube.read_secret(namespace, secret_name)
        if data and data.get("password"):
            return data["password"].decode("utf-8")
    return None
