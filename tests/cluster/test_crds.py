"""The committed CRDs against the real kube-apiserver: they install, their CEL rules compile
within the cost budget, the contract's examples are admitted with the documented defaults, and
invalid objects are refused with a message that names the field and says what to write."""

from __future__ import annotations

import copy
import json
import pathlib
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from pgjit.api.crd import build_crds
from pgjit.api.examples import manifest
from planekit import start_control_plane

pytestmark = pytest.mark.cluster

REPO = pathlib.Path(__file__).resolve().parents[2]
GROUP, VERSION = "pgjit.dev", "v1alpha1"
PLURALS = {"Database": "databases", "Role": "roles", "DatabaseSession": "databasesessions",
           "DatabaseSessionReview": "databasesessionreviews"}
ESTABLISH_TIMEOUT = 60.0


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """This module's own control plane, shadowing the shared one for every fixture here.

    The shared control plane runs an operator for the other modules, and it would write status
    and finalizers onto these objects while the tests write and read them (printer columns,
    defaults). What is tested here is the API server alone.
    """
    plane = start_control_plane(tmp_path_factory.mktemp("crds-controlplane"))
    yield plane
    plane.stop()


@pytest.fixture(scope="module")
def kube_api(control_plane: Any) -> Any:
    api = config.new_client_from_config(config_file=str(control_plane.kubeconfig("admin")),
                                        persist_config=False)
    yield api
    api.close()


def apply_crds(control_plane: Any) -> subprocess.CompletedProcess[str]:
    """``kubectl apply --server-side -f crds/`` as admin (module-scoped, so not the kubectl fixture)."""
    command = [
        str(control_plane.binaries.kubectl),
        f"--kubeconfig={control_plane.kubeconfig('admin')}",
        f"--cache-dir={control_plane.workdir / 'kubectl-cache'}",
        "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"),
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl apply of crds/ failed:\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def crds(control_plane: Any, kube_api: client.ApiClient) -> list[str]:
    """Apply crds/ with server-side apply and wait until every CRD is Established."""
    apply_crds(control_plane)
    names = [crd["metadata"]["name"] for crd in build_crds()]
    ext = client.ApiextensionsV1Api(kube_api)
    deadline = time.monotonic() + ESTABLISH_TIMEOUT
    pending = set(names)
    while pending:
        for name in sorted(pending):
            conditions = ext.read_custom_resource_definition(name).status.conditions or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                pending.discard(name)
        if pending and time.monotonic() > deadline:
            pytest.fail(f"CRDs not Established after {ESTABLISH_TIMEOUT}s: {sorted(pending)}")
        if pending:
            time.sleep(0.2)
    return names


@pytest.fixture
def objects(kube_api: client.ApiClient, crds: list[str], namespace: str) -> Objects:
    return Objects(client.CustomObjectsApi(kube_api), namespace)


@dataclass
class Objects:
    """Create, read and change pgjit objects in one namespace."""

    api: client.CustomObjectsApi
    namespace: str

    def create(self, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return self.api.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURALS[body["kind"]], body, **kwargs
        )

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURALS[kind], name)

    def patch(self, kind: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.api.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURALS[kind], name, patch
        )

    def patch_status(self, kind: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, PLURALS[kind], name, patch
        )


def rejection(err: ApiException) -> list[dict[str, str]]:
    """The causes of an API error: ``[{field, message, reason}]``."""
    body = json.loads(err.body)
    causes = body.get("details", {}).get("causes") or []
    return causes or [{"field": "", "message": body.get("message", ""), "reason": body.get("reason", "")}]


def assert_rejected(err: ApiException, field_path: str, text: str, status: int = 422) -> None:
    causes = rejection(err)
    assert err.status == status, f"expected HTTP {status}, got {err.status}: {causes}"
    assert any(c.get("field") == field_path and text in c.get("message", "") for c in causes), (
        f"no cause at {field_path!r} mentioning {text!r}: {json.dumps(causes, indent=1)}"
    )


def subset(small: Any, big: Any) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and subset(v, big[k]) for k, v in small.items())
    return small == big


# --------------------------------------------------------------------------------------------
# Minimal valid objects the invalid cases are derived from


def database(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Database",
        "metadata": {"name": "db"},
        "spec": {"host": "pg.example", "admin": {"username": "admin", "passwordSecretRef": {"name": "s"}}}
        | spec,
    }


def role(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Role",
        "metadata": {"name": "r"},
        "spec": {"subjects": [{"kind": "User", "name": "alice"}], "allow": {"databaseNames": ["*"]}}
        | spec,
    }


def session(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DatabaseSession",
        "metadata": {"name": "s"},
        "spec": {"user": "alice", "databaseRef": {"name": "orders"}, "databaseName": "orders"} | spec,
    }


def review(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DatabaseSessionReview",
        "metadata": {"name": "v"},
        "spec": {"sessionRef": {"name": "s"}, "decision": "Approve", "reviewer": "bob"} | spec,
    }


def without(body: dict[str, Any], dotted: str) -> dict[str, Any]:
    body = copy.deepcopy(body)
    *parents, last = dotted.split(".")
    node = body
    for part in parents:
        node = node[part]
    del node[last]
    return body


def grant(*privileges: str, **match: str) -> dict[str, Any]:
    return {"permissions": [{"match": match or {"schema": "public"}, "privileges": list(privileges)}]}


# --------------------------------------------------------------------------------------------
# Installation


def test_crds_are_established(crds: list[str]) -> None:
    assert sorted(crds) == ["databases.pgjit.dev", "databasesessionreviews.pgjit.dev",
                            "databasesessions.pgjit.dev", "objectlabelrules.pgjit.dev",
                            "roles.pgjit.dev"]


def test_crds_apply_again_without_changes(crds: list[str], control_plane: Any) -> None:
    assert "serverside-applied" in apply_crds(control_plane).stdout


# --------------------------------------------------------------------------------------------
# The contract's examples


@pytest.mark.parametrize("name", ["Database", "Database/clientCertificate", "Role"])
def test_example_is_admitted_unchanged(objects: Objects, name: str) -> None:
    body = manifest(name)
    created = objects.create(body)
    stored = objects.get(body["kind"], created["metadata"]["name"])
    assert subset(body["spec"], stored["spec"]), stored["spec"]


def test_session_example_with_generate_name(objects: Objects, kubectl: Callable[..., Any]) -> None:
    body = manifest("DatabaseSession")
    out = kubectl("create", "-n", objects.namespace, "-f", "-", "-o", "json", input=yaml.safe_dump(body), check=True)
    created = json.loads(out.stdout)
    assert created["metadata"]["name"].startswith("alice-orders-")
    assert subset(body["spec"], created["spec"])


def test_database_defaults_are_applied_by_the_server(objects: Objects) -> None:
    objects.create(database())
    spec = objects.get("Database", "db")["spec"]
    assert spec == {
        "host": "pg.example",
        "port": 5432,
        "adminDatabase": "postgres",
        "admin": {"username": "admin", "passwordSecretRef": {"name": "s", "key": "password"}},
        "tls": {"sslMode": "prefer"},
        "managedRole": "pgjit-auto-user",
        "credentials": {"type": "password", "scramIterations": 4096},
        "suspended": False,
        "terminateConnections": True,
    }


def test_role_defaults_are_applied_by_the_server(objects: Objects) -> None:
    objects.create(role(allow={"permissions": [{"match": {}, "privileges": ["select"]}]}))
    spec = objects.get("Role", "r")["spec"]
    assert spec["userProvisioning"] == "off"
    assert spec["maxSessionDuration"] == "8h"
    assert spec["allow"]["permissions"][0]["match"] == {"objectKind": "table", "schema": "*", "name": "*"}
    assert spec["allow"]["permissions"][0]["privileges"] == ["select"]  # stored as written


def test_session_defaults_are_applied_by_the_server(objects: Objects) -> None:
    objects.create(session())
    assert objects.get("DatabaseSession", "s")["spec"]["duration"] == "1h"


def test_unknown_fields_are_pruned_without_strict_validation(objects: Objects) -> None:
    objects.create(database(color="blue"))
    assert "color" not in objects.get("Database", "db")["spec"]


# --------------------------------------------------------------------------------------------
# Invalid objects: each refused with the field and a message that says what to write


@dataclass(frozen=True)
class Invalid:
    id: str
    body: dict[str, Any]
    field: str
    text: str
    status: int = 422
    kwargs: dict[str, Any] = field(default_factory=dict)


LONG = "x" * 64
LONG_MULTIBYTE = "é" * 32  # 32 characters, 64 bytes

INVALID = [
    # Database
    Invalid("database-missing-host", without(database(), "spec.host"), "spec.host", "Required value"),
    Invalid("database-missing-admin-username", without(database(), "spec.admin.username"),
            "spec.admin.username", "Required value"),
    Invalid("database-port-zero", database(port=0), "spec.port", "greater than or equal to 1"),
    Invalid("database-port-negative", database(port=-5432), "spec.port", "greater than or equal to 1"),
    Invalid("database-port-too-large", database(port=65536), "spec.port", "less than or equal to 65535"),
    Invalid("database-bad-sslmode", database(tls={"sslMode": "verify"}), "spec.tls.sslMode",
            "Unsupported value"),
    Invalid("database-bad-credentials-type", database(credentials={"type": "kerberos"}),
            "spec.credentials.type", "Unsupported value"),
    Invalid("database-admin-database-64-chars", database(adminDatabase=LONG), "spec.adminDatabase",
            "Too long"),
    Invalid("database-admin-database-64-bytes", database(adminDatabase=LONG_MULTIBYTE),
            "spec.adminDatabase", "must be at most 63 bytes in UTF-8"),
    Invalid("database-managed-role-64-chars", database(managedRole=LONG), "spec.managedRole", "Too long"),
    Invalid("database-managed-role-reserved", database(managedRole="pg_jit"), "spec.managedRole",
            "reserved by PostgreSQL"),
    Invalid("database-admin-username-64-chars",
            database(admin={"username": LONG, "passwordSecretRef": {"name": "s"}}),
            "spec.admin.username", "Too long"),
    Invalid("database-databases-item-64-bytes", database(databases=["orders", LONG_MULTIBYTE]),
            "spec.databases[1]", "must be at most 63 bytes"),
    Invalid("database-both-admin-credentials",
            database(admin={"username": "a", "passwordSecretRef": {"name": "s"},
                            "clientCertificateSecretRef": {"name": "t"}}),
            "spec.admin", "set only one of passwordSecretRef, clientCertificateSecretRef and"),
    Invalid("database-password-and-iam-admin",
            database(admin={"username": "a", "passwordSecretRef": {"name": "s"},
                            "awsIAM": {"region": "eu-central-1"}}, tls={"sslMode": "require"}),
            "spec.admin", "set only one of passwordSecretRef, clientCertificateSecretRef and"),
    Invalid("database-all-three-admin-methods",
            database(admin={"username": "a", "passwordSecretRef": {"name": "s"},
                            "clientCertificateSecretRef": {"name": "t"},
                            "awsIAM": {"region": "eu-central-1"}}, tls={"sslMode": "require"}),
            "spec.admin", "set only one of passwordSecretRef, clientCertificateSecretRef and"),
    Invalid("database-iam-admin-without-tls",
            database(admin={"username": "a", "awsIAM": {"region": "eu-central-1"}},
                     tls={"sslMode": "prefer"}),
            "spec.tls.sslMode", "admin.awsIAM needs TLS"),
    Invalid("database-iam-bad-region",
            database(admin={"username": "a", "awsIAM": {"region": "Frankfurt"}},
                     tls={"sslMode": "require"}),
            "spec.admin.awsIAM.region", "must be an AWS region"),
    Invalid("database-iam-bad-role-arn",
            database(admin={"username": "a", "awsIAM": {"region": "eu-central-1",
                                                        "assumeRoleArn": "pgjit-admin"}},
                     tls={"sslMode": "require"}),
            "spec.admin.awsIAM.assumeRoleArn", "must be an IAM role ARN"),
    Invalid("database-iam-users-without-iam-admin",
            database(credentials={"type": "awsIAM"}, tls={"sslMode": "require"}),
            "spec.credentials.type", "needs admin.awsIAM"),
    Invalid("database-no-admin-credentials", database(admin={"username": "a"}),
            "spec.admin.passwordSecretRef", "set passwordSecretRef"),
    Invalid("database-client-certificate-without-ca",
            database(credentials={"type": "clientCertificate"}),
            "spec.credentials.clientCASecretRef", "needs clientCASecretRef"),
    Invalid("database-cert-admin-without-tls",
            database(admin={"username": "a", "clientCertificateSecretRef": {"name": "t"}},
                     tls={"sslMode": "disable"}),
            "spec.tls.sslMode", "needs TLS"),
    Invalid("database-scram-iterations-zero", database(credentials={"scramIterations": 0}),
            "spec.credentials.scramIterations", "greater than or equal to 1"),
    Invalid("database-bad-secret-name",
            database(admin={"username": "a", "passwordSecretRef": {"name": "Orders_Admin"}}),
            "spec.admin.passwordSecretRef.name", "must be a Kubernetes object name"),
    # Role
    Invalid("role-missing-subjects", without(role(), "spec.subjects"), "spec.subjects", "Required value"),
    Invalid("role-empty-subjects", role(subjects=[]), "spec.subjects", "at least 1 items"),
    Invalid("role-bad-subject-kind", role(subjects=[{"kind": "ServiceAccount", "name": "x"}]),
            "spec.subjects[0].kind", "Unsupported value"),
    Invalid("role-bad-provisioning-mode", role(userProvisioning="drop"), "spec.userProvisioning",
            "Unsupported value"),
    Invalid("role-no-allow-no-deny", without(role(), "spec.allow"), "spec",
            "needs an allow or a deny section"),
    Invalid("role-unknown-privilege", role(allow=grant("SELECT", "EXECUTEZ")),
            "spec.allow.permissions[0].privileges[1]", 'unknown privilege "EXECUTEZ"'),
    Invalid("role-function-privilege-on-a-table", role(allow=grant("SELECT", "EXECUTE")),
            "spec.allow.permissions[0].privileges", "objectKind table takes only SELECT, INSERT"),
    Invalid("role-insert-on-a-sequence",
            role(allow=grant("USAGE", "INSERT", objectKind="sequence", schema="public")),
            "spec.allow.permissions[0].privileges", "objectKind sequence takes only USAGE, SELECT,"
            " UPDATE"),
    Invalid("role-select-on-a-function-in-deny",
            role(deny=grant("SELECT", objectKind="function", schema="public")),
            "spec.deny.permissions[0].privileges", "objectKind function takes only EXECUTE"),
    Invalid("role-schema-kind-with-a-schema",
            role(allow=grant("USAGE", objectKind="schema", schema="public")),
            "spec.allow.permissions[0].match.schema", "named by match.name alone"),
    Invalid("role-privileges-in-one-string", role(allow=grant("SELECT, UPDATE")),
            "spec.allow.permissions[0].privileges[0]", "use one of SELECT, INSERT"),
    Invalid("role-star-in-allow", role(allow=grant("*")), "spec.allow.permissions[0].privileges[0]",
            "'*' is only allowed in deny"),
    Invalid("role-unknown-privilege-in-deny", role(deny=grant("ALL")),
            "spec.deny.permissions[0].privileges[0]", "or * to remove all"),
    Invalid("role-no-privileges", role(allow=grant()), "spec.allow.permissions[0].privileges",
            "at least 1 items"),
    Invalid("role-unsupported-object-kind", role(allow=grant("SELECT", objectKind="trigger")),
            "spec.allow.permissions[0].match.objectKind", "Unsupported value"),
    Invalid("role-unknown-template-namespace",
            role(allow={"databaseRoles": ["reader", "{{email.local(external.email)}}"]}),
            "spec.allow.databaseRoles[1]", "unknown trait namespace"),
    Invalid("role-template-missing-brace", role(allow={"databaseRoles": ["{{internal.db_roles}"]}),
            "spec.allow.databaseRoles[0]", "malformed trait template"),
    Invalid("role-template-with-prefix", role(deny={"databaseRoles": ["admin-{{external.team}}"]}),
            "spec.deny.databaseRoles[0]", "malformed trait template"),
    Invalid("role-database-role-64-bytes", role(allow={"databaseRoles": [LONG_MULTIBYTE]}),
            "spec.allow.databaseRoles[0]", "at most 63 bytes"),
    Invalid("role-bad-duration", role(maxSessionDuration="1d"), "spec.maxSessionDuration",
            "must be a duration like 30m, 1h"),
    Invalid("role-zero-duration", role(maxSessionDuration="0h"), "spec.maxSessionDuration",
            "must be longer than zero"),
    Invalid("role-selector-in-without-values",
            role(allow={"databaseSelector": {"matchExpressions": [{"key": "env", "operator": "In"}]}}),
            "spec.allow.databaseSelector.matchExpressions[0].values", "must be non-empty for In"),
    Invalid("role-approval-without-reviewers", role(approval={"reviewers": []}),
            "spec.approval.reviewers", "at least 1 items"),
    Invalid("role-approval-zero-required",
            role(approval={"reviewers": [{"kind": "User", "name": "bob"}], "required": 0}),
            "spec.approval.required", "greater than or equal to 1"),
    Invalid("role-approval-bad-timeout",
            role(approval={"reviewers": [{"kind": "Group", "name": "dba"}],
                           "pendingTimeout": "1d"}),
            "spec.approval.pendingTimeout", "must be a duration like 30m, 1h"),
    # DatabaseSession
    Invalid("session-reason-too-long", session(reason="r" * 1025), "spec.reason", "Too long"),
    Invalid("session-missing-database-ref", without(session(), "spec.databaseRef"), "spec.databaseRef",
            "Required value"),
    Invalid("session-empty-user", session(user=""), "spec.user", "at least 1 chars"),
    Invalid("session-user-too-long", session(user="u" * 513), "spec.user", "Too long"),
    Invalid("session-database-name-64-chars", session(databaseName=LONG), "spec.databaseName", "Too long"),
    Invalid("session-duration-without-unit", session(duration="90"), "spec.duration",
            "must be a duration like 30m, 1h"),
    Invalid("session-duration-negative", session(duration="-1h"), "spec.duration",
            "must be a duration like"),
    Invalid("session-duration-too-long", session(duration="9000h"), "spec.duration",
            "at most 8760h"),
    Invalid("session-bad-secret-name", session(secretName="Creds!"), "spec.secretName",
            "must be a Kubernetes object name: lowercase letters"),
    Invalid("database-host-with-scheme", database(host="postgres://pg:5432/db"), "spec.host",
            "must be a host name or IP address"),
    Invalid("session-name-too-long-for-default-secret",
            session() | {"metadata": {"name": "s" * 250}},
            "spec.secretName", "set spec.secretName"),
    # DatabaseSessionReview
    Invalid("review-bad-decision", review(decision="Maybe"), "spec.decision", "Unsupported value"),
    Invalid("review-denial-without-reason", review(decision="Deny"), "spec.reason",
            "a denial must say why"),
    Invalid("review-without-reviewer", without(review(), "spec.reviewer"), "spec.reviewer",
            "Required value"),
    # Strict field validation fails while decoding, before admission: 400 BadRequest, not 422.
    Invalid("session-unknown-field-strict", session(colour="blue"), "", 'unknown field "spec.colour"',
            status=400, kwargs={"field_validation": "Strict"}),
]  # fmt: skip


def test_enough_invalid_cases() -> None:
    assert len(INVALID) >= 25


@pytest.mark.parametrize("case", INVALID, ids=[c.id for c in INVALID])
def test_invalid_object_is_rejected(objects: Objects, case: Invalid) -> None:
    with pytest.raises(ApiException) as err:
        objects.create(copy.deepcopy(case.body), **case.kwargs)
    if case.field:
        assert_rejected(err.value, case.field, case.text, case.status)
    else:
        assert err.value.status == case.status, rejection(err.value)
        assert case.text in json.loads(err.value.body)["message"], err.value.body


def test_unknown_field_is_rejected_by_kubectl_strict_validation(
    objects: Objects, kubectl: Callable[..., Any]
) -> None:
    out = kubectl(
        "create", "--validate=strict", "-n", objects.namespace, "-f", "-",
        input=yaml.safe_dump(session(colour="blue")), check=False,
    )  # fmt: skip
    assert out.returncode != 0
    assert 'unknown field "spec.colour"' in out.stderr


# --------------------------------------------------------------------------------------------
# Updates


def test_session_spec_is_immutable(objects: Objects) -> None:
    objects.create(session())
    with pytest.raises(ApiException) as err:
        objects.patch("DatabaseSession", "s", {"spec": {"duration": "2h"}})
    assert_rejected(err.value, "spec", "spec is immutable: delete this DatabaseSession")
    with pytest.raises(ApiException) as err:
        objects.patch("DatabaseSession", "s", {"spec": {"databaseRoles": ["writer"]}})
    assert_rejected(err.value, "spec", "spec is immutable")


def test_a_review_never_changes(objects: Objects) -> None:
    objects.create(review(reason="looks fine"))
    for change in ({"decision": "Deny", "reason": "changed my mind"}, {"reviewer": "carol"},
                   {"sessionRef": {"name": "another"}}):
        with pytest.raises(ApiException) as err:
            objects.patch("DatabaseSessionReview", "v", {"spec": change})
        assert_rejected(err.value, "spec", "a review cannot be changed: create another one")
    assert objects.get("DatabaseSessionReview", "v")["spec"]["decision"] == "Approve"


def test_session_metadata_and_status_stay_writable(objects: Objects) -> None:
    objects.create(session())
    labelled = objects.patch("DatabaseSession", "s", {"metadata": {"labels": {"team": "a"}}})
    assert labelled["metadata"]["labels"] == {"team": "a"}
    status = {
        "observedGeneration": 1,
        "phase": "Active",
        "username": "alice",
        "databaseRoles": ["reader"],
        "permissions": "SELECT on 12 tables",
        "userProvisioning": "keep",
        "matchedRoles": ["analysts"],
        "expiresAt": "2030-01-01T10:00:00Z",
        "secretName": "s-credentials",
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Active", "message": "",
             "lastTransitionTime": "2030-01-01T09:00:00Z", "observedGeneration": 1},
            {"type": "Reconciling", "status": "False", "reason": "Done", "message": "",
             "lastTransitionTime": "2030-01-01T09:00:00Z"},
        ],
    }  # fmt: skip
    objects.patch_status("DatabaseSession", "s", {"status": status})
    stored = objects.get("DatabaseSession", "s")
    assert stored["status"] == status


def test_status_is_validated(objects: Objects) -> None:
    objects.create(database())
    bad = {"type": "Ready", "status": "Yes", "reason": "Connected", "message": "",
           "lastTransitionTime": "2030-01-01T09:00:00Z"}  # fmt: skip
    with pytest.raises(ApiException) as err:
        objects.patch_status("Database", "db", {"status": {"conditions": [bad]}})
    assert_rejected(err.value, "status.conditions[0].status", "Unsupported value")


@pytest.mark.parametrize("admin", [
    {"username": "a", "passwordSecretRef": {"name": "s"}},
    {"username": "a", "clientCertificateSecretRef": {"name": "t"}},
    {"username": "a", "awsIAM": {"region": "eu-central-1",
                                 "assumeRoleArn": "arn:aws:iam::123456789012:role/pgjit"}},
], ids=["password", "clientCertificate", "awsIAM"])
def test_each_admin_method_alone_is_admitted(objects: Objects, admin: dict[str, Any]) -> None:
    body = database(admin=admin, tls={"sslMode": "verify-full"})
    if "awsIAM" in admin:
        body["spec"]["credentials"] = {"type": "awsIAM"}
    created = objects.create(body)
    assert subset(admin, created["spec"]["admin"])


def test_database_spec_stays_mutable(objects: Objects) -> None:
    objects.create(database())
    updated = objects.patch("Database", "db", {"spec": {"suspended": True, "port": 5433}})
    assert updated["spec"]["suspended"] is True and updated["spec"]["port"] == 5433
    assert updated["metadata"]["generation"] == 2


def test_status_written_through_the_main_endpoint_is_ignored(objects: Objects) -> None:
    body = database()
    body["status"] = {"activeSessions": 3}
    created = objects.create(body)
    assert "activeSessions" not in created.get("status", {})


# --------------------------------------------------------------------------------------------
# kubectl presentation


def test_category_and_short_names(objects: Objects, kubectl: Callable[..., Any]) -> None:
    objects.create(database())
    objects.create(role())
    objects.create(session())
    objects.create(review())
    ns = objects.namespace
    listed = kubectl("get", "pgjit", "-n", ns, "-o", "name", check=True).stdout.split()
    assert sorted(listed) == [
        "database.pgjit.dev/db",
        "databasesession.pgjit.dev/s",
        "databasesessionreview.pgjit.dev/v",
        "role.pgjit.dev/r",
    ]
    for short in ("pgdb", "pgrole", "dbsession", "pgsession", "dbreview"):
        assert kubectl("get", short, "-n", ns, "-o", "name", check=True).stdout.strip()


def test_session_printer_columns(objects: Objects, kubectl: Callable[..., Any]) -> None:
    objects.create(session())
    objects.patch_status(
        "DatabaseSession", "s",
        {"status": {"phase": "Active", "expiresAt": "2030-01-01T10:00:00Z", "conditions": [
            {"type": "Ready", "status": "True", "reason": "Active", "message": "ok",
             "lastTransitionTime": "2030-01-01T09:00:00Z"}]}},
    )  # fmt: skip
    header, row = kubectl("get", "dbsession", "s", "-n", objects.namespace, check=True).stdout.splitlines()
    assert header.split() == ["NAME", "PHASE", "USER", "DATABASE", "EXPIRES", "READY", "REASON", "AGE"]
    assert row.split()[:7] == ["s", "Active", "alice", "orders", "2030-01-01T10:00:00Z", "True", "Active"]


def test_selectable_fields(objects: Objects) -> None:
    objects.create(session())
    other = session(user="bob")
    other["metadata"]["name"] = "t"
    objects.create(other)
    found = objects.api.list_namespaced_custom_object(
        GROUP, VERSION, objects.namespace, "databasesessions", field_selector="spec.user=bob"
    )
    assert [o["metadata"]["name"] for o in found["items"]] == ["t"]
