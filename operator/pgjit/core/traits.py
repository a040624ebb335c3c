"""Internal traits: the values ``{{internal.KEY}}`` templates in Roles expand to. Pure: no I/O.

They come from a ConfigMap (``PGJIT_TRAITS_CONFIGMAP`` in ``PGJIT_NAMESPACE``) whose keys are
Kubernetes user names and whose values are YAML maps of lists, e.g. ``db_roles: [reader]``. The
operator and ``pgjit explain`` read the same entry the same way, so explain cannot disagree with
what the operator grants.

ConfigMap keys may only hold ``[-._a-zA-Z0-9]``, which leaves out most real identities (the ``@``
of an e-mail address, the ``:`` of ``system:serviceaccount:ns:name``). Those users are listed
under the key :data:`USERS_KEY` instead: one YAML map from user name to that user's traits. A
user's own key wins over an entry there, so one user cannot be described twice by accident.
"""

from __future__ import annotations

from collections.abc import Mapping

import yaml

#: The ConfigMap key holding a YAML map ``user name -> traits`` for any user name.
USERS_KEY = "users.yaml"


def user_traits(data: Mapping[str, str] | None, user: str) -> dict[str, list[str]]:
    """One user's entry of the traits ConfigMap's data.

    A missing or broken entry gives no traits rather than an error: a broken entry must grant
    nothing extra, and the policy reports templates that expanded to nothing.
    """
    data = data or {}
    if user in data:
        return _traits_map(_load(data[user]))
    users = _load(data.get(USERS_KEY))
    return _traits_map(users.get(user)) if isinstance(users, dict) else {}


def _load(raw: str | None) -> object:
    try:
        return yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        return None


def _traits_map(value: object) -> dict[str, list[str]]:
    return value if isinstance(value, dict) else {}
