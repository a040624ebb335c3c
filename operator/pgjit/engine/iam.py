"""RDS IAM auth tokens, signed by botocore's own RDS signer.

An IAM auth token is a SigV4-presigned ``connect`` URL for one host, port and database user,
valid for 15 minutes; RDS accepts it as the password of a TLS connection. The operator signs one
for every new admin connection (never storing or logging it), and ``pgjit connect`` signs one
with the person's own AWS identity. No algorithm is copied here: botocore's
``generate_db_auth_token`` signs, with credentials from the standard chain (environment, web
identity or EKS Pod Identity, profile), or from an assumed role.

Signing is local CPU work; resolving credentials may call STS, so callers in an event loop run
``token`` in a thread.
"""

from __future__ import annotations

import threading
from typing import Any

#: How long RDS accepts a token after it was signed.
TOKEN_LIFETIME_SECONDS = 900


class IamTokens:
    """Signs tokens for one region (and, optionally, an assumed role)."""

    def __init__(self, region: str, assume_role_arn: str | None = None,
                 session: Any = None) -> None:
        self.region = region
        self.assume_role_arn = assume_role_arn
        self._session = session
        self._client: Any = None
        self._lock = threading.Lock()

    def _rds_client(self) -> Any:
        with self._lock:
            if self._client is None:
                import botocore.session  # imported on first use: most Databases never need it

                session = self._session or botocore.session.get_session()
                if self.assume_role_arn:
                    _assume_role(session, self.assume_role_arn, self.region)
                self._client = session.create_client("rds", region_name=self.region)
            return self._client

    def token(self, host: str, port: int, user: str) -> str:
        """A fresh token for ``user`` at ``host:port``. Raises botocore's errors when no
        credentials can be found or the role cannot be assumed."""
        return self._rds_client().generate_db_auth_token(
            DBHostname=host, Port=port, DBUsername=user, Region=self.region)

    def __repr__(self) -> str:
        return f"IamTokens(region={self.region!r}, assume_role_arn={self.assume_role_arn!r})"


def _assume_role(session: Any, role_arn: str, region: str) -> None:
    """Make ``session`` sign as ``role_arn``, refreshed by botocore before the role's
    credentials expire."""
    from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials

    source = session.get_credentials()
    fetcher = AssumeRoleCredentialFetcher(
        client_creator=session.create_client, source_credentials=source, role_arn=role_arn,
        extra_args={"RoleSessionName": "pgjit-operator"})
    # botocore has no public setter for refreshable credentials; this is how its own
    # assume-role provider ends up in a session.
    session._credentials = DeferredRefreshableCredentials(
        refresh_using=fetcher.fetch_credentials, method="assume-role")
    session.set_config_variable("region", region)
