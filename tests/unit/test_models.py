"""The pydantic models: the contract's examples parse with the documented defaults, objects
round-trip to the wire format, and the models refuse what the CRD's CEL rules refuse."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from pgjit.api import (
    CredentialsType,
    Database,
    DatabaseSession,
    LabelSelector,
    Role,
    SSLMode,
    SubjectKind,
    UserProvisioning,
    format_duration,
    parse_duration,
    parse_template,
)
from pgjit.api.examples import manifest


def minimal_database(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "db"},
        "spec": {"host": "pg", "admin": {"username": "admin", "passwordSecretRef": {"name": "s"}}}
        | spec,
    }


def minimal_role(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "r"},
        "spec": {"subjects": [{"kind": "User", "name": "alice"}], "allow": {}} | spec,
    }


def minimal_session(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "s"},
        "spec": {"user": "alice", "databaseRef": {"name": "orders"}, "databaseName": "orders"}
        | spec,
    }


def subset(small: Any, big: Any) -> bool:
    """Whether every key and value of ``small`` appears in ``big`` (recursively)."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and subset(v, big[k]) for k, v in small.items())
    return small == big


# --------------------------------------------------------------------------------------------
# The contract's examples


def test_database_example() -> None:
    db = Database.model_validate(manifest("Database"))
    assert db.metadata.name == "orders"
    assert db.metadata.labels == {"env": "prod", "team": "payments"}
    assert db.spec.host == "orders-pg.data.svc"
    assert db.spec.databases == ["orders", "reporting"]
    assert db.spec.admin.username == "pgjit-admin"
    assert db.spec.admin.password_secret_ref is not None
    assert db.spec.admin.password_secret_ref.key == "password"
    assert db.spec.admin.client_certificate_secret_ref is None
    assert db.spec.tls.ssl_mode is SSLMode.VERIFY_FULL
    assert db.spec.tls.ca_secret_ref is not None and db.spec.tls.ca_secret_ref.key == "ca.crt"
    assert db.spec.credentials.client_ca_secret_ref is not None
    assert db.spec.credentials.client_ca_secret_ref.name == "orders-client-ca"
    assert db.status.conditions == []


def test_database_cert_example() -> None:
    db = Database.model_validate(manifest("Database/clientCertificate"))
    assert db.spec.admin.client_certificate_secret_ref is not None
    assert db.spec.credentials.type is CredentialsType.CLIENT_CERTIFICATE


def test_role_example() -> None:
    role = Role.model_validate(manifest("Role"))
    assert [(s.kind, s.name) for s in role.spec.subjects] == [
        (SubjectKind.USER, "alice@example.com"),
        (SubjectKind.GROUP, "analysts"),
    ]
    assert role.spec.user_provisioning is UserProvisioning.KEEP
    assert role.spec.max_session_duration == timedelta(hours=8)
    allow, deny = role.spec.allow, role.spec.deny
    assert allow is not None and deny is not None
    assert allow.database_selector is not None
    assert allow.database_selector.match_labels == {"env": "prod"}
    assert allow.database_names == ["orders", "report*"]
    assert allow.database_roles == ["reader", "{{internal.db_roles}}", "{{external.db_roles}}"]
    assert allow.permissions is not None
    [grant] = allow.permissions
    assert (grant.match.object_kind, grant.match.schema_name, grant.match.name) == (
        "table", "public", "*",
    )  # fmt: skip
    assert grant.privileges == ["SELECT"]
    assert deny.permissions is not None and deny.permissions[0].privileges == ["*"]
    assert deny.database_roles == ["writer"]


def test_session_example() -> None:
    session = DatabaseSession.model_validate(manifest("DatabaseSession"))
    assert session.metadata.generate_name == "alice-orders-"
    assert session.spec.user == "alice@example.com"
    assert session.spec.groups == ["analysts"]
    assert session.spec.extra == {"db_roles": ["reporting"]}
    assert session.spec.database_ref.name == "orders"
    assert session.spec.database_roles == ["reader"]
    assert session.spec.duration == timedelta(hours=1)
    assert session.credentials_secret_name == "alice-orders-creds"


@pytest.mark.parametrize(
    ("model", "name"),
    [
        (Database, "Database"),
        (Database, "Database/clientCertificate"),
        (Role, "Role"),
        (DatabaseSession, "DatabaseSession"),
    ],
)
def test_examples_round_trip_to_camel_case(model: type, name: str) -> None:
    source = manifest(name)
    wire = model.model_validate(source).to_dict()
    assert subset(source, wire), wire
    assert model.model_validate(wire).to_dict() == wire


# --------------------------------------------------------------------------------------------
# Defaults


def test_database_defaults() -> None:
    spec = Database.model_validate(minimal_database()).spec
    assert spec.port == 5432
    assert spec.admin_database == "postgres"
    assert spec.databases is None
    assert spec.tls.ssl_mode is SSLMode.PREFER
    assert spec.tls.ca_secret_ref is None
    assert spec.managed_role == "pgjit-auto-user"
    assert spec.credentials.type is CredentialsType.PASSWORD
    assert spec.credentials.scram_iterations == 4096
    assert spec.suspended is False
    assert spec.terminate_connections is True
    assert spec.admin.password_secret_ref is not None
    assert spec.admin.password_secret_ref.key == "password"


def test_role_defaults() -> None:
    spec = Role.model_validate(minimal_role()).spec
    assert spec.user_provisioning is UserProvisioning.OFF
    assert spec.max_session_duration == timedelta(hours=8)
    assert spec.deny is None


def test_permission_match_defaults() -> None:
    role = Role.model_validate(
        minimal_role(allow={"permissions": [{"match": {}, "privileges": ["select"]}]})
    )
    assert role.spec.allow is not None and role.spec.allow.permissions is not None
    [grant] = role.spec.allow.permissions
    assert (grant.match.object_kind, grant.match.schema_name, grant.match.name) == ("table", "*", "*")
    assert grant.privileges == ["SELECT"]  # case-insensitive, normalized


def test_session_defaults() -> None:
    session = DatabaseSession.model_validate(minimal_session())
    assert session.spec.duration == timedelta(hours=1)
    assert session.spec.secret_name is None
    assert session.credentials_secret_name == "s-credentials"
    assert session.to_dict()["spec"]["duration"] == "1h"


def test_snake_case_names_are_accepted() -> None:
    spec = Database.model_validate(minimal_database(admin_database="app", terminate_connections=False)).spec
    assert spec.admin_database == "app" and spec.terminate_connections is False


def test_unknown_fields_from_the_api_server_are_ignored() -> None:
    body = minimal_session()
    body["metadata"] |= {"managedFields": [{"manager": "kubectl"}], "uid": "u-1", "generation": 3}
    body["status"] = {"phase": "Active", "kopf": {"progress": {}}, "conditions": []}
    session = DatabaseSession.model_validate(body)
    assert session.metadata.uid == "u-1" and session.metadata.generation == 3
    assert session.status.phase == "Active"


def test_status_round_trip() -> None:
    body = minimal_session()
    body["status"] = {
        "observedGeneration": 1,
        "phase": "Ended",
        "username": "alice",
        "databaseRoles": ["reader"],
        "permissions": "SELECT on 12 tables",
        "userProvisioning": "keep",
        "matchedRoles": ["analysts"],
        "expiresAt": "2026-01-01T10:00:00Z",
        "endedAt": "2026-01-01T09:30:00Z",
        "secretName": "s-credentials",
        "teardown": {"action": "Locked", "reason": "user owns objects"},
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "Ended",
                "message": "",
                "lastTransitionTime": "2026-01-01T09:30:00Z",
                "observedGeneration": 1,
            }
        ],
    }
    session = DatabaseSession.model_validate(body)
    ready = session.status.condition("Ready")
    assert ready is not None and ready.reason == "Ended"
    assert session.status.condition("Stalled") is None
    wire = session.to_dict()["status"]
    assert wire["expiresAt"] == "2026-01-01T10:00:00Z"
    assert wire["teardown"] == {"action": "Locked", "reason": "user owns objects"}
    assert wire["conditions"][0]["lastTransitionTime"] == "2026-01-01T09:30:00Z"


# --------------------------------------------------------------------------------------------
# What the models refuse (mirrors the CRD's schema and CEL rules)


@pytest.mark.parametrize(
    "spec",
    [
        {"port": 0},
        {"port": 65536},
        {"adminDatabase": "x" * 64},
        {"adminDatabase": "é" * 32},  # 32 characters, 64 bytes
        {"managedRole": ""},
        {"tls": {"sslMode": "verify"}},
        {"credentials": {"scramIterations": 0}},
        {"credentials": {"type": "kerberos"}},
    ],
)
def test_invalid_database(spec: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Database.model_validate(minimal_database(**spec))


def test_identifier_of_63_multibyte_bytes_is_accepted() -> None:
    name = "é" * 31 + "x"  # 63 bytes
    assert Database.model_validate(minimal_database(adminDatabase=name)).spec.admin_database == name


@pytest.mark.parametrize(
    "allow",
    [
        {"databaseRoles": ["{{email.local(external.email)}}"]},
        {"databaseRoles": ["{{internal.db_roles}"]},
        {"databaseRoles": ["{internal.db_roles}}"]},
        {"databaseRoles": ["pre-{{internal.db_roles}}"]},
        {"databaseRoles": ["{{ internal. }}"]},
        {"databaseRoles": ["r" * 64]},
        {"permissions": [{"match": {}, "privileges": ["*"]}]},
        {"permissions": [{"match": {}, "privileges": ["SELECT, UPDATE"]}]},
        {"permissions": [{"match": {}, "privileges": ["EXECUTE"]}]},
        {"permissions": [{"match": {}, "privileges": []}]},
        {"permissions": [{"match": {"objectKind": "rule"}, "privileges": ["SELECT"]}]},
        {"permissions": [{"match": {"objectKind": "sequence"}, "privileges": ["INSERT"]}]},
        {"permissions": [{"match": {"objectKind": "function"}, "privileges": ["SELECT"]}]},
        {"permissions": [{"match": {"objectKind": "schema", "schema": "public"},
                          "privileges": ["USAGE"]}]},
    ],
)
def test_invalid_role_allow(allow: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Role.model_validate(minimal_role(allow=allow))


@pytest.mark.parametrize("duration", ["", "1d", "-1h", "0s", "1h0", "30 m", "8761h", "m"])
def test_invalid_durations(duration: str) -> None:
    with pytest.raises(ValidationError):
        DatabaseSession.model_validate(minimal_session(duration=duration))
    with pytest.raises(ValidationError):
        Role.model_validate(minimal_role(maxSessionDuration=duration))


def test_role_deny_accepts_star_and_lowercase() -> None:
    role = Role.model_validate(
        minimal_role(deny={"permissions": [{"match": {}, "privileges": ["*", "truncate"]}]})
    )
    assert role.spec.deny is not None and role.spec.deny.permissions is not None
    assert role.spec.deny.permissions[0].privileges == ["*", "TRUNCATE"]


def test_role_template_with_spaces_inside_braces() -> None:
    role = Role.model_validate(minimal_role(allow={"databaseRoles": ["{{ external.example.com/roles }}"]}))
    assert role.spec.allow is not None and role.spec.allow.database_roles is not None
    assert parse_template(role.spec.allow.database_roles[0]) == ("external", "example.com/roles")


def test_session_user_may_be_longer_than_63_bytes() -> None:
    user = "system:serviceaccount:" + "n" * 63 + ":" + "s" * 200
    assert DatabaseSession.model_validate(minimal_session(user=user)).spec.user == user


def test_session_missing_required_fields() -> None:
    with pytest.raises(ValidationError) as err:
        DatabaseSession.model_validate({"spec": {"user": "alice"}})
    missing = {e["loc"][-1] for e in err.value.errors() if e["type"] == "missing"}
    assert missing == {"databaseRef", "databaseName"}


# --------------------------------------------------------------------------------------------
# Helpers


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("30m", timedelta(minutes=30)),
        ("1h", timedelta(hours=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1.5h", timedelta(hours=1, minutes=30)),
        ("90s", timedelta(seconds=90)),
        ("2h0m5s", timedelta(hours=2, seconds=5)),
    ],
)
def test_parse_duration(text: str, value: timedelta) -> None:
    assert parse_duration(text) == value


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(hours=8), "8h"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(hours=2, seconds=5), "2h5s"),
        (timedelta(seconds=1.5), "1.5s"),
    ],
)
def test_format_duration(value: timedelta, text: str) -> None:
    assert format_duration(value) == text
    assert parse_duration(text) == value


def test_parse_template() -> None:
    assert parse_template("{{internal.db_roles}}") == ("internal", "db_roles")
    assert parse_template("reader") is None


def test_user_provisioning_order() -> None:
    modes = [UserProvisioning.BEST_EFFORT_DROP, UserProvisioning.OFF, UserProvisioning.KEEP]
    assert max(modes, key=lambda m: m.rank) is UserProvisioning.BEST_EFFORT_DROP
    assert min(modes, key=lambda m: m.rank) is UserProvisioning.OFF


@pytest.mark.parametrize(
    ("selector", "labels", "selected"),
    [
        ({}, {}, True),
        ({"matchLabels": {"env": "prod"}}, {"env": "prod", "team": "x"}, True),
        ({"matchLabels": {"env": "prod"}}, {"env": "dev"}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["pii"]}]}, {}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["pii"]}]}, {}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, {"tier": "a"}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, {"tier": "a"}, False),
    ],
)
def test_label_selector(selector: dict[str, Any], labels: dict[str, str], selected: bool) -> None:
    assert LabelSelector.model_validate(selector).matches(labels) is selected
