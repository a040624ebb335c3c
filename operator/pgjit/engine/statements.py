"""The SQL pgjit runs, composed without I/O.

Identifiers go through ``sql.Identifier`` and values through ``sql.Literal``: utility statements
(CREATE/ALTER ROLE, GRANT, COMMENT) cannot take server-side parameters, and a ``%s`` placeholder
next to an identifier would be misread when the identifier itself contains ``%`` (a user named
``a%sb`` is legal), so statements that carry identifiers carry their values as psycopg-quoted
literals and are executed without a parameter list. Queries without identifiers use ordinary
parameters. Privilege keywords are the only words spliced in as SQL, and only after
``core.permissions`` has checked them against a fixed list.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from psycopg import sql

from ..core.permissions import KIND_PRIVILEGES, DbObject, ObjectKind

Q = sql.SQL
ID = sql.Identifier

# One row describing the user, its ownership marker and what the admin may grant. Ownership is
# a plain membership in the managed role: on PostgreSQL 16+ the admin itself holds an ADMIN
# OPTION membership in the role it created, and must never count as a managed user. The admin's
# grantability follows each version's rules: PostgreSQL 16+ needs ADMIN OPTION on the granted
# role, 15 lets CREATEROLE grant any non-superuser role. Backends are counted from
# pg_stat_get_activity() by role oid, not from the pg_stat_activity view by name: the same rows
# (the view is that function joined to pg_authid for usename), but planning the view's joins
# cost about as much as the rest of this query, which runs up to three times per activate + end.
# The admin's own ADMIN OPTION is looked up directly first: pg_has_role's recursive look walks
# every membership the admin holds, users' included, and is only needed for an indirect one.
# The steward is the role that administers the user on 16+ (core/stewards.py): for a new user
# the one named by %(steward)s (none for a superuser admin, whose checks walk nothing), for an
# existing one whichever steward (%(steward_prefix)s and two digits) holds ADMIN OPTION on it
# (none: the admin created it itself). It is ready when the admin may SET ROLE to it and it holds
# ADMIN OPTION on the managed role and every wanted role. The admin's SET is read from its own
# grant, not with pg_has_role, whose walk reads every steward's memberships, users' included,
# after any role change (am.set_option is new in 16: on 15, where no steward is ever read, the
# text says false, Prepared.before_16). A membership is revoked by whoever
# granted it (PostgreSQL 16+ revokes only the current role's own grants): the steward's, and the
# rest.
USER_STATE = Q("""
SELECT r.oid IS NOT NULL AS exists,
       coalesce(r.rolcanlogin, false) AS can_login,
       m.oid IS NOT NULL AS managed_role_exists,
       (r.oid IS NOT NULL AND m.oid IS NOT NULL AND EXISTS (
            SELECT 1 FROM pg_auth_members am
             WHERE am.member = r.oid AND am.roleid = m.oid AND NOT am.admin_option)
        AND r.rolname <> current_user AND NOT r.rolsuper) AS is_managed,
       ARRAY(SELECT DISTINCT g.rolname::text FROM pg_auth_members am
               JOIN pg_roles g ON g.oid = am.roleid
              WHERE am.member = r.oid AND am.roleid IS DISTINCT FROM m.oid
              ORDER BY 1) AS memberships,
       shobj_description(r.oid, 'pg_authid') AS comment,
       ARRAY(SELECT w.name FROM unnest(%(wanted)s::text[]) AS w(name)
              WHERE NOT EXISTS (SELECT 1 FROM pg_roles g WHERE g.rolname = w.name)
              ORDER BY 1) AS missing_roles,
       ARRAY(SELECT g.rolname::text FROM pg_roles g
              WHERE g.rolname = ANY(%(wanted_and_managed)s::text[])
                AND NOT (me.rolsuper OR CASE
                     WHEN current_setting('server_version_num')::int >= 160000
                     THEN CASE WHEN EXISTS (SELECT 1 FROM pg_auth_members am2
                                             WHERE am2.roleid = g.oid AND am2.member = me.oid
                                               AND am2.admin_option) THEN true
                          ELSE pg_has_role(current_user, g.oid, 'MEMBER WITH ADMIN OPTION') END
                     ELSE me.rolcreaterole AND NOT g.rolsuper END)
              ORDER BY 1) AS ungrantable_roles,
       (SELECT count(*) FROM pg_stat_get_activity(NULL) a
         WHERE a.usesysid = r.oid)::int AS backends,
       r.oid::bigint AS role_oid,
       ARRAY_REMOVE(ARRAY[CASE WHEN r.rolcreaterole THEN 'CREATEROLE' END,
                          CASE WHEN r.rolcreatedb THEN 'CREATEDB' END,
                          CASE WHEN r.rolreplication THEN 'REPLICATION' END,
                          CASE WHEN r.rolbypassrls THEN 'BYPASSRLS' END], NULL) AS attributes,
       (SELECT d.datallowconn FROM pg_database d WHERE d.datname = %(database)s) AS database_allows,
       st.name AS steward,
       (s.oid IS NOT NULL AND s.rolcreaterole AND NOT s.rolcanlogin AND NOT s.rolsuper
        AND EXISTS (SELECT 1 FROM pg_auth_members am
                     WHERE am.roleid = s.oid AND am.member = me.oid
                       AND am.set_option)
        AND NOT EXISTS (SELECT 1 FROM pg_roles g
                         WHERE g.rolname = ANY(%(wanted_and_managed)s::text[])
                           AND NOT EXISTS (SELECT 1 FROM pg_auth_members am
                                            WHERE am.roleid = g.oid AND am.member = s.oid
                                              AND am.admin_option))) AS steward_ready,
       ARRAY(SELECT DISTINCT g.rolname::text FROM pg_auth_members am
               JOIN pg_roles g ON g.oid = am.roleid
              WHERE am.member = r.oid AND am.roleid IS DISTINCT FROM m.oid
                AND am.grantor = s.oid
              ORDER BY 1) AS granted_by_steward,
       ARRAY(SELECT DISTINCT g.rolname::text FROM pg_auth_members am
               JOIN pg_roles g ON g.oid = am.roleid
              WHERE am.member = r.oid AND am.roleid IS DISTINCT FROM m.oid
                AND am.grantor IS DISTINCT FROM s.oid
              ORDER BY 1) AS granted_by_others
  FROM pg_roles me
  LEFT JOIN pg_roles r ON r.rolname = %(name)s
  LEFT JOIN pg_roles m ON m.rolname = %(managed)s
  LEFT JOIN LATERAL (SELECT CASE WHEN r.oid IS NOT NULL THEN (
            SELECT g.rolname::text FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.member
             WHERE am.roleid = r.oid AND am.admin_option
               AND left(g.rolname, length(%(steward_prefix)s)) = %(steward_prefix)s
               AND length(g.rolname) = length(%(steward_prefix)s) + 2
             ORDER BY 1 LIMIT 1) WHEN NOT me.rolsuper THEN %(steward)s::text END AS name) st ON true
  LEFT JOIN pg_roles s ON s.rolname = st.name
 WHERE me.rolname = current_user
""")

# Every role a requested role is (transitively) a member of, that a session must never get
# through it: the admin itself, the managed role, roles with attributes that reach beyond one
# user's data, and the predefined roles of core.boundaries (passed as %(predefined)s). Read in the activation's transaction,
# after the user's lock, so a role altered since the Role was admitted is judged as it is now.
# Membership cycles cannot exist in PostgreSQL; the depth bound only keeps a broken catalog from
# running away.
PRIVILEGED_MEMBERSHIPS = Q("""
WITH RECURSIVE up(wanted, oid, depth) AS (
    SELECT g.rolname::text, g.oid, 0 FROM pg_roles g WHERE g.rolname = ANY(%(wanted)s::text[])
  UNION
    SELECT up.wanted, am.roleid, up.depth + 1
      FROM up JOIN pg_auth_members am ON am.member = up.oid
     WHERE up.depth < 64
)
SELECT up.wanted, r.rolname::text, up.depth,
       r.rolname = current_user, r.rolname = %(managed)s,
       r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication, r.rolbypassrls,
       r.rolname = ANY(%(predefined)s::text[])
  FROM up JOIN pg_roles r ON r.oid = up.oid
 WHERE r.rolname = current_user OR r.rolname = %(managed)s OR r.rolsuper OR r.rolcreaterole
    OR r.rolcreatedb OR r.rolreplication OR r.rolbypassrls
    OR r.rolname = ANY(%(predefined)s::text[])
 ORDER BY up.wanted, up.depth, r.rolname
""")

LEDGER_AND_MEMBERS = Q("""
SELECT r.rolname::text, r.rolcanlogin, shobj_description(r.oid, 'pg_authid'),
       ARRAY(SELECT DISTINCT g.rolname::text FROM pg_auth_members am2
               JOIN pg_roles g ON g.oid = am2.roleid
              WHERE am2.member = r.oid AND am2.roleid <> m.oid ORDER BY 1)
  FROM pg_auth_members am
  JOIN pg_roles m ON m.oid = am.roleid
  JOIN pg_roles r ON r.oid = am.member
 WHERE m.rolname = %(managed)s AND NOT am.admin_option
   AND r.rolname <> current_user AND NOT r.rolsuper
 GROUP BY r.oid, r.rolname, r.rolcanlogin, m.oid
""")

# A steward as pgjit makes it, whether one of that name exists already, and whether it is
# pgjit's: its comment is the mark pgjit wrote, and the admin holds ADMIN OPTION on it directly.
STEWARD_STATE = Q("""
SELECT s.oid IS NOT NULL, shobj_description(s.oid, 'pg_authid') = %(mark)s,
       EXISTS (SELECT 1 FROM pg_auth_members am
                WHERE am.roleid = s.oid AND am.member = me.oid AND am.admin_option)
  FROM pg_roles me LEFT JOIN pg_roles s ON s.rolname = %(steward)s
 WHERE me.rolname = current_user
""")
RESET_ROLE = Q("RESET ROLE")

BEGIN = Q("BEGIN")
COMMIT = Q("COMMIT")
ROLLBACK = Q("ROLLBACK")
# One statement: the transaction's name (local to it, so the pooled connection shows its plain
# name again after COMMIT), set before the lock is waited for so that a waiting transaction is
# named too; and no statement more per transaction than the lock alone.
NAMED_ADVISORY_LOCK = Q("SELECT set_config('application_name', %s, true), "
                        "pg_advisory_xact_lock(%s)")
MANAGED_ROLE_EXISTS = Q("SELECT 1 FROM pg_roles WHERE rolname = %s")

# By role oid, so a backend that logged in just before its role was dropped is still found.
TERMINATE_BACKENDS = Q("""
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))::int
  FROM pg_stat_get_activity(NULL) WHERE usesysid = %s AND pid <> pg_backend_pid()
""")
COUNT_BACKENDS = Q("SELECT count(*)::int FROM pg_stat_get_activity(NULL) WHERE usesysid = %s")

# What blocks DROP ROLE, grouped by database, from the shared dependency catalog: readable from
# any database, unlike the objects themselves.
DROP_BLOCKERS = Q("""
SELECT coalesce(d.datname, '(shared objects)') AS database,
       CASE s.deptype WHEN 'o' THEN 'owns' WHEN 'a' THEN 'holds privileges on'
            WHEN 'r' THEN 'is named in policies on' WHEN 'i' THEN 'holds initial privileges on'
            ELSE 'depends on' END AS relation,
       count(*)::int
  FROM pg_shdepend s
  LEFT JOIN pg_database d ON d.oid = s.dbid
 WHERE s.refclassid = 'pg_authid'::regclass
   AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = %s)
 GROUP BY 1, 2 ORDER BY 1, 2
""")

# Every object a permission can match, by kind, outside the system schemas. Functions and
# procedures come with their argument types as (schema, name) pairs, so that GRANT can name
# each signature through identifiers alone. Only the kinds the rules name are read.
_NOT_SYSTEM = """n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
   AND left(n.nspname, 8) <> 'pg_temp_' AND left(n.nspname, 14) <> 'pg_toast_temp_'"""
_RELATION_KIND = """CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materializedView'
       WHEN 'S' THEN 'sequence' ELSE 'table' END"""
_ARGUMENT_TYPES = """ARRAY(SELECT ARRAY[tn.nspname::text, t.typname::text]
         FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a(oid, i)
         JOIN pg_type t ON t.oid = a.oid JOIN pg_namespace tn ON tn.oid = t.typnamespace
        ORDER BY a.i)"""
OBJECTS = Q(f"""
SELECT {_RELATION_KIND}, n.nspname::text, c.relname::text, '{{}}'::text[]
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S') AND {_NOT_SYSTEM}
   AND {_RELATION_KIND} = ANY(%(kinds)s::text[])
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END, n.nspname::text,
       p.proname::text, {_ARGUMENT_TYPES}
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE p.prokind IN ('f', 'p') AND {_NOT_SYSTEM}
   AND CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END = ANY(%(kinds)s::text[])
UNION ALL
SELECT 'schema', '', n.nspname::text, '{{}}'::text[] FROM pg_namespace n
 WHERE {_NOT_SYSTEM} AND 'schema' = ANY(%(kinds)s::text[])
UNION ALL
SELECT 'database', '', current_database()::text, '{{}}'::text[]
 WHERE 'database' = ANY(%(kinds)s::text[])
""")

# Privileges the user holds on any object of the session's database, read from the ACLs
# themselves rather than information_schema, which filters by grantor (Teleport #51681).
HELD_PRIVILEGES = Q(f"""
WITH me AS (SELECT oid FROM pg_roles WHERE rolname = %(name)s)
SELECT {_RELATION_KIND}, n.nspname::text, c.relname::text, '{{}}'::text[], a.privilege_type::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 CROSS JOIN LATERAL aclexplode(c.relacl) a
 WHERE a.grantee = (SELECT oid FROM me) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END, n.nspname::text,
       p.proname::text, {_ARGUMENT_TYPES}, a.privilege_type::text
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 CROSS JOIN LATERAL aclexplode(p.proacl) a
 WHERE a.grantee = (SELECT oid FROM me) AND p.prokind IN ('f', 'p')
UNION ALL
SELECT 'schema', '', n.nspname::text, '{{}}'::text[], a.privilege_type::text
  FROM pg_namespace n CROSS JOIN LATERAL aclexplode(n.nspacl) a
 WHERE a.grantee = (SELECT oid FROM me)
UNION ALL
SELECT 'database', '', d.datname::text, '{{}}'::text[], a.privilege_type::text
  FROM pg_database d CROSS JOIN LATERAL aclexplode(d.datacl) a
 WHERE d.datname = current_database() AND a.grantee = (SELECT oid FROM me)
""")
ROLE_COMMENT = Q("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s")


# What the user owns, per database, from the shared dependency catalog: where REASSIGN OWNED
# has work to do. Shared objects (dbid 0) are reassigned from any database.
OWNED_PER_DATABASE = Q("""
SELECT coalesce(d.datname, %(admin_db)s)::text, count(*)::int
  FROM pg_shdepend s LEFT JOIN pg_database d ON d.oid = s.dbid
 WHERE s.refclassid = 'pg_authid'::regclass AND s.deptype = 'o'
   AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = %(name)s)
 GROUP BY 1 ORDER BY 1
""")
# What a user owns that would run code or read data with its owner's rights once the objects
# inheritor owns it (teleport-behaviour.md §2.4's threat model): SECURITY DEFINER functions,
# expression and partial indexes (ANALYZE evaluates them as the table owner), rules, and
# materialized views (a refresh runs the query as the owner). Any of them: no reassignment.
# Display text only; the server renders the names.
OWNER_RIGHTS_HAZARDS = Q("""
WITH me AS (SELECT oid FROM pg_roles WHERE rolname = %(name)s)
SELECT 'SECURITY DEFINER function ' || p.oid::regprocedure::text
  FROM pg_proc p WHERE p.proowner = (SELECT oid FROM me) AND p.prosecdef
UNION ALL
SELECT 'index with expressions ' || i.indexrelid::regclass::text
  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
 WHERE c.relowner = (SELECT oid FROM me) AND (i.indexprs IS NOT NULL OR i.indpred IS NOT NULL)
UNION ALL
SELECT 'rule ' || r.rulename::text || ' on ' || r.ev_class::regclass::text
  FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
 WHERE c.relowner = (SELECT oid FROM me) AND r.rulename <> '_RETURN'
UNION ALL
SELECT 'materialized view ' || c.oid::regclass::text
  FROM pg_class c WHERE c.relowner = (SELECT oid FROM me) AND c.relkind = 'm'
LIMIT 20
""")

# Who else holds privileges on what the user owns (PUBLIC's defaults included): taken away
# before the objects change hands, so a view or function the user shared does not start to run
# with the inheritor's rights for them.
OTHERS_ON_OWNED = Q(f"""
WITH me AS (SELECT oid FROM pg_roles WHERE rolname = %(name)s)
SELECT DISTINCT {_RELATION_KIND}, n.nspname::text, c.relname::text, '{{}}'::text[],
       g.rolname::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault(
       (CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::"char", c.relowner))) a
  LEFT JOIN pg_roles g ON g.oid = a.grantee
 WHERE c.relowner = (SELECT oid FROM me) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
   AND a.grantee <> c.relowner
UNION ALL
SELECT DISTINCT CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END, n.nspname::text,
       p.proname::text, {_ARGUMENT_TYPES}, g.rolname::text
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 CROSS JOIN LATERAL aclexplode(coalesce(p.proacl, acldefault('f'::"char", p.proowner))) a
  LEFT JOIN pg_roles g ON g.oid = a.grantee
 WHERE p.proowner = (SELECT oid FROM me) AND p.prokind IN ('f', 'p') AND a.grantee <> p.proowner
UNION ALL
SELECT DISTINCT 'schema', '', n.nspname::text, '{{}}'::text[], g.rolname::text
  FROM pg_namespace n CROSS JOIN LATERAL aclexplode(coalesce(n.nspacl,
       acldefault('n'::"char", n.nspowner))) a
  LEFT JOIN pg_roles g ON g.oid = a.grantee
 WHERE n.nspowner = (SELECT oid FROM me) AND a.grantee <> n.nspowner
""")

# Whether the admin may act for a role as REASSIGN OWNED needs (the privileges of it).
CAN_ACT_FOR = Q("SELECT pg_has_role(current_user, r.oid, 'USAGE') FROM pg_roles r "
                "WHERE r.rolname = %s")


def valid_until_literal(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S+00")


def create_managed_role(managed: str) -> sql.Composed:
    return Q("CREATE ROLE {} NOLOGIN").format(ID(managed))


def _password(verifier: str | None) -> sql.Composable:
    return Q(" PASSWORD {}").format(sql.Literal(verifier)) if verifier is not None else Q("")


def steward_mark(managed: str) -> str:
    return (f'pgjit steward of "{managed}": administers the users pgjit creates '
            "(PostgreSQL 16+); holds no privileges of its own")


def create_steward(steward: str) -> sql.Composed:
    return Q("CREATE ROLE {} NOLOGIN CREATEROLE").format(ID(steward))


def let_admin_act_as(steward: str, admin: str) -> sql.Composed:
    """SET ROLE only: the admin never inherits what the steward administers."""
    return Q("GRANT {} TO {} WITH INHERIT FALSE, SET TRUE").format(ID(steward), ID(admin))


def entrust_to_steward(role: str, steward: str) -> sql.Composed:
    """ADMIN OPTION only, so the steward can grant ``role`` but holds none of its privileges."""
    return Q("GRANT {} TO {} WITH ADMIN TRUE, INHERIT FALSE, SET FALSE").format(ID(role),
                                                                               ID(steward))


def act_as(steward: str) -> sql.Composed:
    """Until RESET ROLE or the end of the transaction, whichever comes first."""
    return Q("SET LOCAL ROLE {}").format(ID(steward))


def create_user(name: str, managed: str, verifier: str | None, valid_until: datetime
                ) -> sql.Composed:
    return Q("CREATE ROLE {} LOGIN{} VALID UNTIL {} IN ROLE {}").format(
        ID(name), _password(verifier), sql.Literal(valid_until_literal(valid_until)), ID(managed))


def enable_login(name: str, verifier: str | None, valid_until: datetime) -> sql.Composed:
    return Q("ALTER ROLE {} LOGIN{} VALID UNTIL {}").format(
        ID(name), _password(verifier), sql.Literal(valid_until_literal(valid_until)))


def set_valid_until(name: str, valid_until: datetime) -> sql.Composed:
    return Q("ALTER ROLE {} VALID UNTIL {}").format(
        ID(name), sql.Literal(valid_until_literal(valid_until)))


def strip_attributes(name: str, attributes) -> sql.Composed:
    """ALTER ROLE … NOCREATEDB …: only attributes read from the catalog, from a fixed list."""
    known = ("CREATEROLE", "CREATEDB", "REPLICATION", "BYPASSRLS")
    words = [f"NO{a}" for a in known if a in set(attributes)]
    if len(words) != len(set(attributes)):
        raise ValueError(f"not role attributes pgjit strips: {sorted(set(attributes))}")
    return Q("ALTER ROLE {} {}").format(ID(name), Q(" ").join(Q(w) for w in words))


def disable_login(name: str) -> sql.Composed:
    return Q("ALTER ROLE {} NOLOGIN").format(ID(name))


def grant_role(role: str, name: str) -> sql.Composed:
    return Q("GRANT {} TO {}").format(ID(role), ID(name))


def revoke_role(role: str, name: str) -> sql.Composed:
    return Q("REVOKE {} FROM {}").format(ID(role), ID(name))


def comment_on_role(name: str, text: str) -> sql.Composed:
    return Q("COMMENT ON ROLE {} IS {}").format(ID(name), sql.Literal(text))


def act_for(name: str, admin: str, version_num: int) -> sql.Composed:
    """Make the admin a member with the privileges of ``name`` (REASSIGN OWNED needs them).

    On 16+ the admin already holds ADMIN OPTION on users it created, without INHERIT; a grant of
    its own with INHERIT TRUE gives it their privileges. The user is locked and about to be
    dropped, which removes the membership again.
    """
    if version_num >= 160000:
        return Q("GRANT {} TO {} WITH INHERIT TRUE").format(ID(name), ID(admin))
    return Q("GRANT {} TO {}").format(ID(name), ID(admin))


def stop_acting_for(name: str, admin: str) -> sql.Composed:
    return Q("REVOKE {} FROM {}").format(ID(name), ID(admin))


def revoke_all_from(obj: DbObject, grantee: str | None) -> sql.Composed:
    """REVOKE ALL ON the object FROM a role, or FROM PUBLIC (``grantee`` None)."""
    return Q("REVOKE ALL ON {} FROM {}").format(_on(obj),
                                                 Q("PUBLIC") if grantee is None else ID(grantee))


def reassign_owned(name: str, inheritor: str) -> sql.Composed:
    return Q("REASSIGN OWNED BY {} TO {}").format(ID(name), ID(inheritor))


def drop_role(name: str) -> sql.Composed:
    return Q("DROP ROLE IF EXISTS {}").format(ID(name))


def _on(obj: DbObject) -> sql.Composable:
    """``TABLE s.t``, ``FUNCTION s.f(pg_catalog.int4)``, ``SCHEMA s``: the object clause."""
    kind = ObjectKind(obj.kind)
    if kind in (ObjectKind.TABLE, ObjectKind.VIEW, ObjectKind.MATERIALIZED_VIEW):
        return Q("TABLE {}").format(ID(obj.schema, obj.name))
    if kind is ObjectKind.SEQUENCE:
        return Q("SEQUENCE {}").format(ID(obj.schema, obj.name))
    if kind in (ObjectKind.FUNCTION, ObjectKind.PROCEDURE):
        return Q("{} {}({})").format(Q(kind.value.upper()), ID(obj.schema, obj.name),
                                     Q(", ").join(ID(*arg) for arg in obj.args))
    return Q("{} {}").format(Q(kind.value.upper()), ID(obj.name))


def _privilege_list(kind: str, privileges) -> sql.Composable:
    allowed = KIND_PRIVILEGES[ObjectKind(kind)]
    checked = [p for p in allowed if p in set(privileges)]
    if len(checked) != len(set(privileges)):
        raise ValueError(f"not {kind} privileges: {sorted(set(privileges) - set(checked))}")
    return Q(", ").join(Q(p) for p in checked)


def grant_on(obj: DbObject, privileges, name: str) -> sql.Composed:
    return Q("GRANT {} ON {} TO {}").format(_privilege_list(obj.kind, privileges), _on(obj),
                                            ID(name))


def revoke_on(obj: DbObject, privileges, name: str) -> sql.Composed:
    return Q("REVOKE {} ON {} FROM {}").format(_privilege_list(obj.kind, privileges), _on(obj),
                                               ID(name))


def revoke_all_on(obj: DbObject, name: str) -> sql.Composed:
    return Q("REVOKE ALL ON {} FROM {}").format(_on(obj), ID(name))


_BEFORE_16: dict[str, sql.SQL] = {}


@dataclass(frozen=True)
class Prepared:
    """A read prepared once per admin connection under a fixed name, and run with EXECUTE.

    Named and prepared by pgjit rather than by psycopg's automatic preparing: psycopg forgets
    all its prepared statements after any ALTER or DROP (which every end of a session runs),
    and would prepare them again on the next activation, planning every time anyway.
    """

    name: str
    query: sql.SQL
    #: The query's parameters, in $n order, with their types.
    parameters: tuple[tuple[str, str], ...]
    #: Text only PostgreSQL 16+ parses, and what stands for it before 16.
    before_16: tuple[tuple[str, str], ...] = ()

    def query_for(self, server_version: int) -> sql.SQL:
        """The query as the server of ``server_version`` parses it."""
        if server_version >= 160000 or not self.before_16:
            return self.query
        key = self.name
        if key not in _BEFORE_16:
            text = self.query.as_string(None)
            for new, old in self.before_16:
                text = text.replace(new, old)
            _BEFORE_16[key] = sql.SQL(text)
        return _BEFORE_16[key]

    def prepare_for(self, server_version: int) -> sql.Composed:
        text = self.query_for(server_version).as_string(None)
        for number, (parameter, _type) in enumerate(self.parameters, start=1):
            text = text.replace(f"%({parameter})s", f"${number}")
        types = ", ".join(type_ for _name, type_ in self.parameters)
        return sql.SQL("PREPARE {} ({}) AS ").format(ID(self.name), sql.SQL(types)) + \
            sql.SQL(text)

    @property
    def execute(self) -> sql.Composed:
        return sql.SQL("EXECUTE {} ({})").format(ID(self.name), sql.SQL(", ").join(
            sql.Placeholder(parameter) for parameter, _type in self.parameters))


PREPARED_USER_STATE = Prepared("pgjit_user_state", USER_STATE, (
    ("name", "text"), ("managed", "text"), ("wanted", "text[]"),
    ("wanted_and_managed", "text[]"), ("database", "text"), ("steward", "text"),
    ("steward_prefix", "text")), before_16=(("AND am.set_option)", "AND false)"),))
PREPARED_PRIVILEGED_MEMBERSHIPS = Prepared("pgjit_privileged_memberships",
                                           PRIVILEGED_MEMBERSHIPS, (
    ("wanted", "text[]"), ("managed", "text"), ("predefined", "text[]")))
GENERIC_PLANS = Q("SET plan_cache_mode = force_generic_plan")
#: Prepared on every new admin connection when ServerConfig.prepared_statements is on.
PREPARED = (PREPARED_USER_STATE, PREPARED_PRIVILEGED_MEMBERSHIPS)
