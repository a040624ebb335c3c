"""The operator end to end: objects in, PostgreSQL users, Secrets and status out."""

from __future__ import annotations

import psycopg
import pytest

from operatorkit import Env, make_env, wait_for


@pytest.fixture
def env(kube_api, namespace, postgres16, operator) -> Env:
    return make_env(kube_api, namespace, postgres16, operator)


def role(env: Env, name: str, mode: str, roles=("reader",), **extra):
    spec = {"subjects": [{"kind": "Group", "name": "analysts"}], "userProvisioning": mode,
            "allow": {"databaseSelector": {"matchLabels": {"env": "test"}},
                      "databaseNames": ["app"], "databaseRoles": list(roles)}}
    spec.update(extra)
    env.create("Role", name, spec)


def login(env: Env, creds: dict, **extra) -> psycopg.Connection:
    return psycopg.connect(creds["uri"], autocommit=True, **extra)


@pytest.mark.parametrize("mode,after_end", [("keep", "locked"), ("best_effort_drop", "dropped")])
def test_session_story_per_mode(env, mode, after_end):
    role(env, "analysts", mode)
    user = f"alice-{mode}@example.com".replace("_", "-")
    env.create("DatabaseSession", "s1", env.session_spec(user))
    session = env.wait_phase("s1", "Active")
    status = session["status"]
    assert status["username"] == user and status["databaseRoles"] == ["reader"]
    assert status["userProvisioning"] == mode and status["matchedRoles"] == ["analysts"]
    creds = env.secret(status["secretName"])
    assert creds["username"] == user and creds["dbname"] == "app"
    with login(env, creds) as conn:
        assert conn.execute("SELECT count(*) FROM public.items").fetchone() == (2,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO public.items VALUES (3)")
    env.delete("DatabaseSession", "s1")
    env.wait_gone("DatabaseSession", "s1")
    assert env.secret(status["secretName"]) is None
    state = env.role_state(user)
    if after_end == "dropped":
        assert state is None
    else:
        assert state is not None and state[1] is False
    with pytest.raises(psycopg.OperationalError):
        login(env, creds)


def test_mode_off_only_is_provisioning_disabled(env):
    role(env, "viewers", "off")
    env.create("DatabaseSession", "s1", env.session_spec("bob"))
    session = env.wait_phase("s1", "Failed")
    ready = next(c for c in session["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ProvisioningDisabled" and ready["status"] == "False"
    assert any(c["type"] == "Stalled" and c["status"] == "True" for c in session["status"]["conditions"])


def test_role_outside_allowed_set_is_access_denied_with_teleports_message(env):
    role(env, "analysts", "keep")
    env.create("DatabaseSession", "s1", env.session_spec("carol", databaseRoles=["writer"]))
    session = env.wait_phase("s1", "Failed")
    ready = next(c for c in session["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "AccessDenied"
    assert 'access to database role "writer" denied' in ready["message"]
