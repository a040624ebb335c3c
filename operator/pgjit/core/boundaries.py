"""Privilege boundaries: what no session may get, and what a Database allows. Pure; no I/O.

Two rules live here.

**Hard refusals.** Some PostgreSQL roles hand out more than one user's access to data: the admin
pgjit logs in as (a member can ``SET ROLE`` to it and use its CREATEROLE), the Database's
managed role (pgjit's ownership marker; every managed user is a member, so it also covers other
pgjit users), roles with SUPERUSER, CREATEROLE, CREATEDB, REPLICATION or BYPASSRLS, and the
predefined roles that reach the server's files and programs (and RDS's ``rds_superuser``). A
session never gets one of them,
nor a role that is a member of one (transitively), whatever the Roles or traits say. The engine
reads the membership paths in the activation's own transaction; this module judges them.

A DBA may deliberately allow such a role on one Database by listing it by exact name in
``spec.grantableRoles`` (a glob never does). The admin's own role and the managed role cannot be
allowed that way: handing those out gives away the operator's own powers.

**The Database's bound.** ``spec.grantableRoles`` and ``spec.grantableSchemas`` (globs) bound
what any session on that Database may get, whatever the Roles of the namespace say: the Database
is usually the platform team's or the DBA's, the Roles the teams'.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .globs import glob_matches

#: Roles that reach outside the database, by name: the server's files and programs (a member
#: can read or write any file the server's OS user can, or run programs as it), and the
#: managed services' stand-ins for a superuser.
PRIVILEGED_PREDEFINED_ROLES = {
    "pg_read_server_files": "reads any file the server's operating-system user can read",
    "pg_write_server_files": "writes any file the server's operating-system user can write",
    "pg_execute_server_program": "runs programs on the server as its operating-system user",
    "rds_superuser": "is RDS's superuser role (it can read and change every database)",
}

#: Why a role with each attribute is refused, in the words a DBA reads in the status.
ATTRIBUTE_REASONS = {
    "SUPERUSER": "has SUPERUSER",
    "CREATEROLE": "has CREATEROLE (it can create and alter roles)",
    "CREATEDB": "has CREATEDB (it can create databases)",
    "REPLICATION": "has REPLICATION (it can stream every database's changes)",
    "BYPASSRLS": "has BYPASSRLS (it ignores row-level security)",
}


@dataclass(frozen=True)
class PrivilegedPath:
    """A requested role ``wanted`` that is, or is a member of (``depth`` > 0), ``role``, which
    the hard refusals name for ``why``."""

    wanted: str
    role: str
    depth: int
    why: str
    #: The admin's own role or the managed role: never allowed, not even by exact name.
    operator_role: bool = False

    def describe(self) -> str:
        if self.depth == 0:
            return f'"{self.wanted}" {self.why}'
        return f'"{self.wanted}" is a member of "{self.role}", which {self.why}'


def privileged_path(wanted: str, role: str, depth: int, *, is_admin: bool, is_managed: bool,
                    attributes: Iterable[str], predefined: str | None) -> PrivilegedPath:
    """The path for one catalog row: the strongest reason the row's ``role`` is refused."""
    if is_admin:
        return PrivilegedPath(wanted, role, depth, "is the admin role pgjit logs in as", True)
    if is_managed:
        return PrivilegedPath(wanted, role, depth, "is the managed role, pgjit's ownership "
                              "marker (its members are pgjit's users)", True)
    held = [a for a in ATTRIBUTE_REASONS if a in set(attributes)]
    if held:
        return PrivilegedPath(wanted, role, depth, ATTRIBUTE_REASONS[held[0]])
    return PrivilegedPath(wanted, role, depth, predefined or "is privileged")


def exact_names(globs: Sequence[str] | None) -> tuple[str, ...]:
    """The entries of a glob list that name one role exactly: the deliberate opt-ins."""
    return tuple(sorted({g for g in globs or () if "*" not in g}))


def refusals(paths: Iterable[PrivilegedPath], allowed_by_name: Iterable[str]) -> list[str]:
    """One sentence per requested role that is refused, for the first (shortest) path found.

    ``allowed_by_name`` are the roles the Database lists by exact name in grantableRoles: such a
    requested role passes, unless a path leads to the admin or the managed role.
    """
    allowed = set(allowed_by_name)
    first: dict[str, PrivilegedPath] = {}
    for path in sorted(paths, key=lambda p: (p.wanted, not p.operator_role, p.depth, p.role)):
        if path.wanted in allowed and not path.operator_role:
            continue
        first.setdefault(path.wanted, path)
    return [first[name].describe() for name in sorted(first)]


def refusal_message(sentences: Sequence[str], database: str) -> str:
    return ("refused: " + "; ".join(sentences) + ". No Role or trait can hand out such a role; a "
            f"DBA who means it can allow one on Database {database} by listing it by exact name "
            "in spec.grantableRoles (never the admin's role or the managed role)")


def within(globs: Sequence[str] | None, name: str) -> bool:
    """Whether a bound (absent: no bound) lets ``name`` through."""
    return globs is None or any(glob_matches(g, name) for g in globs)


def pattern_within(globs: Sequence[str] | None, pattern: str) -> bool:
    """Whether every name ``pattern`` (a glob) can match is inside the bound.

    Exact for literal patterns; for globs, recognised when a bound entry is ``*``, the same
    pattern, or a prefix glob (``app_*``) the pattern's literal prefix starts with. A glob this
    cannot prove inside is treated as reaching outside (reported), never as inside.
    """
    if globs is None:
        return True
    if "*" not in pattern:
        return within(globs, pattern)
    prefix = pattern.split("*", 1)[0]
    for g in globs:
        if g == "*" or g == pattern:
            return True
        if g.endswith("*") and "*" not in g[:-1] and prefix.startswith(g[:-1]):
            return True
    return False
