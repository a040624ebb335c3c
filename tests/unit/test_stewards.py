"""Steward roles without a server: their names, which steward a user gets, and how a batch of
statements runs as the steward (core/stewards.py, engine/users.py Batch)."""

from __future__ import annotations

from collections import Counter

import pytest

from pgjit.core.naming import MAX_IDENTIFIER_BYTES
from pgjit.core.stewards import (STEWARD_LIMIT, steward_index, steward_prefix, steward_role,
                                 steward_roles)
from pgjit.engine import ServerConfig
from pgjit.engine import statements as S
from pgjit.engine.errors import EngineError
from pgjit.engine.users import Batch
from pgjit.settings import Settings


@pytest.mark.parametrize("managed", ["pgjit-auto-user", "m" * 63, "ü" * 31 + "x", "a\"b c"])
def test_steward_names_fit_are_distinct_and_stable(managed):
    names = steward_roles(managed)
    assert len(names) == len(set(names)) == STEWARD_LIMIT
    assert all(0 < len(n.encode()) <= MAX_IDENTIFIER_BYTES for n in names)
    assert names == steward_roles(managed)
    assert steward_role(managed, 7) == names[7] and names[7].endswith("~steward-07")


def test_long_managed_roles_that_share_a_prefix_get_different_stewards():
    first, second = "x" * 60 + "1", "x" * 60 + "2"
    assert set(steward_roles(first)).isdisjoint(steward_roles(second))


def test_short_names_read_as_the_managed_role():
    assert steward_role("pgjit-auto-user", 0) == "pgjit-auto-user~steward-00"


@pytest.mark.parametrize("index", [-1, STEWARD_LIMIT])
def test_a_steward_index_out_of_range_is_refused(index):
    with pytest.raises(ValueError):
        steward_role("m", index)


def test_users_spread_evenly_and_stay_with_their_steward():
    counts = Counter(steward_index(f"user-{i}", 16) for i in range(3200))
    assert set(counts) == set(range(16))
    assert min(counts.values()) > 150 and max(counts.values()) < 250
    assert steward_index("alice", 16) == steward_index("alice", 16)


@pytest.mark.parametrize("count", [0, STEWARD_LIMIT + 1])
def test_a_steward_count_out_of_range_is_refused(count):
    with pytest.raises(ValueError):
        steward_index("alice", count)


def test_the_server_config_refuses_a_count_past_the_limit():
    config = ServerConfig(host="h", admin_user="a", admin_password="p",
                          steward_roles=STEWARD_LIMIT + 1)
    with pytest.raises(EngineError, match="steward_roles"):
        config.validate()
    assert Settings.load({"PGJIT_STEWARD_ROLES": "0"}).steward_roles == 0
    assert Settings().steward_roles == 64


def _text(script) -> list[str]:
    return [statement.as_string(None) for statement, _params in script]


def test_a_batch_runs_as_its_steward_and_as_the_admin_again_after():
    batch = Batch(steward="s")
    batch.add(S.disable_login("u"))
    batch.add(S.strip_attributes("u", ["CREATEDB"]), as_admin=True)
    batch.add(S.comment_on_role("u", "c"))
    assert _text(batch.script()) == [
        'SET LOCAL ROLE "s"', 'ALTER ROLE "u" NOLOGIN', "RESET ROLE",
        'ALTER ROLE "u" NOCREATEDB', 'SET LOCAL ROLE "s"', "COMMENT ON ROLE \"u\" IS 'c'",
        "RESET ROLE"]


def test_a_batch_without_a_steward_runs_as_the_admin():
    batch = Batch()
    batch.add(S.disable_login("u"))
    batch.add(S.strip_attributes("u", ["CREATEDB"]), as_admin=True)
    assert _text(batch.script()) == ['ALTER ROLE "u" NOLOGIN', 'ALTER ROLE "u" NOCREATEDB']
    assert Batch(steward="s").script() == []


@pytest.mark.parametrize("managed", ["pgjit-auto-user", "m" * 63])
def test_every_steward_name_is_the_prefix_and_two_digits(managed):
    prefix = steward_prefix(managed)
    assert all(n.startswith(prefix) and len(n) == len(prefix) + 2 and n[-2:].isdigit()
               for n in steward_roles(managed))
    assert not f"{managed}~steward-1".startswith(prefix) or len(f"{managed}~steward-1") != \
        len(prefix) + 2
