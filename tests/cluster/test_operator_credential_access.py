"""Each session's user may read exactly that session's Secret, and only while it lasts.

The identities ``alice`` and ``bob`` are the control plane's (static tokens), so the reads below
are real requests authorized by the API server's RBAC against the Role and RoleBinding the
operator created; the test grants them nothing itself.
"""

from __future__ import annotations

import kubernetes
import kubernetes.watch
import pytest
from kubernetes.client.rest import ApiException

from operatorkit import Env, condition_of, make_env, token


@pytest.fixture
def env(kube_api, namespace, postgres16, operator) -> Env:
    env = make_env(kube_api, namespace, postgres16, operator)
    # best_effort_drop: the PostgreSQL users "alice" and "bob" are server-wide and other tests'
    # Databases (other managed roles) must be able to create them again.
    env.role("analysts", "best_effort_drop")
    return env


def _status_of(call) -> int | None:
    try:
        call()
    except ApiException as exc:
        return exc.status
    return None


def test_alice_reads_her_secret_and_not_bobs(env, api_for):
    env.open_session("a", "alice")
    env.open_session("b", "bob")
    alice = kubernetes.client.CoreV1Api(api_for("alice"))
    bob = kubernetes.client.CoreV1Api(api_for("bob"))

    secret = alice.read_namespaced_secret("a-credentials", env.namespace)
    assert secret.data["username"] and secret.data["password"]
    assert _status_of(lambda: alice.read_namespaced_secret("b-credentials", env.namespace)) == 403
    assert _status_of(lambda: bob.read_namespaced_secret("a-credentials", env.namespace)) == 403
    assert _status_of(lambda: bob.read_namespaced_secret("b-credentials", env.namespace)) is None
    # resourceNames cannot narrow list/watch: neither is granted, nor is the admin password.
    assert _status_of(lambda: alice.list_namespaced_secret(env.namespace)) == 403
    assert _status_of(lambda: alice.read_namespaced_secret("admin", env.namespace)) == 403

    rbac = kubernetes.client.RbacAuthorizationV1Api(env.api)
    uid = env.get("DatabaseSession", "a")["metadata"]["uid"]
    role = rbac.read_namespaced_role("a-credentials", env.namespace)
    assert [(r.resources, r.resource_names, r.verbs) for r in role.rules] == \
        [(["secrets"], ["a-credentials"], ["get"])]
    binding = rbac.read_namespaced_role_binding("a-credentials", env.namespace)
    assert [(s.kind, s.name) for s in binding.subjects] == [("User", "alice")]
    for obj in (role, binding, env.secret_object("a-credentials")):
        assert [(o.kind, o.uid) for o in obj.metadata.owner_references] == \
            [("DatabaseSession", uid)]
        # What the end of the session deletes them by, with the Secret.
        assert obj.metadata.labels["pgjit.dev/session-uid"] == uid

    env.delete("DatabaseSession", "a")
    env.wait_gone("DatabaseSession", "a")
    assert _status_of(lambda: rbac.read_namespaced_role("a-credentials", env.namespace)) == 404
    assert _status_of(
        lambda: rbac.read_namespaced_role_binding("a-credentials", env.namespace)) == 404
    # Secret gone and her grant with it: she cannot even learn whether it exists.
    assert _status_of(lambda: alice.read_namespaced_secret("a-credentials", env.namespace)) == 403
    # Bob's session, still open, keeps its Secret and his grant on it.
    assert _status_of(lambda: bob.read_namespaced_secret("b-credentials", env.namespace)) is None
    env.delete("DatabaseSession", "b")
    env.wait_gone("DatabaseSession", "b")


def test_a_service_account_user_is_bound_as_a_service_account(env):
    user = f"system:serviceaccount:{env.namespace}:reports-{token()}"
    env.open_session("sa", user)
    rbac = kubernetes.client.RbacAuthorizationV1Api(env.api)
    binding = rbac.read_namespaced_role_binding("sa-credentials", env.namespace)
    sa_name = user.rsplit(":", 1)[1]
    assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == \
        [("ServiceAccount", sa_name, env.namespace)]

    # What the API server decides for that ServiceAccount's token: get this Secret, nothing else.
    authz = kubernetes.client.AuthorizationV1Api(env.api)

    def allowed(verb: str, name: str | None) -> bool:
        review = authz.create_subject_access_review({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": ["system:serviceaccounts",
                                              f"system:serviceaccounts:{env.namespace}",
                                              "system:authenticated"],
                     "resourceAttributes": {"namespace": env.namespace, "verb": verb,
                                            "resource": "secrets", "name": name}}})
        return review.status.allowed

    assert allowed("get", "sa-credentials")
    assert not allowed("get", "admin")
    assert not allowed("list", None)
    env.delete("DatabaseSession", "sa")
    env.wait_gone("DatabaseSession", "sa")
    assert not allowed("get", "sa-credentials")


def test_a_secret_name_taken_by_someone_else_is_never_overwritten(env):
    env.create_secret("taken", {"note": "not pgjit's"})
    user = f"mia-{token()}"
    env.create("DatabaseSession", "s", env.session_spec(user, secretName="taken"))
    session = env.wait_phase("s", "Failed")
    ready = condition_of(session)
    assert ready["reason"] == "SecretConflict"
    assert 'Secret "taken" already exists' in ready["message"]
    assert "spec.secretName" in ready["message"]
    assert condition_of(session, "Stalled")["status"] == "True"
    # The lease it took was released: the user cannot log in.
    state = env.role_state(user)
    assert state is None or state[1] is False, state

    env.delete("DatabaseSession", "s")
    env.wait_gone("DatabaseSession", "s")
    secret = env.secret_object("taken")
    assert env.secret("taken") == {"note": "not pgjit's"}
    assert not secret.metadata.owner_references


def test_a_secret_name_taken_by_someone_else_is_never_readable_by_the_user(env):
    """The user is bound to read spec.secretName only once the Secret is the session's own:
    a name that points at someone else's Secret must not be readable even for a moment, so
    no RoleBinding for it may ever exist (the API server's watch history says if one did)."""
    env.create_secret("victim", {"password": "not pgjit's"})
    rbac = kubernetes.client.RbacAuthorizationV1Api(env.api)
    since = rbac.list_namespaced_role_binding(env.namespace).metadata.resource_version
    env.create("DatabaseSession", "s", env.session_spec(f"eve-{token()}", secretName="victim"))
    session = env.wait_phase("s", "Failed")
    assert condition_of(session)["reason"] == "SecretConflict"
    # Every RoleBinding change since the session was created, replayed from the watch cache.
    history = [(event["type"], event["object"].metadata.name) for event in
               kubernetes.watch.Watch().stream(rbac.list_namespaced_role_binding,
                                               env.namespace, resource_version=since,
                                               timeout_seconds=1)]
    assert not [name for kind, name in history if name == "victim"], history
    env.delete("DatabaseSession", "s")
    env.wait_gone("DatabaseSession", "s")
    assert env.secret("victim") == {"password": "not pgjit's"}


def test_a_role_name_taken_by_someone_else_is_left_alone(env):
    rbac = kubernetes.client.RbacAuthorizationV1Api(env.api)
    rbac.create_namespaced_role(env.namespace, {
        "metadata": {"name": "s-credentials"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]})
    env.create("DatabaseSession", "s", env.session_spec(f"ola-{token()}"))
    session = env.wait_phase("s", "Failed")
    assert condition_of(session)["reason"] == "SecretConflict"
    assert 'Role "s-credentials" already exists' in condition_of(session)["message"]
    # Its credentials were written before the conflict showed; they must not outlive it.
    assert env.secret("s-credentials") is None
    env.delete("DatabaseSession", "s")
    env.wait_gone("DatabaseSession", "s")
    role = rbac.read_namespaced_role("s-credentials", env.namespace)
    assert [r.resources for r in role.rules] == [["configmaps"]]



def test_a_secret_left_by_a_session_that_is_gone_is_taken_over(env, control_plane):
    """A session whose finalizer was removed by hand leaves its Secret to the garbage
    collector; a session re-created under the same name before the collector got to it takes
    the Secret's place (the operator deletes it, uid-guarded) instead of failing with
    SecretConflict. The collector is held stopped so that the leftover stays for the test."""
    with control_plane.garbage_collector_paused():
        gone = {"apiVersion": "pgjit.dev/v1alpha1", "kind": "DatabaseSession", "name": "s",
                "uid": "00000000-0000-4000-8000-000000000000", "controller": True}
        env.core.create_namespaced_secret(env.namespace, {
            "metadata": {"name": "s-credentials", "labels": {"pgjit.dev/session": "s"},
                         "ownerReferences": [gone]},
            "stringData": {"password": "of a session that is gone"}})
        leftover = env.secret_object("s-credentials").metadata.uid
        env.create("DatabaseSession", "s", env.session_spec(f"ola-{token()}"))
        session = env.wait_phase("s", "Active")
        secret = env.secret_object("s-credentials")
        assert secret.metadata.uid != leftover
        assert [ref.uid for ref in secret.metadata.owner_references] == \
            [session["metadata"]["uid"]]
        assert env.secret("s-credentials")["password"] != "of a session that is gone"
    env.delete("DatabaseSession", "s")
    env.wait_gone("DatabaseSession", "s")
    assert env.secret("s-credentials") is None  # deleted by the operator, not left behind
