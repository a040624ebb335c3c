"""What the engine tells its caller after each operation."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from ..core.permissions import PermissionRules
from ..vocabulary import TeardownAction


class Untouched(enum.StrEnum):
    """Teardowns that changed nothing in PostgreSQL (not DatabaseSession actions)."""

    ABSENT = "Absent"            # the user does not exist
    NOT_MANAGED = "NotManaged"   # a role of that name exists but is not pgjit's: left untouched

    @property
    def reported(self) -> TeardownAction:
        """The action a session reports: its user is gone, or was never pgjit's to change."""
        return TeardownAction.DROPPED if self is Untouched.ABSENT else TeardownAction.RELEASED


# Teardown actions (DatabaseSession status.teardown.action), by their engine names.
LOCKED = TeardownAction.LOCKED            # keep: login disabled, memberships stripped, user kept
DROPPED = TeardownAction.DROPPED          # best_effort_drop succeeded
DEACTIVATED = TeardownAction.DEACTIVATED  # best_effort_drop refused by dependencies: kept locked
RELEASED = TeardownAction.RELEASED        # other live sessions still hold the user
ABSENT = Untouched.ABSENT
NOT_MANAGED = Untouched.NOT_MANAGED


@dataclass(frozen=True)
class ActivationRequest:
    session_id: str
    identity: str
    database: str
    roles: tuple[str, ...]
    expires_at: datetime
    mode: str
    permissions: PermissionRules = field(default_factory=PermissionRules)
    # None for client-certificate credentials: the user gets no password at all.
    password: str | None = field(default=None, repr=False)
    #: Roles the Database lists by exact name in spec.grantableRoles: the DBA's deliberate
    #: exceptions to the hard refusals (core.boundaries).
    grantable_by_name: tuple[str, ...] = ()
    #: The Database object the session is on, named in refusals.
    database_object: str | None = None
    #: Whether the caller can hand out the password of a user other live sessions hold (it set
    #: it, or read it from one of their Secrets). When it cannot, sharing is refused before
    #: anything changes (USER_SHARED, transient), and this session's own stale lease, if any,
    #: steps back so the sessions of one user never wait on each other.
    shared_password_known: bool = True


@dataclass(frozen=True)
class Activation:
    username: str
    roles: tuple[str, ...]
    created: bool
    shared: bool              # other live sessions hold the user; their password stays
    password_set: bool
    valid_until: datetime
    permissions_summary: str | None = None
    #: What the catalog held that no lease had granted, and this activation removed (e.g.
    #: 'membership in "x"', 'SELECT on public.t'): reported as a DriftCorrected Event.
    drift: tuple[str, ...] = ()


@dataclass(frozen=True)
class Teardown:
    username: str
    action: TeardownAction | Untouched
    reason: str
    terminated_backends: int = 0
    blockers: tuple[str, ...] = ()
    # The lease the sweep ended (a session that no longer exists), so the caller can remove
    # what else that session left behind (its credentials Secret).
    session_id: str | None = None
    #: best_effort_reassign_and_drop: (database, objects) handed to the objects inheritor.
    reassigned: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class DriftCorrection:
    """What the sweep removed from a user that live sessions hold, because no lease granted it."""

    username: str
    removed: tuple[str, ...]
    #: The live leases of the user: the sessions whose access was corrected.
    session_ids: tuple[str, ...]
