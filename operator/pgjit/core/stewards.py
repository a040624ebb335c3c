"""Steward roles: the roles that administer pgjit's users on PostgreSQL 16 and later.

From 16 on, whoever creates a role holds ADMIN OPTION on it, and every check of the admin's
right to alter, drop or grant a role walks all the memberships the admin holds, without a cache:
with N users alive each statement costs O(N^2) comparisons (26.9 ms a cycle at 10,000 users on
16, README Performance, session 13). So the admin does not create users itself: it SETs ROLE to
one of a few NOLOGIN CREATEROLE stewards, which creates and administers them. Each steward then
holds ADMIN OPTION on about N / count users, and the walks its checks make shrink with the
square of the count. The admin holds SET (never INHERIT) on each steward, and each steward holds
ADMIN OPTION (never INHERIT or SET) on the managed role and the roles sessions are granted:
nothing the admin did not already have, and no privilege of any role it administers.

Pure naming and assignment; engine.users acts on it.
"""

from __future__ import annotations

import hashlib

from ..settings import STEWARD_LIMIT
from .naming import MAX_IDENTIFIER_BYTES, fits_identifier, identity_hash, utf8_prefix



def steward_role(managed: str, index: int) -> str:
    """The name of steward ``index`` of the managed role ``managed``: ``<managed>~steward-07``,
    or, when that would not fit 63 bytes, a readable prefix of ``managed`` and a hash of it."""
    if not 0 <= index < STEWARD_LIMIT:
        raise ValueError(f"a steward index is 0 to {STEWARD_LIMIT - 1}, not {index}")
    suffix = f"~steward-{index:02d}"
    name = managed + suffix
    if fits_identifier(name):
        return name
    marker = "~" + identity_hash(managed)
    room = MAX_IDENTIFIER_BYTES - len(marker) - len(suffix)
    return utf8_prefix(managed, room) + marker + suffix


def steward_prefix(managed: str) -> str:
    """What every steward name of ``managed`` is, but for its two digits."""
    return steward_role(managed, 0)[:-2]


def steward_roles(managed: str) -> list[str]:
    """Every name a steward of ``managed`` can have, whatever count is configured now."""
    return [steward_role(managed, index) for index in range(STEWARD_LIMIT)]


def steward_index(username: str, count: int) -> int:
    """Which of ``count`` stewards creates the user ``username``: stable across processes,
    replicas and restarts, and spread evenly."""
    if not 0 < count <= STEWARD_LIMIT:
        raise ValueError(f"the steward count is 1 to {STEWARD_LIMIT}, not {count}")
    digest = hashlib.sha256(b"pgjit-steward:" + username.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count
