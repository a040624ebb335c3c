"""How the engine reaches one PostgreSQL server as its admin."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.credentials import DEFAULT_SCRAM_ITERATIONS
from ..settings import STEWARD_LIMIT
from ..vocabulary import SSLMode

SSL_MODES = tuple(SSLMode)


@dataclass(frozen=True)
class ServerConfig:
    host: str
    admin_user: str
    port: int = 5432
    admin_password: str | None = field(default=None, repr=False)
    admin_cert_pem: bytes | None = field(default=None, repr=False)
    admin_key_pem: bytes | None = field(default=None, repr=False)
    sslmode: str = SSLMode.PREFER
    ca_pem: bytes | None = None
    admin_database: str = "postgres"
    managed_role: str = "pgjit-auto-user"
    scram_iterations: int = DEFAULT_SCRAM_ITERATIONS
    max_connections: int = 4
    connect_timeout: float = 10.0
    # Roles every user receives, counted in the "roles changed" comparison (RDS: rds_iam).
    implicit_roles: tuple[str, ...] = ()
    #: RDS IAM authentication for the admin: (region, role ARN to assume or None). A token is
    #: signed for every new connection instead of a password.
    aws_iam: tuple[str, str | None] | None = None
    #: Who receives what a dropped user owned (best_effort_reassign_and_drop).
    objects_inheritor: str | None = None
    #: Which Database object this is (namespace/name), in the admin connections'
    #: application_name, so pg_stat_activity tells one Database's work from another's.
    label: str = ""
    #: Prepare the catalog reads each activation starts with once per connection (server-side
    #: binding): planned once, not on every run. Off for poolers in transaction mode that do
    #: not track prepared statements.
    prepared_statements: bool = True
    #: How many steward roles create and administer the users on PostgreSQL 16+
    #: (core/stewards.py); 0: the admin does it itself. Ignored on 15 and for a superuser admin.
    steward_roles: int = 64

    def validate(self) -> None:
        """Configuration errors are reported before any database work (edge case 16)."""
        from .errors import EngineError
        from ..vocabulary import Reason
        if not self.admin_user:
            raise EngineError(Reason.INVALID_REQUEST, "no admin user is configured for this database")
        methods = [m for m in (self.admin_password, self.admin_cert_pem, self.aws_iam)
                   if m is not None]
        if not methods:
            raise EngineError(Reason.INVALID_REQUEST, "the admin needs a password, a client certificate "
                              "or IAM authentication")
        if len(methods) > 1:
            raise EngineError(Reason.INVALID_REQUEST, "set one of an admin password, a client "
                              "certificate and IAM authentication, not several")
        if self.aws_iam is not None and self.sslmode not in (SSLMode.REQUIRE, SSLMode.VERIFY_CA,
                                                             SSLMode.VERIFY_FULL):
            raise EngineError(Reason.INVALID_REQUEST, "IAM authentication needs sslmode require, "
                              "verify-ca or verify-full: a token must never travel without TLS")
        if (self.admin_cert_pem is None) != (self.admin_key_pem is None):
            raise EngineError(Reason.INVALID_REQUEST, "a client certificate needs its key, and the reverse")
        if self.sslmode not in SSL_MODES:
            raise EngineError(Reason.INVALID_REQUEST, f"sslmode must be one of {', '.join(SSL_MODES)}")
        if self.sslmode in (SSLMode.VERIFY_CA, SSLMode.VERIFY_FULL) and self.ca_pem is None:
            raise EngineError(Reason.INVALID_REQUEST, f"sslmode {self.sslmode} needs a CA certificate")
        if not 0 <= self.steward_roles <= STEWARD_LIMIT:
            raise EngineError(Reason.INVALID_REQUEST,
                              f"steward_roles must be 0 to {STEWARD_LIMIT}, not {self.steward_roles}")
        if self.max_connections < 1:
            raise EngineError(Reason.INVALID_REQUEST, "max_connections must be at least 1")
