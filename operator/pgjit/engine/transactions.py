"""Transactions on admin connections: opened, locked, named, committed and rolled back one way.

Admin connections are autocommit (connections.py), so every transaction is explicit. Each one
that changes a user, its grants in a database or the managed role:

- holds the advisory lock for that name from its first statement, so operator replicas and
  several Database objects for one server never interleave on one name;
- names its purpose in ``application_name`` (``pgjit/activate orders``: what, and for which
  Database), set with ``set_config(…, is_local => true)`` so it reverts at COMMIT. A DBA reading
  ``pg_stat_activity`` can tell an activation from a sweep, and one Database's work from
  another's; idle pooled connections show the plain name;
- ends idle whatever happens: :func:`locked_transaction` rolls back on an error, and on a return
  that did not commit, so no connection goes back to its pool inside a transaction.

A locked transaction starts in one round trip: :meth:`Transaction.begin` only sends its
statements, inside the caller's pipeline, and the user lifecycle sends
:meth:`Transaction.begin_statements` with its state reads as one script (:func:`run_script`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import psycopg
from psycopg import sql
from psycopg.abc import Params

from . import statements as S

#: A statement and its parameters, as ``execute`` takes them.
Statement = tuple[str | bytes | sql.SQL | sql.Composed, Params | None]

#: PostgreSQL keeps NAMEDATALEN - 1 bytes of application_name.
_APPLICATION_NAME_BYTES = 63


def application_name(purpose: str, label: str = "") -> str:
    """``pgjit/<purpose> <label>`` (``pgjit <label>`` without a purpose), cut to what
    PostgreSQL keeps, on a character boundary."""
    name = (f"pgjit/{purpose}" if purpose else "pgjit") + (f" {label}" if label else "")
    return name.encode("utf-8")[:_APPLICATION_NAME_BYTES].decode("utf-8", "ignore")


class Transaction:
    """One transaction on ``conn``; see the module docstring."""

    def __init__(self, conn: psycopg.AsyncConnection, name: str):
        self.conn = conn
        self.name = name

    def begin_statements(self, lock_key: int) -> list[Statement]:
        """What :meth:`begin` sends, for a caller that sends it as part of one script."""
        return [(S.BEGIN, None), (S.NAMED_ADVISORY_LOCK, [self.name, lock_key])]

    async def begin(self, lock_key: int) -> None:
        """BEGIN, name the transaction and take the lock on ``lock_key`` (send within a
        pipeline to share its round trip)."""
        for statement, params in self.begin_statements(lock_key):
            await self.conn.execute(statement, params)

    async def commit(self) -> None:
        await self.conn.execute(S.COMMIT)


async def run_script(conn: psycopg.AsyncConnection,
                     statements: Sequence[Statement]) -> psycopg.AsyncCursor:
    """Send ``statements`` as one simple query: one round trip and one wait for it, where a
    pipeline costs a wait per statement (on the operator's CPU, more than the statements'
    own work: README, Performance, session 7). The result sets follow one another
    (``nextset``); the first error raises and leaves the transaction aborted, as in a pipeline.

    Each statement is bound by the connection's client-side cursor, the binding every
    ``execute`` on an admin connection gets (connections.py), so identifiers still come in
    only through ``sql.Identifier`` and values only as parameters.
    """
    cur = conn.cursor()
    assert isinstance(cur, psycopg.AsyncClientCursor), "admin connections bind client-side"
    await cur.execute(";\n".join(cur.mogrify(query, params) for query, params in statements))
    return cur


async def rollback_unless_idle(conn: psycopg.AsyncConnection) -> None:
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        await conn.execute(S.ROLLBACK)


@asynccontextmanager
async def locked_transaction(conn: psycopg.AsyncConnection, purpose: str, label: str = ""
                             ) -> AsyncIterator[Transaction]:
    """A :class:`Transaction` on ``conn`` for ``purpose``, left idle when the block ends."""
    try:
        yield Transaction(conn, application_name(purpose, label))
    finally:
        await rollback_unless_idle(conn)
