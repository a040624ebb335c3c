"""The operator's internal traits for one user, read the way the operator reads them.

The operator takes ``{{internal.KEY}}`` values from a ConfigMap named by
``PGJIT_TRAITS_CONFIGMAP`` in ``PGJIT_NAMESPACE`` (keys are user names, values YAML maps of
lists). ``pgjit explain`` reads the same ConfigMap when the person running it may; when it may
not, it says so instead of pretending the traits are empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import kubernetes
from kubernetes.client.rest import ApiException

from pgjit.core.traits import user_traits


@dataclass(frozen=True)
class InternalTraits:
    """The traits found for a user, and a sentence saying where they came from."""

    values: Mapping[str, list[str]] = field(default_factory=dict)
    source: str = "no traits ConfigMap configured"


def parse_configmap_ref(text: str) -> tuple[str, str]:
    """``NAMESPACE/NAME`` -> (namespace, name). Raises ValueError otherwise."""
    namespace, _, name = text.partition("/")
    if not namespace or not name or "/" in name:
        raise ValueError(f"{text!r} is not NAMESPACE/NAME")
    return namespace, name


def read_internal_traits(api: kubernetes.client.ApiClient, ref: tuple[str, str] | None,
                         user: str) -> InternalTraits:
    """``user``'s entry of the ConfigMap ``ref`` (namespace, name), or why there is none."""
    if ref is None:
        return InternalTraits()
    namespace, name = ref
    try:
        configmap = kubernetes.client.CoreV1Api(api).read_namespaced_config_map(name, namespace)
    except ApiException as exc:
        return InternalTraits(source=f"ConfigMap {namespace}/{name} could not be read"
                                     f" ({exc.status} {exc.reason}): {{{{internal.*}}}} templates"
                                     " are shown as expanding to nothing, which may differ from"
                                     " what the operator grants")
    traits = user_traits(configmap.data, user)
    entry = "an entry" if traits else "no entry"
    return InternalTraits(values=traits,
                          source=f"ConfigMap {namespace}/{name} ({entry} for {user})")
