"""The few Kubernetes API calls the handlers make besides Kopf's own watching and patching.

The official client is synchronous; calls run in worker threads so the event loop keeps serving
other objects while one waits on the API server.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Mapping

import kubernetes
from kubernetes.client.rest import ApiException


def load_client() -> kubernetes.client.ApiClient:
    """In a pod: the ServiceAccount; elsewhere: the current kubeconfig (KUBECONFIG)."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return kubernetes.client.ApiClient()


class NotOwned(Exception):
    """An object pgjit would write exists already and belongs to someone else."""

    def __init__(self, kind: str, namespace: str, name: str):
        super().__init__(f'{kind} "{name}" already exists in namespace "{namespace}" and does '
                         "not belong to this session")
        self.kind, self.namespace, self.name = kind, namespace, name


class NotFound(Exception):
    """The API server answered 404."""


class Conflict(Exception):
    """The API server answered 409: the object exists, or a precondition (uid) failed."""


class Forbidden(Exception):
    """The API server answered 403."""


_TRANSLATED = {404: NotFound, 409: Conflict, 403: Forbidden}


async def _call(function, *args, **kwargs):
    """Run one client call in a worker thread; the statuses pgjit acts on come back as the
    exceptions above (translated here only), any other failure as the client raised it."""
    try:
        return await asyncio.to_thread(function, *args, **kwargs)
    except ApiException as exc:
        translated = _TRANSLATED.get(exc.status)
        if translated is None:
            raise
        raise translated(f"{exc.status} {exc.reason}") from exc


class Kube:
    def __init__(self, api_client: kubernetes.client.ApiClient):
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)
        #: uid of each object this process created or replaced for a session, keyed by
        #: (kind, namespace, name, owner uid): ending the session then deletes it in one request.
        self._written: dict[tuple[str, str, str, str], str] = {}

    async def patch_status(self, group: str, version: str, plural: str, namespace: str,
                           name: str, status: Mapping) -> None:
        """Merge-patch an object's status subresource (for daemons, which have no Kopf patch)."""
        try:
            await _call(self.custom.patch_namespaced_custom_object_status, group, version,
                        namespace, plural, name, {"status": dict(status)})
        except NotFound:
            pass  # deleted meanwhile: nothing left to report on

    async def annotate(self, group: str, version: str, plural: str, namespace: str,
                       name: str, annotations: Mapping[str, str]) -> None:
        """Merge-patch annotations onto an object (outside a handler of its own)."""
        try:
            await _call(self.custom.patch_namespaced_custom_object, group, version, namespace,
                        plural, name, {"metadata": {"annotations": dict(annotations)}})
        except NotFound:
            pass  # deleted meanwhile: nothing left to annotate

    async def read_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        try:
            secret = await _call(self.core.read_namespaced_secret, name, namespace)
        except NotFound:
            return None
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

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
        await self._create_or_replace_owned(
            namespace, body, owner, self.core.create_namespaced_secret,
            self.core.read_namespaced_secret, self.core.replace_namespaced_secret)

    async def _create_or_replace_owned(self, namespace: str, body: dict, owner: Mapping[str, str],
                                       create, read, replace) -> None:
        ref = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["name"],
               "uid": owner["uid"], "controller": True, "blockOwnerDeletion": True}
        body = {**body, "metadata": {**body["metadata"], "ownerReferences": [ref]}}
        name = body["metadata"]["name"]
        key = (body["kind"], namespace, name, owner["uid"])
        try:
            created = await _call(create, namespace, body)
        except Conflict:
            pass  # exists already: replaced below if it is this session's
        else:
            self._written[key] = created.metadata.uid
            return
        existing = await _call(read, name, namespace)
        if not any(r.uid == owner["uid"] for r in existing.metadata.owner_references or ()):
            raise NotOwned(body["kind"], namespace, name)
        body["metadata"]["resourceVersion"] = existing.metadata.resource_version
        await _call(replace, name, namespace, body)
        self._written[key] = existing.metadata.uid

    async def delete_secret(self, namespace: str, name: str, owner_uid: str) -> None:
        """Delete the Secret if ``owner_uid`` owns it; someone else's is left alone."""
        await self._delete_owned("Secret", self.core.read_namespaced_secret,
                                 self.core.delete_namespaced_secret, namespace, name, owner_uid)

    async def grant_secret_access(self, namespace: str, role: dict, binding: dict, *,
                                  owner: Mapping[str, str]) -> None:
        """Create (or, on a retried activation, replace) a Role and its RoleBinding.

        Raises :class:`NotOwned` for a same-named Role or RoleBinding that is not this session's.
        """
        # The Role first: for anyone without the `bind` verb (the operator's ServiceAccount), the
        # API server checks a new RoleBinding against the Role it names, and a Role that does
        # not exist yet makes that check fail with 404.
        await self._create_or_replace_owned(
            namespace, role, owner, self.rbac.create_namespaced_role,
            self.rbac.read_namespaced_role, self.rbac.replace_namespaced_role)
        await self._create_or_replace_owned(
            namespace, binding, owner, self.rbac.create_namespaced_role_binding,
            self.rbac.read_namespaced_role_binding, self.rbac.replace_namespaced_role_binding)

    async def revoke_secret_access(self, namespace: str, name: str, owner_uid: str) -> None:
        """Delete the RoleBinding and Role of that name that ``owner_uid`` owns.

        A same-named object of someone else is left alone (the session never got to create
        its own, see :class:`NotOwned`); absent ones are fine.
        """
        await asyncio.gather(
            self._delete_owned("RoleBinding", self.rbac.read_namespaced_role_binding,
                               self.rbac.delete_namespaced_role_binding, namespace, name,
                               owner_uid),
            self._delete_owned("Role", self.rbac.read_namespaced_role,
                               self.rbac.delete_namespaced_role, namespace, name, owner_uid))

    async def _delete_owned(self, kind: str, read, delete, namespace: str, name: str,
                            owner_uid: str) -> None:
        """Delete the named object if ``owner_uid`` owns it; someone else's is left alone.

        The uid precondition makes the check and the delete one step: an object recreated by
        someone else in between is not deleted. When this process wrote the object, its uid is
        known and the delete is a single request; otherwise (after a restart) it is read first.
        """
        uid = self._written.pop((kind, namespace, name, owner_uid), None)
        try:
            if uid is None:
                existing = await _call(read, name, namespace)
                if not any(r.uid == owner_uid for r in existing.metadata.owner_references or ()):
                    return
                uid = existing.metadata.uid
            options = kubernetes.client.V1DeleteOptions(
                preconditions=kubernetes.client.V1Preconditions(uid=uid))
            await _call(delete, name, namespace, body=options)
        except (NotFound, Conflict):
            pass  # gone already, or replaced by someone else's (the uid precondition)

    async def exists(self, group: str, version: str, plural: str, namespace: str, name: str,
                     uid: str) -> bool:
        """Whether this very object (same uid, not a same-named successor) still exists."""
        try:
            obj = await _call(self.custom.get_namespaced_custom_object, group, version,
                              namespace, plural, name)
        except NotFound:
            return False
        return obj.get("metadata", {}).get("uid") == uid

    async def delete_owned_secrets(self, namespace: str, label_selector: str,
                                   owner_uid: str) -> list[str]:
        """Delete the Secrets matching ``label_selector`` that ``owner_uid`` owns; their names."""
        secrets = await _call(self.core.list_namespaced_secret, namespace,
                              label_selector=label_selector)
        deleted = []
        for secret in secrets.items:
            if any(ref.uid == owner_uid for ref in secret.metadata.owner_references or ()):
                await self.delete_secret(namespace, secret.metadata.name, owner_uid)
                deleted.append(secret.metadata.name)
        return deleted

    async def read_configmap(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            cm = await _call(self.core.read_namespaced_config_map, name, namespace)
        except (Forbidden, NotFound):
            return None
        return dict(cm.data or {})
