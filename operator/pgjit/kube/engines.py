"""One provisioning engine per Database object, built from its spec and Secrets.

Engines hold the admin connection pools, so they are kept between events and rebuilt only when
what they connect with changes (spec or the referenced Secrets' content).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from ..api.database import Database
from ..engine import Engine, ServerConfig
from ..engine.errors import EngineError
from ..vocabulary import CredentialsType, Reason, SSLMode
from .client import Kube


#: The RDS role whose members may log in with IAM auth tokens.
RDS_IAM_ROLE = "rds_iam"


class MissingSecret(EngineError):
    def __init__(self, message: str):
        super().__init__(Reason.SECRET_NOT_FOUND, message, transient=True)


async def server_config(kube: Kube, database: Database, namespace: str) -> ServerConfig:
    spec = database.spec

    async def secret_key(name: str, key: str, what: str) -> bytes:
        data = await kube.read_secret(namespace, name)
        if data is None:
            raise MissingSecret(f'{what}: Secret "{name}" not found in namespace "{namespace}"')
        if key not in data:
            raise MissingSecret(f'{what}: Secret "{name}" has no key "{key}"')
        return data[key]

    password = cert = key = ca = None
    admin = spec.admin
    if admin.password_secret_ref is not None:
        ref = admin.password_secret_ref
        password = (await secret_key(ref.name, ref.key, "admin password")).decode("utf-8")
    elif admin.client_certificate_secret_ref is not None:
        name = admin.client_certificate_secret_ref.name
        cert = await secret_key(name, "tls.crt", "admin client certificate")
        key = await secret_key(name, "tls.key", "admin client certificate key")
    if spec.tls is not None and spec.tls.ca_secret_ref is not None:
        ca_ref = spec.tls.ca_secret_ref
        ca = await secret_key(ca_ref.name, ca_ref.key, "server CA certificate")
    ssl_mode = spec.tls.ssl_mode if spec.tls is not None else SSLMode.PREFER
    iam = ((admin.aws_iam.region, admin.aws_iam.assume_role_arn)
           if admin.aws_iam is not None else None)
    iam_users = spec.credentials is not None and spec.credentials.type == CredentialsType.AWS_IAM
    try:
        return ServerConfig(
            host=spec.host, port=spec.port, admin_user=admin.username, admin_password=password,
            admin_cert_pem=cert, admin_key_pem=key, sslmode=ssl_mode, ca_pem=ca,
            admin_database=spec.admin_database, managed_role=spec.managed_role,
            scram_iterations=spec.credentials.scram_iterations if spec.credentials else 4096,
            aws_iam=iam, objects_inheritor=spec.objects_inheritor,
            # RDS lets a user log in with a token only as a member of rds_iam.
            implicit_roles=(RDS_IAM_ROLE,) if iam_users else (),
            label=f"{namespace}/{database.metadata.name}")
    except (TypeError, ValueError) as exc:
        raise EngineError(Reason.INVALID_REQUEST, f"invalid Database spec: {exc}") from exc


class EngineRegistry:
    def __init__(self, kube: Kube, *, prepared_statements: bool = True, steward_roles: int = 64):
        self.kube = kube
        self.prepared_statements = prepared_statements
        self.steward_roles = steward_roles
        self._engines: dict[str, tuple[ServerConfig, Engine]] = {}
        self._lock = asyncio.Lock()

    async def engine_for(self, database: Database, namespace: str, *,
                         refresh: bool = False) -> Engine:
        """The engine for a Database; secrets are re-read only on ``refresh`` or first use."""
        key = f"{namespace}/{database.metadata.name}"
        current = self._engines.get(key)
        # An engine whose admin login the server refuses is rebuilt as soon as its Secret
        # says something else (a rotated password), not at the next health check only.
        if current is not None and not refresh and not current[1].admin_refused:
            return current[1]
        config = replace(await server_config(self.kube, database, namespace),
                         prepared_statements=self.prepared_statements,
                         steward_roles=self.steward_roles)
        async with self._lock:
            current = self._engines.get(key)
            if current is not None and current[0] == config:
                return current[1]
            engine = Engine(config)
            self._engines[key] = (config, engine)
        if current is not None:
            await current[1].close()
        return engine

    def cached(self, namespace: str, name: str) -> Engine | None:
        entry = self._engines.get(f"{namespace}/{name}")
        return entry[1] if entry else None

    async def forget(self, namespace: str, name: str) -> None:
        entry = self._engines.pop(f"{namespace}/{name}", None)
        if entry is not None:
            await entry[1].close()

    async def close(self) -> None:
        engines, self._engines = list(self._engines.values()), {}
        for _, engine in engines:
            await engine.close()
