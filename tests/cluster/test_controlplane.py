"""Smoke tests of the control-plane test bed: the behaviour later cluster tests rely on."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import kubernetes
import pytest
from kubernetes.client import (
    ApiClient,
    ApiException,
    AuthenticationV1Api,
    AuthenticationV1TokenRequest,
    CoreV1Api,
    RbacAuthorizationV1Api,
    V1ObjectMeta,
    V1PolicyRule,
    V1Role,
    V1RoleBinding,
    V1RoleRef,
    V1SelfSubjectReview,
    V1ServiceAccount,
    V1TokenRequestSpec,
    VersionApi,
)

from pgjit.devstack.controlplane import ControlPlane

RBAC_PROPAGATION_TIMEOUT = 10.0


def status_of(call: Callable[[], object]) -> int:
    """Return 200 if ``call`` succeeds, else the HTTP status of its ApiException."""
    try:
        call()
    except ApiException as error:
        return error.status
    return 200


def wait_for_status(
    call: Callable[[], object], expected: int, timeout: float = RBAC_PROPAGATION_TIMEOUT
) -> int:
    """Poll ``call`` until it answers ``expected``; return the last status seen.

    The RBAC authorizer reads Roles and RoleBindings from an informer cache, so a new binding
    takes effect a few milliseconds after the write returns.
    """
    deadline = time.monotonic() + timeout
    while (status := status_of(call)) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return status


def whoami(client: ApiClient) -> tuple[str, set[str]]:
    review = AuthenticationV1Api(client).create_self_subject_review(V1SelfSubjectReview())
    user = review.status.user_info
    return user.username, set(user.groups or ())


def test_server_is_ready_and_reports_pinned_version(
    control_plane: ControlPlane, kube_api: ApiClient
) -> None:
    # Through the client's own REST layer (its TLS and token), but not its generated helpers,
    # whose signatures change between client releases.
    response = kube_api.rest_client.request(
        "GET", f"{kube_api.configuration.host}/readyz",
        headers={"Authorization": kube_api.configuration.auth_settings()["BearerToken"]["value"]},
        _preload_content=True)
    assert (response.status, response.data) == (200, b"ok")

    version = VersionApi(kube_api).get_code()
    assert version.git_version.startswith("v1.37.")
    assert control_plane.binaries.kube_apiserver.name == f"kube-apiserver-{version.git_version}"
    assert (version.major, version.minor) == ("1", "37")


def test_admin_creates_namespace_and_objects_in_it(kube_api: ApiClient, namespace: str) -> None:
    core = CoreV1Api(kube_api)
    assert core.read_namespace(namespace).status.phase == "Active"

    core.create_namespaced_config_map(
        namespace,
        kubernetes.client.V1ConfigMap(metadata=V1ObjectMeta(name="probe"), data={"k": "v"}),
    )
    assert core.read_namespaced_config_map("probe", namespace).data == {"k": "v"}


@pytest.mark.parametrize(
    ("identity", "groups"),
    [
        ("admin", {"system:masters", "system:authenticated"}),
        ("alice", {"analysts", "system:authenticated"}),
        ("bob", {"system:authenticated"}),
        ("robot", {"pgjit-session-admins", "system:authenticated"}),
        ("carol", {"dba", "system:authenticated"}),
    ],
)
def test_static_identities_authenticate_with_their_groups(
    api_for: Callable[[str], ApiClient], identity: str, groups: set[str]
) -> None:
    assert whoami(api_for(identity)) == (identity, groups)


def test_rbac_role_binding_grants_alice_one_namespace_only(
    kube_api: ApiClient, api_for: Callable[[str], ApiClient], namespace_factory: Callable[[], str]
) -> None:
    granted, other = namespace_factory(), namespace_factory()
    alice, bob = CoreV1Api(api_for("alice")), CoreV1Api(api_for("bob"))
    assert status_of(alice.list_secret_for_all_namespaces) == 403
    assert status_of(lambda: alice.list_namespaced_secret(granted)) == 403

    rbac = RbacAuthorizationV1Api(kube_api)
    rbac.create_namespaced_role(
        granted,
        V1Role(
            metadata=V1ObjectMeta(name="secret-reader"),
            rules=[V1PolicyRule(api_groups=[""], resources=["secrets"], verbs=["get", "list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        granted,
        V1RoleBinding(
            metadata=V1ObjectMeta(name="analysts-read-secrets"),
            role_ref=V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="secret-reader"
            ),
            subjects=[
                kubernetes.client.RbacV1Subject(
                    kind="Group", name="analysts", api_group="rbac.authorization.k8s.io"
                )
            ],
        ),
    )

    assert wait_for_status(lambda: alice.list_namespaced_secret(granted), 200) == 200
    assert status_of(lambda: alice.list_namespaced_secret(other)) == 403
    assert status_of(alice.list_secret_for_all_namespaces) == 403
    # The binding names the group, not the user: bob, outside analysts, stays locked out.
    assert status_of(lambda: bob.list_namespaced_secret(granted)) == 403


def test_admin_impersonates_alice(
    control_plane: ControlPlane, api_for: Callable[[str], ApiClient]
) -> None:
    as_alice = api_for("admin")
    as_alice.set_default_header("Impersonate-User", "alice")
    as_alice.set_default_header("Impersonate-Group", "analysts")

    assert whoami(as_alice) == ("alice", {"analysts", "system:authenticated"})
    # Impersonation changes authorization too: admin's system:masters no longer applies.
    assert status_of(CoreV1Api(as_alice).list_secret_for_all_namespaces) == 403

    bob_as_alice = api_for("bob")
    bob_as_alice.set_default_header("Impersonate-User", "alice")
    assert status_of(lambda: whoami(bob_as_alice)) == 403


def test_service_account_token_from_token_request_authenticates(
    control_plane: ControlPlane, kube_api: ApiClient, namespace: str
) -> None:
    core = CoreV1Api(kube_api)
    core.create_namespaced_service_account(
        namespace, V1ServiceAccount(metadata=V1ObjectMeta(name="runner"))
    )
    token_request = core.create_namespaced_service_account_token(
        "runner",
        namespace,
        AuthenticationV1TokenRequest(spec=V1TokenRequestSpec(expiration_seconds=600)),
    )

    configuration = kubernetes.client.Configuration(host=control_plane.url)
    configuration.ssl_ca_cert = str(control_plane.ca_file)
    configuration.api_key = {"BearerToken": token_request.status.token}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    with ApiClient(configuration) as as_service_account:
        username, groups = whoami(as_service_account)

    assert username == f"system:serviceaccount:{namespace}:runner"
    assert {
        "system:serviceaccounts",
        f"system:serviceaccounts:{namespace}",
        "system:authenticated",
    } <= groups


def test_kubectl_version_reports_client_and_server(
    control_plane: ControlPlane, kubectl: Callable[..., object]
) -> None:
    result = kubectl("version", "--output=json", check=True)
    versions = json.loads(result.stdout)
    pinned = control_plane.binaries.kubectl.name.removeprefix("kubectl-")
    assert versions["clientVersion"]["gitVersion"] == pinned
    assert versions["serverVersion"]["gitVersion"] == pinned


def test_kubectl_auth_can_i_reflects_rbac(kubectl: Callable[..., object]) -> None:
    assert kubectl("auth", "can-i", "create", "namespaces").stdout.strip() == "yes"
    assert kubectl("auth", "can-i", "list", "secrets", "-A", identity="bob").stdout.strip() == "no"


def test_helm_version_runs(control_plane: ControlPlane, helm: Callable[..., object]) -> None:
    result = helm("version", "--template={{ .Version }}", check=True)
    assert result.stdout.strip() == control_plane.binaries.helm.name.removeprefix("helm-")


GARBAGE_COLLECTION_TIMEOUT = 60.0  # its first discovery of the server's resources included


def test_objects_whose_owner_is_deleted_are_garbage_collected(tmp_path) -> None:
    """The bed's optional garbage collector deletes what a deleted owner leaves, as on any
    cluster (the benchmarks can run with it)."""
    with ControlPlane(workdir=tmp_path / "gc", garbage_collector=True) as plane:
        kube_api = kubernetes.config.new_client_from_config(
            config_file=str(plane.kubeconfig("admin")), persist_config=False)
        _collects_garbage(kube_api, "default")


def _collects_garbage(kube_api: ApiClient, namespace: str) -> None:
    core = CoreV1Api(kube_api)
    owner = core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "owner"}, "data": {}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
           "uid": owner.metadata.uid, "controller": True}
    core.create_namespaced_secret(namespace, {"metadata": {"name": "owned",
                                                           "ownerReferences": [ref]}})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "unowned"}})
    core.delete_namespaced_config_map("owner", namespace)
    assert wait_for_status(lambda: core.read_namespaced_secret("owned", namespace), 404,
                           timeout=GARBAGE_COLLECTION_TIMEOUT) == 404
    assert status_of(lambda: core.read_namespaced_secret("unowned", namespace)) == 200
