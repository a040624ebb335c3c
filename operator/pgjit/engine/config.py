"""How the engine reaches one PostgreSQL server as its admin."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.credentials import DEFAULT_SCRAM_ITERATIONS

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


@dataclass(frozen=True)
class ServerConfig:
    host: str
    admin_user: str
    port: int = 5432
    admin_password: str | None = field(default=None, repr=False)
    admin_cert_pem: bytes | None = field(default=None, repr=False)
    admin_key_pem: bytes | None = field(default=None, repr=False)
    sslmode: str = "prefer"
    ca_pem: bytes | None = None
    admin_database: str = "postgres"
    managed_role: str = "pgjit-auto-user"
    scram_iterations: int = DEFAULT_SCRAM_ITERATIONS
    max_connections: int = 4
    connect_timeout: float = 10.0
    # Roles every user receives, counted in the "roles changed" comparison (RDS: rds_iam).
    implicit_roles: tuple[str, ...] = ()

    def validate(self) -> None:
        """Configuration errors are reported before any database work (edge case 16)."""
        from .errors import INVALID_REQUEST, EngineError
        if not self.admin_user:
            raise EngineError(INVALID_REQUEST, "no admin user is configured for this database")
        if self.admin_password is None and self.admin_cert_pem is None:
            raise EngineError(INVALID_REQUEST, "the admin needs a password or a client certificate")
        if self.admin_password is not None and self.admin_cert_pem is not None:
            raise EngineError(INVALID_REQUEST,
                              "set either an admin password or a client certificate, not both")
        if (self.admin_cert_pem is None) != (self.admin_key_pem is None):
            raise EngineError(INVALID_REQUEST, "a client certificate needs its key, and the reverse")
        if self.sslmode not in SSL_MODES:
            raise EngineError(INVALID_REQUEST, f"sslmode must be one of {', '.join(SSL_MODES)}")
        if self.sslmode in ("verify-ca", "verify-full") and self.ca_pem is None:
            raise EngineError(INVALID_REQUEST, f"sslmode {self.sslmode} needs a CA certificate")
        if self.max_connections < 1:
            raise EngineError(INVALID_REQUEST, "max_connections must be at least 1")
