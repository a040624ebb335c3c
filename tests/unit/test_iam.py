"""RDS IAM pieces that need no server: the client's token in the private password file, the
awsIAM Secret, the engine config built from a Database (tests/postgres/test_engine_iam.py logs in
with real tokens)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import botocore.auth
import pytest

from pgjit.api import Database
from pgjit.client import psql
from pgjit.core.credentials_secret import ConnectionTarget, iam_secret_data
from pgjit.kube.engines import RDS_IAM_ROLE, server_config

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
               "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
               "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
               "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
EXPIRES = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def aws(monkeypatch):
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(botocore.auth, "get_current_datetime",
                        lambda *a, **k: dt.datetime(2026, 12, 1, 9, 0, 0))


def iam_secret() -> dict[str, str]:
    target = ConnectionTarget("alice@example.com", "orders.abc.eu-central-1.rds.amazonaws.com",
                              5432, "orders", "verify-full")
    return iam_secret_data(target, "eu-central-1", EXPIRES, b"CA PEM")


def test_the_iam_secret_holds_what_a_client_needs_and_no_password():
    data = iam_secret()
    assert data["region"] == "eu-central-1" and data["sslmode"] == "verify-full"
    assert "password" not in data and "pgpass" not in data
    assert ":" not in data["uri"].split("@")[0].removeprefix("postgresql://")


def test_pgjit_connect_puts_the_users_own_token_in_the_private_password_file(aws, tmp_path):
    creds = iam_secret()
    with pytest.raises(ValueError, match="awsIAM session"):
        psql.connection_files(creds, tmp_path)
    token = psql.iam_token(creds)
    assert token.startswith("orders.abc.eu-central-1.rds.amazonaws.com:5432/?Action=connect")
    assert "DBUser=alice%40example.com" in token and "X-Amz-Signature=" in token
    assert token == psql.iam_token(creds), "same identity and clock, same token"
    files = psql.connection_files(creds, tmp_path, password=token)
    assert files.has_password and token.replace(":", "\\:") in files.files[psql.PASS_FILE]
    env = psql.psql_environment({"PATH": "/bin"}, tmp_path, has_password=True)
    assert not any(token in value for value in env.values())


def test_pgjit_connect_says_how_to_sign_in_when_there_are_no_credentials(monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(key, raising=False)
    for key in ("AWS_EC2_METADATA_DISABLED", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.setenv(key, CREDENTIALS[key])
    with pytest.raises(ValueError, match="sign in to AWS first"):
        psql.iam_token(iam_secret())


class _NoSecrets:
    async def read_secret(self, namespace, name):
        raise AssertionError("an IAM admin needs no Secret")


def test_an_iam_database_becomes_an_engine_config_with_rds_iam_for_its_users():
    database = Database.model_validate({"metadata": {"name": "orders"}, "spec": {
        "host": "orders.abc.eu-central-1.rds.amazonaws.com",
        "admin": {"username": "pgjit_admin", "awsIAM": {
            "region": "eu-central-1", "assumeRoleArn": "arn:aws:iam::123456789012:role/pgjit"}},
        "tls": {"sslMode": "require"}, "credentials": {"type": "awsIAM"}}})
    config = asyncio.run(server_config(_NoSecrets(), database, "team"))
    assert config.aws_iam == ("eu-central-1", "arn:aws:iam::123456789012:role/pgjit")
    assert config.admin_password is None and config.implicit_roles == (RDS_IAM_ROLE,)
    config.validate()
