"""The chart installed for real: helm install/upgrade/uninstall against a control plane of this
module's own, and the operator running with the chart's ServiceAccount credentials (a
TokenRequest token) and the chart Deployment's arguments and environment.

The tests are one story, in file order, on one release: install cluster-wide, run a session,
check the refusals; upgrade to namespaced mode, run a session, check the refusals; upgrade a
value; uninstall in the documented order; the recovery when someone uninstalls first; and
CRDs owned by kubectl instead of the chart (the GitOps path).
No kubelet runs, so the Deployment's pod never starts; the subprocess stands in for it.
"""

from __future__ import annotations

import json
import urllib.request

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from chartkit import CHART, ChartOperator, Plane, set_args
from operatorkit import GROUP, PLURALS, VERSION, make_env, token, wait_for
from pgjit.devstack.ports import free_ports

RELEASE, RELEASE_NS, SA = "pgjit", "pgjit-system", "pgjit"
FINALIZER = "pgjit.dev/finalizer"


# Test-speed intervals; free ports because other engineers' operators run on this machine too.
# system:masters (the tests' admin) opens sessions for other users, as automation would.
VALUES = {"operator.healthSeconds": 3, "operator.revalidateSeconds": 1,
          **dict(zip(("liveness.port", "metrics.port", "readiness.port"),
                     free_ports(3, bound_later=True))),
          "identityBinding.sessionAdminGroups": ["pgjit-session-admins", "system:masters"]}


class Story:
    """What one test leaves for the next: namespaces, the running operator."""

    def __init__(self, plane: Plane, tmp) -> None:
        self.plane, self.tmp = plane, tmp
        suffix = token()
        self.team_a, self.team_b, self.other, self.team_c = (
            f"chart-{n}-{suffix}" for n in ("a", "b", "other", "c"))
        self.operator: ChartOperator | None = None
        self.sa_kubeconfig = tmp / "sa.kubeconfig"
        self.starts = 0

    # -- helm -------------------------------------------------------------------------------

    def helm_install(self, values: dict, *, command: str = "install") -> str:
        args = [command, RELEASE, str(CHART), "-n", RELEASE_NS]
        result = self.plane.helm(*args, *set_args({**VALUES, **values}), check=True)
        self.plane.control_plane.refresh_garbage_collector()  # the chart's CRDs
        return result.stdout

    def deployment(self) -> dict:
        apps = kubernetes.client.AppsV1Api(self.plane.api)
        obj = apps.read_namespaced_deployment(RELEASE, RELEASE_NS)
        return self.plane.api.sanitize_for_serialization(obj)

    # -- the operator under the ServiceAccount ------------------------------------------------

    def start_operator(self) -> ChartOperator:
        self.stop_operator()
        self.plane.service_account_kubeconfig(SA, RELEASE_NS, self.sa_kubeconfig)
        assert self.sa_kubeconfig.stat().st_mode & 0o777 == 0o600
        # A log per start, so one run's refusals are never blamed on another.
        self.starts += 1
        self.operator = ChartOperator(self.deployment(), self.sa_kubeconfig,
                                      self.tmp / f"operator-{self.starts}.log")
        self.operator.start()
        return self.operator

    def stop_operator(self) -> None:
        if self.operator is not None:
            self.operator.stop()

    def sa_api(self) -> kubernetes.client.ApiClient:
        return self.plane.client_for(self.sa_kubeconfig)

    def assert_no_refusals(self) -> None:
        refused = self.operator.refusals()
        assert refused == [], "the API server refused the operator:\n" + "\n".join(refused)

    # -- a whole session ----------------------------------------------------------------------

    def lifecycle(self, namespace: str, server):
        """Database Ready → session Active → login works → delete → gone, login refused."""
        env = make_env(self.plane.api, namespace, server, self.operator,
                       managed_role=f"pgjit-{namespace}")
        env.role("analysts", "best_effort_drop")
        user = f"chart-{token()}"
        creds = env.open_session("s1", user)
        with env.login(creds) as conn:
            assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 2
        # credentialAccess: the operator, as the chart's ServiceAccount, let the user read
        # this one Secret and nothing else. (The authorizer sees RBAC changes a moment late.)
        api = self.plane.api
        wait_for("the user's grant on its Secret", lambda: user_can(
            api, user, "get", "secrets", namespace, "s1-credentials"), timeout=10)
        assert not user_can(api, user, "get", "secrets", namespace, "admin")
        env.delete("DatabaseSession", "s1")
        env.wait_gone("DatabaseSession", "s1")
        wait_for("the grant to be revoked", lambda: not user_can(
            api, user, "get", "secrets", namespace, "s1-credentials"), timeout=10)
        assert env.login_refused(creds)
        assert env.role_row(user) is None
        assert env.secret("s1-credentials") is None
        return env


def can(api: kubernetes.client.ApiClient, verb: str, resource: str, *, group: str = "",
        namespace: str | None = None, name: str | None = None,
        subresource: str | None = None) -> bool:
    """SelfSubjectAccessReview: may the client's identity do this?"""
    review = kubernetes.client.V1SelfSubjectAccessReview(
        spec=kubernetes.client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=kubernetes.client.V1ResourceAttributes(
                verb=verb, resource=resource, group=group, namespace=namespace, name=name,
                subresource=subresource)))
    result = kubernetes.client.AuthorizationV1Api(api).create_self_subject_access_review(review)
    return result.status.allowed


def user_can(api: kubernetes.client.ApiClient, user: str, verb: str, resource: str,
             namespace: str, name: str) -> bool:
    """SubjectAccessReview (asked as admin): may ``user`` do this?"""
    review = kubernetes.client.V1SubjectAccessReview(
        spec=kubernetes.client.V1SubjectAccessReviewSpec(
            user=user, resource_attributes=kubernetes.client.V1ResourceAttributes(
                verb=verb, resource=resource, namespace=namespace, name=name)))
    result = kubernetes.client.AuthorizationV1Api(api).create_subject_access_review(review)
    return result.status.allowed


def status_of(call) -> int:
    try:
        call()
    except ApiException as exc:
        return exc.status
    return 200


def grant_credentials_read(api: kubernetes.client.ApiClient, namespace: str, secret: str,
                           user: str) -> None:
    """What the operator does per session with credentialAccess on (a Role and RoleBinding
    named like the Secret, `get` on that one Secret for the session's user), done here with
    the operator's identity to prove the chart's RBAC lets it, escalation check included."""
    rbac = kubernetes.client.RbacAuthorizationV1Api(api)
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": secret},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [secret],
                   "verbs": ["get"]}]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": secret},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": secret},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})


def admitted_finalizers(plane, namespace: str, finalizers: list[str] | None = None) -> list[str]:
    """The finalizers a new session in ``namespace`` (created with ``finalizers``) has after
    admission (a dry run: admission runs, nothing is stored, and no operator has seen it)."""
    metadata: dict = {"name": f"admission-{token()}"}
    if finalizers is not None:
        metadata["finalizers"] = finalizers
    created = kubernetes.client.CustomObjectsApi(plane.api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS["DatabaseSession"],
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatabaseSession",
         "metadata": metadata,
         "spec": {"user": "probe", "databaseRef": {"name": "db"}, "databaseName": "app"}},
        dry_run="All")
    return created["metadata"].get("finalizers") or []


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    plane = Plane(tmp_path_factory.mktemp("chart-plane"))
    try:
        plane.start()
    except Exception as error:
        plane.stop()
        pytest.fail(f"cannot start the chart tests' control plane: {error}", pytrace=False)
    yield plane
    plane.stop()


@pytest.fixture(scope="module")
def story(plane, tmp_path_factory):
    story = Story(plane, tmp_path_factory.mktemp("chart-story"))
    yield story
    story.stop_operator()


# --------------------------------------------------------------------------------------------
# 1. Cluster-wide


def test_install_cluster_wide(plane, story):
    # The release namespace enforces Pod Security "restricted", as it should in production.
    plane.core.create_namespace(kubernetes.client.V1Namespace(metadata={
        "name": RELEASE_NS, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}))
    notes = story.helm_install({})
    assert "watches every namespace" in notes
    plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                  *(f"crd/{p}.{GROUP}" for p in PLURALS.values()))
    rbac = kubernetes.client.RbacAuthorizationV1Api(plane.api)
    assert rbac.read_cluster_role("pgjit-operator").metadata.labels[
        "app.kubernetes.io/instance"] == RELEASE
    plane.core.read_namespaced_service_account(SA, RELEASE_NS)

    # The API server's PodSecurity admission accepts the Deployment's pod as it stands...
    pod = story.deployment()["spec"]["template"]
    body = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "pgjit-dry-run", "labels": pod["metadata"]["labels"]},
            "spec": pod["spec"]}
    plane.core.create_namespaced_pod(RELEASE_NS, body, dry_run="All")
    # ...and refuses it without the container's securityContext (so the check is live).
    del body["spec"]["containers"][0]["securityContext"]
    with pytest.raises(ApiException) as refused:
        plane.core.create_namespaced_pod(RELEASE_NS, body, dry_run="All")
    assert refused.value.status == 403 and "restricted" in refused.value.body


def test_admission_puts_the_finalizer_on_sessions(plane, story):
    """The chart's MutatingAdmissionPolicy: a session carries the operator's finalizer from its
    creation, so the operator opens it on its first event (no finalizer PATCH first)."""
    # The API server types a new CRD's objects for policies a moment after it serves them;
    # until then the policy is skipped (failurePolicy Ignore) and Kopf adds the finalizer, or
    # the create is refused with 503 "Resource kind ... not found" (the API server's own words).
    def in_effect() -> bool:
        try:
            return FINALIZER in admitted_finalizers(plane, RELEASE_NS)
        except ApiException as error:
            if error.status == 503 and "not found" in (error.body or ""):
                return False
            raise

    wait_for("the finalizer policy in effect", in_effect, 60)
    assert admitted_finalizers(plane, RELEASE_NS).count(FINALIZER) == 1
    # Someone else's finalizers are kept, and ours is never there twice.
    assert admitted_finalizers(plane, RELEASE_NS, ["example.com/keep"]) == [
        "example.com/keep", FINALIZER]
    assert admitted_finalizers(plane, RELEASE_NS, [FINALIZER, "example.com/keep"]) == [
        FINALIZER, "example.com/keep"]


def test_session_lifecycle_under_the_chart_identity_cluster_wide(plane, story, postgres16):
    operator = story.start_operator()
    plane.create_namespace(story.team_a)
    story.lifecycle(story.team_a, postgres16)
    assert operator.running, operator.log_tail()
    story.assert_no_refusals()
    # What the liveness probe and the metrics Service point at answers on the chart's ports.
    probe = story.deployment()["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
    assert probe["httpGet"]["path"] == "/healthz"
    with urllib.request.urlopen(f"http://127.0.0.1:{VALUES['liveness.port']}/healthz",
                                timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{VALUES['metrics.port']}/metrics",
                                timeout=5) as response:
        assert b"controller_runtime_reconcile_total" in response.read()
    # Ready: it has been watching for a whole session's lifecycle.
    with urllib.request.urlopen(f"http://127.0.0.1:{VALUES['readiness.port']}/readyz",
                                timeout=5) as response:
        # The one replica here leads (the chart elects a leader even for one).
        assert response.status == 200 and json.loads(response.read()) == {"ready": True,
                                                                          "role": "leader"}


def test_cluster_wide_identity_is_refused_what_it_does_not_need(plane, story):
    api = story.sa_api()
    ns = story.team_a
    core = kubernetes.client.CoreV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    who = kubernetes.client.AuthenticationV1Api(api).create_self_subject_review(
        kubernetes.client.V1SelfSubjectReview()).status.user_info.username
    assert who == f"system:serviceaccount:{RELEASE_NS}:{SA}"

    assert status_of(lambda: core.create_namespaced_pod(ns, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "x", "image": "x"}]}})) == 403
    plane.create_namespace(story.other)
    assert status_of(lambda: custom.delete_namespaced_custom_object(
        GROUP, VERSION, ns, "databases", "db")) == 403
    assert status_of(lambda: core.list_node()) == 403
    assert status_of(lambda: core.list_namespace()) == 403
    assert not can(api, "watch", "secrets", namespace=ns)
    assert not can(api, "patch", "secrets", namespace=ns)
    assert not can(api, "create", "databasesessions", group=GROUP, namespace=ns)
    assert not can(api, "update", "databases", group=GROUP, namespace=ns)
    assert not can(api, "get", "configmaps", namespace=RELEASE_NS)
    assert not can(api, "create", "clusterrolebindings", group="rbac.authorization.k8s.io")
    assert not can(api, "escalate", "roles", group="rbac.authorization.k8s.io", namespace=ns)
    assert not can(api, "bind", "clusterroles", group="rbac.authorization.k8s.io")
    assert not can(api, "create", "serviceaccounts", namespace=RELEASE_NS, subresource="token")
    # What it does need, so the refusals above are not an identity that can do nothing:
    # among others, handing alice read access to one issued Secret and taking it back.
    assert can(api, "get", "secrets", namespace=ns)
    plane.core.create_namespaced_secret(ns, {"metadata": {"name": "x-credentials"},
                                             "stringData": {"password": "p"}})
    alice = plane.control_plane.kubeconfig("alice")
    denied = plane.kubectl("-n", ns, "get", "secret/x-credentials", kubeconfig=alice,
                           check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr
    grant_credentials_read(api, ns, "x-credentials", "alice")
    wait_for("alice's grant", lambda: plane.kubectl(
        "-n", ns, "get", "secret/x-credentials", kubeconfig=alice, check=False).returncode == 0,
        timeout=10, interval=0.2)
    assert plane.kubectl("-n", ns, "get", "secret/admin", kubeconfig=alice,
                         check=False).returncode != 0
    rbac = kubernetes.client.RbacAuthorizationV1Api(api)
    rbac.delete_namespaced_role_binding("x-credentials", ns)
    rbac.delete_namespaced_role("x-credentials", ns)
    api.close()


# --------------------------------------------------------------------------------------------
# 2. Namespaced, reached by helm upgrade


def test_upgrade_to_namespaced_mode(plane, story):
    # Recreate: the old pod is gone before the new one starts.
    story.stop_operator()
    plane.create_namespace(story.team_b)
    revision_before = story.deployment()["metadata"]["generation"]
    notes = story.helm_install({"watchNamespaces": [story.team_a, story.team_b]},
                               command="upgrade")
    assert f"watches only: {story.team_a}, {story.team_b}" in notes
    rbac = kubernetes.client.RbacAuthorizationV1Api(plane.api)
    assert status_of(lambda: rbac.read_cluster_role("pgjit-operator")) == 404
    assert status_of(lambda: rbac.read_cluster_role_binding("pgjit-operator")) == 404
    for ns in (story.team_a, story.team_b):
        assert rbac.read_namespaced_role_binding("pgjit-operator", ns).subjects[0].name == SA
    deployment = story.deployment()
    assert deployment["metadata"]["generation"] > revision_before
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--namespace={story.team_a}" in args and "--all-namespaces" not in args


def test_namespaced_release_finalizes_only_its_own_namespaces(plane, story):
    # A finalizer in a namespace no operator watches would keep that session from going. The
    # API server picks up the upgraded policy (now with a namespaceSelector) a moment later.
    wait_for("the upgraded finalizer policy in effect",
             lambda: FINALIZER not in admitted_finalizers(plane, RELEASE_NS), 60)
    for namespace in (story.team_a, story.team_b):
        assert FINALIZER in admitted_finalizers(plane, namespace)


def test_session_lifecycle_under_the_chart_identity_namespaced(plane, story, postgres16):
    operator = story.start_operator()
    # A Database in a namespace the operator does not watch: it must stay untouched.
    untouched = make_env(plane.api, story.other, postgres16, operator, wait_ready=False)
    story.lifecycle(story.team_b, postgres16)
    assert operator.running, operator.log_tail()
    story.assert_no_refusals()
    database = untouched.get("Database", "db")
    assert FINALIZER not in (database["metadata"].get("finalizers") or [])
    assert "status" not in database or not database["status"].get("conditions")


def test_namespaced_identity_is_refused_outside_its_namespaces(plane, story):
    api = story.sa_api()
    core = kubernetes.client.CoreV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    # Secrets, and everything else, in a namespace it does not watch.
    assert status_of(lambda: core.read_namespaced_secret("admin", story.other)) == 403
    assert status_of(lambda: core.list_namespaced_secret(story.other)) == 403
    assert status_of(lambda: custom.list_namespaced_custom_object(
        GROUP, VERSION, story.other, "databases")) == 403
    assert not can(api, "create", "events", namespace=story.other)
    # Nothing cluster-wide: no cluster lists, no CRDs, no namespaces.
    assert status_of(lambda: custom.list_cluster_custom_object(GROUP, VERSION,
                                                               "databasesessions")) == 403
    assert status_of(lambda: core.list_secret_for_all_namespaces()) == 403
    assert status_of(lambda: core.list_namespace()) == 403
    assert not can(api, "list", "customresourcedefinitions", group="apiextensions.k8s.io")
    # Inside a watched namespace it still cannot run workloads or delete policy objects.
    assert status_of(lambda: custom.delete_namespaced_custom_object(
        GROUP, VERSION, story.team_a, "roles", "analysts")) == 403
    assert not can(api, "create", "pods", namespace=story.team_a)
    assert can(api, "get", "secrets", namespace=story.team_a)
    with pytest.raises(ApiException) as refused:
        grant_credentials_read(api, story.other, "admin", "alice")
    assert refused.value.status == 403
    api.close()


def test_upgrade_changes_a_value_and_adds_a_namespace(plane, story):
    plane.create_namespace(story.team_c)
    story.helm_install({"watchNamespaces": [story.team_a, story.team_b, story.team_c],
                        "resources": {"requests": {"cpu": "50m", "memory": "160Mi"},
                                      "limits": {"memory": "384Mi"}},
                        "userRoles.create": True}, command="upgrade")
    container = story.deployment()["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["memory"] == "384Mi"
    assert f"--namespace={story.team_c}" in container["args"]
    api = story.sa_api()
    assert can(api, "get", "secrets", namespace=story.team_c)
    api.close()

    # The ClusterRole for people, bound as docs/install.md shows: alice (group analysts) may
    # open and end sessions there, and change no policy.
    plane.kubectl("create", "rolebinding", "analysts-sessions", "--clusterrole",
                  "pgjit-session-user", "--group", "analysts", "-n", story.team_c)
    alice = plane.client_for(plane.control_plane.kubeconfig("alice"))
    ns = story.team_c
    wait_for("alice's session rights", lambda: can(alice, "create", "databasesessions",
                                                   group=GROUP, namespace=ns), timeout=10)
    assert can(alice, "delete", "databasesessions", group=GROUP, namespace=ns)
    assert can(alice, "list", "databases", group=GROUP, namespace=ns)
    assert not can(alice, "create", "databases", group=GROUP, namespace=ns)
    assert not can(alice, "update", "roles", group=GROUP, namespace=ns)
    assert not can(alice, "get", "secrets", namespace=ns)
    assert not can(alice, "create", "databasesessions", group=GROUP, namespace=story.team_a)
    alice.close()
    history = plane.helm("history", RELEASE, "-n", RELEASE_NS, "-o", "json", check=True).stdout
    assert '"revision":3' in history.replace(" ", "")


# --------------------------------------------------------------------------------------------
# 3. Uninstall, in the documented order, and the recovery when that order is not followed


def test_uninstall_in_the_documented_order(plane, story, postgres16):
    operator = story.start_operator()
    env = make_env(plane.api, story.team_c, postgres16, operator,
                   managed_role=f"pgjit-{story.team_c}")
    env.role("analysts", "keep")
    user = f"chart-{token()}"
    creds = env.open_session("s1", user)

    # 1. delete the sessions and wait until they are gone, with the operator still running
    env.delete("DatabaseSession", "s1")
    env.wait_gone("DatabaseSession", "s1")
    # 2. delete the Databases (every namespace's) and wait until they are gone
    custom = kubernetes.client.CustomObjectsApi(plane.api)
    for obj in custom.list_cluster_custom_object(GROUP, VERSION, "databases")["items"]:
        custom.delete_namespaced_custom_object(GROUP, VERSION, obj["metadata"]["namespace"],
                                               "databases", obj["metadata"]["name"])
    env._with_log("every Database gone", lambda: not custom.list_cluster_custom_object(
        GROUP, VERSION, "databases")["items"], 30)
    # 3. helm uninstall (the pod stops with its Deployment)
    plane.helm("uninstall", RELEASE, "-n", RELEASE_NS, check=True)
    story.stop_operator()

    for plural in PLURALS.values():
        stuck = [o["metadata"]["name"] for o in custom.list_cluster_custom_object(
            GROUP, VERSION, plural)["items"] if FINALIZER in (o["metadata"].get("finalizers")
                                                              or [])]
        assert stuck == [], f"{plural} left with the pgjit finalizer: {stuck}"
    # Roles were left in place: they hold nothing, so they go at once without an operator.
    roles = custom.list_cluster_custom_object(GROUP, VERSION, "roles")["items"]
    assert roles, "the story's Roles should still exist here"
    for obj in roles:
        custom.delete_namespaced_custom_object(GROUP, VERSION, obj["metadata"]["namespace"],
                                               "roles", obj["metadata"]["name"])
    assert not custom.list_cluster_custom_object(GROUP, VERSION, "roles")["items"]
    assert env.login_refused(creds)
    assert env.role_row(user)["rolcanlogin"] is False  # mode keep: locked, not dropped
    # The chart's objects are gone, the CRDs are kept (helm.sh/resource-policy: keep)...
    rbac = kubernetes.client.RbacAuthorizationV1Api(plane.api)
    assert status_of(lambda: rbac.read_namespaced_role("pgjit-operator", story.team_a)) == 404
    assert status_of(lambda: plane.core.read_namespaced_service_account(SA, RELEASE_NS)) == 404
    # ...and the ServiceAccount with them: its token is refused (403 at once, 401 once the
    # API server's ServiceAccount cache has seen the deletion).
    api = story.sa_api()
    assert status_of(lambda: kubernetes.client.CoreV1Api(api).read_namespaced_secret(
        "admin", story.team_a)) in (401, 403)
    api.close()
    plane.kubectl("get", f"crd/databasesessions.{GROUP}")


def test_recovery_after_uninstalling_first(plane, story, postgres16):
    """Reinstalling the same release adopts the kept CRDs; its operator then ends the sessions
    an early uninstall left behind with their finalizer."""
    story.helm_install({"watchNamespaces": [story.team_a]})
    operator = story.start_operator()
    env = make_env(plane.api, story.team_a, postgres16, operator,
                   managed_role=f"pgjit-{story.team_a}", name="db2", admin_secret=False)
    env.role("analysts2", "best_effort_drop")
    user = f"chart-{token()}"
    creds = env.open_session("s2", user, database="db2")

    plane.helm("uninstall", RELEASE, "-n", RELEASE_NS, check=True)
    story.stop_operator()
    env.delete("DatabaseSession", "s2")
    stuck = env.get("DatabaseSession", "s2")
    assert stuck["metadata"]["deletionTimestamp"]
    assert FINALIZER in stuck["metadata"]["finalizers"]
    with env.login(creds):  # still usable: VALID UNTIL is all that is left
        pass

    story.helm_install({"watchNamespaces": [story.team_a]})
    story.start_operator()
    env.wait_gone("DatabaseSession", "s2")
    assert env.login_refused(creds)
    assert env.role_row(user) is None
    story.assert_no_refusals()

    story.stop_operator()  # the control plane, and all in it, ends with this module


def test_crds_managed_outside_the_chart(plane, story):
    """The GitOps path: CRDs applied with kubectl (server-side), the chart with crds.install
    false. CRDs that are not the release's are refused, not silently taken over, until they
    are handed to it explicitly."""
    plane.helm("uninstall", RELEASE, "-n", RELEASE_NS, check=True)
    crd_names = [f"crd/{p}.{GROUP}" for p in PLURALS.values()]
    # What kubectl alone would have created: no Helm ownership metadata.
    plane.kubectl("annotate", *crd_names, "meta.helm.sh/release-name-",
                  "meta.helm.sh/release-namespace-")
    plane.kubectl("label", *crd_names, "app.kubernetes.io/managed-by-")
    applied = plane.kubectl("apply", "--server-side", "--force-conflicts", "-f",
                            str(CHART.parents[1] / "crds"))
    assert "serverside-applied" in applied.stdout

    refused = plane.helm("install", RELEASE, str(CHART), "-n", RELEASE_NS,
                         *set_args(VALUES))
    assert refused.returncode != 0
    assert "cannot be imported into the current release" in refused.stderr, refused.stderr

    story.helm_install({"crds.install": False})
    manifest = plane.helm("get", "manifest", RELEASE, "-n", RELEASE_NS, check=True).stdout
    assert "kind: CustomResourceDefinition" not in manifest
    assert "kind: ClusterRole\n" in manifest
    plane.helm("uninstall", RELEASE, "-n", RELEASE_NS, check=True)
    plane.kubectl("get", *crd_names)  # never the release's, so never touched by it

    # Handing them to the chart, as docs/install.md says: Helm's ownership metadata.
    plane.kubectl("label", *crd_names, "app.kubernetes.io/managed-by=Helm")
    plane.kubectl("annotate", *crd_names, f"meta.helm.sh/release-name={RELEASE}",
                  f"meta.helm.sh/release-namespace={RELEASE_NS}")
    story.helm_install({})
    manifest = plane.helm("get", "manifest", RELEASE, "-n", RELEASE_NS, check=True).stdout
    assert manifest.count("kind: CustomResourceDefinition") == len(PLURALS)
