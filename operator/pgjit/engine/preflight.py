"""What a server is and what the admin may do there, with the fix for every shortfall.

Run before any session is opened on a Database and on every health check, so that a missing
privilege is reported once, on the Database, with the exact statement a DBA must run, rather than
as a failure of each session.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

Q = sql.SQL

SERVER_FACTS = Q("""
SELECT split_part(current_setting('server_version'), ' ', 1),
       current_setting('server_version_num')::int,
       pg_is_in_recovery(),
       current_setting('default_transaction_read_only') = 'on'
           OR current_setting('transaction_read_only') = 'on',
       me.rolsuper, me.rolcreaterole,
       m.oid IS NOT NULL,
       CASE WHEN m.oid IS NULL THEN NULL
            WHEN me.rolsuper THEN true
            WHEN current_setting('server_version_num')::int >= 160000
            THEN pg_has_role(current_user, m.oid, 'MEMBER WITH ADMIN OPTION')
            ELSE me.rolcreaterole END,
       me.rolsuper OR pg_has_role(current_user, 'pg_signal_backend', 'MEMBER')
  FROM pg_roles me
  LEFT JOIN pg_roles m ON m.rolname = %(managed)s
 WHERE me.rolname = current_user
""")

DATABASE_ACCESS = Q("""
SELECT w.name, d.oid IS NOT NULL,
       CASE WHEN d.oid IS NULL THEN false ELSE has_database_privilege(d.oid, 'CONNECT') END
  FROM unnest(%(names)s::text[]) AS w(name)
  LEFT JOIN pg_database d ON d.datname = w.name
""")

# rds_superuser can only be handed out by one of its own members (RDS's rule), whatever the
# version; otherwise each version's grant rules, as in statements.USER_STATE.
ROLE_ACCESS = Q("""
SELECT w.name, g.oid IS NOT NULL,
       CASE WHEN g.oid IS NULL THEN false
            WHEN me.rolsuper THEN true
            WHEN g.rolname = 'rds_superuser' AND NOT pg_has_role(current_user, g.oid, 'MEMBER')
            THEN false
            WHEN current_setting('server_version_num')::int >= 160000
            THEN pg_has_role(current_user, g.oid, 'MEMBER WITH ADMIN OPTION')
            ELSE me.rolcreaterole AND NOT g.rolsuper END
  FROM unnest(%(names)s::text[]) AS w(name)
  LEFT JOIN pg_roles g ON g.rolname = w.name
  JOIN pg_roles me ON me.rolname = current_user
""")


INHERITOR_ACCESS = Q("""
SELECT pg_has_role(current_user, r.oid, 'USAGE') FROM pg_roles r WHERE r.rolname = %(name)s
""")


def quote_ident(name: str) -> str:
    """Identifier quoting for the *advice text* shown to people, never for executed SQL."""
    return '"' + name.replace('"', '""') + '"'


#: Managed-service roles whose fix is written as the service's own documentation writes it.
_BARE_NAMES = frozenset({"rds_iam", "rds_superuser"})


def _advice_name(name: str) -> str:
    return name if name in _BARE_NAMES else quote_ident(name)


def _grant_fix(role: str, admin: str) -> Shortfall:
    if role == "rds_superuser":
        # Only a member of rds_superuser may grant it: ADMIN OPTION is not what is missing.
        return Shortfall("the admin cannot grant rds_superuser unless it is rds_superuser itself",
                         f"GRANT rds_superuser TO {admin};")
    return Shortfall(f"the admin cannot grant role {_advice_name(role)}",
                     f"GRANT {_advice_name(role)} TO {admin} WITH ADMIN OPTION;")


@dataclass(frozen=True)
class Shortfall:
    """Something the admin cannot do, and the statement that fixes it."""

    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.problem}; run as a superuser: {self.fix}"


@dataclass(frozen=True)
class Preflight:
    server_version: str
    server_version_num: int
    in_recovery: bool
    read_only: bool
    admin_is_superuser: bool
    admin_can_create_roles: bool
    managed_role_exists: bool
    can_signal_backends: bool
    #: What the server as a whole lacks: no session can be opened until it is fixed.
    shortfalls: tuple[Shortfall, ...]
    missing_databases: tuple[str, ...] = ()
    missing_roles: tuple[str, ...] = ()
    #: Roles asked about that the admin cannot grant: only sessions given them are refused.
    role_shortfalls: tuple[Shortfall, ...] = ()
    roles_without_admin_option: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.read_only or self.shortfalls or self.missing_databases
                    or self.missing_roles or self.role_shortfalls)

    def summary(self) -> list[str]:
        """Short lines for ``status.adminPrivileges``."""
        lines = []
        if self.admin_is_superuser:
            lines.append("superuser (more than pgjit needs)")
        elif self.admin_can_create_roles:
            lines.append("CREATEROLE")
        if self.can_signal_backends:
            lines.append("can terminate connections")
        lines.extend(str(s) for s in self.shortfalls + self.role_shortfalls)
        if self.missing_roles:
            lines.append("roles that Roles grant do not exist: "
                         + ", ".join(quote_ident(r) for r in self.missing_roles))
        return lines


async def run_preflight(conn, *, admin_user: str, managed_role: str,
                        databases: tuple[str, ...] = (), roles: tuple[str, ...] = (),
                        required_roles: tuple[str, ...] = (),
                        objects_inheritor: str | None = None,
                        terminate_connections: bool = True) -> Preflight:
    """``roles`` are granted by some Roles (a shortfall refuses only sessions given them);
    ``required_roles`` every session's user gets (RDS IAM: rds_iam), so a shortfall there is
    the whole server's."""
    admin = quote_ident(admin_user)
    async with conn.pipeline():
        facts_cur = await conn.execute(SERVER_FACTS, {"managed": managed_role})
        db_cur = await conn.execute(DATABASE_ACCESS, {"names": list(databases)})
        role_cur = await conn.execute(ROLE_ACCESS, {"names": sorted(set(roles)
                                                                    | set(required_roles))})
        inheritor_cur = await conn.execute(INHERITOR_ACCESS, {"name": objects_inheritor or ""}) \
            if objects_inheritor else None
        facts = await facts_cur.fetchone()
        db_rows = await db_cur.fetchall()
        role_rows = await role_cur.fetchall()
        inheritor_row = await inheritor_cur.fetchone() if inheritor_cur is not None else None
    (version, version_num, in_recovery, read_only, superuser, createrole, managed_exists,
     managed_admin, can_signal) = facts
    shortfalls: list[Shortfall] = []
    if not (superuser or createrole):
        shortfalls.append(Shortfall("the admin lacks CREATEROLE",
                                    f"ALTER ROLE {admin} CREATEROLE;"))
    if managed_exists and managed_admin is False:
        shortfalls.append(Shortfall(
            f"the admin cannot grant the managed role {quote_ident(managed_role)}",
            f"GRANT {quote_ident(managed_role)} TO {admin} WITH ADMIN OPTION;"))
    missing_dbs = tuple(name for name, exists, _ in db_rows if not exists)
    for name, exists, can_connect in db_rows:
        if exists and not can_connect:
            shortfalls.append(Shortfall(
                f"the admin lacks CONNECT on database {quote_ident(name)}",
                f"GRANT CONNECT ON DATABASE {quote_ident(name)} TO {admin};"))
    required = set(required_roles)
    for name, exists, grantable in role_rows:
        if name not in required:
            continue
        if not exists:
            shortfalls.append(Shortfall(
                f"the server has no role {_advice_name(name)}, which every session's user needs"
                " for IAM logins (it exists on RDS and Aurora; elsewhere use credentials.type"
                " password or clientCertificate)",
                f"CREATE ROLE {_advice_name(name)};"))
        elif not grantable:
            shortfalls.append(_grant_fix(name, admin))
    missing_roles = tuple(name for name, exists, _ in role_rows
                          if not exists and name not in required)
    ungrantable = tuple(name for name, exists, grantable in role_rows
                        if exists and not grantable and name not in required)
    role_shortfalls = tuple(_grant_fix(name, admin) for name in ungrantable)
    if objects_inheritor:
        # Only sessions in best_effort_reassign_and_drop need it; they fall back to keep.
        inheritor = quote_ident(objects_inheritor)
        if inheritor_row is None:
            role_shortfalls += (Shortfall(f"the objectsInheritor {inheritor} does not exist",
                                          f"CREATE ROLE {inheritor} NOLOGIN;"),)
        elif not inheritor_row[0]:
            role_shortfalls += (Shortfall(
                f"the admin cannot act for the objectsInheritor {inheritor} (REASSIGN OWNED"
                " needs its privileges)", f"GRANT {inheritor} TO {admin};"),)
    if terminate_connections and not can_signal:
        shortfalls.append(Shortfall(
            "the admin cannot terminate connections of ended users",
            f"GRANT pg_signal_backend TO {admin};"))
    return Preflight(version, version_num, in_recovery, bool(in_recovery or read_only),
                     superuser, superuser or createrole, managed_exists, can_signal,
                     tuple(shortfalls), missing_dbs, missing_roles, role_shortfalls,
                     ungrantable)
