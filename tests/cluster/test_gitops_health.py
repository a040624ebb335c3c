"""GitOps health: Argo CD's Lua checks and Flux's kstatus, run on status the operator wrote.

Each object below is produced by the running operator (or, for one Role case the API server
cannot reach, written through the real /status subresource) and read back with
``kubectl get -o json``. It is then judged by the interpreters the GitOps tools use:
gopher-lua with Argo CD's library set for the shipped checks in charts/pgjit/argocd/, and
sigs.k8s.io/cli-utils' kstatus as Flux's ``wait``/``healthChecks`` do (tests/argocd-health).
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
import yaml

from operatorkit import Env, make_env, token, wait_for
from pgjit.core import conditions
from pgjit.devstack.kube_binaries import find_repo_root
from pgjit.devstack.lua_runner import Verdict, argocd_health, ensure_lua_runner, kstatus

ROOT = find_repo_root()
SCRIPTS = {kind: ROOT / "charts" / "pgjit" / "argocd" / f"{kind.lower()}.lua"
           for kind in ("Database", "Role", "DatabaseSession", "ObjectLabelRule")}
RESOURCES = {"Database": "databases.pgjit.dev", "Role": "roles.pgjit.dev",
             "DatabaseSession": "databasesessions.pgjit.dev"}


@pytest.fixture(scope="module")
def runner() -> Path:
    try:
        return ensure_lua_runner()
    except Exception as error:  # a missing Go toolchain or proxy must fail, never skip
        pytest.fail(f"cannot build the health runner: {error}", pytrace=False)


@pytest.fixture
def env(kube_api, namespace, postgres16, operator) -> Env:
    return make_env(kube_api, namespace, postgres16, operator)


class Judge:
    """Reads an object with kubectl and returns what Argo CD and Flux make of it."""

    def __init__(self, kubectl, namespace: str, runner: Path):
        self.kubectl, self.namespace, self.runner = kubectl, namespace, runner

    def live(self, kind: str, name: str) -> dict:
        done = self.kubectl("get", RESOURCES[kind], name, "-n", self.namespace, "-o", "json",
                            check=True)
        return json.loads(done.stdout)

    def __call__(self, obj: dict) -> tuple[Verdict, Verdict]:
        argo = argocd_health(SCRIPTS[obj["kind"]], obj, binary=self.runner)
        assert not argo.error, f"the Lua check failed on {obj['metadata']['name']}: {argo.error}"
        return argo, kstatus(obj, binary=self.runner)

    def of(self, kind: str, name: str) -> tuple[Verdict, Verdict]:
        return self(self.live(kind, name))


@pytest.fixture
def judge(kubectl, namespace, runner) -> Judge:
    return Judge(kubectl, namespace, runner)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_database_health(env: Env, judge: Judge, postgres16):
    argo, flux = judge.of("Database", "db")
    assert argo.status == "Healthy" and flux.status == "Current"
    assert argo.message.startswith("Connected: PostgreSQL 16."), argo.message

    # Nothing listens: retried by the operator, so in progress for both tools.
    env.create("Database", "down", {
        "host": "127.0.0.1", "port": _closed_port(),
        "admin": {"username": "pgjit_admin", "passwordSecretRef": {"name": "admin",
                                                                    "key": "password"}}})
    env.wait_ready("Database", "down", "False", "Unreachable")
    argo, flux = judge.of("Database", "down")
    assert (argo.status, flux.status) == ("Progressing", "InProgress")
    assert argo.message.startswith("Unreachable: "), argo.message

    # A wrong password is terminal: Stalled, so Degraded and Failed.
    env.create_secret("wrong", {"password": "not-" + token(8)})
    env.create("Database", "badauth", {
        "host": postgres16.host, "port": postgres16.port,
        "admin": {"username": postgres16.admin_user,
                  "passwordSecretRef": {"name": "wrong", "key": "password"}}})
    env.wait_ready("Database", "badauth", "False", "AuthenticationFailed")
    argo, flux = judge.of("Database", "badauth")
    assert (argo.status, flux.status) == ("Degraded", "Failed")
    assert argo.message.startswith("AuthenticationFailed: "), argo.message

    # The patch response is the object before the operator saw the new generation.
    patched = env.custom.patch_namespaced_custom_object(
        "pgjit.dev", "v1alpha1", env.namespace, "databases", "db",
        {"spec": {"suspended": True}})
    assert patched["metadata"]["generation"] == patched["status"]["observedGeneration"] + 1
    argo, flux = judge(patched)
    assert argo.status == "Progressing" and flux.status == "InProgress"
    assert argo.message == f"Waiting for pgjit to observe generation " \
                           f"{patched['metadata']['generation']}"

    env.wait_ready("Database", "db", "False", "Suspended")
    argo, flux = judge.of("Database", "db")
    assert argo.status == "Suspended", argo
    assert argo.message.startswith("Suspended: spec.suspended is true"), argo.message
    # kstatus falls back to Ready when neither Reconciling nor Stalled is set: Ready=False reads
    # as InProgress, so a suspended Database holds up a Flux `wait` (docs/gitops.md says so).
    assert flux.status == "InProgress", flux
    # Objects outlive the test (no namespace controller); these would be retried forever.
    for name in ("down", "badauth"):
        env.delete("Database", name)
        env.wait_gone("Database", name)


def test_role_health(env: Env, judge: Judge, kubectl):
    created = env.role("analysts", "keep")
    argo, flux = judge(created)  # as stored, before the operator wrote any status
    assert argo.status == "Progressing", argo
    assert argo.message == "Waiting for pgjit to observe generation 1"
    # kstatus has nothing to go on without status or conditions and calls it Current.
    assert flux.status == "Current", flux

    env.wait_ready("Role", "analysts", "True", "Valid")
    argo, flux = judge.of("Role", "analysts")
    assert (argo.status, flux.status) == ("Healthy", "Current")
    assert argo.message == "Valid: selects 1 Database(s)"

    patched = env.custom.patch_namespaced_custom_object(
        "pgjit.dev", "v1alpha1", env.namespace, "roles", "analysts",
        {"spec": {"maxSessionDuration": "4h"}})
    argo, flux = judge(patched)
    assert (argo.status, flux.status) == ("Progressing", "InProgress")
    assert "generation is 2, but latest observed generation is 1" in flux.message

    # Everything handlers/roles.py reports as InvalidRole is refused by the API server first:
    invalid = {"apiVersion": "pgjit.dev/v1alpha1", "kind": "Role", "metadata": {"name": "bad"},
               "spec": {"subjects": [{"kind": "Group", "name": "analysts"}],
                        "allow": {"permissions": [{"match": {"objectKind": "table",
                                                             "schema": "public", "name": "*"},
                                                   "privileges": ["*"]}]}}}
    refused = kubectl("create", "-n", env.namespace, "-f", "-", input=json.dumps(invalid))
    assert refused.returncode != 0 and "privileges" in refused.stderr, refused.stderr
    # so its Stalled status is written as that handler writes it, through the real /status.
    live = wait_for("the Role's status to settle",
                    lambda: (o := judge.live("Role", "analysts"))["status"].get(
                        "observedGeneration") == 2 and o)
    message = "spec.allow.permissions[0]: '*' is only allowed in deny"
    env.custom.patch_namespaced_custom_object_status(
        "pgjit.dev", "v1alpha1", env.namespace, "roles", "analysts",
        {"status": {"conditions": conditions.stalled(
            live["status"]["conditions"], 2, "InvalidRole", message)}})
    argo, flux = judge.of("Role", "analysts")
    assert (argo.status, flux.status) == ("Degraded", "Failed")
    assert argo.message == f"InvalidRole: {message}"


def test_session_health(env: Env, judge: Judge):
    env.role("analysts", "keep")
    env.role("ops", "keep", group="ops")
    suffix = token()

    env.open_session("active", f"ana-{suffix}")
    argo, flux = judge.of("DatabaseSession", "active")
    assert (argo.status, flux.status) == ("Healthy", "Current")
    assert re.fullmatch(rf"Active: PostgreSQL user ana-{suffix} is active until \S+Z",
                        argo.message), argo.message

    env.create("DatabaseSession", "refused",
               env.session_spec(f"rex-{suffix}", groups=["strangers"]))
    env.wait_phase("refused", "Failed")
    argo, flux = judge.of("DatabaseSession", "refused")
    assert (argo.status, flux.status) == ("Degraded", "Failed")
    assert argo.message.startswith("AccessDenied: "), argo.message

    env.create("DatabaseSession", "waiting",
               env.session_spec(f"wes-{suffix}", database="not-there"))
    env.wait_phase("waiting", "Pending")
    argo, flux = judge.of("DatabaseSession", "waiting")
    assert (argo.status, flux.status) == ("Progressing", "InProgress")
    assert argo.message.startswith("DatabaseNotReady: "), argo.message

    env.create("DatabaseSession", "short", env.session_spec(f"sid-{suffix}", duration="2s"))
    env.create("DatabaseSession", "revoked",
               env.session_spec(f"ros-{suffix}", groups=["ops"]))
    env.wait_phase("revoked", "Active")
    env.delete("Role", "ops")

    env.wait_phase("short", "Expired")
    argo, flux = judge.of("DatabaseSession", "short")
    assert argo.status == "Suspended", argo
    assert argo.message.startswith("Expired: the session expired at "), argo.message
    assert argo.message.endswith("(delete the DatabaseSession to open a new one)")
    # Over for good, so Stalled too: kstatus reads Failed rather than an endless InProgress.
    assert flux.status == "Failed", flux

    env.wait_phase("revoked", "Ended")
    argo, flux = judge.of("DatabaseSession", "revoked")
    assert argo.status == "Degraded", argo
    assert argo.message.startswith("AccessRevoked: access was revoked: "), argo.message
    assert flux.status == "Failed", flux

    # A Database waits for its live sessions before it goes: Argo CD answers "Pending deletion"
    # before any Lua runs, kstatus "Terminating".
    env.delete("Database", "db")
    deleting = wait_for("the Database to wait for its session",
                        lambda: (o := judge.live("Database", "db"))["metadata"].get(
                            "deletionTimestamp") and o)
    argo, flux = judge(deleting)
    assert (argo.status, argo.message) == ("Progressing", "Pending deletion")
    assert flux.status == "Terminating", flux
    env.delete("DatabaseSession", "active")
    env.wait_gone("DatabaseSession", "active")
    env.wait_gone("Database", "db")
    env.delete("DatabaseSession", "waiting")  # would look for its Database forever
    env.wait_gone("DatabaseSession", "waiting")


def test_session_waiting_for_approval_health(env: Env, judge: Judge):
    """Waiting for reviewers is progress; a denial and an expired request are failures."""
    suffix = token()
    env.role("analysts", "best_effort_drop",
             approval={"reviewers": [{"kind": "User", "name": "bob"}], "pendingTimeout": "3s"})
    env.create("DatabaseSession", "asks", env.session_spec(f"ann-{suffix}"))
    env.create("DatabaseSession", "denied", env.session_spec(f"dan-{suffix}"))
    waiting = env.wait_ready("DatabaseSession", "asks", "False", "AwaitingApproval")
    argo, flux = judge(waiting)
    assert (argo.status, flux.status) == ("Progressing", "InProgress")
    assert argo.message.startswith("AwaitingApproval: waiting for approval: 0 of 1"), argo.message
    assert "reviewers: user bob" in argo.message

    env.wait_ready("DatabaseSession", "denied", "False", "AwaitingApproval")
    # No admission policy on this control plane: the admin may write bob's review here.
    env.create("DatabaseSessionReview", "bob-says-no", {
        "sessionRef": {"name": "denied"}, "decision": "Deny", "reason": "not today",
        "reviewer": "bob"})
    env.wait_ready("DatabaseSession", "denied", "False", "Denied")
    argo, flux = judge.of("DatabaseSession", "denied")
    assert (argo.status, flux.status) == ("Degraded", "Failed")
    assert argo.message == 'Denied: denied by bob: "not today"', argo.message

    env.wait_ready("DatabaseSession", "asks", "False", "ApprovalExpired", timeout=15)
    argo, flux = judge.of("DatabaseSession", "asks")
    assert (argo.status, flux.status) == ("Degraded", "Failed")
    assert argo.message.startswith("ApprovalExpired: not approved within 3s"), argo.message


def test_a_queued_session_is_progress(judge: Judge):
    """A session queued behind a burst (handlers/queue.py) is in progress for both tools: its
    status as the opening handler writes it (Pending, conditions in progress)."""
    message = 'queued: more than 1088 sessions of Database "db" are being opened or waiting'
    queued = {"apiVersion": "pgjit.dev/v1alpha1", "kind": "DatabaseSession",
              "metadata": {"name": "queued", "namespace": "team", "generation": 1},
              "spec": {"user": "alice", "databaseRef": {"name": "db"}},
              "status": {"phase": "Pending", "observedGeneration": 1,
                         "conditions": conditions.in_progress(None, 1, "Queued", message)}}
    argo, flux = judge(queued)
    assert (argo.status, flux.status) == ("Progressing", "InProgress")
    assert argo.message.startswith("Queued: queued: more than 1088"), argo.message


def test_docs_carry_the_shipped_checks():
    """docs/gitops.md shows the argo-cd chart values with each check verbatim."""
    text = (ROOT / "docs" / "gitops.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    docs = [doc for block in blocks for doc in yaml.safe_load_all(block)]
    values = [doc for doc in docs if isinstance(doc, dict) and "configs" in doc]
    assert len(values) == 1, "exactly one argo-cd values block (configs.cm) in docs/gitops.md"
    shown = values[0]["configs"]["cm"]
    expected = {f"resource.customizations.health.pgjit.dev_{kind}": path.read_text()
                for kind, path in SCRIPTS.items()}
    assert {k: v for k, v in shown.items() if k.startswith("resource.customizations")} \
        == expected


def test_runner_keeps_argo_cds_restrictions(runner: Path, tmp_path: Path):
    """The checks pass here only if they would in Argo CD: no string library, six codes."""
    obj = {"apiVersion": "pgjit.dev/v1alpha1", "kind": "Role",
           "metadata": {"name": "r", "generation": 1}}
    uses_string = tmp_path / "string.lua"
    uses_string.write_text('return {status = string.upper("healthy")}\n')
    verdict = argocd_health(uses_string, obj, binary=runner)
    assert verdict.status == "Unknown" and "upper" in verdict.error, verdict
    invented = tmp_path / "invented.lua"
    invented.write_text('return {status = "Fine", message = "x"}\n')
    verdict = argocd_health(invented, obj, binary=runner)
    assert verdict.status == "Unknown"
    assert verdict.message == "Lua returned an invalid health status"
