"""Opening a session: what the lease handler writes for each branch."""

from __future__ import annotations

from datetime import timedelta

import kopf
import pytest
from prometheus_client import REGISTRY

from pgjit.handlers import sessions

from .fakes import (NAMESPACE, World, client_ca, database_body, invalid_role_body, now, role_body,
                    session_body, ts)


async def open_session(world: World, body: dict) -> dict:
    patch = kopf.Patch()
    await sessions.open_lease(body=body, name=body["metadata"]["name"], namespace=NAMESPACE,
                              uid=body["metadata"]["uid"], patch=patch, memo=world.memo,
                              **world.open_lease_kwargs(body))
    return dict(patch.status)


def ready(status: dict) -> dict:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


async def test_password_session_becomes_active_with_its_secret(world: World):
    world.databases.append(database_body())
    world.roles.append(role_body())
    status = await open_session(world, session_body())
    assert status["phase"] == "Active"
    secret = world.kube.secrets[(NAMESPACE, "alice-orders-credentials")]
    assert secret.data["expiresAt"].decode() == status["expiresAt"]
    assert secret.data["password"]


async def test_certificate_capped_at_the_ca_expiry_caps_expires_at(world: World):
    # The CA expires in 30 minutes, the session asks for an hour: the certificate stops at the
    # CA's expiry, and nothing may tell the user it lasts longer.
    ca_expiry = (now() + timedelta(minutes=30)).replace(microsecond=0)
    world.kube.add_secret(NAMESPACE, "orders-client-ca", client_ca(ca_expiry))
    world.databases.append(database_body(credentials="clientCertificate"))
    world.roles.append(role_body())
    status = await open_session(world, session_body(duration="1h"))
    assert status["phase"] == "Active"
    assert status["expiresAt"] == ts(ca_expiry)
    secret = world.kube.secrets[(NAMESPACE, "alice-orders-credentials")]
    assert secret.data["expiresAt"].decode() == ts(ca_expiry)
    assert "client CA" in ready(status)["message"], ready(status)["message"]


async def test_uncapped_certificate_keeps_the_session_expiry(world: World):
    world.kube.add_secret(NAMESPACE, "orders-client-ca", client_ca(now() + timedelta(days=30)))
    world.databases.append(database_body(credentials="clientCertificate"))
    world.roles.append(role_body())
    created = now().replace(microsecond=0)
    status = await open_session(world, session_body(duration="1h", created=created))
    assert status["expiresAt"] == ts(created + timedelta(hours=1))
    assert "client CA" not in ready(status)["message"]


async def test_secret_carries_the_full_session_name_annotation(world: World):
    # Label values stop at 63 characters; the annotation is where the full name is kept.
    name = "alice-" + "x" * 80
    world.databases.append(database_body())
    world.roles.append(role_body())
    await open_session(world, session_body(name))
    secret = world.kube.secrets[(NAMESPACE, f"{name}-credentials")]
    assert secret.annotations.get("pgjit.dev/session") == name
    assert len(secret.labels["pgjit.dev/session"]) <= 63


def _terminal_errors() -> float:
    return REGISTRY.get_sample_value("controller_runtime_terminal_reconcile_errors_total",
                                     {"controller": "databasesession"}) or 0.0


async def test_terminal_failure_counts_as_terminal_reconcile_error(world: World):
    world.databases.append(database_body())  # and no Role allows alice
    before = _terminal_errors()
    status = await open_session(world, session_body())
    assert status["phase"] == "Failed"
    assert _terminal_errors() == before + 1


async def test_success_is_no_terminal_reconcile_error(world: World):
    world.databases.append(database_body())
    world.roles.append(role_body())
    before = _terminal_errors()
    status = await open_session(world, session_body())
    assert status["phase"] == "Active"
    assert _terminal_errors() == before


async def test_invalid_role_grants_nothing_and_breaks_nothing(world: World):
    world.databases.append(database_body())
    world.roles += [role_body(), invalid_role_body()]
    status = await open_session(world, session_body())
    assert status["phase"] == "Active"



async def test_deleted_while_opening_releases_the_lease_and_writes_no_secret(world: World):
    world.databases.append(database_body())
    world.roles.append(role_body())
    body = session_body()
    world.kube.deleted_objects.add(body["metadata"]["uid"])
    status = await open_session(world, body)
    assert (status["phase"], ready(status)["reason"]) == ("Ended", "Deleted")
    assert [sid for _, sid in world.engine.ends] == [f"{NAMESPACE}/alice-orders/uid-alice-orders"]
    assert not world.kube.secrets


async def test_someone_elses_secret_is_a_terminal_conflict_and_left_alone(world: World):
    world.databases.append(database_body())
    world.roles.append(role_body())
    world.kube.add_secret(NAMESPACE, "alice-orders-credentials", {"mine": b"not yours"})
    status = await open_session(world, session_body())
    assert (status["phase"], ready(status)["reason"]) == ("Failed", "SecretConflict")
    assert world.kube.secrets[(NAMESPACE, "alice-orders-credentials")].data == {
        "mine": b"not yours"}
    assert world.engine.ends  # the lease taken for it is released
    # The user was never bound to read it, and the session's own Role is gone.
    assert world.memo.settings.secret_access
    assert not world.kube.access and not world.kube.reader_roles


async def test_a_client_ca_that_cannot_issue_fails_the_session(world: World):
    world.kube.add_secret(NAMESPACE, "orders-client-ca", {"tls.crt": b"junk", "tls.key": b"junk"})
    world.databases.append(database_body(credentials="clientCertificate"))
    world.roles.append(role_body())
    status = await open_session(world, session_body())
    assert (status["phase"], ready(status)["reason"]) == ("Failed", "InvalidClientCA")
    assert world.engine.ends and not any(k[1] == "alice-orders-credentials"
                                         for k in world.kube.secrets)


async def test_a_first_attempt_reads_no_secret_and_a_retry_keeps_the_password_it_wrote(world):
    """No GET on the hot path: a brand-new session has written nothing yet. A retry (or a
    session with a status from an earlier attempt) hands out the password it already wrote."""
    world.databases.append(database_body())
    world.roles.append(role_body())
    reads: list[str] = []
    original = world.kube.read_secret

    async def counting(namespace, name):
        reads.append(name)
        return await original(namespace, name)
    world.kube.read_secret = counting  # type: ignore[method-assign]
    await open_session(world, session_body())
    assert "alice-orders-credentials" not in reads
    written = world.kube.secrets[(NAMESPACE, "alice-orders-credentials")].data["password"]

    patch = kopf.Patch()
    body = session_body()
    await sessions.open_lease(body=body, name=body["metadata"]["name"], namespace=NAMESPACE,
                              uid=body["metadata"]["uid"], patch=patch, memo=world.memo,
                              retry=1, **world.open_lease_kwargs(body))
    assert "alice-orders-credentials" in reads
    assert world.kube.secrets[(NAMESPACE, "alice-orders-credentials")].data["password"] \
        == written


async def test_a_shared_user_whose_password_is_unknown_is_decided_before_activation(world: World):
    """The engine is told the password is unknown and refuses inside its transaction: nothing
    is activated and then ended again (the old activate-end-retry)."""
    world.databases.append(database_body())
    world.roles.append(role_body())
    world.engine.shared = True  # other sessions hold the user, none has handed out a password
    with pytest.raises(kopf.TemporaryError):
        await open_session(world, session_body())
    assert [r.shared_password_known for r in world.engine.activations] == [False]
    assert world.engine.ends == []
    assert not world.kube.secrets


async def test_a_shared_user_hands_out_the_password_this_process_set(world: World):
    world.databases.append(database_body())
    world.roles.append(role_body())
    first = await open_session(world, session_body())
    world.engine.shared = True
    second = await open_session(world, session_body(name="alice-reports"))
    assert (first["phase"], second["phase"]) == ("Active", "Active")
    # The first knew no password and needed none; the second knew the one the first set.
    assert [r.shared_password_known for r in world.engine.activations] == [False, True]
    passwords = {name: world.kube.secrets[(NAMESPACE, f"{name}-credentials")].data["password"]
                 for name in ("alice-orders", "alice-reports")}
    assert passwords["alice-orders"] == passwords["alice-reports"]


async def test_a_session_on_a_database_that_does_not_parse_waits_and_says_why(world: World):
    """The index holds parsed models; a Database that does not parse is there as such, so the
    session names the problem instead of saying the Database does not exist."""
    broken = database_body()
    broken["spec"]["port"] = "not a port"
    world.databases.append(broken)
    world.roles.append(role_body())
    with pytest.raises(kopf.TemporaryError, match=r'Database "orders" is invalid \(spec\.port'):
        await open_session(world, session_body())
    assert world.engine.activations == []


async def test_an_invalid_role_next_to_a_valid_one_grants_nothing_and_stops_nothing(world):
    world.databases.append(database_body())
    world.roles.append(role_body())
    world.roles.append(role_body(name="broken", spec={"allow": {"databaseRoles": "not-a-list"}}))
    assert len(world.roles_by_namespace[NAMESPACE]) == 1  # left out of the index
    status = await open_session(world, session_body())
    assert status["phase"] == "Active" and status["matchedRoles"] == ["analysts"]


async def test_a_role_applied_with_the_session_and_not_yet_indexed_still_allows_it(world):
    """One `kubectl apply` of a Role and a session: the operator may see the session first.
    Before refusing for good it decides again on the Roles the API server has."""
    world.databases.append(database_body())
    world.kube.roles_in_api = [role_body()]  # the index has no Role yet
    status = await open_session(world, session_body())
    assert status["phase"] == "Active" and status["matchedRoles"] == ["analysts"]


async def test_a_session_no_role_allows_is_refused_after_asking_the_api_server(world: World):
    world.databases.append(database_body())
    world.kube.roles_in_api = []
    status = await open_session(world, session_body())
    assert (status["phase"], ready(status)["reason"]) == ("Failed", "AccessDenied")
    assert world.engine.activations == []
