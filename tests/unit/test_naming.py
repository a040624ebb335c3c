import pytest
from hypothesis import given, strategies as st

from pgjit.core.naming import (MAX_IDENTIFIER_BYTES, fits_identifier, identity_hash, is_mapped,
                               postgres_username)


def test_short_identity_is_used_verbatim():
    assert postgres_username("alice@example.com") == "alice@example.com"
    assert not is_mapped("alice@example.com")


def test_exactly_63_bytes_is_verbatim():
    name = "a" * 63
    assert postgres_username(name) == name


def test_64_bytes_maps_to_prefix_and_hash():
    name = "a" * 64
    mapped = postgres_username(name)
    assert mapped != name
    assert len(mapped.encode()) <= MAX_IDENTIFIER_BYTES
    assert mapped.startswith("a" * 40)
    assert mapped.endswith("-" + identity_hash(name))


def test_mapping_is_deterministic_and_distinguishes_long_names():
    a, b = "x" * 70 + "1", "x" * 70 + "2"
    assert postgres_username(a) == postgres_username(a)
    assert postgres_username(a) != postgres_username(b)


def test_multibyte_names_are_cut_on_character_boundaries():
    name = "ü" * 40  # 80 bytes
    mapped = postgres_username(name)
    assert len(mapped.encode()) <= 63
    mapped.encode("utf-8").decode("utf-8")  # still valid UTF-8
    assert mapped.startswith("ü" * 25)


@pytest.mark.parametrize("reserved", ["pg_admin", "public", "PUBLIC", "none"])
def test_reserved_names_are_mapped(reserved):
    mapped = postgres_username(reserved)
    assert mapped != reserved and not mapped.startswith("pg_")


def test_empty_and_nul_are_refused():
    with pytest.raises(ValueError):
        postgres_username("")
    with pytest.raises(ValueError):
        postgres_username("a\x00b")


@given(st.text(min_size=1, max_size=200).filter(lambda s: "\x00" not in s))
def test_every_identity_maps_to_a_valid_identifier(identity):
    mapped = postgres_username(identity)
    assert fits_identifier(mapped)
    assert not mapped.startswith("pg_")
    if fits_identifier(identity) and not identity.startswith("pg_") and identity.lower() not in (
            "public", "none"):
        assert mapped == identity
