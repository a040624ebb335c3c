"""Who may read a session's credentials Secret: a Role and RoleBinding per session. Pure: no I/O.

Without this, whoever opened a session needs ``get`` on every Secret of the namespace to read
their own credentials, which would also let them read everyone else's (and the Database's admin
password). Instead the operator grants ``get`` on exactly one Secret, by ``resourceNames``, to the
session's ``spec.user``, and removes the grant when the session ends.

Decisions:

- **Names.** The Role and the RoleBinding are named exactly like the Secret: Secret names are
  unique in a namespace, so the grant is too, and ``kubectl get role <secret>`` finds it.
- **Subject kind.** A ServiceAccount's user name is ``system:serviceaccount:<ns>:<name>``. RBAC
  matches that as a ``User`` subject too, but a ``ServiceAccount`` subject is what administrators
  read and audit, so that form is used when the name parses as one.
- **Verbs.** Only ``get``: ``list`` and ``watch`` cannot be narrowed by ``resourceNames`` in a way
  that hides other Secrets' data from a watch, and a client that knows the name needs neither.
- **Escalation.** The API server lets the operator create this Role only because the operator
  itself may ``get`` Secrets in the namespace; no ``bind`` or ``escalate`` verb is needed.
"""

from __future__ import annotations

from typing import Any

RBAC_API_VERSION = "rbac.authorization.k8s.io/v1"
RBAC_GROUP = "rbac.authorization.k8s.io"
_SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"


def access_subject(user: str) -> dict[str, str]:
    """The RBAC subject for a Kubernetes user name (ServiceAccounts get their own kind)."""
    if user.startswith(_SERVICE_ACCOUNT_PREFIX):
        namespace, sep, name = user[len(_SERVICE_ACCOUNT_PREFIX):].partition(":")
        if sep and namespace and name and ":" not in name:
            return {"kind": "ServiceAccount", "name": name, "namespace": namespace}
    return {"kind": "User", "apiGroup": RBAC_GROUP, "name": user}


def _metadata(secret_name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": secret_name, "labels": dict(labels)}


def secret_reader_role(secret_name: str, labels: dict[str, str]) -> dict[str, Any]:
    """A Role allowing ``get`` on one Secret and nothing else."""
    return {
        "apiVersion": RBAC_API_VERSION, "kind": "Role",
        "metadata": _metadata(secret_name, labels),
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [secret_name],
                   "verbs": ["get"]}],
    }


def secret_reader_binding(secret_name: str, user: str, labels: dict[str, str]) -> dict[str, Any]:
    """Binds :func:`secret_reader_role` of the same name to the session's user."""
    return {
        "apiVersion": RBAC_API_VERSION, "kind": "RoleBinding",
        "metadata": _metadata(secret_name, labels),
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": secret_name},
        "subjects": [access_subject(user)],
    }
