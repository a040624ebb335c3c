"""The API client and default namespace of the current kubeconfig, as kubectl would pick them."""

from __future__ import annotations

import json

import kubernetes
from kubernetes.client.rest import ApiException

DEFAULT_NAMESPACE = "default"


class KubeconfigError(Exception):
    """No usable kubeconfig: missing file, no current context, unreadable credentials."""


def api_client() -> kubernetes.client.ApiClient:
    """An ApiClient for the current kubeconfig context (``$KUBECONFIG`` or ~/.kube/config).

    Its own configuration, not the library's global default, so nothing else in the process
    can pick up these credentials by accident.
    """
    try:
        return kubernetes.config.new_client_from_config(persist_config=False)
    except kubernetes.config.ConfigException as exc:
        raise KubeconfigError(f"no usable kubeconfig: {exc}") from None


def current_namespace() -> str:
    """The namespace of the current context, else ``default`` (kubectl's rule)."""
    try:
        _, active = kubernetes.config.list_kube_config_contexts()
    except kubernetes.config.ConfigException as exc:
        raise KubeconfigError(f"no usable kubeconfig: {exc}") from None
    return (active or {}).get("context", {}).get("namespace") or DEFAULT_NAMESPACE


def api_error(exc: ApiException) -> str:
    """The API server's own message (the Status body) when there is one, else the HTTP reason."""
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return f"{exc.status} {message or exc.reason}"
