"""Starting a control plane of a test's own, failing (never skipping) when it cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgjit.devstack.controlplane import ControlPlane
from pgjit.devstack.kube_binaries import ensure_kube_binaries


def start_control_plane(workdir: Path) -> ControlPlane:
    """Build (if needed) and start a control plane in ``workdir``, or fail the test run.

    Tests whose cluster-wide objects (admission policies, a second operator) must not reach the
    shared control plane start one of their own with this.
    """
    try:
        binaries = ensure_kube_binaries()
    except Exception as error:
        pytest.fail(f"cannot build the control-plane binaries: {error}", pytrace=False)
    control_plane = ControlPlane(binaries, workdir=workdir)
    try:
        control_plane.start()
    except Exception as error:
        control_plane.stop()
        pytest.fail(f"cannot start the control plane: {error}", pytrace=False)
    return control_plane
