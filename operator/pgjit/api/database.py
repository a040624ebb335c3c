"""The Database kind: a PostgreSQL server sessions may be opened on, and how the operator reaches it."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, Field

from ..vocabulary import CredentialsType as CredentialsType
from ..vocabulary import SSLMode as SSLMode
from .common import (
    defaulted_object,
    optional_set,
    AGE_COLUMN,
    READY_COLUMNS,
    ApiModel,
    CASecretRef,
    KindModel,
    KindStatus,
    LocalObjectRef,
    ObjectName,
    PasswordSecretRef,
    PgIdentifier,
    PrinterColumn,
    cel_rule,
    matching_str,
    pg_identifier,
    validations,
)
from .role import NameGlob

DEFAULT_MANAGED_ROLE = "pgjit-auto-user"
DEFAULT_SCRAM_ITERATIONS = 4096
#: Upper bound for scramIterations: ten times what OWASP suggests for PBKDF2-SHA256 today. Every
#: CREATE/ALTER ROLE and every login pays the iteration count on the server (performance-notes.md).
MAX_SCRAM_ITERATIONS = 10_000_000


#: sslModes that do not guarantee TLS; IAM tokens must never travel without it.
_WEAK_SSL_MODES = tuple(mode.value for mode in (SSLMode.DISABLE, SSLMode.ALLOW, SSLMode.PREFER))

if TYPE_CHECKING:  # values to mypy, like HostName below
    AwsRegion = str
    RoleArn = str
else:
    AwsRegion = matching_str(
        r"^[a-z]{2}(-[a-z0-9]+)+-[0-9]+$",
        "must be an AWS region such as eu-central-1 or us-gov-west-1",
        max_length=32,
        description="An AWS region.",
    )
    RoleArn = matching_str(
        r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$",
        "must be an IAM role ARN such as arn:aws:iam::123456789012:role/pgjit-admin",
        max_length=600,
        description="An IAM role ARN.",
    )


class AwsIAM(ApiModel):
    """AWS IAM database authentication (RDS, Aurora): the admin logs in with a token."""

    region: AwsRegion = Field(description="The AWS region of the RDS instance or Aurora cluster.")
    assume_role_arn: RoleArn | None = Field(
        default=None,
        description="An IAM role to assume before signing tokens; absent: the operator's own"
        " identity (its Pod's web identity or EKS Pod Identity, the environment, a profile).",
    )


def _not_reserved(name: str) -> str:
    if name.startswith("pg_"):
        raise ValueError("role names starting with pg_ are reserved by PostgreSQL")
    return name


# Built by functions, so values to mypy rather than aliases: it sees the ``str`` they validate to.
if TYPE_CHECKING:
    ManagedRoleName = str
    HostName = str
else:
    ManagedRoleName = Annotated[
        pg_identifier(
            cel_rule(
                "!self.startsWith('pg_')",
                message="role names starting with pg_ are reserved by PostgreSQL: choose another managedRole",
            )
        ),
        AfterValidator(_not_reserved),
    ]

    HostName = matching_str(
        r"^[^\s/]+$",
        "must be a host name or IP address without scheme, path or spaces, such as"
        " orders-pg.data.svc (the port goes in spec.port)",
        max_length=253,
        description="A host name or IP address.",
    )


class DatabaseAdmin(ApiModel):
    """The PostgreSQL role the operator logs in as to manage session users, and its credentials."""

    model_config = {
        "json_schema_extra": validations(
            cel_rule(
                "has(self.passwordSecretRef) || has(self.clientCertificateSecretRef) ||"
                " has(self.awsIAM)",
                message="set passwordSecretRef (a Secret key holding the admin password),"
                " clientCertificateSecretRef (a kubernetes.io/tls Secret) or awsIAM (RDS IAM"
                " authentication)",
                field_path=".passwordSecretRef",
                reason="FieldValueRequired",
            ),
            cel_rule(
                "(has(self.passwordSecretRef) ? 1 : 0) + (has(self.clientCertificateSecretRef)"
                " ? 1 : 0) + (has(self.awsIAM) ? 1 : 0) <= 1",
                message="set only one of passwordSecretRef, clientCertificateSecretRef and"
                " awsIAM",
            ),
        )
    }

    username: PgIdentifier = Field(
        description="PostgreSQL role the operator logs in as. It needs LOGIN and CREATEROLE (and, on"
        " PostgreSQL 16 and later, ADMIN OPTION on every role sessions may be granted)."
    )
    password_secret_ref: PasswordSecretRef | None = Field(
        default=None,
        description="Secret key holding the admin's password. Exactly one of passwordSecretRef and"
        " clientCertificateSecretRef is set.",
    )
    client_certificate_secret_ref: LocalObjectRef | None = Field(
        default=None,
        description="kubernetes.io/tls Secret (tls.crt, tls.key) the admin authenticates with. Exactly"
        " one of passwordSecretRef, clientCertificateSecretRef and awsIAM is set.",
    )
    aws_iam: AwsIAM | None = Field(
        default=None,
        alias="awsIAM",
        description="Log in with an RDS IAM auth token, generated for every new connection and"
        " never stored; needs tls.sslMode require or stricter and the admin granted rds_iam."
        " Exactly one of passwordSecretRef, clientCertificateSecretRef and awsIAM is set.",
    )


class DatabaseTLS(ApiModel):
    """TLS settings for connections to the server, the operator's and the issued ones."""

    ssl_mode: SSLMode = Field(
        default=SSLMode.PREFER,
        description="libpq sslmode: disable, allow, prefer (default), require, verify-ca or verify-full.",
    )
    ca_secret_ref: CASecretRef | None = Field(
        default=None,
        description="Secret key holding the CA certificate(s) that signed the server's certificate;"
        " needed for verify-ca and verify-full unless the server's CA is publicly trusted.",
    )


class DatabaseCredentials(ApiModel):
    """What kind of credentials sessions receive."""

    model_config = {
        "json_schema_extra": validations(
            cel_rule(
                "!has(self.type) || self.type != 'clientCertificate' || has(self.clientCASecretRef)",
                message="type clientCertificate needs clientCASecretRef: the name of a kubernetes.io/tls"
                " Secret with the CA (tls.crt, tls.key) the server trusts for cert authentication",
                field_path=".clientCASecretRef",
                reason="FieldValueRequired",
            )
        )
    }

    type: CredentialsType = Field(
        default=CredentialsType.PASSWORD,
        description="password (default): a generated password; clientCertificate: a client"
        " certificate signed by clientCASecretRef, valid until the session expires; awsIAM: the"
        " user is granted rds_iam and logs in with its own IAM auth token (no password is set).",
    )
    scram_iterations: int = Field(
        default=DEFAULT_SCRAM_ITERATIONS,
        ge=1,
        le=MAX_SCRAM_ITERATIONS,
        description="SCRAM-SHA-256 iteration count of issued passwords (default 4096). Issued"
        " passwords are random and long, so a low count is safe and makes activation and login"
        " cheaper.",
    )
    client_ca_secret_ref: LocalObjectRef | None = Field(
        default=None,
        alias="clientCASecretRef",
        description="kubernetes.io/tls Secret (tls.crt, tls.key) of a CA the server trusts for cert"
        " authentication; session certificates are signed with it. Required for clientCertificate.",
    )


class DatabaseSpec(ApiModel):
    """Where the PostgreSQL server is and how the operator manages users on it."""

    model_config = {
        "json_schema_extra": validations(
            cel_rule(
                "!has(self.admin.clientCertificateSecretRef) || !has(self.tls) ||"
                " !has(self.tls.sslMode) || self.tls.sslMode != 'disable'",
                message="admin.clientCertificateSecretRef needs TLS: set tls.sslMode to require,"
                " verify-ca or verify-full",
                field_path=".tls.sslMode",
            ),
            cel_rule(
                "!has(self.admin.awsIAM) || (has(self.tls) && has(self.tls.sslMode) &&"
                f" !(self.tls.sslMode in {list(_WEAK_SSL_MODES)}))",
                message="admin.awsIAM needs TLS: set tls.sslMode to require, verify-ca or"
                " verify-full (verify-full with the RDS CA bundle is recommended)",
                field_path=".tls.sslMode",
            ),
            cel_rule(
                "!has(self.credentials) || !has(self.credentials.type) ||"
                " self.credentials.type != 'awsIAM' || (has(self.tls) && has(self.tls.sslMode)"
                f" && !(self.tls.sslMode in {list(_WEAK_SSL_MODES)}))",
                message="credentials.type awsIAM needs TLS: set tls.sslMode to require, verify-ca"
                " or verify-full",
                field_path=".tls.sslMode",
            ),
            cel_rule(
                "!has(self.credentials) || !has(self.credentials.type) ||"
                " self.credentials.type != 'awsIAM' || has(self.admin.awsIAM)",
                message="credentials.type awsIAM needs admin.awsIAM: the region comes from there",
                field_path=".credentials.type",
            ),
            cel_rule(
                "!has(self.credentials) || !has(self.credentials.type) ||"
                " self.credentials.type != 'clientCertificate' || !has(self.tls) ||"
                " !has(self.tls.sslMode) || self.tls.sslMode != 'disable'",
                message="credentials.type clientCertificate needs TLS: set tls.sslMode to require,"
                " verify-ca or verify-full",
                field_path=".tls.sslMode",
            ),
        )
    }

    host: HostName = Field(description="Host name or IP address of the PostgreSQL server.")
    port: int = Field(default=5432, ge=1, le=65535, description="TCP port of the server (default 5432).")
    admin_database: PgIdentifier = Field(
        default="postgres",
        description="Database the operator connects to for user lifecycle (default postgres).",
    )
    databases: list[PgIdentifier] | None = optional_set(
        256,
        "Database names sessions may open. Absent: any (Roles still restrict with"
        " databaseNames).",
    )
    admin: DatabaseAdmin = Field(description="How the operator logs in as admin.")
    tls: DatabaseTLS = defaulted_object(
        DatabaseTLS, "TLS for the operator's and the issued connections.")
    managed_role: ManagedRoleName = Field(
        default=DEFAULT_MANAGED_ROLE,
        description="Role every user pgjit creates is a member of; pgjit only ever touches members"
        " of this role. Created if missing (default pgjit-auto-user).",
    )
    credentials: DatabaseCredentials = defaulted_object(
        DatabaseCredentials, "Kind of credentials issued to sessions.")
    suspended: bool = Field(
        default=False,
        description="true: open no new sessions (for example during a blue/green switch); ending"
        " sessions still works.",
    )
    terminate_connections: bool = Field(
        default=True,
        description="End the user's live connections when its last session ends (default true).",
    )
    objects_inheritor: PgIdentifier | None = Field(
        default=None,
        description="Role that receives what a user created (REASSIGN OWNED) before the user is"
        " dropped, in every database where it owns objects; required by userProvisioning"
        " best_effort_reassign_and_drop. The admin must be able to act for it.",
    )
    grantable_roles: list[NameGlob] | None = optional_set(
        256,
        "Globs over PostgreSQL role names: the most any session on this Database may"
        " be granted, whatever the Roles say. Absent: no bound. Roles pgjit always refuses"
        " (superuser-like, server-file access, members of them) are allowed only when listed"
        " here by exact name, never through a glob.",
    )
    grantable_schemas: list[NameGlob] | None = optional_set(
        256,
        "Globs over schema names: object permissions of sessions on this Database"
        " never reach objects outside them. Absent: no bound.",
    )


class AdminPrivileges(ApiModel):
    """What the admin role can and cannot do on the server, as last checked."""

    superuser: bool | None = Field(default=None, description="The admin is a superuser.")
    create_role: bool | None = Field(default=None, description="The admin has CREATEROLE.")
    signal_backend: bool | None = Field(
        default=None,
        description="The admin may terminate other users' connections (pg_signal_backend).",
    )
    roles_without_admin_option: list[PgIdentifier] | None = Field(
        default=None,
        max_length=256,
        description="Roles the admin lacks ADMIN OPTION on, so it cannot grant them to sessions.",
    )
    summary: str | None = Field(
        default=None, max_length=4096, description="What is missing, and the GRANT that fixes it."
    )


class ViolationKind(enum.StrEnum):
    """What a policy violation is about."""

    DATABASE_ROLE = "databaseRole"
    SCHEMA = "schema"


class PolicyViolation(ApiModel):
    """A Role of the namespace that asks for more than this Database allows."""

    role: ObjectName = Field(description="The Role that asks.")
    kind: ViolationKind = Field(description="databaseRole or schema.")
    name: NameGlob = Field(description="The PostgreSQL role or schema (glob) outside the bound.")
    reason: str | None = Field(default=None, max_length=512, description="Why it is outside.")


class DatabaseStatus(KindStatus):
    """Observed state of the server and of the operator's access to it."""

    server_version: str | None = Field(
        default=None, max_length=64, description="PostgreSQL server version, such as 16.14."
    )
    read_only: bool | None = Field(
        default=None,
        description="The server is a standby or read-only endpoint; sessions cannot be opened.",
    )
    admin_privileges: AdminPrivileges | None = Field(
        default=None, description="What the admin role can and cannot do."
    )
    active_sessions: int | None = Field(
        default=None, ge=0, description="Number of live DatabaseSessions on this Database."
    )
    policy_violations: list[PolicyViolation] | None = Field(
        default=None,
        max_length=256,
        description="Roles of this namespace that ask for more than spec.grantableRoles,"
        " spec.grantableSchemas or the hard refusals allow; sessions are refused what they ask"
        " outside. Informational: the Database stays Ready.",
    )


class Database(KindModel):
    """A PostgreSQL server that DatabaseSessions may be opened on, and how the operator reaches it as admin."""

    plural = "databases"
    singular = "database"
    short_names = ("pgdb",)
    printer_columns = (
        PrinterColumn(name="Host", type="string", json_path=".spec.host", description="Server host."),
        PrinterColumn(
            name="Version",
            type="string",
            json_path=".status.serverVersion",
            description="PostgreSQL server version.",
        ),
        PrinterColumn(
            name="Sessions",
            type="integer",
            json_path=".status.activeSessions",
            description="Live sessions.",
        ),
        *READY_COLUMNS,
        AGE_COLUMN,
    )

    kind: Literal["Database"] = Field(default="Database", description="Database")
    spec: DatabaseSpec = Field(description="Desired state.")
    status: DatabaseStatus = Field(default_factory=DatabaseStatus, description="Observed state.")
