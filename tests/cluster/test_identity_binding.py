"""The chart's identity binding, enforced by a real kube-apiserver.

The ValidatingAdmissionPolicy is rendered by the real ``helm template`` from charts/pgjit and
applied to a control plane of this module's own: the policy is cluster-wide, and the shared
control plane's other tests open sessions for "alice" as admin, which it would (rightly) refuse.
No operator runs here: admitting or refusing a DatabaseSession is the API server's job alone.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import kubernetes
import pytest
import yaml
from kubernetes.client.rest import ApiException
from operatorkit import wait_for
from planekit import start_control_plane

from pgjit.devstack.controlplane import ControlPlane
from pgjit.devstack.kube_binaries import KubeBinaries, ensure_kube_binaries, find_repo_root

GROUP, VERSION, PLURAL = "pgjit.dev", "v1alpha1", "databasesessions"
CHART = find_repo_root() / "charts" / "pgjit"
TEMPLATE = "templates/identity-binding.yaml"
RELEASE = "rel"
POLICY = f"{RELEASE}-pgjit-identity-binding"
SESSIONS_NAMESPACE = "sessions"
#: ServiceAccounts of this namespace are session admins through the group the API server gives
#: every ServiceAccount token: the documented way to let automation open sessions for others.
AUTOMATION_NAMESPACE = "pgjit-automation"
SESSION_ADMIN_GROUPS = ["pgjit-session-admins", f"system:serviceaccounts:{AUTOMATION_NAMESPACE}"]
ASK_ADMINS = " or ".join(["or ask a member of pgjit-session-admins",
                          f"system:serviceaccounts:{AUTOMATION_NAMESPACE}"])


def helm_template(
    binaries: KubeBinaries, workdir: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run the real ``helm template`` on the chart with a private HOME and helm dirs."""
    home = workdir / "helm-home"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return subprocess.run(
        [str(binaries.helm), "template", RELEASE, str(CHART), *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@dataclass
class GuardedPlane:
    """A control plane with the CRDs, the rendered identity binding and session RBAC."""

    control_plane: ControlPlane
    workdir: Path

    def kubectl(self, *args: str, identity: str = "admin", input: str | None = None):
        command = [
            str(self.control_plane.binaries.kubectl),
            f"--kubeconfig={self.control_plane.kubeconfig(identity)}",
            f"--cache-dir={self.workdir / 'kubectl-cache'}",
            *args,
        ]
        return subprocess.run(command, input=input, capture_output=True, text=True, timeout=60)

    def client(self, identity: str) -> kubernetes.client.ApiClient:
        return kubernetes.config.new_client_from_config(
            config_file=str(self.control_plane.kubeconfig(identity)), persist_config=False
        )

    def impersonating(
        self, user: str, groups: tuple[str, ...] = (), extra: dict[str, str] | None = None
    ) -> kubernetes.client.ApiClient:
        """An admin client acting as ``user`` with these groups and (single-valued) extras.

        The Python client sends one header line per name, so each extra key carries one value
        here; several values per key are covered through kubectl's repeatable --as-user-extra.
        """
        client = self.client("admin")
        client.set_default_header("Impersonate-User", user)
        # The header carries one group; the API server adds system:authenticated itself.
        if len(groups) > 1:
            raise ValueError("one Impersonate-Group header line per client")
        for group in groups:
            client.set_default_header("Impersonate-Group", group)
        for key, value in (extra or {}).items():
            client.set_default_header(f"Impersonate-Extra-{key}", value)
        return client

    def token_client(self, token: str) -> kubernetes.client.ApiClient:
        """A client authenticating with a bearer token (a ServiceAccount's)."""
        configuration = kubernetes.client.Configuration()
        configuration.host = self.control_plane.url
        configuration.ssl_ca_cert = str(self.control_plane.ca_file)
        # The key's name differs between client releases ("BearerToken" up to 36).
        configuration.api_key = {"authorization": token, "BearerToken": token}
        configuration.api_key_prefix = {"authorization": "Bearer", "BearerToken": "Bearer"}
        return kubernetes.client.ApiClient(configuration)


def session_body(user: str, **spec: object) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DatabaseSession",
        "metadata": {"generateName": "identity-"},
        "spec": {"user": user, "databaseRef": {"name": "orders"}, "databaseName": "orders", **spec},
    }


def create_session(
    client: kubernetes.client.ApiClient, body: dict, dry_run: bool = False
) -> dict:
    api = kubernetes.client.CustomObjectsApi(client)
    extra = {"dry_run": "All"} if dry_run else {}
    return api.create_namespaced_custom_object(
        GROUP, VERSION, SESSIONS_NAMESPACE, PLURAL, body, **extra
    )


def refusal(client: kubernetes.client.ApiClient, body: dict) -> str:
    """Create the session, expect the policy to refuse it, and return the API's message."""
    with pytest.raises(ApiException) as caught:
        create_session(client, body)
    status = json.loads(caught.value.body)
    assert (caught.value.status, status.get("reason")) == (403, "Forbidden"), status
    assert f"ValidatingAdmissionPolicy '{POLICY}'" in status["message"], status["message"]
    return status["message"]


def _apply(plane: GuardedPlane, *args: str, input: str | None = None) -> None:
    result = plane.kubectl(*args, input=input)
    assert result.returncode == 0, f"kubectl {' '.join(args)} failed:\n{result.stderr}"


def _policy_is_enforced(plane: GuardedPlane, alice: kubernetes.client.ApiClient) -> bool:
    # Admission loads policies and bindings from informers, so a fresh policy takes effect a
    # moment after it is stored; a dry run goes through admission without leaving objects.
    # RBAC refuses with 403 too until the RoleBinding reaches the authorizer: match the policy.
    try:
        create_session(alice, session_body("bob"), dry_run=True)
    except ApiException as error:
        return error.status == 403 and f"ValidatingAdmissionPolicy '{POLICY}'" in error.body
    return False


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuardedPlane]:
    workdir = tmp_path_factory.mktemp("identity-binding")
    control_plane = start_control_plane(workdir / "controlplane")
    binaries = control_plane.binaries
    guarded = GuardedPlane(control_plane, workdir)
    try:
        _apply(guarded, "apply", "--server-side", "-f", str(find_repo_root() / "crds"))
        _apply(guarded, "wait", "--for=condition=Established", "--timeout=60s",
               f"crd/{PLURAL}.{GROUP}")  # fmt: skip
        rendered = helm_template(
            binaries, workdir, "--show-only", TEMPLATE,
            "--set-json", f"identityBinding.sessionAdminGroups={json.dumps(SESSION_ADMIN_GROUPS)}",
        )  # fmt: skip
        assert rendered.returncode == 0, f"helm template failed:\n{rendered.stderr}"
        _apply(guarded, "apply", "--server-side", "-f", "-", input=rendered.stdout)
        for namespace in (SESSIONS_NAMESPACE, AUTOMATION_NAMESPACE):
            _apply(guarded, "create", "namespace", namespace)
        # Everyone authenticated may create and label sessions in one namespace: RBAC lets
        # bob ask for alice's session, so any refusal below is the policy's and not RBAC's.
        _apply(guarded, "-n", SESSIONS_NAMESPACE, "create", "role", "session-user",
               "--verb=create,get,patch", f"--resource={PLURAL}.{GROUP}")  # fmt: skip
        _apply(guarded, "-n", SESSIONS_NAMESPACE, "create", "rolebinding", "session-user",
               "--role=session-user", "--group=system:authenticated")  # fmt: skip
        alice = guarded.client("alice")
        wait_for("the identity binding to be enforced", lambda: _policy_is_enforced(guarded, alice))
        alice.close()
        yield guarded
    finally:
        control_plane.stop()


@pytest.fixture
def alice(plane: GuardedPlane) -> Iterator[kubernetes.client.ApiClient]:
    client = plane.client("alice")
    yield client
    client.close()


# --------------------------------------------------------------------------------------------
# What helm renders


def test_default_values_render_a_bound_policy_exempting_pgjit_session_admins(tmp_path: Path):
    rendered = helm_template(ensure_kube_binaries(), tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    documents = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    # The sessions' policy: the reviews' (tests/cluster/test_access_requests.py) and the
    # sessions' pgjit.dev/database label have policies of their own.
    by_kind = {doc["kind"]: doc for doc in documents
               if POLICY in (doc["metadata"]["name"], doc.get("spec", {}).get("policyName"))}
    policy = by_kind["ValidatingAdmissionPolicy"]
    binding = by_kind["ValidatingAdmissionPolicyBinding"]
    assert (policy["metadata"]["name"], binding["spec"]["policyName"]) == (POLICY, POLICY)
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert policy["spec"]["failurePolicy"] == "Fail"
    (condition,) = policy["spec"]["matchConditions"]
    assert '["pgjit-session-admins"]' in condition["expression"]


def test_disabled_identity_binding_renders_nothing(tmp_path: Path):
    rendered = helm_template(
        ensure_kube_binaries(), tmp_path, "--set", "identityBinding.enabled=false"
    )
    assert rendered.returncode == 0, rendered.stderr
    names = [doc["metadata"]["name"] for doc in yaml.safe_load_all(rendered.stdout) if doc
             and doc["kind"].startswith("ValidatingAdmissionPolicy")]
    assert POLICY not in names
    assert f"# Source: pgjit/{TEMPLATE}" not in rendered.stdout


# --------------------------------------------------------------------------------------------
# What the API server admits and refuses


def test_alice_opens_her_own_session_with_her_groups_or_none(plane: GuardedPlane, alice):
    with_groups = create_session(alice, session_body("alice", groups=["analysts"]))
    bare = create_session(alice, session_body("alice"))
    assert with_groups["spec"]["user"] == bare["spec"]["user"] == "alice"
    assert with_groups["spec"]["groups"] == ["analysts"]


def test_alice_cannot_open_a_session_for_bob(plane: GuardedPlane, alice):
    message = refusal(alice, session_body("bob", groups=["analysts"]))
    assert (
        'spec.user must be your own Kubernetes user name "alice"; set spec.user: alice, '
        f"{ASK_ADMINS} to open it for bob"
    ) in message


def test_alice_cannot_claim_a_group_she_is_not_in(plane: GuardedPlane, alice):
    message = refusal(alice, session_body("alice", groups=["analysts", "admins"]))
    assert (
        "spec.groups may only list groups you are a member of; remove admins "
        f"(your groups: analysts, system:authenticated), {ASK_ADMINS}"
    ) in message


def test_alice_cannot_claim_extra_attributes_she_does_not_have(plane: GuardedPlane, alice):
    message = refusal(alice, session_body("alice", extra={"db_roles": ["writer"]}))
    assert (
        "spec.extra may only repeat your own user extra attributes; "
        f"remove db_roles (you have no such attribute), {ASK_ADMINS}"
    ) in message


def test_session_admin_opens_a_session_for_bob_with_any_groups_and_extra(plane: GuardedPlane):
    robot = plane.client("robot")
    try:
        created = create_session(
            robot, session_body("bob", groups=["admins", "dba"], extra={"db_roles": ["writer"]})
        )
    finally:
        robot.close()
    assert created["spec"]["user"] == "bob"
    assert created["spec"]["groups"] == ["admins", "dba"]


def test_extra_subset_is_admitted_and_superset_refused(plane: GuardedPlane):
    carol = plane.impersonating(
        "carol", groups=("analysts",), extra={"db_roles": "reporting", "team": "payments"}
    )
    try:
        subset = create_session(carol, session_body("carol", extra={"db_roles": ["reporting"]}))
        equal = create_session(
            carol,
            session_body("carol", extra={"db_roles": ["reporting"], "team": ["payments"]}),
        )
        more_values = refusal(
            carol, session_body("carol", extra={"db_roles": ["reporting", "writer"]})
        )
        more_keys = refusal(
            carol, session_body("carol", extra={"team": ["payments"], "site": ["berlin"]})
        )
    finally:
        carol.close()
    assert subset["spec"]["extra"] == {"db_roles": ["reporting"]}
    assert equal["spec"]["extra"] == {"db_roles": ["reporting"], "team": ["payments"]}
    assert "remove db_roles: writer (yours: reporting)" in more_values
    assert "remove site (you have no such attribute)" in more_keys


def test_extra_values_are_checked_one_by_one(plane: GuardedPlane):
    """Several values per key (kubectl repeats --as-user-extra; the Python client cannot)."""
    impersonate = [
        "--as=carol", "--as-group=analysts",
        "--as-user-extra=db_roles=reader", "--as-user-extra=db_roles=reporting",
    ]  # fmt: skip

    def create(values: list[str]) -> subprocess.CompletedProcess[str]:
        manifest = json.dumps(session_body("carol", extra={"db_roles": values}))
        return plane.kubectl(
            *impersonate, "-n", SESSIONS_NAMESPACE, "create", "-o", "name", "-f", "-",
            input=manifest,
        )  # fmt: skip

    one_of_two = create(["reporting"])
    assert one_of_two.returncode == 0, one_of_two.stderr
    one_too_many = create(["reporting", "writer", "reader"])
    assert one_too_many.returncode != 0
    assert "remove db_roles: writer (yours: reader, reporting)" in one_too_many.stderr


def test_service_accounts_open_their_own_sessions_and_automation_opens_any(plane: GuardedPlane):
    """Real ServiceAccount tokens: a workload is its ServiceAccount; the automation namespace's
    ServiceAccounts are session admins through their group system:serviceaccounts:<ns>."""
    admin = plane.client("admin")
    core = kubernetes.client.CoreV1Api(admin)
    tokens = {}
    try:
        for namespace, name in ((SESSIONS_NAMESPACE, "reports"), (AUTOMATION_NAMESPACE, "opener")):
            core.create_namespaced_service_account(
                namespace, kubernetes.client.V1ServiceAccount(metadata={"name": name})
            )
            request = kubernetes.client.AuthenticationV1TokenRequest(
                spec=kubernetes.client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
            )
            tokens[name] = core.create_namespaced_service_account_token(
                name, namespace, request
            ).status.token
    finally:
        admin.close()
    reports_user = f"system:serviceaccount:{SESSIONS_NAMESPACE}:reports"
    reports, opener = plane.token_client(tokens["reports"]), plane.token_client(tokens["opener"])
    try:
        own = create_session(reports, session_body(reports_user))
        message = refusal(reports, session_body("alice"))
        for_alice = create_session(opener, session_body("alice", groups=["analysts"]))
    finally:
        reports.close()
        opener.close()
    assert own["spec"]["user"] == reports_user
    assert (
        f'spec.user must be your own Kubernetes user name "{reports_user}"; '
        f"set spec.user: {reports_user}, {ASK_ADMINS} to open it for alice"
    ) in message
    assert for_alice["spec"]["user"] == "alice"


def test_claims_cannot_change_after_creation_yet_others_may_label_sessions(
    plane: GuardedPlane, alice
):
    """Why the policy checks CREATE only: the CRD refuses any spec change before admission, so
    an UPDATE cannot change a claim, while metadata writes by others (the operator's finalizers,
    here bob's label) must keep working on sessions that are not theirs."""
    session = create_session(alice, session_body("alice", groups=["analysts"]))
    name = session["metadata"]["name"]
    api = kubernetes.client.CustomObjectsApi(alice)
    with pytest.raises(ApiException) as caught:
        api.patch_namespaced_custom_object(
            GROUP, VERSION, SESSIONS_NAMESPACE, PLURAL, name, {"spec": {"user": "bob"}}
        )
    assert caught.value.status == 422
    assert "spec is immutable" in json.loads(caught.value.body)["message"]

    bob = plane.client("bob")
    try:
        labelled = kubernetes.client.CustomObjectsApi(bob).patch_namespaced_custom_object(
            GROUP, VERSION, SESSIONS_NAMESPACE, PLURAL, name,
            {"metadata": {"labels": {"reviewed-by": "bob"}}},
        )  # fmt: skip
    finally:
        bob.close()
    assert labelled["metadata"]["labels"] == {"reviewed-by": "bob"}
    assert labelled["spec"]["user"] == "alice"


def test_kubectl_shows_the_refusal_and_what_to_write_instead(plane: GuardedPlane):
    manifest = yaml.safe_dump(session_body("bob", groups=["analysts"]))
    result = plane.kubectl(
        "-n", SESSIONS_NAMESPACE, "create", "-f", "-", identity="alice", input=manifest
    )
    assert result.returncode != 0
    assert "Error from server (Forbidden)" in result.stderr
    assert (
        'spec.user must be your own Kubernetes user name "alice"; set spec.user: alice, '
        f"{ASK_ADMINS} to open it for bob"
    ) in result.stderr


def test_require_all_groups_refuses_a_session_that_leaves_a_group_out(plane: GuardedPlane):
    """identityBinding.requireAllGroups: a user in two groups cannot drop the one a deny names.

    A second policy (another release) bound to a namespace of its own, so the subset-only
    policy of the other tests is unchanged.
    """
    namespace, release = "strict-sessions", "strict"
    rendered = subprocess.run(
        [str(plane.control_plane.binaries.helm), "template", release, str(CHART),
         "--show-only", TEMPLATE, "--set", "identityBinding.requireAllGroups=true"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(plane.workdir / "helm-home")},
        capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    policy = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    binding = next(doc for doc in policy if doc["kind"] == "ValidatingAdmissionPolicyBinding")
    binding["spec"]["matchResources"] = {"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": namespace}}}
    _apply(plane, "create", "namespace", namespace)
    _apply(plane, "-n", namespace, "create", "role", "session-user", "--verb=create",
           f"--resource={PLURAL}.{GROUP}")
    _apply(plane, "-n", namespace, "create", "rolebinding", "session-user",
           "--role=session-user", "--group=system:authenticated")
    _apply(plane, "apply", "--server-side", "-f", "-",
           input=json.dumps({"apiVersion": "v1", "kind": "List", "items": policy}))

    def create_as_dana(groups: list[str]) -> subprocess.CompletedProcess[str]:
        body = session_body("dana", groups=groups)
        return plane.kubectl("-n", namespace, "create", "-f", "-", "--as", "dana",
                             "--as-group", "payments-team", "--as-group", "contractors",
                             input=json.dumps(body))

    strict = f"ValidatingAdmissionPolicy '{release}-pgjit-identity-binding'"
    left_out = wait_for("the strict policy to refuse a group left out", lambda: (
        r := create_as_dana(["payments-team"])).returncode != 0 and strict in r.stderr and r)
    assert "spec.groups must list every group you are a member of" in left_out.stderr
    assert "add contractors" in left_out.stderr
    complete = create_as_dana(["payments-team", "contractors"])
    assert complete.returncode == 0, complete.stderr
    # system: groups are everyone's; listing them or not changes nothing.
    with_system = create_as_dana(["contractors", "payments-team", "system:authenticated"])
    assert with_system.returncode == 0, with_system.stderr
