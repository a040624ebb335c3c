"""PostgreSQL user names derived from Kubernetes identities.

PostgreSQL cuts identifiers longer than NAMEDATALEN-1 (63) *bytes* with only a NOTICE, so a long
identity such as ``remote-someone@example.com-cluster`` would silently become another name (the
Teleport failure described in teleport-behaviour.md §5). pgjit never lets that happen: names that
do not fit, and names PostgreSQL reserves, map to a deterministic shortened form whose hash suffix
keeps distinct identities distinct. The mapping is recorded on the role (see ``leases``).
"""

from __future__ import annotations

import base64
import hashlib

MAX_IDENTIFIER_BYTES = 63
_HASH_CHARS = 12  # 60 bits of SHA-256, base32: collisions are not a practical concern
_RESERVED_EXACT = frozenset({"public", "none"})


def fits_identifier(name: str) -> bool:
    """True when ``name`` is a usable PostgreSQL identifier length (1..63 UTF-8 bytes)."""
    return 0 < len(name.encode("utf-8")) <= MAX_IDENTIFIER_BYTES


def is_reserved_role_name(name: str) -> bool:
    """Names CREATE ROLE refuses with SQLSTATE 42939 whatever the quoting."""
    return name.startswith("pg_") or name.lower() in _RESERVED_EXACT


def utf8_prefix(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` that fits ``max_bytes`` without splitting a character."""
    encoded = text.encode("utf-8")[:max_bytes]
    return encoded.decode("utf-8", errors="ignore")


def identity_hash(identity: str) -> str:
    digest = hashlib.sha256(identity.encode("utf-8")).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:_HASH_CHARS]


def postgres_username(identity: str) -> str:
    """The PostgreSQL role name pgjit uses for ``identity``.

    The identity verbatim when PostgreSQL accepts it unchanged; otherwise a readable prefix plus
    ``-`` and a hash of the whole identity, at most 63 bytes.
    """
    if not identity:
        raise ValueError("an empty identity has no PostgreSQL user name")
    if "\x00" in identity:
        raise ValueError("an identity containing a NUL character cannot be a PostgreSQL name")
    if fits_identifier(identity) and not is_reserved_role_name(identity):
        return identity
    base = identity if not is_reserved_role_name(identity) else "u-" + identity
    suffix = "-" + identity_hash(identity)
    return utf8_prefix(base, MAX_IDENTIFIER_BYTES - len(suffix)) + suffix


def is_mapped(identity: str) -> bool:
    return postgres_username(identity) != identity

