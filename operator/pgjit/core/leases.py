"""The lease ledger pgjit keeps on each managed PostgreSQL role.

Several live DatabaseSessions of one person share one PostgreSQL user, and several operator
replicas (or several Database objects for one server) may act on it. The facts they must agree on
live in the database, next to the role, in ``COMMENT ON ROLE``: which sessions currently hold the
user, until when, with which roles, in which database, and the identity the (possibly shortened)
name stands for. The comment is in the shared catalog, so it is transactional, visible from every
database, and serialized by the per-user advisory lock like every other change pgjit makes.

Membership in the managed role stays the ownership marker; a role without a readable ledger is
still pgjit's, with no live leases.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Mapping

from ..vocabulary import UserProvisioning

LEDGER_KEY = "pgjit"
LEDGER_VERSION = 1

# The modes, by the names the engine uses (the ledger stores their values).
MODE_OFF = UserProvisioning.OFF
MODE_KEEP = UserProvisioning.KEEP
MODE_DROP = UserProvisioning.BEST_EFFORT_DROP
#: Drop, after handing what the user owns to the Database's objectsInheritor.
MODE_REASSIGN = UserProvisioning.BEST_EFFORT_REASSIGN_AND_DROP
MODES = tuple(UserProvisioning)
#: Modes that end with DROP ROLE.
DROPPING_MODES = (MODE_DROP, MODE_REASSIGN)


@dataclass(frozen=True)
class Lease:
    """One session's hold on a user."""

    session_id: str
    expires_at: datetime
    roles: tuple[str, ...]
    database: str
    has_permissions: bool = False
    #: PermissionRules.digest() of the rules this lease was granted by: sessions sharing a user
    #: in one database must hold the same rules, and the catalog is then made to match them.
    permissions_digest: str | None = None

    def live_at(self, now: datetime) -> bool:
        return self.expires_at > now

    def to_json(self) -> dict[str, Any]:
        raw: dict[str, Any] = {"expires": self.expires_at.astimezone(timezone.utc).isoformat(),
               "roles": list(self.roles), "database": self.database,
               "permissions": self.has_permissions}
        if self.permissions_digest:
            raw["grants"] = self.permissions_digest
        return raw

    @classmethod
    def from_json(cls, session_id: str, raw: Mapping[str, Any]) -> "Lease":
        return cls(session_id=session_id,
                   expires_at=datetime.fromisoformat(raw["expires"]),
                   roles=tuple(raw.get("roles") or ()),
                   database=str(raw.get("database", "")),
                   has_permissions=bool(raw.get("permissions", False)),
                   permissions_digest=raw.get("grants") or None)


@dataclass(frozen=True)
class Ledger:
    identity: str | None = None
    mode: str = MODE_KEEP
    leases: Mapping[str, Lease] = field(default_factory=dict)

    def live(self, now: datetime, *, excluding: str | None = None) -> list[Lease]:
        return [lease for sid, lease in self.leases.items()
                if sid != excluding and lease.live_at(now)]

    def with_lease(self, lease: Lease, mode: str) -> "Ledger":
        leases = dict(self.leases)
        leases[lease.session_id] = lease
        return replace(self, leases=leases, mode=mode)

    def without(self, session_ids: set[str] | frozenset[str]) -> "Ledger":
        return replace(self, leases={k: v for k, v in self.leases.items() if k not in session_ids})

    def latest_expiry(self, now: datetime) -> datetime | None:
        live = self.live(now)
        return max((lease.expires_at for lease in live), default=None)

    def render(self) -> str:
        payload = {LEDGER_KEY: LEDGER_VERSION, "identity": self.identity, "mode": self.mode,
                   "leases": {sid: lease.to_json() for sid, lease in sorted(self.leases.items())}}
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True)

    @classmethod
    def parse(cls, comment: str | None) -> "Ledger":
        """Read a role comment; anything that is not a pgjit ledger reads as an empty one."""
        if not comment:
            return cls()
        try:
            payload = json.loads(comment)
            if not isinstance(payload, dict) or payload.get(LEDGER_KEY) != LEDGER_VERSION:
                return cls()
            leases = {sid: Lease.from_json(sid, raw)
                      for sid, raw in (payload.get("leases") or {}).items()}
            mode = str(payload["mode"]) if payload.get("mode") in MODES else MODE_KEEP
            return cls(identity=payload.get("identity"), mode=mode, leases=leases)
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls()
