"""In-memory indexes, so no handler lists Roles, Databases or sessions from the API server.

Kopf keeps them current from its watch streams and fills them before any handler runs.

An index function that stops matching an object must return ``{}``, not ``None``: Kopf keeps an
object's previous entries when its function returns ``None`` (kopf 1.45,
``OperatorIndexers.replace``), so a session that ended would stay "live" for ever and, for
instance, keep its Database from being deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from pydantic import ValidationError

from .. import GROUP, VERSION
from ..api.common import KOPF_STATUS_FIELD, KindModel
from ..api.database import Database
from ..api.labels import ObjectLabelRule
from ..api.role import Role
from ..api.session import DatabaseSession
from ..vocabulary import TERMINAL_PHASES, SessionPhase
from .triggers import IndexParts, index

log = logging.getLogger(__name__)


def session_id(namespace: str, name: str, uid: str) -> str:
    """The lease key in PostgreSQL: unique across recreations of a same-named session."""
    return f"{namespace}/{name}/{uid}"


def session_database(namespace: str, spec: Mapping) -> tuple[str, str | None]:
    """The (namespace, name) of the Database a session's spec names: how the indexes and the
    slots (slots.py) key a session's Database."""
    return namespace, (spec.get("databaseRef") or {}).get("name")


M = TypeVar("M", bound=KindModel)


@dataclass(frozen=True)
class Unparsed:
    """A Database whose object does not parse: indexed so that a session waiting for it says
    so, rather than that it does not exist. Its own status says why."""

    name: str
    problem: str


def _parse(model: type[M], body) -> M | None:
    try:
        return model.model_validate(body)
    except ValidationError as error:
        log.debug("[%s/%s] invalid %s skipped: %s", body.get("metadata", {}).get("namespace"),
                  body.get("metadata", {}).get("name"), model.__name__, error)
        return None


@index(GROUP, VERSION, Role.plural)
def roles_by_namespace(namespace, body, **_):
    """Each namespace's Roles, parsed once per change. An invalid one is left out: it grants
    nothing and stops nothing, its own status says why (handlers/roles.py)."""
    role = _parse(Role, body)
    return {namespace: role} if role is not None else {}


@index(GROUP, VERSION, ObjectLabelRule.plural)
def label_rules_by_namespace(namespace, body, **_):
    """Each namespace's ObjectLabelRules, parsed; an invalid one gives no labels."""
    rule = _parse(ObjectLabelRule, body)
    return {namespace: rule} if rule is not None else {}


def valid_roles(roles_by_namespace: Mapping[str, Iterable[Role]], namespace: str
                ) -> list[Role]:
    return list(roles_by_namespace.get(namespace, ()))


@index(GROUP, VERSION, Database.plural)
def databases_by_name(namespace, name, body, **_):
    """Each Database, parsed once per change (its status included)."""
    try:
        return {(namespace, name): Database.model_validate(body)}
    except ValidationError as error:
        problem = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                            for e in error.errors()[:3])
        return {(namespace, name): Unparsed(name, problem)}


def database_in(databases_by_name: Mapping[tuple[str, str], Iterable[Database | Unparsed]],
                namespace: str, name: str) -> Database | Unparsed | None:
    return next(iter(databases_by_name.get((namespace, name), ())), None)


#: The session indexes, registered with Kopf as one (``IndexParts``): sessions have by far
#: the most watch events of any kind. Handlers get each part by its function's name.
SESSION_INDEX = IndexParts(GROUP, VERSION, DatabaseSession.plural, id="session_index")


@SESSION_INDEX.part()
def live_sessions_by_database(namespace, name, uid, spec, status, **_):
    """Sessions that hold (or are about to hold) a lease: every one not in a terminal phase."""
    if status.get("phase") in TERMINAL_PHASES:
        return {}
    return {session_database(namespace, spec): session_id(namespace, name, uid)}


@SESSION_INDEX.part()
def live_sessions_by_id(namespace, name, uid, status, **_):
    """The same sessions by their lease id: what the sweep asks about, user by user."""
    if status.get("phase") in TERMINAL_PHASES:
        return {}
    return {session_id(namespace, name, uid): True}


@SESSION_INDEX.part()
def active_sessions_by_user(namespace, name, spec, status, **_):
    """Active sessions per (namespace, user): where a shared user's password lives.

    Values are (session name, Secret name, Database name); several Databases of a namespace may
    point at one server, where the user is one PostgreSQL role.
    """
    if status.get("phase") != SessionPhase.ACTIVE:
        return {}
    return {(namespace, spec.get("user")): (name, status.get("secretName"),
                                            spec.get("databaseRef", {}).get("name"))}


@SESSION_INDEX.part()
def active_sessions_by_database(namespace, spec, status, body, **_):
    """Active sessions per (namespace, Database), as ``ActiveSession`` records: what each
    Database's lease loop watches. One that does not parse is left out (it cannot have been
    opened as such)."""
    if status.get("phase") != SessionPhase.ACTIVE:
        return {}
    session = _parse(DatabaseSession, _slim(body))
    if session is None:
        return {}
    return {session_database(namespace, spec): ActiveSession.of(session)}


@dataclass(frozen=True, slots=True)
class ActiveSession:
    """An Active session as the Active index keeps it: what the lease loop reads on every tick,
    and the rest as the JSON of the parsed session, parsed again only when it is needed (a
    revalidation, the end).

    The parsed model, with the strings of the watch event it came from, costs about 10 KB per
    session held; this record about 1.2 KB, and a lease loop holds every Active session of its
    Database for as long as they last (README, Performance: 10,000 Active sessions).
    """

    name: str
    expires_at: datetime | None
    document: bytes

    @classmethod
    def of(cls, session: DatabaseSession) -> ActiveSession:
        return cls(str(session.metadata.name), session.status.expires_at,
                   session.model_dump_json(by_alias=True, exclude_none=True).encode())

    def parsed(self) -> DatabaseSession:
        return DatabaseSession.model_validate_json(self.document)


def _slim(body) -> dict:
    """What the lease loop and the end of a session read, without managedFields, annotations
    and Kopf's bookkeeping: a full body costs several times more memory, per Active session."""
    metadata = body.get("metadata", {})
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
            "metadata": {key: metadata[key] for key in
                         ("name", "namespace", "uid", "generation", "creationTimestamp")
                         if key in metadata},
            "spec": body.get("spec", {}),
            "status": {key: value for key, value in body.get("status", {}).items()
                       if key != KOPF_STATUS_FIELD}}


def body_of(session: DatabaseSession) -> dict:
    """An indexed session as a body again, for the handlers' helpers and Kopf's events."""
    return session.model_dump(mode="json", by_alias=True, exclude_none=True)
