"""`pgjit explain` against the real API server: the operator's policy, rendered for people."""

from __future__ import annotations

import os
import subprocess
import sys

import kubernetes

from operatorkit import GROUP, VERSION, installed_crds  # noqa: F401 - installed_crds is a fixture


def _create(api, namespace, plural, kind, name, spec, labels=None):
    kubernetes.client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, plural,
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind,
         "metadata": {"name": name, "labels": labels or {}}, "spec": spec})


def explain(control_plane, namespace, *args):
    env = dict(os.environ, KUBECONFIG=str(control_plane.kubeconfig("admin")))
    return subprocess.run([sys.executable, "-m", "pgjit.cli", "explain", "-n", namespace, *args],
                          env=env, capture_output=True, text=True, timeout=60)


def test_explain_shows_allowing_and_denying_roles(control_plane, installed_crds, kube_api,
                                                  namespace):
    _create(kube_api, namespace, "databases", "Database", "orders",
            {"host": "db.example", "admin": {"username": "admin",
                                             "passwordSecretRef": {"name": "a"}}},
            labels={"env": "prod"})
    _create(kube_api, namespace, "roles", "Role", "analysts", {
        "subjects": [{"kind": "Group", "name": "analysts"}], "userProvisioning": "keep",
        "maxSessionDuration": "2h",
        "allow": {"databaseSelector": {"matchLabels": {"env": "prod"}},
                  "databaseNames": ["orders"], "databaseRoles": ["reader", "writer"]}})
    _create(kube_api, namespace, "roles", "Role", "no-writes", {
        "subjects": [{"kind": "Group", "name": "analysts"}],
        "deny": {"databaseRoles": ["writer"]}})

    allowed = explain(control_plane, namespace, "orders", "--user", "alice", "--group",
                      "analysts", "--db-name", "orders")
    assert allowed.returncode == 0, allowed.stderr
    for expected in ("analysts", "no-writes", "keep", "reader", "writer", "2h"):
        assert expected in allowed.stdout, (expected, allowed.stdout)

    refused = explain(control_plane, namespace, "orders", "--user", "alice", "--group",
                      "analysts", "--db-name", "orders", "--db-roles", "writer")
    assert refused.returncode == 1
    assert 'access to database role "writer" denied' in refused.stdout

    stranger = explain(control_plane, namespace, "orders", "--user", "bob", "--db-name", "orders")
    assert stranger.returncode == 1 and "AccessDenied" in stranger.stdout


def test_explain_names_a_missing_database(control_plane, installed_crds, namespace):
    result = explain(control_plane, namespace, "nosuch", "--user", "alice")
    assert result.returncode == 1 and '"nosuch"' in result.stderr
