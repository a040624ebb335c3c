"""Internal traits: the values ``{{internal.KEY}}`` templates in Roles expand to. Pure: no I/O.

They come from a ConfigMap (``PGJIT_TRAITS_CONFIGMAP`` in ``PGJIT_NAMESPACE``) whose keys are
Kubernetes user names and whose values are YAML maps of lists, e.g. ``db_roles: [reader]``. The
operator and ``pgjit explain`` read the same entry the same way, so explain cannot disagree with
what the operator grants.
"""

from __future__ import annotations

from collections.abc import Mapping

import yaml


def user_traits(data: Mapping[str, str] | None, user: str) -> dict[str, list[str]]:
    """One user's entry of the traits ConfigMap's data.

    A missing or broken entry gives no traits rather than an error: a broken entry must grant
    nothing extra, and the policy reports templates that expanded to nothing.
    """
    raw = (data or {}).get(user)
    try:
        traits = yaml.safe_load(raw) if raw else {}
    except yaml.YAMLError:
        return {}
    return traits if isinstance(traits, dict) else {}
