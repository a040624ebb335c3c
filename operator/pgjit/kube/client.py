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


class Kube:
    def __init__(self, api_client: kubernetes.client.ApiClient):
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)

    async def patch_status(self, group: str, version: str, plural: str, namespace: str,
                           name: str, status: Mapping) -> None:
        """Merge-patch an object's status subresource (for daemons, which have no Kopf patch)."""
        try:
            await asyncio.to_thread(
                self.custom.patch_namespaced_custom_object_status, group, version, namespace,
                plural, name, {"status": dict(status)})
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile: nothing left to report on
                raise

    async def read_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        try:
            secret = await asyncio.to_thread(self.core.read_namespaced_secret, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    async def write_secret(self, namespace: str, name: str, data: Mapping[str, str], *,
                           labels: Mapping[str, str], owner: Mapping[str, str]) -> None:
        """Create the Secret, or replace its data if it exists (a retried activation)."""
        body = kubernetes.client.V1Secret(
            metadata=kubernetes.client.V1ObjectMeta(
                name=name, namespace=namespace, labels=dict(labels),
                owner_references=[kubernetes.client.V1OwnerReference(
                    api_version=owner["apiVersion"], kind=owner["kind"], name=owner["name"],
                    uid=owner["uid"], controller=True, block_owner_deletion=True)]),
            type="Opaque", string_data=dict(data))
        try:
            await asyncio.to_thread(self.core.create_namespaced_secret, namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            await asyncio.to_thread(self.core.replace_namespaced_secret, name, namespace, body)

    async def delete_secret(self, namespace: str, name: str) -> None:
        try:
            await asyncio.to_thread(self.core.delete_namespaced_secret, name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def exists(self, group: str, version: str, plural: str, namespace: str, name: str,
                     uid: str) -> bool:
        """Whether this very object (same uid, not a same-named successor) still exists."""
        try:
            obj = await asyncio.to_thread(self.custom.get_namespaced_custom_object, group,
                                          version, namespace, plural, name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return obj.get("metadata", {}).get("uid") == uid

    async def delete_owned_secrets(self, namespace: str, label_selector: str,
                                   owner_uid: str) -> list[str]:
        """Delete the Secrets matching ``label_selector`` that ``owner_uid`` owns; their names."""
        secrets = await asyncio.to_thread(self.core.list_namespaced_secret, namespace,
                                          label_selector=label_selector)
        deleted = []
        for secret in secrets.items:
            if any(ref.uid == owner_uid for ref in secret.metadata.owner_references or ()):
                await self.delete_secret(namespace, secret.metadata.name)
                deleted.append(secret.metadata.name)
        return deleted

    async def read_configmap(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            cm = await asyncio.to_thread(self.core.read_namespaced_config_map, name, namespace)
        except ApiException as exc:
            if exc.status in (403, 404):
                return None
            raise
        return dict(cm.data or {})
