"""pgjit's words: every phase, action, mode, type and condition reason, spelled once.

Why a module of its own at the bottom of the package rather than in ``api/``: the API models
use these words, but so does the engine, which must not depend on the models (the engine is the
PostgreSQL adapter; ``api`` ← ``core`` ← ``engine`` is the layering of the README's Layout, which
import-linter keeps). A module that imports nothing of pgjit can be imported by every layer, and
``api`` re-exports the enums the CRDs are generated from, so ``pgjit.api.SessionPhase`` and
``pgjit.vocabulary.SessionPhase`` are the same class.

Nothing outside this module writes a phase or a reason as a string literal
(``tests/unit/test_vocabulary.py`` checks it). Members are ``StrEnum`` values, so they compare
equal to, serialize as and format as the strings stored in objects.
"""

from __future__ import annotations

import enum

__all__ = [
    "TERMINAL_PHASES",
    "CredentialsType",
    "Reason",
    "ReviewDecision",
    "SSLMode",
    "SessionPhase",
    "TeardownAction",
    "UserProvisioning",
]


class SessionPhase(enum.StrEnum):
    """Where the session is in its life: Pending, then Active, then Ended, Expired or Failed."""

    PENDING = "Pending"
    ACTIVE = "Active"
    ENDED = "Ended"
    EXPIRED = "Expired"
    FAILED = "Failed"


#: Phases a session never leaves: it holds no lease any more (or never will).
TERMINAL_PHASES = frozenset({SessionPhase.ENDED, SessionPhase.EXPIRED, SessionPhase.FAILED})


class TeardownAction(enum.StrEnum):
    """What happened to the PostgreSQL user when the session ended."""

    LOCKED = "Locked"
    DROPPED = "Dropped"
    DEACTIVATED = "Deactivated"
    # Other live sessions of the same user still hold it: only this session's lease ended.
    RELEASED = "Released"


class UserProvisioning(enum.StrEnum):
    """What the operator does with the PostgreSQL user; Teleport's create_db_user_mode."""

    OFF = "off"
    KEEP = "keep"
    BEST_EFFORT_DROP = "best_effort_drop"
    #: Hand what the user owns to the Database's objectsInheritor, then drop it.
    BEST_EFFORT_REASSIGN_AND_DROP = "best_effort_reassign_and_drop"

    @property
    def rank(self) -> int:
        """Order for picking the effective mode among Roles: off < keep < best_effort_drop <
        best_effort_reassign_and_drop."""
        return list(UserProvisioning).index(self)


class ReviewDecision(enum.StrEnum):
    """What a DatabaseSessionReview says about the session it names."""

    APPROVE = "Approve"
    DENY = "Deny"


class CredentialsType(enum.StrEnum):
    """How session users authenticate to PostgreSQL."""

    PASSWORD = "password"
    CLIENT_CERTIFICATE = "clientCertificate"
    AWS_IAM = "awsIAM"


class SSLMode(enum.StrEnum):
    """libpq sslmode used by the operator's admin connection and written into issued credentials."""

    DISABLE = "disable"
    ALLOW = "allow"
    PREFER = "prefer"
    REQUIRE = "require"
    VERIFY_CA = "verify-ca"
    VERIFY_FULL = "verify-full"


class Reason(enum.StrEnum):
    """Every reason pgjit puts on a condition or an Event (docs/troubleshooting.md lists each).

    Grouped by who decides it; a reason means the same wherever it appears.
    """

    # A session's policy decision (core/policy.py).
    ALLOWED = "Allowed"
    ACCESS_DENIED = "AccessDenied"
    PROVISIONING_DISABLED = "ProvisioningDisabled"
    INVALID_ROLE = "InvalidRole"
    CONFLICTING_GRANTS = "ConflictingGrants"
    OBJECTS_INHERITOR_MISSING = "ObjectsInheritorMissing"

    # A session's life (handlers/sessions.py).
    ACTIVE = "Active"
    EXPIRED = "Expired"
    DELETED = "Deleted"
    ACCESS_REVOKED = "AccessRevoked"
    DATABASE_NOT_READY = "DatabaseNotReady"
    USER_SHARED = "UserShared"
    SECRET_CONFLICT = "SecretConflict"
    INVALID_CLIENT_CA = "InvalidClientCA"
    END_FAILED = "EndFailed"
    #: Past the sessions of its Database waiting in the operator (handlers/queue.py).
    QUEUED = "Queued"

    # A session that needs approval (handlers/approval_gate.py): waiting, and how the wait ends;
    # Events about each review it is sent.
    AWAITING_APPROVAL = "AwaitingApproval"
    DENIED = "Denied"
    APPROVAL_EXPIRED = "ApprovalExpired"
    APPROVED = "Approved"
    REVIEW_COUNTED = "ReviewCounted"
    REVIEW_IGNORED = "ReviewIgnored"

    # PostgreSQL, as the engine classifies its errors (engine/errors.py), and its Secrets.
    USER_CONFLICT = "UserConflict"
    ROLES_CHANGED = "RolesChanged"
    INSUFFICIENT_PRIVILEGE = "InsufficientPrivilege"
    MISSING_DATABASE_ROLE = "MissingDatabaseRole"
    READ_ONLY = "ReadOnly"
    UNREACHABLE = "Unreachable"
    AUTHENTICATION_FAILED = "AuthenticationFailed"
    DATABASE_NOT_FOUND = "DatabaseNotFound"
    PRIVILEGED_ROLE = "PrivilegedRole"
    INVALID_REQUEST = "InvalidRequest"
    CONFLICT = "Conflict"
    UNEXPECTED_DATABASE_ERROR = "UnexpectedDatabaseError"
    SECRET_NOT_FOUND = "SecretNotFound"

    # A Database (handlers/databases.py).
    CONNECTED = "Connected"
    SUSPENDED = "Suspended"
    SESSIONS_ACTIVE = "SessionsActive"
    USER_SWEPT = "UserSwept"
    # What no session granted, found on a user in use and removed (or not).
    DRIFT_CORRECTED = "DriftCorrected"
    DRIFT_NOT_CORRECTED = "DriftNotCorrected"

    # Sharding (kube/coverage.py): a Database no instance's shard selector matches, or a
    # session no shard can select; on the Database, its sessions and in an Event.
    NOT_SERVED = "NotServed"

    # A Role or an ObjectLabelRule (handlers/roles.py, object_labels.py); INVALID_ROLE above is
    # also a Role's own condition.
    VALID = "Valid"
    LABEL_CONFLICT = "LabelConflict"
