"""Access requests end to end, with real identities: alice asks, bob and carol review.

A control plane of this module's own with the chart installed for real: the CRDs, both
identity-binding admission policies (sessions' spec.user, reviews' spec.reviewer), and the
people ClusterRoles, bound per namespace: alice may open sessions, bob, carol (group dba) and
robot may review. The operator runs under the chart's ServiceAccount with the Deployment's
arguments, so its read-only access to reviews is exactly what the chart grants; every test ends
by checking that the API server refused it nothing.

The Role asks for approval by user bob or group dba. PostgreSQL is the cluster layer's shared
16 server: "alice" is dropped at the end of each test (best_effort_drop), and before approval
the catalog must not change at all.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from chartkit import CHART, ChartOperator, Plane, set_args
from clikit import PROMPT, TIMEOUT, finish, run_cli, spawn_connect
from operatorkit import GROUP, PLURALS, VERSION, Env, make_env, wait_for
from pgjit.core.stewards import steward_roles
from pgjit.devstack.ports import free_ports

RELEASE, RELEASE_NS, SA = "pgjit", "pgjit-system", "pgjit"
REVIEWS = "databasesessionreviews"
POLICY = f"{RELEASE}-review-binding"
REVIEWERS = [{"kind": "User", "name": "bob"}, {"kind": "Group", "name": "dba"}]


VALUES = {"operator.healthSeconds": 3, "operator.revalidateSeconds": 1,
          **dict(zip(("liveness.port", "metrics.port", "readiness.port"),
                     free_ports(3, bound_later=True))),
          "userRoles.create": True,
          # The tests' admin (system:masters) sets up Databases and Roles, never sessions.
          "identityBinding.sessionAdminGroups": ["pgjit-session-admins"]}


class Bed:
    """The module's control plane, the release, and the operator under its ServiceAccount."""

    def __init__(self, plane: Plane, tmp) -> None:
        self.plane, self.tmp = plane, tmp
        self.kubeconfig = tmp / "sa.kubeconfig"
        self.operator: ChartOperator | None = None
        self.starts = 0
        self.clients: dict[str, kubernetes.client.ApiClient] = {}

    @property
    def control_plane(self):
        return self.plane.control_plane

    def start_operator(self) -> ChartOperator:
        apps = kubernetes.client.AppsV1Api(self.plane.api)
        deployment = self.plane.api.sanitize_for_serialization(
            apps.read_namespaced_deployment(RELEASE, RELEASE_NS))
        self.plane.service_account_kubeconfig(SA, RELEASE_NS, self.kubeconfig)
        self.starts += 1
        self.operator = ChartOperator(deployment, self.kubeconfig,
                                      self.tmp / f"operator-{self.starts}.log")
        self.operator.start()
        wait_for("the operator ready", lambda: _ready(VALUES["readiness.port"]), timeout=60)
        return self.operator

    def kill_operator(self) -> None:
        """SIGKILL: no cleanup of any kind, as when a node dies."""
        assert self.operator is not None and self.operator.proc is not None
        self.operator.proc.kill()
        self.operator.proc.wait(10)

    def client(self, identity: str) -> kubernetes.client.ApiClient:
        if identity not in self.clients:
            self.clients[identity] = kubernetes.config.new_client_from_config(
                config_file=str(self.control_plane.kubeconfig(identity)), persist_config=False)
        return self.clients[identity]

    def custom(self, identity: str) -> kubernetes.client.CustomObjectsApi:
        return kubernetes.client.CustomObjectsApi(self.client(identity))


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def metric(name: str, port: int = VALUES["metrics.port"]) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not served"
    return float(match.group(1))


@pytest.fixture(scope="module")
def bed(tmp_path_factory) -> Iterator[Bed]:
    plane = Plane(tmp_path_factory.mktemp("access-plane"))
    try:
        plane.start()
    except Exception as error:
        plane.stop()
        pytest.fail(f"cannot start the access requests' control plane: {error}", pytrace=False)
    bed = Bed(plane, tmp_path_factory.mktemp("access-bed"))
    try:
        plane.create_namespace(RELEASE_NS)
        plane.helm("install", RELEASE, str(CHART), "-n", RELEASE_NS, *set_args(VALUES),
                   check=True)
        plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                      *(f"crd/{p}.{GROUP}" for p in PLURALS.values()))
        plane.control_plane.refresh_garbage_collector()
        # Established is not yet served: for a moment after it the API server still answers
        # 503 "Resource kind ... not found" (it says so itself), and the chart's admission
        # policies keep answering it to creates a while after lists work. Served is when a
        # list works and a session's create (a dry run) gets through admission.
        custom = kubernetes.client.CustomObjectsApi(plane.api)
        probe = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatabaseSession",
                 "metadata": {"name": "served-probe"},
                 "spec": {"user": "probe", "databaseRef": {"name": "db"},
                          "databaseName": "app"}}

        def served() -> bool:
            try:
                for plural in PLURALS.values():
                    custom.list_namespaced_custom_object(GROUP, VERSION, RELEASE_NS, plural,
                                                         limit=1)
            except ApiException as error:
                if error.status != 503:
                    raise
                return False
            try:
                custom.create_namespaced_custom_object(GROUP, VERSION, RELEASE_NS,
                                                       PLURALS["DatabaseSession"], probe,
                                                       dry_run="All")
            except ApiException as error:
                # A policy's refusal (the identity binding's, say) is an answer: it could type
                # the session.
                return error.status != 503
            return True
        wait_for("the kinds served", served, TIMEOUT)
        # carol reviews everywhere (pgjit requests -A), the others namespace by namespace.
        kubernetes.client.RbacAuthorizationV1Api(plane.api).create_cluster_role_binding({
            "metadata": {"name": "carol-reviews-everywhere"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": f"{RELEASE}-reviewer"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": "carol"}]})
        bed.start_operator()
        yield bed
    finally:
        if bed.operator is not None:
            bed.operator.stop()
        for client in bed.clients.values():
            client.close()
        plane.stop()


def _bind(api, namespace: str, cluster_role: str, *users: str) -> None:
    kubernetes.client.RbacAuthorizationV1Api(api).create_namespaced_role_binding(namespace, {
        "metadata": {"name": cluster_role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": cluster_role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}
                     for user in users]})


def catalog(env: Env) -> dict:
    """What pgjit could change in PostgreSQL: roles, memberships, comments (the lease ledger),
    and the privileges on the session database's objects, schemas and the database itself.

    Leaves out the managed role's stewards (docs/admin-setup.md): made once, on the first
    activation, and kept like the managed role itself. A user one of them left behind still
    shows, as a role and as a member of the managed role."""
    stewards = set(steward_roles(env.managed_role))
    with env.superuser() as conn:
        roles = conn.execute("""
            SELECT a.rolname, a.rolcanlogin, a.rolvaliduntil, a.rolpassword IS NOT NULL,
                   shobj_description(a.oid, 'pg_authid')
              FROM pg_authid a ORDER BY 1""").fetchall()
        members = conn.execute("""
            SELECT r.rolname, m.rolname, a.admin_option FROM pg_auth_members a
              JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member
             ORDER BY 1, 2""").fetchall()
        databases = conn.execute("SELECT datname, datacl::text FROM pg_database ORDER BY 1"
                                 ).fetchall()
    with env.superuser("app") as conn:
        relations = conn.execute("""
            SELECT c.oid::regclass::text, c.relacl::text FROM pg_class c
              JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
             ORDER BY 1""").fetchall()
        schemas = conn.execute("SELECT nspname, nspacl::text FROM pg_namespace ORDER BY 1"
                               ).fetchall()
    return {"roles": [row for row in roles if row[0] not in stewards],
            # Sorted whole: ORDER BY leaves two grants of one membership in either order.
            "members": sorted(row for row in members if not stewards & {row[0], row[1]}),
            "databases": databases, "relations": relations, "schemas": schemas}


@pytest.fixture
def env(bed: Bed, namespace_factory, postgres16) -> Iterator[Env]:
    namespace = namespace_factory()
    env = make_env(bed.plane.api, namespace, postgres16, bed.operator,
                   managed_role=f"pgjit-{namespace}"[:63])
    _bind(bed.plane.api, namespace, f"{RELEASE}-session-user", "alice")
    # alice may create reviews too (a reviewer elsewhere): her own still never counts.
    _bind(bed.plane.api, namespace, f"{RELEASE}-reviewer", "bob", "robot", "alice")
    yield env
    # Nothing may outlive a test on the shared server: "alice" is dropped with her sessions.
    for session in env.list("DatabaseSession"):
        env.delete("DatabaseSession", session["metadata"]["name"])
    wait_for("the test's sessions gone", lambda: not env.list("DatabaseSession"), TIMEOUT)
    assert env.role_row("alice") is None
    refused = bed.operator.refusals()
    assert refused == [], "the API server refused the operator:\n" + "\n".join(refused)


@pytest.fixture
def namespace_factory(bed: Bed, request) -> Iterator:
    """Namespaces on this module's control plane (the shared one's fixture makes them there)."""
    made: list[str] = []

    def make() -> str:
        name = f"ar-{len(made)}-{request.node.name[5:40].lower().replace('_', '-').strip('-')}"
        bed.plane.create_namespace(name)
        made.append(name)
        return name

    yield make


def approval_role(env: Env, name: str = "access", **approval) -> dict:
    return env.role(name, "best_effort_drop",
                    approval={"reviewers": REVIEWERS, **approval})


def ask(bed: Bed, env: Env, name: str, *, duration: str = "1h", reason: str | None = None
        ) -> dict:
    """alice creates her session herself: the identity binding admits only her own."""
    spec = env.session_spec("alice", duration=duration)
    if reason is not None:
        spec["reason"] = reason
    return bed.custom("alice").create_namespaced_custom_object(
        GROUP, VERSION, env.namespace, PLURALS["DatabaseSession"],
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatabaseSession",
         "metadata": {"name": name}, "spec": spec})


def review(bed: Bed, env: Env, session: str, identity: str, decision: str = "Approve", *,
           reviewer: str | None = None, groups: list[str] | None = None,
           reason: str | None = None, owned: bool = True) -> dict:
    """A review created through the API as ``identity`` (not the CLI, which refuses some)."""
    target = env.get("DatabaseSession", session)
    spec = {"sessionRef": {"name": session}, "decision": decision,
            "reviewer": reviewer or identity}
    if groups:
        spec["reviewerGroups"] = groups
    if reason:
        spec["reason"] = reason
    metadata: dict = {"generateName": f"{session}-{identity}-"}
    if owned:
        metadata["ownerReferences"] = [{"apiVersion": f"{GROUP}/{VERSION}",
                                        "kind": "DatabaseSession", "name": session,
                                        "uid": target["metadata"]["uid"]}]
    return bed.custom(identity).create_namespaced_custom_object(
        GROUP, VERSION, env.namespace, REVIEWS,
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatabaseSessionReview",
         "metadata": metadata, "spec": spec})


def ready(obj: dict) -> dict:
    return next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")


def waiting(env: Env, name: str, counted: int = 0, recorded: int = 0) -> dict:
    """The session once it waits with ``counted`` approvals and ``recorded`` reviews."""
    def check():
        obj = env.get("DatabaseSession", name) or {}
        status = obj.get("status") or {}
        condition = next((c for c in status.get("conditions") or () if c["type"] == "Ready"),
                         {})
        if condition.get("reason") == "AwaitingApproval" and \
                (status.get("approval") or {}).get("approvals") == counted and \
                len(status.get("reviews") or ()) == recorded:
            return obj
        return None
    return env._with_log(f"session {name} waiting with {counted} approval(s), {recorded}"
                         " review(s)", check, TIMEOUT)


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def valid_until(env: Env, user: str) -> datetime | None:
    with env.superuser() as conn:
        row = conn.execute("SELECT rolvaliduntil FROM pg_roles WHERE rolname = %s",
                           [user]).fetchone()
    return row[0] if row else None


# --------------------------------------------------------------------------------------------
# 1. One approval


def test_one_approval_opens_the_session_and_its_time_starts_then(bed: Bed, env: Env):
    approval_role(env)
    before = catalog(env)
    created = ask(bed, env, "s1", duration="1h", reason="INC-7: refund stuck")
    session = waiting(env, "s1")
    message = ready(session)["message"]
    assert "reviewers: group dba, user bob" in message, message
    assert "pgjit review s1 -n " in message
    assert session["status"]["approval"]["roles"] == ["access"]
    assert [c for c in session["status"]["conditions"] if c["type"] == "Reconciling"][0][
        "status"] == "True"
    assert "expiresAt" not in session["status"]
    assert catalog(env) == before, "something was created in PostgreSQL before approval"
    assert env.secret("s1-credentials") is None
    assert metric("pgjit_sessions_awaiting_approval") == 1
    approvals_before = metric("pgjit_session_approval_seconds_count")

    # Let the clock move past the creation second, so "from approval" and "from creation"
    # give different expiries.
    start = parse(created["metadata"]["creationTimestamp"])
    wait_for("two seconds after the request", lambda: datetime.now(timezone.utc)
             >= start + timedelta(seconds=2))
    done = run_cli(bed.control_plane, "review", "s1", "--approve", "--reason", "looked at it",
                   "-n", env.namespace, identity="bob")
    assert done.returncode == 0, done.stderr
    assert "counted: approval 1 of 1, as user bob" in done.stderr, done.stderr

    active = env.wait_phase("s1", "Active", timeout=TIMEOUT)
    status = active["status"]
    [record] = status["reviews"]
    assert (record["reviewer"], record["decision"], record["counted"], record["reason"]) == (
        "bob", "Approve", True, "looked at it")
    assert status["approvedAt"] == record["time"]
    approved = parse(status["approvedAt"])
    assert approved >= start + timedelta(seconds=2)
    assert parse(status["expiresAt"]) == approved + timedelta(hours=1)
    creds = env.secret("s1-credentials")
    assert creds["expiresAt"] == status["expiresAt"]
    assert valid_until(env, "alice") == approved + timedelta(hours=1)
    with env.login(creds) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "alice"
    # The review goes with the session (the garbage collector deletes what a session owns).
    [stored] = env.list("DatabaseSessionReview")
    assert [(o["kind"], o["uid"]) for o in stored["metadata"]["ownerReferences"]] == [
        ("DatabaseSession", created["metadata"]["uid"])]
    reasons = [e.reason for e in env.events("s1")]
    assert "AwaitingApproval" in reasons and "ReviewCounted" in reasons
    assert "Approved" in reasons and "Active" in reasons
    assert metric("pgjit_sessions_awaiting_approval") == 0
    assert metric("pgjit_session_approval_seconds_count") == approvals_before + 1


# --------------------------------------------------------------------------------------------
# 2. Two approvals


def test_two_distinct_reviewers_are_needed_and_one_counts_once(bed: Bed, env: Env):
    approval_role(env, required=2)
    before = catalog(env)
    ask(bed, env, "s2")
    waiting(env, "s2")
    review(bed, env, "s2", "bob")
    session = waiting(env, "s2", counted=1, recorded=1)
    assert "1 of 2 approval(s) (bob)" in ready(session)["message"]
    review(bed, env, "s2", "bob", reason="really sure")
    session = waiting(env, "s2", counted=1, recorded=2)
    second = session["status"]["reviews"][1]
    assert second["counted"] is False
    assert second["message"] == ("not counted: bob has already approved; each reviewer counts"
                                 " once")
    assert catalog(env) == before

    # carol reviews as a member of group dba, which she lists and the policy checks.
    carol = review(bed, env, "s2", "carol", groups=["dba"])
    active = env.wait_phase("s2", "Active", timeout=TIMEOUT)
    records = active["status"]["reviews"]
    assert [(r["reviewer"], r["counted"]) for r in records] == [
        ("bob", True), ("bob", False), ("carol", True)]
    assert records[2]["message"] == "counted: approval 2 of 2, as group dba"
    assert active["status"]["approvedAt"] == carol["metadata"]["creationTimestamp"]
    assert active["status"]["approval"]["approvals"] == 2


# --------------------------------------------------------------------------------------------
# 3. Reviews that do not count, and reviews the API server refuses


def test_self_review_and_non_reviewer_are_recorded_and_ignored(bed: Bed, env: Env):
    approval_role(env)
    before = catalog(env)
    ask(bed, env, "s3")
    waiting(env, "s3")
    own = review(bed, env, "s3", "alice")
    stranger = review(bed, env, "s3", "robot", groups=["pgjit-session-admins"])
    session = waiting(env, "s3", counted=0, recorded=2)
    records = {r["reviewer"]: r for r in session["status"]["reviews"]}
    assert records["alice"]["counted"] is False
    assert records["alice"]["message"] == ("not counted: alice is the session's own user;"
                                           " nobody reviews their own access")
    assert records["robot"]["counted"] is False
    assert records["robot"]["message"].startswith(
        "not counted: robot is not a reviewer of Role(s) access (reviewers: group dba, user bob)")
    # An Event says so on the session and on each review, for its author to see.
    env.wait_event("s3", "ReviewIgnored", "Warning")
    for obj in (own, stranger):
        env.wait_event(obj["metadata"]["name"], "ReviewIgnored", "Warning")
    assert catalog(env) == before

    # The CLI tells alice before asking the API server.
    mine = run_cli(bed.control_plane, "review", "s3", "--approve", "-n", env.namespace,
                   identity="alice")
    assert mine.returncode == 1 and "is your own: nobody reviews their own access" in \
        mine.stderr, mine.stderr

    # The API server refuses a review that speaks for someone else, or claims a group.
    with pytest.raises(ApiException) as caught:
        review(bed, env, "s3", "bob", reviewer="carol")
    body = json.loads(caught.value.body)
    assert (caught.value.status, body["reason"]) == (403, "Forbidden"), body
    assert f"ValidatingAdmissionPolicy '{POLICY}'" in body["message"]
    assert 'spec.reviewer must be your own Kubernetes user name "bob"' in body["message"]
    assert "nobody reviews for someone else; set spec.reviewer: bob" in body["message"]
    with pytest.raises(ApiException) as caught:
        review(bed, env, "s3", "bob", groups=["dba"])
    assert "spec.reviewerGroups may only list groups you are a member of; remove dba" in \
        json.loads(caught.value.body)["message"]
    # Session admins open sessions for others, but never review for them.
    with pytest.raises(ApiException) as caught:
        review(bed, env, "s3", "robot", reviewer="bob")
    assert caught.value.status == 403
    # A review is a statement: its spec never changes (bob may not even try: no update verb).
    [stored] = [r for r in env.list("DatabaseSessionReview")
                if r["metadata"]["name"] == stranger["metadata"]["name"]]
    with pytest.raises(ApiException) as caught:
        env.custom.patch_namespaced_custom_object(
            GROUP, VERSION, env.namespace, REVIEWS, stored["metadata"]["name"],
            {"spec": {"decision": "Deny", "reason": "changed my mind"}})
    assert caught.value.status == 422 and "a review cannot be changed" in caught.value.body
    assert len(env.list("DatabaseSessionReview")) == 2
    assert waiting(env, "s3", counted=0, recorded=2)


# --------------------------------------------------------------------------------------------
# 4. Denied, expired, withdrawn: nothing in PostgreSQL


def test_denial_timeout_and_withdrawal_leave_nothing_in_postgres(bed: Bed, env: Env):
    # Long enough for carol's review to come first on a loaded machine (4 s was not: the
    # denied session expired before the CLI got to it), short for a test to wait out.
    approval_role(env, pendingTimeout="12s")
    before = catalog(env)
    for name in ("denied", "expires", "withdrawn"):
        ask(bed, env, name)
    for name in ("denied", "expires", "withdrawn"):
        waiting(env, name)

    done = run_cli(bed.control_plane, "review", "denied", "--deny", "--reason",
                   "not during the freeze", "-n", env.namespace, identity="carol")
    assert done.returncode == 0, done.stderr
    denied = env.wait_ready("DatabaseSession", "denied", "False", "Denied")
    assert denied["status"]["phase"] == "Failed"
    assert ready(denied)["message"] == 'denied by carol: "not during the freeze"'
    assert [c["status"] for c in denied["status"]["conditions"] if c["type"] == "Stalled"] == [
        "True"]

    env.delete("DatabaseSession", "withdrawn")  # what Ctrl-C in pgjit connect does
    env.wait_gone("DatabaseSession", "withdrawn")

    expired = env.wait_ready("DatabaseSession", "expires", "False", "ApprovalExpired",
                             timeout=TIMEOUT)
    assert expired["status"]["phase"] == "Failed"
    assert ready(expired)["message"].startswith(
        "not approved within 12s, the pendingTimeout of Role(s) access: 0 of 1 approval(s) so far")
    # A review after the deadline changes nothing.
    review(bed, env, "expires", "bob")
    assert env.get("DatabaseSession", "expires")["status"]["phase"] == "Failed"

    assert catalog(env) == before
    assert env.session_secrets() == {}
    for name in ("denied", "expires"):
        env.delete("DatabaseSession", name)
        env.wait_gone("DatabaseSession", name)
    assert catalog(env) == before


def test_a_role_requiring_a_reason_refuses_a_session_without_one(bed: Bed, env: Env):
    approval_role(env, requireReason=True)
    before = catalog(env)
    ask(bed, env, "bare")
    refused = env.wait_ready("DatabaseSession", "bare", "False", "AccessDenied")
    assert refused["status"]["phase"] == "Failed"
    assert ready(refused)["message"] == (
        "Role(s) access require a reason for access: create the session with spec.reason"
        " (pgjit connect --reason TEXT)")
    ask(bed, env, "why", reason="INC-9: orders stuck in pending")
    waiting(env, "why")
    # bob sees it, with its reason, among the requests that wait for him (carol too, by group;
    # alice does not review her own).
    listed = run_cli(bed.control_plane, "requests", "-n", env.namespace, identity="bob")
    assert listed.returncode == 0, listed.stderr
    [header, row] = listed.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "USER", "DATABASE"]
    assert row.split()[:2] == ["why", "alice"] and "INC-9: orders stuck in pending" in row
    assert "0/1" in row
    as_carol = run_cli(bed.control_plane, "requests", "-A", "-o", "json", identity="carol")
    assert as_carol.returncode == 0, as_carol.stderr
    assert [(r["namespace"], r["name"], r["reason"]) for r in json.loads(as_carol.stdout)] == [
        (env.namespace, "why", "INC-9: orders stuck in pending")]
    as_alice = run_cli(bed.control_plane, "requests", "-n", env.namespace, identity="alice")
    assert as_alice.stdout == "No sessions wait for your review.\n"
    assert catalog(env) == before


# --------------------------------------------------------------------------------------------
# 5. The operator killed while sessions wait


def test_waiting_sessions_and_counted_reviews_survive_an_operator_crash(bed: Bed, env: Env):
    approval_role(env, required=2)
    before = catalog(env)
    ask(bed, env, "kept")
    ask(bed, env, "other")
    waiting(env, "other")
    review(bed, env, "kept", "bob")
    counted = waiting(env, "kept", counted=1, recorded=1)
    bed.kill_operator()
    carol = review(bed, env, "kept", "carol", groups=["dba"])
    assert env.get("DatabaseSession", "kept")["status"]["approval"]["approvals"] == 1
    bed.start_operator()

    active = env.wait_phase("kept", "Active", timeout=TIMEOUT)
    assert active["status"]["reviews"][0] == counted["status"]["reviews"][0]
    assert [(r["reviewer"], r["counted"]) for r in active["status"]["reviews"]] == [
        ("bob", True), ("carol", True)]
    assert active["status"]["approvedAt"] == carol["metadata"]["creationTimestamp"]
    # The session nobody reviewed still waits, as it did before the crash.
    other = waiting(env, "other")
    assert other["status"]["approval"]["deadline"] == \
        env.get("DatabaseSession", "other")["status"]["approval"]["deadline"]
    env.delete("DatabaseSession", "other")
    env.wait_gone("DatabaseSession", "other")
    env.delete("DatabaseSession", "kept")
    env.wait_gone("DatabaseSession", "kept")
    assert catalog(env) == before


# --------------------------------------------------------------------------------------------
# 6. pgjit connect in a terminal


def test_connect_waits_for_bob_then_opens_psql(bed: Bed, env: Env):
    approval_role(env)
    child = spawn_connect(bed.control_plane, env.namespace, "--reason", "looking at INC-11")
    child.expect(r"Pending \(AwaitingApproval: waiting for approval: 0 of 1 approval\(s\) so far;"
                 r" reviewers: group dba, user bob")
    [session] = env.list("DatabaseSession")
    name = session["metadata"]["name"]
    assert session["spec"]["reason"] == "looking at INC-11"

    listed = run_cli(bed.control_plane, "requests", "-n", env.namespace, identity="bob")
    assert name in listed.stdout, listed.stdout
    done = run_cli(bed.control_plane, "review", name, "--approve", "-n", env.namespace,
                   identity="bob")
    assert done.returncode == 0, done.stderr
    child.expect(PROMPT)
    child.sendline("select current_user;")
    child.expect(r"alice")
    child.expect(PROMPT)
    child.sendline(r"\q")
    assert finish(child) == 0
    assert f"session {name} is Active: PostgreSQL user alice" in child.transcript.getvalue()
    assert env.get("DatabaseSession", name) is None


def test_ctrl_c_withdraws_the_request(bed: Bed, env: Env):
    approval_role(env)
    before = catalog(env)
    child = spawn_connect(bed.control_plane, env.namespace)
    child.expect(r"AwaitingApproval")
    [session] = env.list("DatabaseSession")
    child.sendintr()
    assert finish(child) == 130
    assert env.get("DatabaseSession", session["metadata"]["name"]) is None
    assert catalog(env) == before
