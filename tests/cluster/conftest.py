"""Fixtures for tests against the real control plane (etcd + kube-apiserver, built from Go).

Every test in this directory is marked ``cluster``. The control plane is started once per
session (per xdist worker); each test gets its own namespace. Nothing here skips: a cluster
layer that silently skipped would prove nothing, so a missing binary fails the run.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import kubernetes
import pytest

from pgjit.devstack.controlplane import ControlPlane
from operatorkit import shared_crds, shared_operator, shared_postgres16
from planekit import start_control_plane

HERE = Path(__file__).parent
NAMESPACE_NAME_LIMIT = 63


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A running control plane; its workdir (logs, kubeconfigs) stays under pytest's tmp dir."""
    control_plane = start_control_plane(tmp_path_factory.mktemp("controlplane"))
    yield control_plane
    control_plane.stop()


def _api_client(control_plane: ControlPlane, identity: str) -> kubernetes.client.ApiClient:
    # new_client_from_config leaves kubernetes' global default configuration untouched, so
    # clients for different identities cannot leak credentials into each other.
    return kubernetes.config.new_client_from_config(
        config_file=str(control_plane.kubeconfig(identity)), persist_config=False
    )


@pytest.fixture(scope="session")
def kube_api(control_plane: ControlPlane) -> Iterator[kubernetes.client.ApiClient]:
    """An ApiClient authenticated as admin (group system:masters)."""
    client = _api_client(control_plane, "admin")
    yield client
    client.close()


@pytest.fixture
def api_for(control_plane: ControlPlane) -> Iterator[Callable[[str], kubernetes.client.ApiClient]]:
    """Return a factory: ``api_for("alice")`` is an ApiClient authenticated as alice."""
    clients: list[kubernetes.client.ApiClient] = []

    def make(identity: str) -> kubernetes.client.ApiClient:
        client = _api_client(control_plane, identity)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def _namespace_slug(test_name: str, limit: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")
    return slug[:limit].rstrip("-") or "test"


@pytest.fixture
def namespace_factory(
    request: pytest.FixtureRequest, kube_api: kubernetes.client.ApiClient
) -> Iterator[Callable[[], str]]:
    """Return a factory creating fresh namespaces ``t-<test-name>-<random>``.

    Namespaces are deleted afterwards without waiting: with no namespace controller they stay
    Terminating, which is harmless and keeps teardown instant.
    """
    core = kubernetes.client.CoreV1Api(kube_api)
    created: list[str] = []

    def make() -> str:
        suffix = secrets.token_hex(3)
        slug = _namespace_slug(request.node.name, NAMESPACE_NAME_LIMIT - len("t--") - len(suffix))
        name = f"t-{slug}-{suffix}"
        core.create_namespace(
            kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=name))
        )
        created.append(name)
        return name

    yield make
    for name in created:
        try:
            core.delete_namespace(name)
        except kubernetes.client.ApiException as error:
            if error.status != 404:
                raise


@pytest.fixture
def namespace(namespace_factory: Callable[[], str]) -> str:
    """The name of a namespace created for this test alone."""
    return namespace_factory()


@pytest.fixture
def kubectl(control_plane: ControlPlane) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Return ``kubectl(*args, check=False, identity="admin", input=None)``: the real binary."""
    cache_dir = control_plane.workdir / "kubectl-cache"

    def run(
        *args: str,
        check: bool = False,
        identity: str = "admin",
        input: str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        command = [
            str(control_plane.binaries.kubectl),
            f"--kubeconfig={control_plane.kubeconfig(identity)}",
            # Keep kubectl's discovery cache out of $HOME and per control plane.
            f"--cache-dir={cache_dir}",
            *args,
        ]
        return subprocess.run(
            command, input=input, capture_output=True, text=True, check=check, timeout=timeout
        )

    return run


@pytest.fixture
def helm(
    control_plane: ControlPlane, tmp_path: Path
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Return ``helm(*args, check=False, identity="admin")`` running the real binary."""
    helm_home = tmp_path / "helm"

    def run(
        *args: str, check: bool = False, identity: str = "admin", timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        # helm reads its cache, config and data dirs from the environment; pointing them into
        # the test's tmp dir keeps repositories and plugins of the developer's $HOME out.
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(helm_home),
            "KUBECONFIG": str(control_plane.kubeconfig(identity)),
            "HELM_CACHE_HOME": str(helm_home / "cache"),
            "HELM_CONFIG_HOME": str(helm_home / "config"),
            "HELM_DATA_HOME": str(helm_home / "data"),
        }
        command = [str(control_plane.binaries.helm), *args]
        return subprocess.run(
            command, env=env, capture_output=True, text=True, check=check, timeout=timeout
        )

    return run


@pytest.fixture(scope="session")
def installed_crds(control_plane):
    with shared_crds(control_plane):
        yield


@pytest.fixture(scope="session")
def postgres16():
    with shared_postgres16() as server:
        yield server


@pytest.fixture(scope="session")
def operator(control_plane, installed_crds, tmp_path_factory):
    with shared_operator(control_plane, tmp_path_factory) as proc:
        yield proc
