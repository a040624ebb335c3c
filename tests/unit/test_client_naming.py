"""Names of the sessions `pgjit connect` creates, and the session it asks for."""

from __future__ import annotations

import re
from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from pgjit.api.session import DatabaseSession
from pgjit.client.identity import Identity, session_groups
from pgjit.client.naming import MAX_PREFIX_LENGTH, session_name_prefix, slug
from pgjit.client.sessions import escape_field_value, session_manifest

PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?-$")


def test_readable_prefixes() -> None:
    assert session_name_prefix("alice", "orders") == "alice-orders-"
    assert session_name_prefix("alice@example.com", "orders") == "alice-orders-"
    assert session_name_prefix("system:serviceaccount:ci:deployer", "db") == "deployer-db-"
    assert session_name_prefix("Ünïcode Person", "Orders_EU") == "n-code-person-orders-eu-"
    assert session_name_prefix("???", "!!!") == "user-db-"


def test_slug_keeps_only_dns_label_characters() -> None:
    assert slug("Alice.Smith+test@corp.example") == "alice-smith-test"
    assert slug("@weird") == "weird"


@given(st.text(max_size=300), st.text(max_size=300))
def test_every_prefix_is_a_valid_generate_name(user: str, database: str) -> None:
    prefix = session_name_prefix(user, database)
    assert PREFIX.fullmatch(prefix), prefix
    # With the API server's 5 random characters the name still leaves room for
    # "<name>-credentials" within 63 characters (the CRD's rule for the default Secret name).
    assert len(prefix) <= MAX_PREFIX_LENGTH
    assert len(prefix) + 5 + len("-credentials") <= 63


def test_long_parts_both_stay_visible() -> None:
    prefix = session_name_prefix("a" * 100, "b" * 100)
    assert prefix.startswith("a" * 24) and "b" * 10 in prefix


def test_the_session_carries_the_identity_as_the_api_server_knows_it() -> None:
    me = Identity("alice@example.com", ("analysts", "system:authenticated"),
                  {"db_roles": ("reporting",)})
    body = session_manifest(me, "orders", "orders", database_roles=("reader",),
                            duration=timedelta(minutes=30))
    assert body["metadata"] == {"generateName": "alice-orders-",
                                "labels": {"app.kubernetes.io/managed-by": "pgjit-cli"}}
    assert body["spec"] == {
        "user": "alice@example.com", "groups": ["analysts", "system:authenticated"],
        "extra": {"db_roles": ["reporting"]}, "databaseRef": {"name": "orders"},
        "databaseName": "orders", "databaseRoles": ["reader"], "duration": "30m"}
    # What the operator will read back from it.
    session = DatabaseSession.model_validate({**body, "metadata": {"name": "alice-orders-x"}})
    assert session.spec.duration == timedelta(minutes=30)


def test_minimal_session_leaves_defaults_to_the_api() -> None:
    spec = session_manifest(Identity("bob"), "db", "app")["spec"]
    assert spec == {"user": "bob", "databaseRef": {"name": "db"}, "databaseName": "app"}


def test_groups_keep_system_authenticated_and_drop_duplicates() -> None:
    me = Identity("u", ("a", "system:authenticated", "a"))
    assert session_groups(me) == ("a", "system:authenticated")


def test_field_selector_values_are_escaped() -> None:
    assert escape_field_value("alice") == "alice"
    assert escape_field_value("a,b=c\\d") == "a\\,b\\=c\\\\d"
