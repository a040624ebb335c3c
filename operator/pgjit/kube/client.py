"""The few Kubernetes API calls the handlers make besides Kopf's own watching and patching.

They go straight to the API server over one pooled aiohttp session, on the event loop, as
plain JSON: no worker threads and no generated models. The `kubernetes` package's client cost
about 4-9 ms of CPU per session in threads, validation wrappers and model conversion for six
small requests (README, Performance). The credentials are the operator's
:class:`~.transport.Connection`, the one Kopf logs in with too; its headers are read for every
request, so a rotated ServiceAccount token is picked up.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from pydantic import ValidationError

from .. import GROUP, VERSION
from ..api.role import Role
from ..core.credentials_secret import OWNER_UID_LABEL
from .batched_deletes import BatchedDeletes
from .transport import Conflict, Connection, Forbidden, NotFound, raise_for

#: Connections to the API server this client keeps open at most: enough for the handlers'
#: parallel writes, and a bound on the TLS buffers each one holds (about 128 KiB).
CONNECTION_LIMIT = 8
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30)

_CORE = "/api/v1"
_RBAC = "/apis/rbac.authorization.k8s.io/v1"


class NotOwned(Exception):
    """An object pgjit would write exists already and belongs to someone else."""

    def __init__(self, kind: str, namespace: str, name: str):
        super().__init__(f'{kind} "{name}" already exists in namespace "{namespace}" and does '
                         "not belong to this session")
        self.kind, self.namespace, self.name = kind, namespace, name


def _owner_uids(obj: Mapping[str, Any]) -> set[str]:
    return {ref.get("uid") for ref in obj.get("metadata", {}).get("ownerReferences") or ()}


class Kube:
    def __init__(self, connection: Connection):
        self.connection = connection
        self._session: aiohttp.ClientSession | None = None
        #: uid of each object this process created or replaced for a session, keyed by
        #: (kind, namespace, name, owner uid): ending the session then deletes it without
        #: reading it first, by its owner's uid label, along with other sessions' objects.
        self._written: dict[tuple[str, str, str, str], str] = {}
        self._batched_deletes = BatchedDeletes(self._request)

    # -- transport ---------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running event loop that will use it.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self.connection.ssl_context(),
                                             limit=CONNECTION_LIMIT)
            self._session = aiohttp.ClientSession(
                self.connection.server + "/", connector=connector,
                timeout=REQUEST_TIMEOUT, json_serialize=json.dumps)
        return self._session

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        headers.update(self.connection.headers())
        return headers

    async def _request(self, method: str, path: str, body: Any = None, *,
                       content_type: str = "application/json",
                       params: Mapping[str, str] | None = None) -> dict:
        """One request; the statuses pgjit acts on raise the exceptions above, any other
        error status :class:`ApiError`."""
        data = None if body is None else json.dumps(body)
        async with self._http().request(
                method, path.lstrip("/"), data=data, params=params,
                headers=self._headers(content_type if body is not None else None)) as response:
            text = await response.text()
            raise_for(response.status, response.reason or "", text)
            return json.loads(text) if text else {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # -- what the handlers use ---------------------------------------------------------------

    async def patch_status(self, group: str, version: str, plural: str, namespace: str,
                           name: str, status: Mapping) -> None:
        """Merge-patch an object's status subresource (for daemons, which have no Kopf patch)."""
        try:
            await self._request("PATCH", f"{_custom(group, version, namespace, plural, name)}"
                                "/status", {"status": dict(status)},
                                content_type="application/merge-patch+json")
        except NotFound:
            pass  # deleted meanwhile: nothing left to report on

    async def list_roles(self, namespace: str) -> list[Role]:
        """The namespace's Roles as the API server has them now, those that parse."""
        listed = await self._request("GET", _path(f"/apis/{GROUP}/{VERSION}", namespace,
                                                  Role.plural))
        roles = []
        for item in listed.get("items") or ():
            try:
                roles.append(Role.model_validate(item))
            except ValidationError:
                continue  # its own status says why; it grants nothing
        return roles

    async def annotate(self, group: str, version: str, plural: str, namespace: str,
                       name: str, annotations: Mapping[str, str]) -> None:
        """Merge-patch annotations onto an object (outside a handler of its own)."""
        try:
            await self._request("PATCH", _custom(group, version, namespace, plural, name),
                                {"metadata": {"annotations": dict(annotations)}},
                                content_type="application/merge-patch+json")
        except NotFound:
            pass  # deleted meanwhile: nothing left to annotate

    async def read_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        try:
            secret = await self._request("GET", _path(_CORE, namespace, "secrets", name))
        except NotFound:
            return None
        return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}

    async def write_secret(self, namespace: str, name: str, data: Mapping[str, str], *,
                           labels: Mapping[str, str], owner: Mapping[str, str],
                           annotations: Mapping[str, str] | None = None) -> None:
        """Create the Secret, or replace its data if this session wrote it before (a retry).

        Raises :class:`NotOwned` when a Secret of that name exists and belongs to something else:
        ``spec.secretName`` is chosen by the user, and overwriting (or later deleting) someone
        else's Secret would destroy data pgjit does not own.
        """
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "labels": dict(labels),
                             "annotations": dict(annotations or {})},
                "stringData": dict(data)}
        await self._create_or_replace_owned(namespace, body, owner, _CORE, "secrets",
                                            reclaim_garbage=True)

    async def _create_or_replace_owned(self, namespace: str, body: dict,
                                       owner: Mapping[str, str], api: str, plural: str, *,
                                       reclaim_garbage: bool = False) -> None:
        ref = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["name"],
               "uid": owner["uid"], "controller": True, "blockOwnerDeletion": True}
        labels = {**(body["metadata"].get("labels") or {}), OWNER_UID_LABEL: owner["uid"]}
        body = {**body, "metadata": {**body["metadata"], "labels": labels,
                                     "ownerReferences": [ref]}}
        name = body["metadata"]["name"]
        key = (body["kind"], namespace, name, owner["uid"])
        try:
            created = await self._request("POST", _path(api, namespace, plural), body)
        except Conflict:
            pass  # exists already: replaced below if it is this session's
        else:
            self._written[key] = created["metadata"]["uid"]
            return
        existing = await self._request("GET", _path(api, namespace, plural, name))
        if owner["uid"] not in _owner_uids(existing):
            if not (reclaim_garbage and await self._garbage(namespace, existing)):
                raise NotOwned(body["kind"], namespace, name)
            # An ended session's, waiting for the garbage collector (its finalizer was removed
            # by hand, or the session vanished before the operator took hold): what the
            # collector would delete, deleted now, so that a session re-created under the same
            # name need not wait for it (nor fail with SecretConflict).
            await self._delete_if_uid(_path(api, namespace, plural, name),
                                      existing["metadata"]["uid"])
            try:
                created = await self._request("POST", _path(api, namespace, plural), body)
            except Conflict:
                raise NotOwned(body["kind"], namespace, name) from None  # someone else's now
            self._written[key] = created["metadata"]["uid"]
            return
        body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
        await self._request("PUT", _path(api, namespace, plural, name), body)
        self._written[key] = existing["metadata"]["uid"]

    async def _garbage(self, namespace: str, obj: Mapping[str, Any]) -> bool:
        """Whether every owner of ``obj`` is a DatabaseSession that no longer exists (or exists
        under another uid: a new session of the same name). Anything else is someone's."""
        refs = obj.get("metadata", {}).get("ownerReferences") or ()
        if not refs or any(ref.get("apiVersion") != f"{GROUP}/{VERSION}"
                           or ref.get("kind") != "DatabaseSession" for ref in refs):
            return False
        for ref in refs:
            try:
                session = await self._request("GET", _custom(GROUP, VERSION, namespace,
                                                              "databasesessions", ref["name"]))
            except NotFound:
                continue
            if session["metadata"]["uid"] == ref.get("uid"):
                return False
        return True

    async def _delete_if_uid(self, path: str, uid: str) -> None:
        try:
            await self._request("DELETE", path, {"apiVersion": "v1", "kind": "DeleteOptions",
                                                 "preconditions": {"uid": uid}})
        except (NotFound, Conflict):
            pass  # gone already, or replaced by someone else's (the uid precondition)

    async def delete_secret(self, namespace: str, name: str, owner_uid: str) -> None:
        """Delete the Secret if ``owner_uid`` owns it; someone else's is left alone."""
        await self._delete_owned("Secret", _CORE, "secrets", namespace, name, owner_uid)

    async def write_reader_role(self, namespace: str, role: dict, *,
                                owner: Mapping[str, str]) -> None:
        """Create (or, on a retried activation, replace) the Role that reads one Secret. It
        grants nothing until it is bound (:meth:`bind_reader_role`).

        Raises :class:`NotOwned` for a same-named Role that is not this session's.
        """
        await self._create_or_replace_owned(namespace, role, owner, _RBAC, "roles")

    async def bind_reader_role(self, namespace: str, binding: dict, *,
                               owner: Mapping[str, str]) -> None:
        """Create (or replace) the RoleBinding that gives the user the reader Role.

        Only after :meth:`write_reader_role` has succeeded: for anyone without the `bind` verb
        (the operator's ServiceAccount), the API server checks a new RoleBinding against the
        Role it names, and a Role that does not exist yet makes that check fail with 404.
        Raises :class:`NotOwned` for a same-named RoleBinding that is not this session's.
        """
        await self._create_or_replace_owned(namespace, binding, owner, _RBAC, "rolebindings")

    async def revoke_secret_access(self, namespace: str, name: str, owner_uid: str) -> None:
        """Delete the RoleBinding and Role of that name that ``owner_uid`` owns.

        A same-named object of someone else is left alone (the session never got to create
        its own, see :class:`NotOwned`); absent ones are fine.
        """
        await asyncio.gather(
            self._delete_owned("RoleBinding", _RBAC, "rolebindings", namespace, name,
                               owner_uid),
            self._delete_owned("Role", _RBAC, "roles", namespace, name, owner_uid))

    async def _delete_owned(self, kind: str, api: str, plural: str, namespace: str, name: str,
                            owner_uid: str) -> None:
        """Delete the named object if ``owner_uid`` owns it; someone else's is left alone.

        When this process wrote the object, it carries its owner's uid as a label, and the
        delete selects it by that label (kube/batched_deletes.py). Otherwise (after a restart,
        or an object of an earlier release, without the label) it is read first, and the
        uid precondition makes the check and the delete one step: an object recreated by
        someone else in between is not deleted.
        """
        key = (kind, namespace, name, owner_uid)
        if key in self._written:
            # Written by this process, so labelled with its owner's uid (and only its own
            # objects are): deleted by that label, in one request with other sessions'.
            try:
                await self._batched_deletes.delete(_path(api, namespace, plural), owner_uid)
            except NotFound:
                pass  # the namespace is gone, and with it the object
            self._written.pop(key, None)
            return
        path = _path(api, namespace, plural, name)
        try:
            existing = await self._request("GET", path)
        except NotFound:
            return
        if owner_uid not in _owner_uids(existing):
            return
        await self._delete_if_uid(path, existing["metadata"]["uid"])

    async def delete_owned_secrets(self, namespace: str, label_selector: str,
                                   owner_uid: str) -> list[str]:
        """Delete the Secrets matching ``label_selector`` that ``owner_uid`` owns; their names."""
        secrets = await self._request("GET", _path(_CORE, namespace, "secrets"),
                                      params={"labelSelector": label_selector})
        deleted = []
        for secret in secrets.get("items") or ():
            if owner_uid in _owner_uids(secret):
                await self.delete_secret(namespace, secret["metadata"]["name"], owner_uid)
                deleted.append(secret["metadata"]["name"])
        return deleted

    async def read_configmap(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            cm = await self._request("GET", _path(_CORE, namespace, "configmaps", name))
        except (Forbidden, NotFound):
            return None
        return dict(cm.get("data") or {})


def _path(api: str, namespace: str, plural: str, name: str | None = None) -> str:
    path = f"{api}/namespaces/{quote(namespace, safe='')}/{plural}"
    return path if name is None else f"{path}/{quote(name, safe='')}"


def _custom(group: str, version: str, namespace: str, plural: str, name: str) -> str:
    return _path(f"/apis/{group}/{version}", namespace, plural, name)
