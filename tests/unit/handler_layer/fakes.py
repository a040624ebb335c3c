"""Builders and fakes of the handler layer (the fixtures in conftest.py put them together).

The handler layer: pgjit's Kopf handlers called as Kopf calls them, in milliseconds.

Mocked: the Kubernetes API (:class:`FakeKube` keeps Secrets, RBAC objects and status patches in
dicts, with the owner checks of the real adapter) and PostgreSQL (:class:`StubEngine` answers
activations and ends as a test configures it). Kopf is not running: indexes are plain dicts of
lists, ``patch`` is a real ``kopf.Patch``, and Events are collected instead of posted.

Observed: what the handlers write (status, Secrets and their metadata, status patches of other
objects, Events, metrics). Builders make the three kinds' bodies with only what a test varies.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pgjit.engine.errors import EngineError
from pgjit.handlers import indexes
from pgjit.engine.results import Activation, Teardown
from pgjit.kube.client import NotOwned
from pgjit.vocabulary import Reason

NAMESPACE = "team-a"


def now() -> datetime:
    return datetime.now(timezone.utc)


def ts(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------
# Builders


def database_body(name: str = "orders", *, credentials: str = "password",
                  status: dict | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "host": "orders-pg.data.svc", "admin": {"username": "pgjit-admin",
                                               "passwordSecretRef": {"name": "orders-admin"}},
        "credentials": {"type": credentials}}
    if credentials == "clientCertificate":
        spec["credentials"]["clientCASecretRef"] = {"name": "orders-client-ca"}
    return {"apiVersion": "pgjit.dev/v1alpha1", "kind": "Database",
            "metadata": {"name": name, "namespace": NAMESPACE, "generation": 1,
                         "uid": f"uid-db-{name}"},
            "spec": spec, "status": status or {}}


def role_body(name: str = "analysts", *, user: str = "alice", spec: dict | None = None
              ) -> dict[str, Any]:
    return {"apiVersion": "pgjit.dev/v1alpha1", "kind": "Role",
            "metadata": {"name": name, "namespace": NAMESPACE, "generation": 1},
            "spec": spec if spec is not None else {
                "subjects": [{"kind": "User", "name": user}], "userProvisioning": "keep",
                "allow": {"databaseSelector": {}, "databaseNames": ["orders"],
                          "databaseRoles": ["reader"]}}}


def invalid_role_body(name: str = "broken") -> dict[str, Any]:
    """A Role the API server stored but the models refuse (as after a CRD downgrade)."""
    return role_body(name, spec={"subjects": [{"kind": "User", "name": "alice"}],
                                 "allow": {"databaseRoles": "not-a-list"}})


def session_body(name: str = "alice-orders", *, user: str = "alice", database: str = "orders",
                 duration: str = "1h", created: datetime | None = None,
                 status: dict | None = None) -> dict[str, Any]:
    return {"apiVersion": "pgjit.dev/v1alpha1", "kind": "DatabaseSession",
            "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}",
                         "generation": 1, "creationTimestamp": ts(created or now())},
            "spec": {"user": user, "databaseRef": {"name": database}, "databaseName": "orders",
                     "duration": duration},
            "status": status or {}}


def review_body(session: str = "alice-orders", *, reviewer: str = "bob",
                decision: str = "Approve", created: datetime | None = None,
                name: str | None = None, groups: list[str] | None = None,
                reason: str | None = None, owner_uid: str | None = None) -> dict[str, Any]:
    """A DatabaseSessionReview as the API server stores it (spec.reviewer bound to its
    creator by the admission policy, which the handlers take as given)."""
    name = name or f"{session}-{reviewer}"
    spec: dict[str, Any] = {"sessionRef": {"name": session}, "decision": decision,
                            "reviewer": reviewer}
    if groups:
        spec["reviewerGroups"] = groups
    if reason:
        spec["reason"] = reason
    metadata: dict[str, Any] = {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}",
                                "creationTimestamp": ts(created or now())}
    if owner_uid:
        metadata["ownerReferences"] = [{"apiVersion": "pgjit.dev/v1alpha1",
                                        "kind": "DatabaseSession", "name": session,
                                        "uid": owner_uid}]
    return {"apiVersion": "pgjit.dev/v1alpha1", "kind": "DatabaseSessionReview",
            "metadata": metadata, "spec": spec}


def client_ca(not_after: datetime) -> dict[str, bytes]:
    """A client CA Secret's data (tls.crt, tls.key) for a CA valid until ``not_after``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test client CA")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now() - timedelta(days=1)).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return {"tls.crt": cert.public_bytes(serialization.Encoding.PEM),
            "tls.key": key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())}


# --------------------------------------------------------------------------------------------
# Fakes


@dataclass
class StoredSecret:
    data: dict[str, bytes]
    labels: dict[str, str]
    annotations: dict[str, str]
    owner_uid: str


@dataclass
class FakeKube:
    """The Kube adapter's methods over dicts; the same owner rules as the real one."""

    secrets: dict[tuple[str, str], StoredSecret] = field(default_factory=dict)
    access: dict[tuple[str, str], str] = field(default_factory=dict)
    reader_roles: dict[tuple[str, str], str] = field(default_factory=dict)
    #: (plural, namespace, name, status) of every status patch, in order.
    status_patches: list[tuple[str, str, str, dict]] = field(default_factory=list)
    #: uids of sessions whose DELETED event the watch has delivered (gone from the index).
    deleted_objects: set[str] = field(default_factory=set)
    configmaps: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    #: (plural, namespace, name, annotations) of every annotation patch, in order.
    annotations: list[tuple[str, str, str, dict]] = field(default_factory=list)

    #: The Role bodies the API server holds, when they differ from the index (a watch that
    #: has not delivered a new Role yet); None: the same as the index.
    roles_in_api: list[dict] | None = None
    #: Set by the World: the index's Role bodies.
    indexed_roles: list[dict] = field(default_factory=list)

    async def list_roles(self, namespace: str) -> list[Any]:
        bodies = self.indexed_roles if self.roles_in_api is None else self.roles_in_api
        return [r for b in bodies for r in indexes.roles_by_namespace(
            namespace=namespace, body=b).values()]

    async def read_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        stored = self.secrets.get((namespace, name))
        return dict(stored.data) if stored else None

    def add_secret(self, namespace: str, name: str, data: dict[str, bytes]) -> None:
        self.secrets[(namespace, name)] = StoredSecret(data, {}, {}, owner_uid="")

    async def write_secret(self, namespace: str, name: str, data: dict[str, str], *,
                           labels: dict[str, str], owner: dict[str, str],
                           annotations: dict[str, str] | None = None) -> None:
        existing = self.secrets.get((namespace, name))
        if existing is not None and existing.owner_uid != owner["uid"]:
            raise NotOwned("Secret", namespace, name)
        self.secrets[(namespace, name)] = StoredSecret(
            {k: v.encode() for k, v in data.items()}, dict(labels), dict(annotations or {}),
            owner["uid"])

    async def delete_secret(self, namespace: str, name: str, owner_uid: str) -> None:
        stored = self.secrets.get((namespace, name))
        if stored is not None and stored.owner_uid == owner_uid:
            del self.secrets[(namespace, name)]

    async def write_reader_role(self, namespace: str, role: dict, *,
                                owner: dict[str, str]) -> None:
        self.reader_roles[(namespace, role["metadata"]["name"])] = owner["uid"]

    async def bind_reader_role(self, namespace: str, binding: dict, *,
                               owner: dict[str, str]) -> None:
        name = binding["metadata"]["name"]
        assert self.reader_roles.get((namespace, name)) == owner["uid"], "bound before its Role"
        existing = self.secrets.get((namespace, name))
        assert existing is not None and existing.owner_uid == owner["uid"], \
            "the user was bound to read a Secret that is not the session's"
        self.access[(namespace, name)] = owner["uid"]

    async def revoke_secret_access(self, namespace: str, name: str, owner_uid: str) -> None:
        if self.access.get((namespace, name)) == owner_uid:
            del self.access[(namespace, name)]
        if self.reader_roles.get((namespace, name)) == owner_uid:
            del self.reader_roles[(namespace, name)]

    async def patch_status(self, group: str, version: str, plural: str, namespace: str,
                           name: str, status: dict) -> None:
        self.status_patches.append((plural, namespace, name, dict(status)))

    async def annotate(self, group: str, version: str, plural: str, namespace: str,
                       name: str, annotations: dict[str, str]) -> None:
        self.annotations.append((plural, namespace, name, dict(annotations)))

    async def delete_owned_secrets(self, namespace: str, label_selector: str,
                                   owner_uid: str) -> list[str]:
        return []

    async def read_configmap(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.configmaps.get((namespace, name))

    def patches_of(self, plural: str, name: str) -> list[dict]:
        return [status for p, _, n, status in self.status_patches if (p, n) == (plural, name)]


@dataclass
class StubEngine:
    """Answers like the engine; records what it was asked."""

    shared: bool = False
    activations: list[Any] = field(default_factory=list)
    ends: list[tuple[str, str]] = field(default_factory=list)

    async def activate(self, request: Any) -> Activation:
        self.activations.append(request)
        if self.shared and not request.shared_password_known:
            raise EngineError(Reason.USER_SHARED, "the password in effect is unknown",
                              transient=True)
        return Activation(username=request.identity, roles=request.roles, created=True,
                          shared=self.shared, password_set=request.password is not None,
                          valid_until=request.expires_at)

    async def end(self, identity: str, session_id: str, *, mode: str | None,
                  terminate_connections: bool) -> Teardown:
        self.ends.append((identity, session_id))
        return Teardown(username=identity, action="Locked", reason="the lease ended")


@dataclass
class StubEngines:
    engine: StubEngine

    async def engine_for(self, database: Any, namespace: str, *, refresh: bool = False
                         ) -> StubEngine:
        return self.engine

    async def forget(self, namespace: str, name: str) -> None:
        pass


class Stopped:
    """A daemon's ``stopped`` flag: false until :meth:`stop`; ``wait`` sleeps until then."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def stop(self) -> None:
        self._event.set()

    async def wait(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return self._event.is_set()


def _indexed(index_function: Any, bodies: list[dict]) -> dict:
    """What Kopf's index holds for ``bodies``: the production index function's entries."""
    index: dict = {}
    for body in bodies:
        entries = index_function(namespace=NAMESPACE, name=body["metadata"]["name"], body=body)
        for key, value in entries.items():
            index.setdefault(key, []).append(value)
    return index


@dataclass
class World:
    """One namespace's objects as Kopf's indexes would hold them, and the fakes behind memo."""

    kube: FakeKube
    engine: StubEngine
    memo: Any
    events: list[dict[str, Any]]
    databases: list[dict] = field(default_factory=list)
    roles: list[dict] = field(default_factory=list)
    active_sessions: list[dict] = field(default_factory=list)
    live_sessions: dict[str, list[str]] = field(default_factory=dict)
    #: DatabaseSessionReview bodies, indexed by the session they name.
    reviews: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.kube.indexed_roles = self.roles  # the API server agrees with the index

    @property
    def databases_by_name(self) -> dict:
        return _indexed(indexes.databases_by_name, self.databases)

    @property
    def roles_by_namespace(self) -> dict:
        return _indexed(indexes.roles_by_namespace, self.roles)

    def active_sessions_by_database(self) -> dict:
        index: dict = {}
        for body in self.active_sessions:
            entries = indexes.active_sessions_by_database(
                namespace=NAMESPACE, spec=body["spec"], status=body.get("status", {}), body=body)
            for key, value in entries.items():
                index.setdefault(key, []).append(value)
        return index

    def live_sessions_by_database(self) -> dict:
        return {(NAMESPACE, db): list(ids) for db, ids in self.live_sessions.items() if ids}

    def live_sessions_by_id(self) -> dict:
        return {sid: [True] for ids in self.live_sessions.values() for sid in ids}

    def reviews_by_session(self) -> dict:
        from pgjit.handlers.approvals import reviews_by_session

        index: dict = {}
        for body in self.reviews:
            for key, value in reviews_by_session(
                    namespace=NAMESPACE, name=body["metadata"]["name"],
                    uid=body["metadata"]["uid"], spec=body["spec"],
                    meta=body["metadata"]).items():
                index.setdefault(key, []).append(value)
        return index

    def open_lease_kwargs(self, body: dict) -> dict[str, Any]:
        """The indexes the create handler gets for ``body``, which Kopf's live index holds as
        it would, unless its DELETED event has been delivered (``kube.deleted_objects``)."""
        meta = body["metadata"]
        live = self.live_sessions.setdefault(body["spec"]["databaseRef"]["name"], [])
        session = f"{NAMESPACE}/{meta['name']}/{meta['uid']}"
        if meta["uid"] not in self.kube.deleted_objects and session not in live:
            live.append(session)
        return {**self.indexes(), "live_sessions_by_id": self.live_sessions_by_id()}

    def indexes(self) -> dict[str, Any]:
        return {"databases_by_name": self.databases_by_name,
                "roles_by_namespace": self.roles_by_namespace,
                "active_sessions_by_user": {}, "label_rules_by_namespace": {},
                "reviews_by_session": self.reviews_by_session()}


async def eventually(condition: Any, *, timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``condition()`` until it is true, failing after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
