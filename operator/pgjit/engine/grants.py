"""Object privileges in a session's database.

Grants are per database, so this runs on an admin connection to the session's database, in one
transaction serialized per (database, user) by an advisory lock: advisory locks are local to a
database, which is exactly the scope of these grants. Several live sessions of one user in one
database share one set of privileges; a new session that would change it is refused rather than
silently widening or narrowing what the others hold (Teleport's TP005 case, decided: reject).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone

from ..core.leases import Ledger
from ..core.permissions import (TABLE_PRIVILEGES, PermissionRules, TableKey,
                                resolve_table_privileges, schemas_of, summarize)
from . import statements as S
from .errors import ROLES_CHANGED, EngineError
from .users import Batch, lock_key


class ObjectGrants:
    def __init__(self, conns, stats):
        self.conns = conns
        self.stats = stats

    async def _read(self, conn, name: str, database: str):
        async with conn.pipeline():
            await conn.execute("BEGIN")
            await conn.execute(S.ADVISORY_LOCK, [lock_key(database + "\x00" + name)])
            comment = await conn.execute(S.ROLE_COMMENT, [name])
            tables = await conn.execute(S.TABLES)
            held = await conn.execute(S.HELD_TABLE_PRIVILEGES, {"name": name})
            usage = await conn.execute(S.HELD_SCHEMA_USAGE, {"name": name})
            row = await comment.fetchone()
            table_rows = await tables.fetchall()
            held_rows = await held.fetchall()
            usage_rows = await usage.fetchall()
        self.stats.round_trips += 1
        current: dict[TableKey, set[str]] = defaultdict(set)
        for schema, table, privilege in held_rows:
            current[(schema, table)].add(privilege)
        return (Ledger.parse(row[0] if row else None), table_rows,
                {k: frozenset(v) for k, v in current.items()}, {r[0] for r in usage_rows})

    async def apply(self, name: str, database: str, rules: PermissionRules,
                    session_id: str) -> tuple[str, tuple[str, ...]]:
        """Make the user's privileges in ``database`` exactly what ``rules`` resolve to.

        Returns the summary for status and what was removed that no lease granted (drift).
        """
        async with self.conns.connection(database) as conn:
            try:
                ledger, tables, current, usage = await self._read(conn, name, database)
                desired = resolve_table_privileges(((s, t) for s, t in tables), rules)
                now = datetime.now(timezone.utc)
                sharing = [lease for lease in ledger.live(now, excluding=session_id)
                           if lease.database == database and lease.has_permissions]
                digest = rules.digest()
                if sharing and any(lease.permissions_digest != digest for lease in sharing) \
                        and current != desired:
                    # Other rules (or a lease written before digests, whose rules only the
                    # catalog can tell): one user has one set of privileges per database.
                    raise EngineError(ROLES_CHANGED, (
                        f'"{name}" has {len(sharing)} other live session(s) in database '
                        f'"{database}" with different object permissions; end them or '
                        "request the same access, then retry"))
                # Alone, or sharing the same rules: the catalog is made to match the rules, so
                # whatever was granted out of band is stripped here too.
                batch = Batch()
                drift: list[str] = []
                held = dict(current)
                for (schema, table), privileges in sorted(current.items()):
                    extra = privileges - desired.get((schema, table), frozenset())
                    if not extra:
                        continue
                    drift.append(f"{', '.join(sorted(extra))} on {schema}.{table}")
                    if extra <= set(TABLE_PRIVILEGES):
                        batch.add(S.revoke_on_table(extra, schema, table, name))
                    else:
                        # A privilege pgjit never grants (MAINTAIN, or one on a view): all of it
                        # goes, and what the rules give is granted afresh below.
                        batch.add(S.revoke_all_on_table(schema, table, name))
                        held[(schema, table)] = frozenset()
                for (schema, table), privileges in sorted(desired.items()):
                    missing = privileges - held.get((schema, table), frozenset())
                    if missing:
                        batch.add(S.grant_on_table(missing, schema, table, name))
                needed = schemas_of(desired)
                for schema in sorted(needed - usage):
                    batch.add(S.grant_schema_usage(schema, name))
                for schema in sorted(usage - needed):
                    batch.add(S.revoke_schema_usage(schema, name))
                    drift.append(f"USAGE on schema {schema}")
                async with conn.pipeline():
                    for statement, params in batch.statements:
                        await conn.execute(statement, params)
                    await conn.execute("COMMIT")
                self.stats.round_trips += 1
                return summarize(desired), tuple(drift)
            except BaseException:
                await _rollback(conn)
                raise

    async def revoke(self, name: str, database: str) -> None:
        """Remove every table privilege and schema USAGE the user holds in ``database``.

        Skipped while another live session of the user still uses permissions there.
        """
        async with self.conns.connection(database) as conn:
            try:
                ledger, _tables, current, usage = await self._read(conn, name, database)
                now = datetime.now(timezone.utc)
                if any(lease.database == database and lease.has_permissions
                       for lease in ledger.live(now)):
                    await conn.execute("COMMIT")
                    return
                async with conn.pipeline():
                    for schema, table in sorted(current):
                        await conn.execute(S.revoke_all_on_table(schema, table, name))
                    for schema in sorted(usage):
                        await conn.execute(S.revoke_schema_usage(schema, name))
                    await conn.execute("COMMIT")
                self.stats.round_trips += 1
            except BaseException:
                await _rollback(conn)
                raise


async def _rollback(conn) -> None:
    import psycopg
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        await conn.execute("ROLLBACK")
