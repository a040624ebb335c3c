"""Helpers for the Helm chart tests: rendering charts/pgjit, a control plane of their own, and
the operator run exactly as the chart's Deployment would run it, under the chart's
ServiceAccount.

The chart tests cannot share the cluster layer's control plane: its operator watches every
namespace, and a second operator watching the same objects would fight it. So each install
module starts a ControlPlane of its own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import yaml

from pgjit.devstack.controlplane import ControlPlane
from pgjit.devstack.kube_binaries import KubeBinaries, ensure_kube_binaries, find_repo_root

REPO = find_repo_root()
CHART = REPO / "charts" / "pgjit"
#: How the API server's refusals show in the operator's log: the client's "(403) Reason:
#: Forbidden", Kopf's APIForbiddenError, and Kopf's warnings about missing permissions.
REFUSAL = re.compile(r"\b403\b|[Ff]orbidden|Not enough permissions")


def _write_private(path: Path, text: str) -> None:
    """Credentials (tokens, kubeconfigs) are readable by their owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def set_args(values: dict[str, Any] | None) -> list[str]:
    """``--set-json`` arguments for a values dict (exact types, no string-guessing)."""
    args: list[str] = []
    for key, value in (values or {}).items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


class Helm:
    """The real helm binary with its home, cache and config in a private directory."""

    def __init__(self, binary: Path, home: Path, kubeconfig: Path | None = None) -> None:
        self.binary, self.home, self.kubeconfig = binary, home, kubeconfig

    def __call__(self, *args: str, check: bool = False,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.home),
               "HELM_CACHE_HOME": str(self.home / "cache"),
               "HELM_CONFIG_HOME": str(self.home / "config"),
               "HELM_DATA_HOME": str(self.home / "data")}
        if self.kubeconfig:
            env["KUBECONFIG"] = str(self.kubeconfig)
        result = subprocess.run([str(self.binary), *args], env=env, capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def render(self, values: dict[str, Any] | None = None, *, release: str = "pgjit",
               namespace: str = "pgjit-system", extra: Iterable[str] = ()) -> list[dict]:
        """``helm template`` of the chart: the manifests as dicts."""
        out = self("template", release, str(CHART), "--namespace", namespace,
                   *set_args(values), *extra, check=True).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]


def find(docs: Iterable[dict], kind: str, name: str | None = None,
         namespace: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind
            and name in (None, d["metadata"]["name"])
            and namespace in (None, d["metadata"].get("namespace"))]


def one(docs: Iterable[dict], kind: str, name: str | None = None,
        namespace: str | None = None) -> dict:
    found = find(docs, kind, name, namespace)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


class Plane:
    """A control plane for one test module, with admin kubectl/helm and ServiceAccount logins."""

    def __init__(self, workdir: Path, binaries: KubeBinaries | None = None, *,
                 garbage_collector: bool = True) -> None:
        self.workdir = workdir
        self.control_plane = ControlPlane(binaries or ensure_kube_binaries(),
                                          workdir=workdir / "controlplane",
                                          garbage_collector=garbage_collector)
        self.api: kubernetes.client.ApiClient | None = None

    def start(self) -> None:
        self.control_plane.start()
        self.api = kubernetes.config.new_client_from_config(
            config_file=str(self.control_plane.kubeconfig("admin")), persist_config=False)
        self.helm = Helm(self.control_plane.binaries.helm, self.workdir / "helm",
                         self.control_plane.kubeconfig("admin"))

    def stop(self) -> None:
        if self.api is not None:
            self.api.close()
        self.control_plane.stop()

    @property
    def core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self.api)

    def kubectl(self, *args: str, check: bool = True, kubeconfig: Path | None = None,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        command = [str(self.control_plane.binaries.kubectl),
                   f"--kubeconfig={kubeconfig or self.control_plane.kubeconfig('admin')}",
                   f"--cache-dir={self.workdir / 'kubectl-cache'}", *args]
        result = subprocess.run(command, capture_output=True, text=True, input=input,
                                timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
        return result

    def create_namespace(self, name: str) -> str:
        self.core.create_namespace(kubernetes.client.V1Namespace(
            metadata=kubernetes.client.V1ObjectMeta(name=name)))
        return name

    def service_account_kubeconfig(self, name: str, namespace: str, path: Path) -> Path:
        """A kubeconfig holding a fresh TokenRequest token of the ServiceAccount.

        The token comes back on kubectl's stdout and goes straight into a 0600 file: it is
        never on a command line or in a log.
        """
        token = self.kubectl("create", "token", name, "-n", namespace,
                             "--duration=2h").stdout.strip()
        assert token.count(".") == 2, "TokenRequest did not return a JWT"
        config = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "plane", "cluster": {
                "server": self.control_plane.url,
                "certificate-authority": str(self.control_plane.ca_file)}}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": name, "context": {"cluster": "plane", "user": name,
                                                    "namespace": namespace}}],
            "current-context": name,
        }
        _write_private(path, yaml.safe_dump(config))
        return path

    def client_for(self, kubeconfig: Path) -> kubernetes.client.ApiClient:
        return kubernetes.config.new_client_from_config(config_file=str(kubeconfig),
                                                        persist_config=False)


def deployment_command(deployment: dict, *, pod_name: str) -> tuple[list[str], dict[str, str]]:
    """The operator container's arguments and environment as the kubelet would give them.

    ``fieldRef`` values are resolved the way the downward API would for a pod of this
    Deployment; anything else that needs a running cluster is refused so a new kind of value
    in the chart cannot silently go untested.
    """
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    namespace = deployment["metadata"]["namespace"]
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        path = var["valueFrom"]["fieldRef"]["fieldPath"]
        # The operator runs on this host: its "pod IP", where a standby probes it, is loopback.
        env[var["name"]] = {"metadata.name": pod_name, "metadata.namespace": namespace,
                            "status.podIP": "127.0.0.1"}[path]
    return list(container["args"]), env


class ChartOperator:
    """``pgjit`` run as a subprocess with the Deployment's args and env, under a kubeconfig
    that authenticates as the chart's ServiceAccount."""

    def __init__(self, deployment: dict, kubeconfig: Path, log_path: Path) -> None:
        self.args, self.env = deployment_command(deployment, pod_name="pgjit-test-pod")
        self.kubeconfig, self.log_path = kubeconfig, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        # Only what the pod would have, plus PATH and the kubeconfig standing in for the
        # mounted ServiceAccount token.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tempfile.gettempdir(),
               "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1", **self.env}
        with open(self.log_path, "a") as log:
            log.write(f"--- operator started at {time.strftime('%H:%M:%S')} ---\n")
            log.flush()
            self.proc = subprocess.Popen([sys.executable, "-m", "pgjit.cli", *self.args],
                                         env=env, stdout=log, stderr=subprocess.STDOUT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def refusals(self) -> list[str]:
        """Log lines where the API server refused the operator something."""
        # A word-bounded 403: random names and uids in the log contain the digits too.
        return [line for line in self.log().splitlines() if REFUSAL.search(line)]


def iter_schema_objects(node: dict, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every object-typed node of a JSON schema, with a dotted path."""
    if node.get("type") == "object":
        yield path or "<root>", node
    for name, sub in node.get("properties", {}).items():
        yield from iter_schema_objects(sub, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        yield from iter_schema_objects(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from iter_schema_objects(node["additionalProperties"], f"{path}{{}}")
