"""Errors the engine reports, and how PostgreSQL errors map onto them.

Classification uses SQLSTATE codes only, never message text: servers answer in their
``lc_messages`` language (Teleport #37394 broke on German messages). Each error carries the
status reason the operator shows and says whether retrying later can help.
"""

from __future__ import annotations

import psycopg
import psycopg_pool

from ..vocabulary import Reason

# Conflicts between concurrent catalog writers, and connections that went away: the same work
# done again a moment later succeeds (teleport-behaviour.md §1.3, plus lock_timeout's 55P03).
TRANSIENT_SQLSTATES = frozenset({
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "23505",  # unique_violation: concurrent CREATE ROLE of one name
    "23P01",  # exclusion_violation
    "55P03",  # lock_not_available (lock_timeout on the advisory lock)
    "XX000",  # internal_error: "tuple concurrently updated" on concurrent GRANT/REVOKE
    "57P01", "57P02", "57P03",  # admin/crash shutdown, cannot connect now
    "53300",  # too_many_connections
    "57014",  # query_canceled (statement_timeout)
})
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08"})  # connection exceptions

_PERMANENT = {
    "42501": Reason.INSUFFICIENT_PRIVILEGE,
    "42704": Reason.MISSING_DATABASE_ROLE,
    "25006": Reason.READ_ONLY,
    "28P01": Reason.AUTHENTICATION_FAILED,
    "28000": Reason.AUTHENTICATION_FAILED,
    "3D000": Reason.DATABASE_NOT_FOUND,
    "42939": Reason.INVALID_REQUEST,
    "42622": Reason.INVALID_REQUEST,
}


class EngineError(Exception):
    """A failure with a status reason and an actionable message."""

    def __init__(self, reason: str, message: str, *, transient: bool = False,
                 sqlstate: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.transient = transient
        self.sqlstate = sqlstate

    def __repr__(self) -> str:
        return f"EngineError({self.reason!r}, {self.message!r}, transient={self.transient})"


def is_transient_sqlstate(sqlstate: str | None) -> bool:
    if sqlstate is None:
        return False
    return sqlstate in TRANSIENT_SQLSTATES or sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES


def classify(exc: BaseException, *, doing: str) -> EngineError:
    """Turn a psycopg (or pool) exception into an EngineError; ``doing`` names the step."""
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return EngineError(Reason.UNREACHABLE, f"{doing}: no admin connection could be opened in time; "
                           "the Database status says why", transient=True)
    if isinstance(exc, psycopg.Error):
        sqlstate = exc.sqlstate
        primary = exc.diag.message_primary or (str(exc).strip().splitlines() or [""])[0]
        if sqlstate is None and exc.pgconn is not None \
                and getattr(exc.pgconn, "used_password", False) and exc.pgconn.server_version == 0:
            # libpq reports no SQLSTATE for a refused login; that the server asked for and then
            # rejected the password is the one language-independent sign of it.
            return EngineError(Reason.AUTHENTICATION_FAILED, f"{doing}: the server refused the admin's "
                               f"login: {primary}")
        if sqlstate is None or is_transient_sqlstate(sqlstate):
            # No SQLSTATE: the driver lost or never had a connection.
            reason = Reason.UNREACHABLE if sqlstate is None or sqlstate[:2] == "08" else Reason.CONFLICT
            return EngineError(reason, f"{doing}: {primary or 'connection failed'}", transient=True,
                               sqlstate=sqlstate)
        reason = _PERMANENT.get(sqlstate, Reason.UNEXPECTED_DATABASE_ERROR)
        return EngineError(reason, f"{doing}: {primary} (SQLSTATE {sqlstate})", sqlstate=sqlstate)
    if isinstance(exc, (OSError, TimeoutError)):
        return EngineError(Reason.UNREACHABLE, f"{doing}: {exc}", transient=True)
    raise exc
