"""The CRDs generated from the models: committed files are current, and every schema is structural
and bounded the way the API server's CEL cost estimator needs."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from pgjit.api.crd import build_crds
from pgjit.cli import dump_yaml, main

REPO = pathlib.Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
REGENERATE = "run `make crds` (or `pgjit crds --output-dir crds`) and commit the result"

CRDS = {crd["spec"]["names"]["kind"]: crd for crd in build_crds()}
#: The kinds the operator writes a status for (a review is only read, and has none).
WITH_STATUS = [kind for kind, crd in CRDS.items()
               if "status" in crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]]


def schema_of(kind: str) -> dict[str, Any]:
    return CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node below ``node`` with its path (``a.b[]`` for items, ``a{}`` for map values)."""
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}" if path else name)
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


# apiVersion, kind and metadata at the root belong to the API server; it restricts what a CRD
# may say about them.
ROOT_OWNED_BY_SERVER = {"apiVersion", "kind", "metadata"}


def user_nodes(kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, node in walk(schema_of(kind)):
        if path.split(".")[0].split("[")[0] not in ROOT_OWNED_BY_SERVER:
            yield path, node


ALL_NODES = [(kind, path, node) for kind in CRDS for path, node in user_nodes(kind)]
NODE_IDS = [f"{kind}:{path or '<root>'}" for kind, path, _ in ALL_NODES]


# --------------------------------------------------------------------------------------------
# Committed files


def test_committed_crds_are_current() -> None:
    for crd in build_crds():
        path = CRD_DIR / f"{crd['metadata']['name']}.yaml"
        assert path.exists(), f"{path.relative_to(REPO)} is missing: {REGENERATE}"
        assert path.read_text() == dump_yaml([crd]), (
            f"{path.relative_to(REPO)} differs from the models: {REGENERATE}"
        )


def test_no_stale_crd_files() -> None:
    expected = {f"{crd['metadata']['name']}.yaml" for crd in build_crds()}
    present = {p.name for p in CRD_DIR.glob("*.pgjit.dev.yaml")}
    assert present == expected, f"stale or missing files in crds/: {REGENERATE}"


def test_cli_prints_all_crds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crds"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert docs == build_crds()


def test_cli_writes_one_file_per_kind(tmp_path: pathlib.Path) -> None:
    assert main(["crds", "--output-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "databases.pgjit.dev.yaml",
        "databasesessionreviews.pgjit.dev.yaml",
        "databasesessions.pgjit.dev.yaml",
        "objectlabelrules.pgjit.dev.yaml",
        "roles.pgjit.dev.yaml",
    ]


def test_disconnect_without_a_session_or_all_is_a_usage_error() -> None:
    assert main(["disconnect"]) == 2


# --------------------------------------------------------------------------------------------
# Names and presentation


@pytest.mark.parametrize(
    ("kind", "plural", "short"),
    [
        ("Database", "databases", {"pgdb"}),
        ("Role", "roles", {"pgrole"}),
        ("DatabaseSession", "databasesessions", {"dbsession", "pgsession"}),
    ],
)
def test_names(kind: str, plural: str, short: set[str]) -> None:
    spec = CRDS[kind]["spec"]
    assert CRDS[kind]["metadata"]["name"] == f"{plural}.pgjit.dev"
    assert spec["group"] == "pgjit.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["plural"] == plural
    assert spec["names"]["singular"] == kind.lower()
    assert set(spec["names"]["shortNames"]) == short
    assert spec["names"]["categories"] == ["pgjit"]
    [version] = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize("kind", WITH_STATUS)
def test_printer_columns(kind: str) -> None:
    columns = {c["name"]: c for c in CRDS[kind]["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Reason"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].reason'
    assert columns["Age"] == {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
        "description": "Time since creation.",
    }
    for column in columns.values():
        assert column["description"]


def test_session_printer_columns() -> None:
    columns = CRDS["DatabaseSession"]["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in columns if not c.get("priority")] == [
        "Phase", "User", "Database", "Expires", "Ready", "Reason", "Age",
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Structural, bounded, described


@pytest.mark.parametrize(("kind", "path", "node"), ALL_NODES, ids=NODE_IDS)
def test_node_is_structural_and_described(kind: str, path: str, node: dict[str, Any]) -> None:
    assert "type" in node, "every node needs a type"
    assert node.get("description"), "every node needs a description"
    for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "not", "title", "$defs", "const"):
        assert forbidden not in node
    if node["type"] == "string" and "enum" not in node:
        # (An enum bounds itself; a maxLength on it only adds a second error to "Unsupported value".)
        assert "maxLength" in node, "strings need maxLength (CEL cost estimation)"
    if node["type"] == "array":
        assert "maxItems" in node, "arrays need maxItems (CEL cost estimation)"
    if node["type"] == "object" and "additionalProperties" in node:
        assert "maxProperties" in node, "maps need maxProperties"
        assert "properties" not in node


@pytest.mark.parametrize(("kind", "path", "node"), ALL_NODES, ids=NODE_IDS)
def test_cel_rules_explain_themselves(kind: str, path: str, node: dict[str, Any]) -> None:
    for rule in node.get("x-kubernetes-validations", []):
        assert set(rule) <= {"rule", "message", "messageExpression", "fieldPath", "reason"}
        assert rule.get("message") or rule.get("messageExpression"), rule["rule"]
        assert rule.get("reason", "FieldValueInvalid") in {
            "FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired",
            "FieldValueDuplicate",
        }  # fmt: skip


def test_no_defaults_in_status() -> None:
    for kind in WITH_STATUS:
        for path, node in walk(schema_of(kind)["properties"]["status"], "status"):
            assert "default" not in node, path


@pytest.mark.parametrize("kind", WITH_STATUS)
def test_conditions_are_a_list_map(kind: str) -> None:
    conditions = schema_of(kind)["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["required"]) == {"type", "status", "reason", "message", "lastTransitionTime"}
    assert set(item["properties"]) == set(item["required"]) | {"observedGeneration"}


# --------------------------------------------------------------------------------------------
# Contract details


def node_at(kind: str, dotted: str) -> dict[str, Any]:
    node = schema_of(kind)
    for part in dotted.split("."):
        if part == "[]":
            node = node["items"]
        else:
            node = node["properties"][part]
    return node


@pytest.mark.parametrize(
    ("kind", "path", "default"),
    [
        ("Database", "spec.port", 5432),
        ("Database", "spec.adminDatabase", "postgres"),
        ("Database", "spec.tls", {}),
        ("Database", "spec.tls.sslMode", "prefer"),
        ("Database", "spec.managedRole", "pgjit-auto-user"),
        ("Database", "spec.credentials", {}),
        ("Database", "spec.credentials.type", "password"),
        ("Database", "spec.credentials.scramIterations", 4096),
        ("Database", "spec.suspended", False),
        ("Database", "spec.terminateConnections", True),
        ("Role", "spec.userProvisioning", "off"),
        ("Role", "spec.maxSessionDuration", "8h"),
        ("DatabaseSession", "spec.duration", "1h"),
    ],
)
def test_defaults(kind: str, path: str, default: Any) -> None:
    assert node_at(kind, path)["default"] == default


@pytest.mark.parametrize(
    ("kind", "path", "values"),
    [
        ("Database", "spec.tls.sslMode",
         ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]),
        ("Database", "spec.credentials.type", ["password", "clientCertificate", "awsIAM"]),
        ("Role", "spec.userProvisioning",
         ["off", "keep", "best_effort_drop", "best_effort_reassign_and_drop"]),
        ("Role", "spec.subjects.[].kind", ["User", "Group"]),
        ("Role", "spec.allow.permissions.[].match.objectKind",
         ["table", "view", "materializedView", "sequence", "function", "procedure", "schema",
          "database"]),
        ("DatabaseSession", "status.phase", ["Pending", "Active", "Ended", "Expired", "Failed"]),
        ("DatabaseSession", "status.teardown.action", ["Locked", "Dropped", "Deactivated", "Released"]),
    ],
)  # fmt: skip
def test_enums(kind: str, path: str, values: list[str]) -> None:
    assert node_at(kind, path)["enum"] == values


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("Database", "spec.adminDatabase"),
        ("Database", "spec.managedRole"),
        ("Database", "spec.admin.username"),
        ("Database", "spec.databases.[]"),
        ("DatabaseSession", "spec.databaseName"),
        ("DatabaseSession", "spec.databaseRoles.[]"),
    ],
)
def test_postgres_identifiers_are_limited_to_63_bytes(kind: str, path: str) -> None:
    node = node_at(kind, path)
    assert node["maxLength"] == 63
    assert "size(bytes(self)) <= 63" in [r["rule"] for r in node["x-kubernetes-validations"]]


def test_session_user_is_not_capped_at_63() -> None:
    # Kubernetes user names may be longer; pgjit maps them to a shortened PostgreSQL name.
    assert node_at("DatabaseSession", "spec.user")["maxLength"] > 300


def test_session_spec_is_immutable() -> None:
    rules = node_at("DatabaseSession", "spec")["x-kubernetes-validations"]
    assert any(r["rule"] == "self == oldSelf" for r in rules)


def test_review_is_read_only_to_the_operator_and_immutable() -> None:
    crd = CRDS["DatabaseSessionReview"]
    [version] = crd["spec"]["versions"]
    assert "subresources" not in version, "nothing writes a review's status"
    assert WITH_STATUS == ["Database", "Role", "DatabaseSession", "ObjectLabelRule"]
    assert crd["spec"]["names"]["shortNames"] == ["dbreview"]
    assert crd["spec"]["names"]["categories"] == ["pgjit"]
    rules = [r["rule"] for r in node_at("DatabaseSessionReview", "spec")["x-kubernetes-validations"]]
    assert "self == oldSelf" in rules
    assert node_at("DatabaseSessionReview", "spec.decision")["enum"] == ["Approve", "Deny"]
    assert set(node_at("DatabaseSessionReview", "spec")["required"]) == {
        "sessionRef", "decision", "reviewer"}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Session", "Decision", "Reviewer", "Age"]


def test_access_request_fields_are_bounded() -> None:
    assert node_at("DatabaseSession", "spec.reason")["maxLength"] == 1024
    assert node_at("DatabaseSessionReview", "spec.reason")["maxLength"] == 1024
    assert node_at("DatabaseSession", "status.reviews")["maxItems"] == 64
    approval = node_at("Role", "spec.approval")
    assert approval["properties"]["required"]["default"] == 1
    assert approval["properties"]["pendingTimeout"]["default"] == "1h"
    assert approval["properties"]["requireReason"]["default"] is False
    assert approval["properties"]["reviewers"]["minItems"] == 1
