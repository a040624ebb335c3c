"""``pgjit explain``: the operator's policy decision for a person on a Database, for people.

It evaluates with ``core.policy.evaluate``, the function the operator calls, on the same inputs:
the Database, every Role of the namespace, the requester's groups and extra attributes, and the
internal traits. Without ``--user`` the requester is the current identity with exactly the
groups and extra ``pgjit connect`` would put into its session, so the answer predicts connect's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta

import kubernetes
from kubernetes.client.rest import ApiException

from .. import GROUP, VERSION
from ..api.database import Database
from ..api.labels import ObjectLabelRule
from ..api.role import Role
from ..core.explain import render_explanation
from ..core.policy import DEFAULT_SESSION_DURATION, AccessRequest, evaluate
from .identity import whoami, session_groups
from .traits import read_internal_traits

EXIT_ALLOWED, EXIT_REFUSED, EXIT_ERROR = 0, 1, 2


class ExplainError(Exception):
    """The decision could not be made (no such Database, no permission to read it)."""


@dataclass(frozen=True)
class ExplainOptions:
    database: str
    namespace: str
    user: str | None = None
    groups: tuple[str, ...] | None = None
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    database_name: str | None = None
    database_roles: tuple[str, ...] = ()
    duration: timedelta = DEFAULT_SESSION_DURATION
    reason: str | None = None
    traits_configmap: tuple[str, str] | None = None
    include_unmatched: bool = True
    #: List the objects the permissions resolve to, reading the catalog over this libpq
    #: connection string ("" for the libpq environment and the Database's host and port).
    objects_conninfo: str | None = None


def explain(api: kubernetes.client.ApiClient, options: ExplainOptions) -> tuple[str, bool]:
    """The report and whether the session would be allowed. Raises ExplainError."""
    custom = kubernetes.client.CustomObjectsApi(api)
    try:
        database = Database.model_validate(custom.get_namespaced_custom_object(
            GROUP, VERSION, options.namespace, Database.plural, options.database))
        roles = [Role.model_validate(item) for item in custom.list_namespaced_custom_object(
            GROUP, VERSION, options.namespace, Role.plural)["items"]]
    except ApiException as exc:
        raise ExplainError(f'Database "{options.database}" or the Roles in namespace'
                           f' "{options.namespace}": {exc.status} {exc.reason}') from None
    request, identity_source = _request(api, options, database)
    traits = read_internal_traits(api, options.traits_configmap, request.user)
    decision = evaluate(request, database, roles, internal_traits=traits.values)
    context = [("Identity", identity_source), ("Traits", f"internal: {traits.source}")]
    text = render_explanation(decision, include_unmatched=options.include_unmatched,
                              context=context)
    if options.objects_conninfo is not None:
        labels = [ObjectLabelRule.model_validate(item) for item in
                  custom.list_namespaced_custom_object(GROUP, VERSION, options.namespace,
                                                       ObjectLabelRule.plural)["items"]]
        text += "\n" + objects_report(decision, database, labels, options.objects_conninfo)
    return text, decision.allowed


def objects_report(decision, database: Database, label_rules, conninfo: str) -> str:
    """The objects the session's permissions resolve to now, from the catalog of its database,
    read with the caller's own login (any login may read the catalog)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from ..core.object_labels import assignments_for
    from ..core.permissions import DbObject, resolve_privileges, with_implied_usage
    from ..engine import statements as S

    rules = decision.allowed_permissions
    if not rules:
        return "Objects: none (the Roles grant no object permissions)\n"
    rules = replace(rules, object_labels=assignments_for(database, label_rules))
    name = decision.request.database_name
    if "*" in name:
        return "Objects: name the database with --db-name to list them\n"
    params = conninfo_to_dict(conninfo)
    # Where the operator connects, unless the caller says otherwise (a port-forward).
    if "host" not in params and not os.environ.get("PGHOST"):
        params.update(host=database.spec.host, port=str(database.spec.port))
    params.update(dbname=name, connect_timeout="10")
    try:
        with psycopg.connect(make_conninfo("", **params)) as conn:
            rows = conn.execute(S.OBJECTS, {"kinds": sorted(rules.kinds)}).fetchall()
    except psycopg.Error as exc:
        raise ExplainError(f"--objects: cannot read the catalog of database {name!r}: "
                           f"{str(exc).strip()}") from None
    objects = [DbObject(k, s, n, tuple(tuple(a) for a in args or ())) for k, s, n, args in rows]
    granted = with_implied_usage(resolve_privileges(objects, rules))
    lines = [f"Objects in database \"{name}\" (read now; a session resolves them when it"
             " starts):"]
    lines += [f"  {obj.describe()}: {', '.join(sorted(privileges))}"
              for obj, privileges in sorted(granted.items())] or ["  none match"]
    return "\n".join(lines) + "\n"


def _request(api: kubernetes.client.ApiClient, options: ExplainOptions, database: Database
             ) -> tuple[AccessRequest, str]:
    """The access request to evaluate, and a sentence saying whose it is."""
    if options.user is None:
        try:
            me = whoami(api)
        except ApiException as exc:
            raise ExplainError(f"cannot tell who you are (SelfSubjectReview): {exc.status}"
                               f" {exc.reason}; name the user with --user") from None
        user = me.user
        groups = options.groups if options.groups is not None else session_groups(me)
        extra = options.extra or me.extra
        source = "you, as the API server sees you (SelfSubjectReview)"
    else:
        user, groups, extra = options.user, options.groups or (), options.extra
        source = "as given on the command line (--user, --group, --extra)"
    # Without --db-name: the Database's only offered name, else "*" (any, as Roles see it).
    offered = database.spec.databases or ()
    name = options.database_name or (offered[0] if len(offered) == 1 else "*")
    return (AccessRequest(user=user, database_name=name, groups=tuple(groups),
                          extra={key: tuple(values) for key, values in extra.items()},
                          database_roles=options.database_roles, duration=options.duration,
                          reason=options.reason),
            source)


def parse_extra(items: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``KEY=V1,V2`` items (repeatable, values of one key add up) -> extra attributes."""
    extra: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--extra {item!r}: write KEY=VALUE[,VALUE...]")
        extra.setdefault(key, []).extend(v for v in values.split(",") if v)
    return {key: tuple(values) for key, values in extra.items()}
