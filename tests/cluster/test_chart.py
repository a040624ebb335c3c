"""The Helm chart as rendered: lint, values schema, the objects each mode produces, and the CRDs
it carries being exactly what ``pgjit crds`` generates. (Installing it for real:
test_chart_install.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from chartkit import CHART, Helm, find, iter_schema_objects, one, set_args
from pgjit.api.crd import build_crds
from pgjit.cli import dump_yaml
from pgjit.core.sharding import ShardSelector
from pgjit.devstack.kube_binaries import ensure_kube_binaries

NAMESPACED = {"watchNamespaces": ["team-a", "team-b"]}
STANDARD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                   "app.kubernetes.io/version", "app.kubernetes.io/managed-by",
                   "app.kubernetes.io/part-of", "helm.sh/chart")
REGENERATE = "run `pgjit crds --output-dir charts/pgjit/files/crds`"


@pytest.fixture(scope="module")
def helm(tmp_path_factory) -> Helm:
    return Helm(ensure_kube_binaries().helm, tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="module")
def default_docs(helm) -> list[dict]:
    return helm.render()


@pytest.fixture(scope="module")
def namespaced_docs(helm) -> list[dict]:
    return helm.render(NAMESPACED)


def operator_rules(docs: list[dict], kind: str, namespace: str | None = None) -> list[dict]:
    return one(docs, kind, "pgjit-operator", namespace)["rules"]


def rule_for(rules: list[dict], group: str, resource: str) -> dict | None:
    return next((r for r in rules if group in r["apiGroups"] and resource in r["resources"]),
                None)


# --------------------------------------------------------------------------------------------
# Lint and schema


@pytest.mark.parametrize("values", [{}, NAMESPACED], ids=["cluster-wide", "namespaced"])
def test_lint_strict_is_clean(helm, values) -> None:
    result = helm("lint", "--strict", str(CHART), *set_args(values))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[INFO]" not in result.stdout, result.stdout


@pytest.mark.parametrize(("values", "where", "key"), [
    ({"replicaCount": 2}, "''", "replicaCount"),
    ({"image.tagg": "x"}, "'/image'", "tagg"),
    ({"metrics.serviceMonitor.intervall": "1m"}, "'/metrics/serviceMonitor'", "intervall"),
    ({"resources.request": {"cpu": "1"}}, "'/resources'", "request"),
], ids=["top-level", "nested", "two-deep", "resources"])
def test_unknown_keys_are_refused_by_name(helm, values, where, key) -> None:
    for command in (["template", "t"], ["lint", "--strict"]):
        result = helm(*command, str(CHART), *set_args(values))
        assert result.returncode != 0, f"helm {command[0]} accepted unknown key {key}"
        output = result.stdout + result.stderr
        assert f"at {where}: additional properties '{key}' not allowed" in output, output


def test_wrong_types_are_refused(helm) -> None:
    result = helm("template", "t", str(CHART), *set_args({"watchNamespaces": "team-a"}))
    assert result.returncode != 0 and "/watchNamespaces" in result.stderr, result.stderr


def test_schema_closes_every_object() -> None:
    """Every object in the schema either lists its keys (additionalProperties: false) or is a
    map whose values it types; only Kubernetes' own structures pass through unchecked."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    passthrough = {"affinity.nodeAffinity", "affinity.podAffinity", "affinity.podAntiAffinity",
                   *(f"operator.extraEnv[].valueFrom.{k}" for k in
                     ("secretKeyRef", "configMapKeyRef", "fieldRef", "resourceFieldRef"))}
    open_nodes = [path for path, node in iter_schema_objects(schema)
                  if "additionalProperties" not in node and path not in passthrough]
    assert open_nodes == []


def test_values_and_schema_list_the_same_keys() -> None:
    """values.yaml documents every key the schema allows, and nothing else."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def keys(node: dict, prefix: str = "") -> set[str]:
        found = set()
        for name, sub in node.get("properties", {}).items():
            found.add(prefix + name)
            if sub.get("type") == "object" and "properties" in sub and \
                    not isinstance(sub.get("additionalProperties"), dict):
                found |= keys(sub, f"{prefix}{name}.")
        return found

    def value_keys(node: dict, prefix: str = "") -> set[str]:
        found = set()
        for name, sub in node.items():
            found.add(prefix + name)
            if isinstance(sub, dict) and sub and prefix + name not in {
                    "resources.requests", "resources.limits"}:
                found |= value_keys(sub, f"{prefix}{name}.")
        return found

    schema_keys = keys(schema) - {"affinity.nodeAffinity", "affinity.podAffinity",
                                  "affinity.podAntiAffinity", "resources.claims",
                                  # A label selector: empty by default, its fields free.
                                  "shard.databaseSelector.matchExpressions",
                                  "shard.databaseSelector.matchLabels"}
    assert value_keys(values) == schema_keys


def test_identity_binding_values() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["identityBinding"] == {"enabled": True,
                                         "sessionAdminGroups": ["pgjit-session-admins"],
                                         "requireAllGroups": False}


# --------------------------------------------------------------------------------------------
# CRDs: generated, never hand-copied


def test_chart_crd_files_equal_the_generator() -> None:
    expected = {f"{crd['metadata']['name']}.yaml": dump_yaml([crd]) for crd in build_crds()}
    present = {p.name: p.read_text() for p in (CHART / "files" / "crds").glob("*.yaml")}
    assert sorted(present) == sorted(expected), f"stale or missing CRD files: {REGENERATE}"
    for name, text in expected.items():
        assert present[name] == text, f"charts/pgjit/files/crds/{name} drifted: {REGENERATE}"


def test_rendered_crds_equal_the_generator_plus_keep(default_docs) -> None:
    rendered = {d["metadata"]["name"]: d for d in find(default_docs, "CustomResourceDefinition")}
    for crd in build_crds():
        got = rendered.pop(crd["metadata"]["name"])
        assert got["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert crd["metadata"]["labels"].items() <= got["metadata"]["labels"].items()
        assert got["spec"] == crd["spec"], "the template must not alter the CRD's spec"
    assert rendered == {}


def test_crd_toggles(helm) -> None:
    assert find(helm.render({"crds.install": False}), "CustomResourceDefinition") == []
    unkept = find(helm.render({"crds.keep": False}), "CustomResourceDefinition")
    assert len(unkept) == len(build_crds())
    assert all("helm.sh/resource-policy" not in (d["metadata"].get("annotations") or {})
               for d in unkept)


# --------------------------------------------------------------------------------------------
# The Deployment


def test_every_object_carries_the_standard_labels(default_docs, namespaced_docs) -> None:
    for doc in default_docs + namespaced_docs:
        labels = doc["metadata"].get("labels") or {}
        missing = [label for label in STANDARD_LABELS if label not in labels]
        assert not missing, f"{doc['kind']} {doc['metadata']['name']} lacks {missing}"


def test_deployment_is_restricted_replicas_that_elect_a_leader(default_docs) -> None:
    deployment = one(default_docs, "Deployment", "pgjit", "pgjit-system")
    spec = deployment["spec"]
    # Two pods, one leading; a rollout starts the new pod (a standby, Ready as one) before it
    # stops an old one, so there is always one to take over.
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "pgjit"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = pod["containers"]
    assert container["image"] == "ghcr.io/pgjit/pgjit:0.1.0"  # the chart's appVersion
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "readyz"}
    # The kubelet's service-link variables would include PGJIT_METRICS_* from the chart's own
    # Service, colliding with the operator's settings.
    assert pod["enableServiceLinks"] is False
    assert "hostNetwork" not in pod and "dnsPolicy" not in pod
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["args"] == ["run", "--all-namespaces",
                                 "--liveness=http://0.0.0.0:8080/healthz",
                                 "--readiness=http://0.0.0.0:8081/readyz",
                                 "--metrics-port=9090", "--log-format=json"]
    env = {e["name"]: e for e in container["env"]}
    # Kopf's identity: without POD_ID it asks the OS for the user name, which a uid without a
    # passwd entry does not have (the crash of issue 16).
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["PGJIT_SECRET_ACCESS"]["value"] == "true"
    assert env["PGJIT_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["PGJIT_LEADER_ELECTION_LEASE"]["value"] == "pgjit"
    assert {name: env[f"PGJIT_LEADER_ELECTION_{name}"]["value"] for name in (
        "LEASE_DURATION", "RENEW_DEADLINE", "RETRY_PERIOD")} == {
        "LEASE_DURATION": "15s", "RENEW_DEADLINE": "10s", "RETRY_PERIOD": "2s"}
    assert "PGJIT_SHARD_DATABASE_SELECTOR" not in env
    assert "PGJIT_TRAITS_CONFIGMAP" not in env
    # Spread over nodes where there are several, but one node runs them all.
    [term] = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == spec["selector"][
        "matchLabels"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in pod["affinity"][
        "podAntiAffinity"]
    budget = one(default_docs, "PodDisruptionBudget", "pgjit", "pgjit-system")
    assert budget["spec"] == {"maxUnavailable": 1, "selector": spec["selector"]}
    selector = spec["selector"]["matchLabels"]
    service = one(default_docs, "Service", "pgjit-metrics")
    assert service["spec"]["selector"] == selector
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()


def test_one_replica_and_its_rollout(helm) -> None:
    docs = helm.render({"replicas": 1})
    spec = one(docs, "Deployment")["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # A budget for one pod would keep its node from ever draining.
    assert find(docs, "PodDisruptionBudget") == []
    # On the host network, two pods of one node cannot both have the ports: one goes first.
    spec = one(helm.render({"hostNetwork": True}), "Deployment")["spec"]
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_leader_election_and_shard_values(helm) -> None:
    selector = {"matchLabels": {"shard": "a"},
                "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["x"]}]}
    docs = helm.render({"leaderElection.leaseDuration": "30s",
                        "leaderElection.renewDeadline": "20s",
                        "leaderElection.retryPeriod": "4s",
                        "shard.databaseSelector": selector}, release="shard-a")
    [container] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PGJIT_LEADER_ELECTION_LEASE"] == "shard-a-pgjit"
    assert (env["PGJIT_LEADER_ELECTION_LEASE_DURATION"], env["PGJIT_LEADER_ELECTION_RENEW_DEADLINE"],
            env["PGJIT_LEADER_ELECTION_RETRY_PERIOD"]) == ("30s", "20s", "4s")
    assert json.loads(env["PGJIT_SHARD_DATABASE_SELECTOR"]) == selector
    # The operator reads what the chart writes.
    parsed = ShardSelector.parse(env["PGJIT_SHARD_DATABASE_SELECTOR"])
    assert parsed.matches({"shard": "a"}) and not parsed.matches({"shard": "a", "tier": "x"})


@pytest.mark.parametrize("values", [{"leaderElection.leaseDuration": "15"},
                                    {"leaderElection.retryPeriod": "2h"},
                                    {"replicas": 0},
                                    {"shard.databaseSelector": {"matchLabel": {"a": "b"}}}])
def test_bad_leader_election_and_shard_values_are_refused(helm, values) -> None:
    assert helm("template", "t", str(CHART), *set_args(values)).returncode != 0


def test_the_bounds_on_bursts_reach_the_operator_and_bad_ones_are_refused(helm) -> None:
    [container] = one(helm.render({"operator.concurrentOpenings": 8,
                                   "operator.concurrentEndings": 3,
                                   "operator.openingQueue": 20}),
                      "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["PGJIT_CONCURRENT_OPENINGS"], env["PGJIT_CONCURRENT_ENDINGS"],
            env["PGJIT_OPENING_QUEUE"]) == ("8", "3", "20")
    for bad in ({"operator.concurrentOpenings": 0}, {"operator.concurrentEndings": "many"},
                {"operator.openingQueue": 0}):
        assert helm("template", "t", str(CHART), *set_args(bad)).returncode != 0


def test_session_database_label_policies(helm) -> None:
    """The label sharded releases select sessions by: set by a MutatingAdmissionPolicy where
    the API server serves one, a wrong one refused by a ValidatingAdmissionPolicy."""
    name = "pgjit-session-database-label"
    plain = helm.render()
    assert find(plain, "MutatingAdmissionPolicy") == []
    policy = one(plain, "ValidatingAdmissionPolicy", name)
    assert policy["spec"]["matchConstraints"]["resourceRules"][0]["operations"] == [
        "CREATE", "UPDATE"]
    assert one(plain, "ValidatingAdmissionPolicyBinding", name)["spec"]["validationActions"] == [
        "Deny"]
    served = helm.render(extra=["--api-versions",
                                "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy"])
    mutating = one(served, "MutatingAdmissionPolicy", name)
    # Never the reason a session is refused (the API server cannot run it for a while after
    # the CRDs are installed); the coverage report labels what it missed.
    assert mutating["spec"]["failurePolicy"] == "Ignore"
    assert "pgjit.dev/database" in mutating["spec"]["mutations"][0]["jsonPatch"]["expression"]
    assert one(served, "MutatingAdmissionPolicyBinding", name)["spec"]["policyName"] == name


MUTATING = ["--api-versions", "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy"]


def test_session_finalizer_policy(helm) -> None:
    """pgjit's finalizer set at admission, so the operator opens a session on its first event
    instead of first patching the finalizer on: only where every matched session is served."""
    from pgjit.handlers.settings import FINALIZER

    name = "pgjit-session-finalizer"
    assert find(helm.render(), "MutatingAdmissionPolicy", name) == []
    policy = one(helm.render(extra=MUTATING), "MutatingAdmissionPolicy", name)["spec"]
    # Kopf adds the finalizer itself when the policy cannot run: never a refusal.
    assert policy["failurePolicy"] == "Ignore"
    [rule] = policy["matchConstraints"]["resourceRules"]
    assert (rule["resources"], rule["operations"]) == (["databasesessions"], ["CREATE"])
    assert "namespaceSelector" not in policy["matchConstraints"]  # cluster-wide: every one
    # The operator's own finalizer, spelled once (handlers/settings.py).
    assert f'"{FINALIZER}"' in policy["mutations"][0]["jsonPatch"]["expression"]
    assert f"'{FINALIZER}'" in policy["matchConditions"][0]["expression"]
    namespaced = one(helm.render(NAMESPACED, extra=MUTATING), "MutatingAdmissionPolicy", name)
    assert namespaced["spec"]["matchConstraints"]["namespaceSelector"] == {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}]}
    # A shard serves a session only if its Database's labels match, which admission cannot see:
    # a finalizer that no shard removes would keep the session from being deleted.
    sharded = helm.render({"shard.databaseSelector": {"matchLabels": {"tier": "a"}}},
                          extra=MUTATING)
    assert find(sharded, "MutatingAdmissionPolicy", name) == []
    assert find(sharded, "MutatingAdmissionPolicy", "pgjit-session-database-label")


def test_image_tag_and_digest(helm) -> None:
    [container] = one(helm.render({"image.tag": "0.2.0"}), "Deployment")["spec"]["template"][
        "spec"]["containers"]
    assert container["image"] == "ghcr.io/pgjit/pgjit:0.2.0"
    digest = "sha256:" + "ab" * 32
    [container] = one(helm.render({"image.digest": digest}), "Deployment")["spec"]["template"][
        "spec"]["containers"]
    assert container["image"] == f"ghcr.io/pgjit/pgjit@{digest}"


@pytest.mark.parametrize("values", [{"metrics.port": 8080}, {"readiness.port": 8080},
                                    {"readiness.port": 9090}])
def test_same_port_for_two_endpoints_fails(helm, values) -> None:
    result = helm("template", "t", str(CHART), *set_args(values))
    assert result.returncode != 0 and "must differ" in result.stderr


def test_host_network_values(helm) -> None:
    """What a cluster without a pod network needs: the node's network, DNS to match, probes to
    a host of the user's choice, and extra env (for example the API server's address)."""
    values = {"hostNetwork": True, "probeHost": "127.0.0.1",
              "operator.extraEnv": [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"}]}
    pod = one(helm.render(values), "Deployment")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    [container] = pod["containers"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["host"] == "127.0.0.1"
    assert container["env"][-1] == {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"}


def test_service_monitor_only_where_its_crd_is_served(helm) -> None:
    on = {"metrics.serviceMonitor.enabled": True}
    assert find(helm.render(on), "ServiceMonitor") == []
    [monitor] = find(helm.render(on, extra=["--api-versions",
                                            "monitoring.coreos.com/v1/ServiceMonitor"]),
                     "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


# --------------------------------------------------------------------------------------------
# RBAC


def test_cluster_wide_rbac(default_docs) -> None:
    rules = operator_rules(default_docs, "ClusterRole")
    binding = one(default_docs, "ClusterRoleBinding", "pgjit-operator")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pgjit",
                                    "namespace": "pgjit-system"}]
    assert rule_for(rules, "apiextensions.k8s.io", "customresourcedefinitions")["verbs"] == [
        "list", "watch"]
    # Other releases' Leases, for the coverage report: read-only.
    assert rule_for(rules, "coordination.k8s.io", "leases")["verbs"] == ["list"]
    # The only namespaced grant: the release's own Lease.
    assert [r["metadata"]["name"] for r in find(default_docs, "Role")] == [
        "pgjit-leader-election"]
    election = one(default_docs, "Role", "pgjit-leader-election", "pgjit-system")["rules"]
    assert election == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": ["pgjit"], "verbs": ["get", "update"]}]
    binding = one(default_docs, "RoleBinding", "pgjit-leader-election", "pgjit-system")
    assert binding["subjects"][0]["name"] == "pgjit"


def test_namespaced_rbac_has_nothing_cluster_scoped(namespaced_docs) -> None:
    cluster_scoped = [d["kind"] for d in namespaced_docs
                      if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    assert cluster_scoped == []
    for namespace in NAMESPACED["watchNamespaces"]:
        rules = operator_rules(namespaced_docs, "Role", namespace)
        assert rule_for(rules, "apiextensions.k8s.io", "customresourcedefinitions") is None
        binding = one(namespaced_docs, "RoleBinding", "pgjit-operator", namespace)
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"][0]["namespace"] == "pgjit-system"
    [container] = one(namespaced_docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [a for a in container["args"] if "namespace" in a] == [
        "--namespace=team-a", "--namespace=team-b"]


@pytest.mark.parametrize("values", [{}, NAMESPACED], ids=["cluster-wide", "namespaced"])
def test_operator_rules_are_least_privilege(helm, values) -> None:
    docs = helm.render(values)
    kind, namespace = ("ClusterRole", None) if not values else ("Role", "team-a")
    rules = operator_rules(docs, kind, namespace)
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
        assert "*" not in rule["apiGroups"], rule
    secrets = rule_for(rules, "", "secrets")
    assert sorted(secrets["verbs"]) == ["create", "delete", "deletecollection", "get", "list",
                                        "update"]
    assert rule_for(rules, "", "events")["verbs"] == ["create"]
    assert rule_for(rules, "", "pods") is None and rule_for(rules, "", "configmaps") is None
    kinds = rule_for(rules, "pgjit.dev", "databasesessions")
    assert "delete" not in kinds["verbs"] and "create" not in kinds["verbs"]
    # Nothing reads one of pgjit's objects by name: watches and lists are enough.
    assert sorted(kinds["verbs"]) == ["list", "patch", "watch"]
    # Reviews are only read: the operator counts them, nothing of it writes them.
    assert rule_for(rules, "pgjit.dev", "databasesessionreviews")["verbs"] == [
        "get", "list", "watch"]
    assert rule_for(rules, "pgjit.dev", "databasesessionreviews/status") is None
    for rule in rules:
        assert not ({"kopfpeerings", "clusterkopfpeerings"} & set(rule["resources"])), \
            "the runner uses standalone mode; peering objects are not needed"


def test_credential_access_toggle(helm) -> None:
    for enabled in (True, False):
        docs = helm.render({"credentialAccess.enabled": enabled})
        rules = operator_rules(docs, "ClusterRole")
        rbac = rule_for(rules, "rbac.authorization.k8s.io", "rolebindings")
        if enabled:
            assert sorted(rbac["verbs"]) == ["create", "delete", "deletecollection", "get",
                                             "patch", "update"]
            assert sorted(rbac["resources"]) == ["rolebindings", "roles"]
        else:
            assert rbac is None
        [container] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["PGJIT_SECRET_ACCESS"] == str(enabled).lower()


def test_traits_configmap_is_the_only_configmap_it_may_read(helm) -> None:
    docs = helm.render({"operator.traitsConfigMap": "traits", **NAMESPACED})
    role = one(docs, "Role", "pgjit-traits", "pgjit-system")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"],
                              "resourceNames": ["traits"], "verbs": ["get"]}]
    [container] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert {"name": "PGJIT_TRAITS_CONFIGMAP", "value": "traits"} in container["env"]


def test_no_rbac_when_disabled(helm) -> None:
    docs = helm.render({"rbac.create": False, "serviceAccount.create": False,
                        "serviceAccount.name": "mine"})
    assert not [d for d in docs if d["apiVersion"].startswith("rbac.authorization.k8s.io")
                and d["metadata"]["name"].endswith("-operator")]
    assert find(docs, "ServiceAccount") == []
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "mine"


def test_user_roles_are_opt_in_and_aggregate(helm, default_docs) -> None:
    assert find(default_docs, "ClusterRole", "pgjit-session-user") == []
    assert find(default_docs, "ClusterRole", "pgjit-reviewer") == []
    docs = helm.render({"userRoles.create": True})
    user = one(docs, "ClusterRole", "pgjit-session-user")
    viewer = one(docs, "ClusterRole", "pgjit-viewer")
    reviewer = one(docs, "ClusterRole", "pgjit-reviewer")
    assert rule_for(reviewer["rules"], "pgjit.dev", "databasesessionreviews")["verbs"] == [
        "create", "get", "list", "watch"]
    assert rule_for(reviewer["rules"], "pgjit.dev", "databasesessions")["verbs"] == [
        "get", "list", "watch"]
    assert reviewer["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == \
        "true"
    assert rule_for(viewer["rules"], "pgjit.dev", "databasesessionreviews")["verbs"] == [
        "get", "list", "watch"]
    assert user["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert viewer["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert rule_for(user["rules"], "pgjit.dev", "databasesessions")["verbs"] == [
        "create", "get", "list", "watch", "delete"]
    assert rule_for(user["rules"], "pgjit.dev", "databases")["verbs"] == ["get", "list", "watch"]
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in viewer["rules"])
    plain = helm.render({"userRoles.create": True, "userRoles.aggregateToDefaultRoles": False})
    assert not any("aggregate" in k for d in find(plain, "ClusterRole")
                   for k in d["metadata"]["labels"])


def test_review_binding_pins_the_reviewer_with_no_exemption(helm, default_docs) -> None:
    policy = one(default_docs, "ValidatingAdmissionPolicy", "pgjit-review-binding")
    binding = one(default_docs, "ValidatingAdmissionPolicyBinding", "pgjit-review-binding")
    assert binding["spec"] == {"policyName": "pgjit-review-binding",
                               "validationActions": ["Deny"]}
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert "matchConditions" not in spec, "session admins must not review for others"
    [rule] = spec["matchConstraints"]["resourceRules"]
    assert (rule["resources"], rule["operations"]) == (["databasesessionreviews"], ["CREATE"])
    assert [v["expression"] for v in spec["validations"]][0] == \
        "object.spec.reviewer == request.userInfo.username"
    off = helm.render({"identityBinding.enabled": False})
    # Only the sessions' pgjit.dev/database label policy (sharding) stays.
    assert [d["metadata"]["name"] for d in find(off, "ValidatingAdmissionPolicy")] == [
        "pgjit-session-database-label"]


def test_notes_name_the_mode_and_the_uninstall_order(helm) -> None:
    notes = helm("install", "pgjit", str(CHART), "--dry-run=client", "-n", "pgjit-system",
                 *set_args(NAMESPACED), check=True).stdout
    assert "watches only: team-a, team-b" in notes
    assert "kubectl delete databasesessions --all -A" in notes


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["type"] == "application"
    annotations = chart["annotations"]
    assert annotations["artifacthub.io/operator"] == "true"
    crds = yaml.safe_load(annotations["artifacthub.io/crds"])
    assert {c["name"] for c in crds} == {c["metadata"]["name"] for c in build_crds()}
    examples = yaml.safe_load(annotations["artifacthub.io/crdsExamples"])
    assert {e["kind"] for e in examples} == {"Database", "Role", "DatabaseSession",
                                             "ObjectLabelRule", "DatabaseSessionReview"}
    from pgjit import __version__
    assert chart["appVersion"] == __version__
    [image] = yaml.safe_load(annotations["artifacthub.io/images"])
    assert image["image"] == f"ghcr.io/pgjit/pgjit:{chart['appVersion']}"
    assert Path(CHART / "README.md").read_text().count("docs/install.md") >= 1
