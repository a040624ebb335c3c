"""A session's whole story per userProvisioning mode and per credential type.

Each story is checked where it matters: in PostgreSQL's catalog, and by logging in with the
credentials the operator handed out and running one query the granted role allows and one it
does not.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from operatorkit import SESSION_LABEL, Env, condition_of, make_env, token

CREDENTIALS = ("password", "clientCertificate")


@pytest.fixture(params=CREDENTIALS)
def env(request, kube_api, namespace, postgres16, operator) -> Env:
    if request.param == "password":
        return make_env(kube_api, namespace, postgres16, operator)
    assert postgres16.supports_ssl, "the test server has no TLS; certificate logins cannot work"
    return make_cert_env(kube_api, namespace, postgres16, operator)


def make_cert_env(kube_api, namespace, postgres16, operator) -> Env:
    """A Database issuing client certificates, verifying the server (verify-full) with its CA."""
    kit = Env(kube_api, namespace, postgres16, operator)
    kit.create_secret("client-ca", {"tls.crt": postgres16.client_ca_cert_path.read_bytes(),
                                    "tls.key": postgres16.client_ca_key_path.read_bytes()},
                      type_="kubernetes.io/tls")
    kit.create_secret("server-ca", {"ca.crt": postgres16.server_ca_path.read_bytes()})
    return make_env(kube_api, namespace, postgres16, operator, database_spec={
        "credentials": {"type": "clientCertificate", "clientCASecretRef": {"name": "client-ca"}},
        "tls": {"sslMode": "verify-full", "caSecretRef": {"name": "server-ca", "key": "ca.crt"}}})


def is_cert(env: Env) -> bool:
    return env.secret("client-ca") is not None


def parse_ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def check_active(env: Env, name: str, user: str, mode: str) -> tuple[dict, dict]:
    """The session is Active with the documented status, Secret and catalog state."""
    session = env.wait_phase(name, "Active")
    status = session["status"]
    assert status["username"] == user
    assert status["databaseRoles"] == ["reader"]
    assert status["userProvisioning"] == mode
    assert status["secretName"] == f"{name}-credentials"
    ready = condition_of(session)
    assert ready["status"] == "True" and ready["reason"] == "Active"
    assert condition_of(session, "Reconciling") is None and condition_of(session, "Stalled") is None
    expires_at = parse_ts(status["expiresAt"])
    created = parse_ts(session["metadata"]["creationTimestamp"])
    assert expires_at - created == timedelta(hours=1)  # the default duration

    secret = env.secret_object(status["secretName"])
    assert secret.metadata.labels[SESSION_LABEL] == name
    owner = secret.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid) == ("DatabaseSession", name,
                                                   session["metadata"]["uid"])
    creds = env.secret(status["secretName"])
    assert creds["username"] == user and creds["dbname"] == "app"
    assert creds["host"] == env.server.host and creds["port"] == str(env.server.port)
    assert parse_ts(creds["expiresAt"]) == expires_at
    if is_cert(env):
        assert {"tls.crt", "tls.key", "ca.crt"} <= creds.keys() and "password" not in creds
        assert creds["sslmode"] == "verify-full"
        assert creds["ca.crt"] == env.server.server_ca_path.read_text()
        certificate = x509.load_pem_x509_certificate(creds["tls.crt"].encode())
        cn = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert cn == user
        assert abs(certificate.not_valid_after_utc - expires_at) <= timedelta(seconds=1)
    else:
        assert {"password", "uri", "jdbc-uri", "pgpass"} <= creds.keys()
        assert creds["password"] not in str(session)  # never in the object itself

    row = env.role_row(user)
    assert row["rolcanlogin"] is True
    assert set(row["member_of"]) == {"reader", env.managed_role}
    if not is_cert(env):
        # VALID UNTIL is the backstop for password logins when the operator is down.
        assert abs(row["rolvaliduntil"] - expires_at) <= timedelta(seconds=1)
    return status, creds


def check_access(env: Env, creds: dict) -> None:
    """reader may SELECT public.items and may not INSERT into it."""
    with env.login(creds) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (creds["username"],)
        assert conn.execute("SELECT count(*) FROM public.items").fetchone() == (2,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO public.items VALUES (3)")


def end_session(env: Env, name: str, secret_name: str) -> None:
    env.delete("DatabaseSession", name)
    env.wait_gone("DatabaseSession", name)
    assert env.secret(secret_name) is None


@pytest.mark.parametrize("mode", ["keep", "best_effort_drop"])
def test_story(env, mode):
    env.role("analysts", mode)
    user = f"alice-{token()}@example.com"
    env.create("DatabaseSession", "s1", env.session_spec(user))
    status, creds = check_active(env, "s1", user, mode)
    check_access(env, creds)

    # A connection open while the session ends is terminated (terminateConnections default).
    open_conn = env.login(creds)
    end_session(env, "s1", status["secretName"])
    with pytest.raises(psycopg.OperationalError):
        open_conn.execute("SELECT 1")
    open_conn.close()
    assert env.login_refused(creds)
    row = env.role_row(user)
    if mode == "best_effort_drop":
        assert row is None
    else:
        # keep: locked, every membership but the bookkeeping role stripped, the user kept.
        assert row["rolcanlogin"] is False and row["member_of"] == [env.managed_role]

    # The same person comes back: the user is re-activated (keep) or created again (drop), with
    # new credentials; the old ones stay dead.
    env.create("DatabaseSession", "s2", env.session_spec(user))
    status2, creds2 = check_active(env, "s2", user, mode)
    check_access(env, creds2)
    if not is_cert(env):
        assert creds2["password"] != creds["password"]
        assert env.login_refused(creds)
    end_session(env, "s2", status2["secretName"])
    assert env.login_refused(creds2)


def test_story_off(env):
    """userProvisioning off: Roles that allow with mode off do not provision; nothing is made."""
    env.role("viewers", "off")
    user = f"oscar-{token()}@example.com"
    env.create("DatabaseSession", "s1", env.session_spec(user))
    session = env.wait_phase("s1", "Failed")
    ready = condition_of(session)
    assert ready["status"] == "False" and ready["reason"] == "ProvisioningDisabled"
    assert "userProvisioning" in ready["message"] and "viewers" in ready["message"]
    assert condition_of(session, "Stalled")["status"] == "True"
    assert env.secret("s1-credentials") is None
    assert env.role_row(user) is None
    # Nobody can log in as that user: there is no such role, whatever the credentials.
    if is_cert(env):
        cert, key = env.server.issue_client_certificate(user)
        creds = {"uri": f"postgresql://{user.replace('@', '%40')}@{env.server.host}:"
                        f"{env.server.port}/app?sslmode=verify-full",
                 "tls.crt": cert.decode(), "tls.key": key.decode(),
                 "ca.crt": env.server.server_ca_path.read_text()}
    else:
        creds = {"uri": env.server.conninfo(user, "anything", "app")}
    assert env.login_refused(creds)
    end_session(env, "s1", "s1-credentials")

    # A provisioning Role next to the off one: only it takes part, and the session works.
    env.role("analysts", "keep")
    env.create("DatabaseSession", "s2", env.session_spec(user))
    status, creds = check_active(env, "s2", user, "keep")
    assert status["matchedRoles"] == ["analysts"]
    check_access(env, creds)
    end_session(env, "s2", status["secretName"])
    assert env.login_refused(creds)
