"""Fixtures for the node layer: the chart's Deployment running as a real Pod.

One control plane, one node (containerd + runc + kubelet, kube-controller-manager,
kube-scheduler: pgjit.devstack.node) and the operator image built from the Dockerfile
(pgjit.devstack.node_image), all for the whole session. Nothing here skips: a node that cannot
start fails the run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
# The cluster layer's helpers (helm, kubectl, PostgreSQL 16, session Env) apply unchanged.
sys.path.insert(0, str(HERE.parent / "cluster"))

from chartkit import Plane  # noqa: E402
from operatorkit import shared_postgres16  # noqa: E402

from pgjit.devstack.kube_binaries import ensure_node_binaries  # noqa: E402
from pgjit.devstack.node import CGROUP_ROOT, LEFTOVER_DIRS, Node  # noqa: E402
from pgjit.devstack.node_image import ImageBuilder  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.node)


@pytest.fixture(scope="session")
def image_builder() -> ImageBuilder:
    return ImageBuilder()


@pytest.fixture(scope="session")
def operator_image(image_builder):
    try:
        return image_builder.ensure_operator()
    except Exception as error:
        pytest.fail(f"cannot build the operator image from the Dockerfile: {error}",
                    pytrace=False)


@pytest.fixture(scope="session")
def plane(tmp_path_factory):
    # The node runs a whole kube-controller-manager, garbage collector included.
    plane = Plane(tmp_path_factory.mktemp("node-plane"), garbage_collector=False)
    try:
        plane.start()
    except Exception as error:
        plane.stop()
        pytest.fail(f"cannot start the control plane: {error}", pytrace=False)
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def node(plane, image_builder, operator_image):
    try:
        binaries = ensure_node_binaries()
        pause = image_builder.ensure_pause()
    except Exception as error:
        pytest.fail(f"cannot build the node's binaries or pause image: {error}", pytrace=False)
    node = Node(plane.control_plane, pause, [operator_image], binaries=binaries)
    try:
        node.start()
    except Exception as error:
        pytest.fail(f"cannot start the node: {error}", pytrace=False)
    print(f"\nnode Ready in {node.startup_seconds:.1f}s: {node.timings}")
    yield node
    node.stop()
    # Stopping leaves nothing of the node outside its workdir and the cache.
    left = [path for path in LEFTOVER_DIRS if Path(path).exists()]
    left += [str(h / "kubepods") for h in CGROUP_ROOT.iterdir() if (h / "kubepods").exists()]
    marker = str(node.workdir).encode()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes():
                left.append(f"process {proc.name}")
        except OSError:
            continue
    if left:
        pytest.fail(f"the node left behind: {left}", pytrace=False)


@pytest.fixture(scope="session")
def postgres16():
    with shared_postgres16() as server:
        yield server
