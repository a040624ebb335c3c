"""The per-session Role and RoleBinding that let a user read exactly their own Secret."""

from __future__ import annotations

import pytest

from pgjit.core.credential_access import access_subject, secret_reader_binding, secret_reader_role
from pgjit.core.credentials_secret import secret_labels


def test_the_role_grants_get_on_one_secret_only():
    role = secret_reader_role("s1-credentials", secret_labels("s1"))
    assert role["kind"] == "Role" and role["metadata"]["name"] == "s1-credentials"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"],
                              "resourceNames": ["s1-credentials"], "verbs": ["get"]}]
    assert role["metadata"]["labels"] == secret_labels("s1")


def test_the_binding_refers_to_the_role_of_the_same_name():
    binding = secret_reader_binding("x", "alice@example.com", secret_labels("s"))
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "x"}
    assert binding["subjects"] == [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io",
                                    "name": "alice@example.com"}]


def test_a_service_account_user_becomes_a_service_account_subject():
    assert access_subject("system:serviceaccount:jobs:etl") == {
        "kind": "ServiceAccount", "name": "etl", "namespace": "jobs"}


@pytest.mark.parametrize("user", [
    "system:serviceaccount:", "system:serviceaccount:jobs", "system:serviceaccount::etl",
    "system:serviceaccount:jobs:", "system:serviceaccount:a:b:c", "system:serviceaccounts:x:y",
    "System:serviceaccount:jobs:etl"])
def test_names_that_only_look_like_service_accounts_stay_users(user):
    assert access_subject(user) == {"kind": "User", "apiGroup": "rbac.authorization.k8s.io",
                                    "name": user}
