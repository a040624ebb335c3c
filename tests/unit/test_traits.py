"""Reading one user's internal traits from the traits ConfigMap's data."""

from __future__ import annotations

import pytest

from pgjit.core.traits import USERS_KEY, user_traits


def test_a_user_key_holds_that_users_traits():
    assert user_traits({"alice": "db_roles: [reader]\n"}, "alice") == {"db_roles": ["reader"]}


def test_names_that_cannot_be_keys_are_found_in_the_users_map():
    data = {USERS_KEY: "alice@example.com:\n  db_roles: [reader]\n"
                       "system:serviceaccount:jobs:etl: {db_roles: [loader]}\n"}
    assert user_traits(data, "alice@example.com") == {"db_roles": ["reader"]}
    assert user_traits(data, "system:serviceaccount:jobs:etl") == {"db_roles": ["loader"]}
    assert user_traits(data, "bob") == {}


def test_a_users_own_key_wins_over_the_users_map():
    data = {"alice": "db_roles: [own]", USERS_KEY: "alice: {db_roles: [listed]}"}
    assert user_traits(data, "alice") == {"db_roles": ["own"]}


@pytest.mark.parametrize("data", [
    None, {}, {"alice": ""}, {"alice": "[not, a, map]"}, {"alice": "db_roles: [unclosed"},
    {USERS_KEY: "- a list"}, {USERS_KEY: "{broken"}, {USERS_KEY: "alice: just-a-string"}])
def test_missing_or_broken_entries_grant_nothing(data):
    assert user_traits(data, "alice") == {}
