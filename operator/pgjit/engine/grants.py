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
from ..core.permissions import (KIND_PRIVILEGES, DbObject, ObjectKind, PermissionRules,
                                resolve_privileges, summarize_objects, with_implied_usage)
from . import statements as S
from .errors import EngineError
from ..vocabulary import Reason
from .transactions import Transaction, locked_transaction, run_script
from .users import Batch, lock_key

Held = dict[DbObject, frozenset[str]]


def _object(kind: str, schema: str, name: str, args) -> DbObject:
    return DbObject(kind, schema, name, tuple(tuple(arg) for arg in args or ()))


class ObjectGrants:
    def __init__(self, conns, stats):
        self.conns = conns
        self.stats = stats

    async def _read(self, tx: Transaction, name: str, database: str,
                    kinds: frozenset[str] = frozenset()) -> tuple[Ledger, list[DbObject], Held]:
        cur = await run_script(tx.conn, [
            *tx.begin_statements(lock_key(database + "\x00" + name)),
            (S.ROLE_COMMENT, [name]), (S.OBJECTS, {"kinds": sorted(kinds)}),
            (S.HELD_PRIVILEGES, {"name": name})])
        cur.nextset()  # past BEGIN
        cur.nextset()  # past the lock
        row = await cur.fetchone()
        cur.nextset()
        object_rows = await cur.fetchall()
        cur.nextset()
        held_rows = await cur.fetchall()
        self.stats.round_trips += 1
        current: dict[DbObject, set[str]] = defaultdict(set)
        for kind, schema, obj, args, privilege in held_rows:
            current[_object(kind, schema, obj, args)].add(privilege)
        return (Ledger.parse(row[0] if row else None),
                [_object(*r) for r in object_rows],
                {k: frozenset(v) for k, v in current.items()})

    async def apply(self, name: str, database: str, rules: PermissionRules,
                    session_id: str) -> tuple[str, tuple[str, ...]]:
        """Make the user's privileges in ``database`` exactly what ``rules`` resolve to, with
        USAGE on the schemas of the objects.

        Returns the summary for status and what was removed that no lease granted (drift).
        """
        async with self.conns.connection(database) as conn, \
                locked_transaction(conn, "grant", self.conns.config.label) as tx:
            ledger, objects, current = await self._read(tx, name, database, rules.kinds)
            granted = resolve_privileges(objects, rules)
            desired = with_implied_usage(granted)
            now = datetime.now(timezone.utc)
            sharing = [lease for lease in ledger.live(now, excluding=session_id)
                       if lease.database == database and lease.has_permissions]
            digest = rules.digest()
            if sharing and any(lease.permissions_digest != digest for lease in sharing) \
                    and current != desired:
                # Other rules (or a lease written before digests, whose rules only the
                # catalog can tell): one user has one set of privileges per database.
                raise EngineError(Reason.ROLES_CHANGED, (
                    f'"{name}" has {len(sharing)} other live session(s) in database '
                    f'"{database}" with different object permissions; end them or '
                    "request the same access, then retry"))
            # Alone, or sharing the same rules: the catalog is made to match the rules, so
            # whatever was granted out of band is stripped here too.
            batch, drift = _reconcile(name, current, desired)
            await run_script(conn, [*batch.script(), (S.COMMIT, None)])
            self.stats.round_trips += 1
            return summarize_objects(granted), tuple(drift)

    async def revoke(self, name: str, database: str) -> None:
        """Remove every privilege the user holds in ``database``: on its objects, its schemas and
        the database itself.

        Skipped while another live session of the user still uses permissions there.
        """
        async with self.conns.connection(database) as conn, \
                locked_transaction(conn, "revoke", self.conns.config.label) as tx:
            ledger, _objects, current = await self._read(tx, name, database)
            now = datetime.now(timezone.utc)
            if any(lease.database == database and lease.has_permissions
                   for lease in ledger.live(now)):
                await tx.commit()
                return
            revokes = [(S.revoke_all_on(obj, name), None) for obj in sorted(current)]
            await run_script(conn, [*revokes, (S.COMMIT, None)])
            self.stats.round_trips += 1


def _reconcile(name: str, current: Held, desired: Held) -> tuple[Batch, list[str]]:
    """The REVOKEs and GRANTs that turn ``current`` into ``desired``, and what was removed."""
    batch = Batch()
    drift: list[str] = []
    held = dict(current)
    for obj, privileges in sorted(current.items()):
        extra = privileges - desired.get(obj, frozenset())
        if not extra:
            continue
        drift.append(f"{', '.join(sorted(extra))} on {obj.describe()}")
        if extra <= set(KIND_PRIVILEGES[ObjectKind(obj.kind)]):
            batch.add(S.revoke_on(obj, extra, name))
        else:
            # A privilege the kind does not list (MAINTAIN on 17+, a table privilege held on
            # a view): all of it goes, and what the rules give is granted afresh below.
            batch.add(S.revoke_all_on(obj, name))
            held[obj] = frozenset()
    for obj, privileges in sorted(desired.items()):
        missing = privileges - held.get(obj, frozenset())
        if missing:
            batch.add(S.grant_on(obj, missing, name))
    return batch, drift

