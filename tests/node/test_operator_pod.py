"""The chart's Deployment on a real kubelet, with the image built from the Dockerfile.

One story, in order: install the chart as shipped (only image, host-network, probe and replica
values set) → the Pod Running and Ready without restarts; the securityContext as the kernel
sees it; the unmodified pod template admitted under Pod Security "restricted"; a session through the Pod
under the chart's ServiceAccount; ``helm upgrade`` to a rebuilt image while sessions are Active;
the operator's process killed mid-burst of 50 sessions; ``helm uninstall`` in the documented
order. The Pod uses the node's network (host network only here): probes go to 127.0.0.1 and
the in-cluster client to the API server's loopback address.
"""

from __future__ import annotations

import concurrent.futures
import errno
import json
import os
import re
import signal
import time
import urllib.request

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from chartkit import CHART, one, set_args
from operatorkit import GROUP, PLURALS, VERSION, make_env, token, wait_for
from pgjit.devstack.node import NODE_NAME
from pgjit.devstack.ports import free_ports

RELEASE, RELEASE_NS, SA = "pgjit", "pgjit-system", "pgjit"
UID = 65532
LIVENESS_PERIOD = 3
BURST = 50


# Chosen now, bound by the Pod (host network) minutes later.
PORTS = dict(zip(("liveness.port", "readiness.port", "metrics.port"),
                 free_ports(3, bound_later=True)))


class PodOperator:
    """The operator Pod of the release, seen through the API and the node."""

    def __init__(self, plane, node) -> None:
        self.plane, self.node = plane, node

    def pods(self) -> list:
        return [p for p in self.plane.core.list_namespaced_pod(
            RELEASE_NS, label_selector=f"app.kubernetes.io/instance={RELEASE}").items
            if p.metadata.deletion_timestamp is None]

    def pod(self):
        pods = self.pods()
        return pods[0] if len(pods) == 1 else None

    def container_status(self):
        pod = self.pod()
        statuses = (pod.status.container_statuses or []) if pod else []
        return statuses[0] if statuses else None

    @property
    def running(self) -> bool:
        status = self.container_status()
        return bool(status and status.ready and status.state.running)

    def log_tail(self, lines: int = 60) -> str:
        pod = self.pod()
        if pod is None:
            return "(no operator pod)"
        text = self.node.container_log(RELEASE_NS, pod.metadata.name, "operator")
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = 120, image: str | None = None):
        def ready():
            status = self.container_status()
            if status and status.ready and (image is None or status.image.endswith(image)):
                return status
            return None
        try:
            return wait_for("the operator Pod Ready", ready, timeout, interval=0.2)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.describe()}") from None

    def describe(self) -> str:
        pod = self.pod()
        events = self.plane.core.list_namespaced_event(RELEASE_NS).items
        lines = [f"{e.involved_object.name}: {e.reason}: {e.message}" for e in events[-20:]]
        return (f"pod: {pod.status if pod else None}\nevents:\n" + "\n".join(lines)
                + f"\n--- container log ---\n{self.log_tail()}")


class Story:
    def __init__(self, plane, node, image) -> None:
        self.plane, self.node, self.image = plane, node, image
        self.operator = PodOperator(plane, node)
        self.namespace = f"node-{token()}"
        self.env = None
        self.robot = None

    def values(self, image) -> dict:
        """Only image, host-network, probe and replica values: the chart as shipped otherwise.

        One replica: on the host network two pods of this one node would need the same ports.
        """
        repository, _, tag = image.ref.rpartition(":")
        port = self.plane.control_plane.url.rpartition(":")[2]
        return {"image.repository": repository, "image.tag": tag, "replicas": 1,
                "hostNetwork": True, "probeHost": "127.0.0.1", **PORTS,
                # The chart's initial delay; a shorter period, so three pass sooner.
                "liveness.periodSeconds": LIVENESS_PERIOD,
                # The Service IP has no route here; the API server listens on loopback and
                # its certificate names 127.0.0.1.
                "operator.extraEnv": [
                    {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                    {"name": "KUBERNETES_SERVICE_PORT", "value": port}]}

    def helm(self, command: str, image) -> str:
        return self.plane.helm(command, RELEASE, str(CHART), "-n", RELEASE_NS,
                               *set_args(self.values(image)), check=True).stdout

    def probe_counts(self, pod_name: str) -> dict[tuple[str, str], float]:
        """kubelet's prober_probe_total for the operator container: (type, result) -> count."""
        counts: dict[tuple[str, str], float] = {}
        for line in self.node.kubelet_get("/metrics/probes").splitlines():
            if not line.startswith("prober_probe_total{"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            if labels.get("pod") == pod_name and labels.get("container") == "operator":
                key = (labels["probe_type"], labels["result"])
                counts[key] = counts.get(key, 0) + float(line.rsplit(" ", 1)[1])
        return counts

    def container_id(self) -> str:
        return self.operator.container_status().container_id

    def sessions_api(self):
        if self.robot is None:
            # robot is in pgjit-session-admins (the chart's default session admins) and may
            # open sessions for other users; cluster-admin stands in for what an admin grants
            # an automation identity.
            rbac = kubernetes.client.RbacAuthorizationV1Api(self.plane.api)
            rbac.create_cluster_role_binding({
                "metadata": {"name": "robot-cluster-admin"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "cluster-admin"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                              "name": "robot"}]})
            self.robot = kubernetes.config.new_client_from_config(
                config_file=str(self.plane.control_plane.kubeconfig("robot")),
                persist_config=False)
        return self.robot


@pytest.fixture(scope="module")
def story(plane, node, operator_image):
    return Story(plane, node, operator_image)


def _read_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as handle:
        return dict(line.rstrip("\n").split(":\t", 1) for line in handle if ":\t" in line)


# --------------------------------------------------------------------------------------------


def test_install_as_shipped_is_running_and_ready_without_restarts(story, plane, node):
    plane.create_namespace(RELEASE_NS)
    began = time.monotonic()
    story.helm("install", story.image)
    status = story.operator.wait_ready()
    print(f"\nhelm install -> operator Ready in {time.monotonic() - began:.1f}s")
    pod = story.operator.pod()
    assert pod.spec.node_name == NODE_NAME and pod.status.phase == "Running"
    # Under the chart's ServiceAccount, with its token projected by the kubelet.
    assert pod.spec.service_account_name == SA
    assert any(v.projected and any(s.service_account_token for s in v.projected.sources)
               for v in pod.spec.volumes)
    assert status.image.endswith(story.image.ref.partition("/")[2])
    # At least three liveness periods, each probe a success, no restart.
    wait_for("three successful liveness probes",
             lambda: story.probe_counts(pod.metadata.name).get(("Liveness", "successful"),
                                                               0) >= 3,
             timeout=LIVENESS_PERIOD * 3 + 60, interval=0.5)
    counts = story.probe_counts(pod.metadata.name)
    assert counts.get(("Liveness", "failed"), 0) == 0, counts
    assert counts.get(("Readiness", "successful"), 0) >= 1, counts
    assert story.operator.container_status().restart_count == 0, story.operator.describe()
    with urllib.request.urlopen(f"http://127.0.0.1:{PORTS['readiness.port']}/readyz",
                                timeout=5) as response:
        assert json.loads(response.read()) == {"ready": True, "role": "leader"}
    # The kubelet injected no service links: PGJIT_METRICS_* would collide with settings.
    with open(f"/proc/{node.task_pid(story.container_id())}/environ", "rb") as process_env:
        environ = process_env.read()
    names = {entry.split(b"=", 1)[0].decode() for entry in environ.split(b"\0") if entry}
    assert not [n for n in names if n.startswith("PGJIT_METRICS")], names
    assert {"POD_ID", "POD_NAME", "PGJIT_NAMESPACE"} <= names


def test_security_context_as_the_kernel_sees_it(story, node):
    cid = story.container_id()
    status = _read_status(node.task_pid(cid))
    assert status["Uid"].split() == [str(UID)] * 4, status["Uid"]
    assert status["Gid"].split() == [str(UID)] * 4, status["Gid"]
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0, status
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2", "seccomp filter mode (RuntimeDefault)"
    # A process started in the container gets the same spec; the root filesystem refuses
    # writes (EROFS, not merely EACCES: it is mounted read-only), /tmp takes them.
    script = (
        "import errno, json, os\n"
        "result = {}\n"
        "for path in ('/probe', '/opt/pgjit/probe', '/tmp/probe'):\n"
        "    try:\n"
        "        open(path, 'w').write('x'); os.unlink(path); result[path] = 0\n"
        "    except OSError as e:\n"
        "        result[path] = e.errno\n"
        "result['user'] = __import__('getpass').getuser()\n"
        "print(json.dumps(result))\n"
    )
    done = node.exec_in(cid, "python", "-c", script)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["/probe"] == errno.EROFS and result["/opt/pgjit/probe"] == errno.EROFS, result
    assert result["/tmp/probe"] == 0, result
    # The image names its user (the passwd entry of the fix).
    assert result["user"] == "pgjit"


def test_unmodified_pod_template_is_admitted_by_restricted(story, plane):
    namespace = f"restricted-{token()}"
    plane.core.create_namespace(kubernetes.client.V1Namespace(metadata={
        "name": namespace, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}))
    # The ServiceAccount the template names, so the template goes in as rendered.
    plane.core.create_namespaced_service_account(namespace, {"metadata": {"name": SA}})
    repository, _, tag = story.image.ref.rpartition(":")

    def pod_from_template(values: dict) -> dict:
        docs = plane.helm.render({"image.repository": repository, "image.tag": tag, **values},
                                 namespace=namespace)
        template = one(docs, "Deployment")["spec"]["template"]
        assert template["spec"]["serviceAccountName"] == SA
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "pgjit-dry-run", "labels": template["metadata"]["labels"]},
                "spec": template["spec"]}

    plane.core.create_namespaced_pod(namespace, pod_from_template({}), dry_run="All")
    # The same check refuses what restricted forbids (so it is live): host network.
    with pytest.raises(ApiException) as refused:
        plane.core.create_namespaced_pod(namespace, pod_from_template({"hostNetwork": True}),
                                         dry_run="All")
    assert refused.value.status == 403 and "hostNetwork" in refused.value.body


def test_session_through_the_pod(story, plane, postgres16):
    plane.create_namespace(story.namespace)
    api = story.sessions_api()
    env = make_env(api, story.namespace, postgres16, story.operator,
                   managed_role=f"pgjit-{story.namespace}")
    story.env = env
    env.role("analysts", "best_effort_drop")
    user = f"pod-{token()}"
    creds = env.open_session("s1", user)
    with env.login(creds) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 2
    session = env.get("DatabaseSession", "s1")
    assert session["status"]["phase"] == "Active"
    env.delete("DatabaseSession", "s1")
    env.wait_gone("DatabaseSession", "s1", timeout=60)
    assert env.login_refused(creds)
    assert env.role_row(user) is None and env.secret("s1-credentials") is None
    # It was the Pod, as the chart's ServiceAccount, that did it.
    log = story.operator.log_tail(400)
    assert "s1" in log
    refusals = [line for line in log.splitlines() if re.search(r"\b403\b|[Ff]orbidden", line)]
    assert refusals == []


def test_helm_upgrade_to_a_rebuilt_image_keeps_active_sessions(story, node, image_builder):
    env = story.env
    before = {f"up-{i}": f"up-{i}-{token()}" for i in range(3)}
    creds = {name: env.open_session(name, user) for name, user in before.items()}
    held = env.login(creds["up-0"])  # a connection that lives through the rollout
    old_pod = story.operator.pod().metadata.name

    rebuilt = image_builder.ensure_operator(variant="rebuild")
    assert rebuilt.ref != story.image.ref
    node.import_image(rebuilt)
    story.helm("upgrade", rebuilt)
    apps = kubernetes.client.AppsV1Api(story.plane.api)

    def rolled_out():
        deployment = apps.read_namespaced_deployment(RELEASE, RELEASE_NS)
        status = deployment.status
        return (status.observed_generation >= deployment.metadata.generation
                and status.updated_replicas == 1 and status.ready_replicas == 1
                and (status.replicas or 0) == 1)

    # On the host network one pod goes before the next comes (maxSurge 0).
    wait_for("the rollout", rolled_out, timeout=180, interval=0.5)
    status = story.operator.wait_ready(image=rebuilt.ref.partition("/")[2])
    assert story.operator.pod().metadata.name != old_pod and status.restart_count == 0
    assert [p.metadata.name for p in story.operator.pods()] == [story.operator.pod().metadata.name]
    replica_sets = apps.list_namespaced_replica_set(
        RELEASE_NS, label_selector=f"app.kubernetes.io/instance={RELEASE}").items
    assert sorted((rs.spec.replicas, rs.spec.template.spec.containers[0].image)
                  for rs in replica_sets) == [(0, story.image.ref), (1, rebuilt.ref)]

    # Sessions opened before keep working: the held connection and new logins.
    assert held.execute("SELECT count(*) FROM items").fetchone()[0] == 2
    for name, secret in creds.items():
        assert env.get("DatabaseSession", name)["status"]["phase"] == "Active"
        with env.login(secret) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    held.close()
    # ...and end normally under the new Pod.
    for name in creds:
        env.delete("DatabaseSession", name)
    for name, secret in creds.items():
        env.wait_gone("DatabaseSession", name, timeout=60)
        assert env.login_refused(secret)
    # Nothing leaks: no login, no Secret, no per-session RBAC of those sessions.
    assert env.login_capable_managed_users() == set()
    assert env.session_secrets() == {}
    assert all(env.role_row(user) is None for user in before.values())
    story.image = rebuilt


def test_operator_process_killed_mid_burst_converges(story, node):
    env = story.env
    users = {f"b-{i:02d}": f"b-{i:02d}-{token()}" for i in range(BURST)}
    restarts_before = story.operator.container_status().restart_count
    pid = node.task_pid(story.container_id())

    def create(item):
        name, user = item
        env.create("DatabaseSession", name, env.session_spec(user))

    items = list(users.items())
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(create, items[:BURST // 2]))
        # Some of these sessions are mid-activation when the process dies.
        wait_for("the operator to start on the burst",
                 lambda: any(s.get("status", {}).get("phase") for s in env.list(
                     "DatabaseSession")), timeout=30)
        os.kill(pid, signal.SIGKILL)  # the process, not the Pod
        list(pool.map(create, items[BURST // 2:]))

    wait_for("the kubelet to restart the operator container",
             lambda: (story.operator.container_status().restart_count > restarts_before
                      and story.operator.running), timeout=120, interval=0.5)
    assert story.operator.pod() is not None and len(story.operator.pods()) == 1

    def converged():
        sessions = env.list("DatabaseSession")
        phases = [s.get("status", {}).get("phase") for s in sessions]
        return len(sessions) == BURST and all(p == "Active" for p in phases)

    try:
        wait_for("all 50 sessions Active", converged, timeout=240, interval=0.5)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{story.operator.log_tail()}") from None
    live = {s["status"]["username"] for s in env.list("DatabaseSession")}
    assert len(live) == BURST
    # No login without a live session: every login-capable managed user belongs to one.
    assert env.login_capable_managed_users() == live
    for name in users:
        env.delete("DatabaseSession", name)
    wait_for("all burst sessions gone", lambda: env.list("DatabaseSession") == [],
             timeout=180, interval=0.5)
    assert env.login_capable_managed_users() == set()
    assert env.session_secrets() == {}


def test_uninstall_keeps_crds_and_objects_and_the_docs_order_leaves_no_login(story, plane):
    env = story.env
    user = f"last-{token()}"
    creds = env.open_session("last", user)
    # The documented order (docs/install.md, "Uninstall"), steps 1 to 3.
    plane.kubectl("delete", "databasesessions", "--all", "-A", "--wait", "--timeout=120s")
    assert env.login_refused(creds)
    plane.kubectl("delete", "databases.pgjit.dev", "--all", "-A", "--wait", "--timeout=120s")
    plane.helm("uninstall", RELEASE, "-n", RELEASE_NS, "--wait", check=True)
    wait_for("the operator Pod gone", lambda: story.operator.pods() == [] and not [
        p for p in plane.core.list_namespaced_pod(RELEASE_NS).items], timeout=120)
    # crds.keep: the CRDs stay, and with them the objects nobody deleted (Roles).
    extensions = kubernetes.client.ApiextensionsV1Api(plane.api)
    for plural in PLURALS.values():
        extensions.read_custom_resource_definition(f"{plural}.{GROUP}")
    roles = kubernetes.client.CustomObjectsApi(plane.api).list_namespaced_custom_object(
        GROUP, VERSION, story.namespace, "roles")["items"]
    assert [r["metadata"]["name"] for r in roles] == ["analysts"]
    # No login behind: none of the managed role's members can log in, nothing holds a finalizer.
    assert env.login_capable_managed_users() == set()
    assert env.role_row(user) is None
    with pytest.raises(ApiException) as gone:
        plane.core.read_namespaced_service_account(SA, RELEASE_NS)
    assert gone.value.status == 404
