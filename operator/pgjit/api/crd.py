"""CustomResourceDefinitions generated from the pydantic models.

The models are the single source of the API: pydantic renders their JSON schema, and this
module rewrites it into the structural OpenAPI v3 subset the API server requires:

- ``$ref`` is inlined (structural schemas cannot refer to definitions);
- ``Optional[X]`` (``anyOf: [X, null]``) becomes plain ``X``: an absent field is how Kubernetes
  says "not set", so no ``nullable`` is needed;
- ``title`` is dropped, ``const`` becomes a one-value ``enum``;
- defaults are kept in ``spec`` only (``null`` and ``[]`` defaults are dropped; object defaults
  are ``{}`` so that the server fills in the nested defaults); status has no defaults.

The API server then owns everything: structure, defaults, CEL rules. Generation fails loudly on
any node it cannot represent, instead of emitting a schema the API server would reject.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from pgjit import GROUP, VERSION

from .common import KindModel
from .database import Database
from .labels import ObjectLabelRule
from .review import DatabaseSessionReview
from .role import Role
from .session import DatabaseSession

KINDS: tuple[type[KindModel], ...] = (Database, Role, DatabaseSession, ObjectLabelRule,
                                      DatabaseSessionReview)

# Keys of a pydantic JSON schema node the CRD keeps as they are.
_PASSTHROUGH = {
    "type",
    "description",
    "format",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
    "default",
    "nullable",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-preserve-unknown-fields",
}
_DROPPED = {"title"}


class SchemaConversionError(ValueError):
    """The pydantic schema has a construct the structural CRD schema cannot express."""


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """A referenced definition ``base`` refined by the keys next to the reference.

    The field's own keys (description, default) win; CEL rules of both are kept.
    """
    out = dict(base)
    for key, value in overlay.items():
        if key == "x-kubernetes-validations":
            out[key] = [*base.get(key, []), *value]
        else:
            out[key] = value
    return out


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline ``$ref`` and unwrap ``Optional`` until the node describes one concrete type."""
    node = dict(node)
    if "$ref" in node:
        name = node.pop("$ref").rsplit("/", 1)[-1]
        node = _merge(_resolve(defs[name], defs), node)
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o != {"type": "null"}]
        if len(options) != 1:
            raise SchemaConversionError(f"unions are not structural: {options}")
        node = _merge(_resolve(options[0], defs), node)
    if "allOf" in node:
        parts = node.pop("allOf")
        if len(parts) != 1:
            raise SchemaConversionError(f"allOf with several parts is not supported: {parts}")
        node = _merge(_resolve(parts[0], defs), node)
    return node


def _convert(node: dict[str, Any], defs: dict[str, Any], *, path: str, defaults: bool) -> dict[str, Any]:
    node = _resolve(node, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out["properties"] = {
                name: _convert(sub, defs, path=f"{path}.{name}", defaults=defaults)
                for name, sub in value.items()
            }
        elif key == "items":
            out["items"] = _convert(value, defs, path=f"{path}[]", defaults=defaults)
        elif key == "additionalProperties":
            if value is False:
                continue  # implied by the structural schema: unknown fields are pruned
            if not isinstance(value, dict):
                raise SchemaConversionError(f"{path}: additionalProperties {value!r}")
            out["additionalProperties"] = _convert(value, defs, path=f"{path}{{}}", defaults=defaults)
        elif key in _PASSTHROUGH:
            out[key] = copy.deepcopy(value)
        else:
            raise SchemaConversionError(f"{path}: unsupported schema keyword {key!r}")

    default = out.pop("default", None)
    if defaults and default not in (None, []):
        out["default"] = {} if isinstance(default, dict) else default
    if "type" not in out:
        raise SchemaConversionError(f"{path}: schema node without a type: {node}")
    if not out.get("required"):
        out.pop("required", None)
    return _ordered(out)


# Order of keys in the emitted nodes, so that the YAML reads top-down: what it is, what it
# holds, then constraints and rules.
_KEY_ORDER = [
    "type", "format", "description", "enum", "default", "nullable",
    "minimum", "maximum", "minLength", "maxLength", "pattern",
    "minItems", "maxItems", "minProperties", "maxProperties",
    "properties", "required", "items", "additionalProperties",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-validations",
]  # fmt: skip


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    rank = {key: i for i, key in enumerate(_KEY_ORDER)}
    return dict(sorted(node.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def structural_schema(model: type[BaseModel], *, path: str, defaults: bool) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of ``model`` as a CRD expects it."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _convert(raw, defs, path=path, defaults=defaults)


def _kind_schema(kind: type[KindModel]) -> dict[str, Any]:
    fields = kind.model_fields
    spec_model = fields["spec"].annotation
    assert isinstance(spec_model, type)
    spec = structural_schema(spec_model, path="spec", defaults=True)
    spec["description"] = fields["spec"].description or spec["description"]
    properties: dict[str, Any] = {
        "apiVersion": {
            "type": "string",
            "description": "APIVersion defines the versioned schema of this representation"
            " of an object.",
        },
        "kind": {
            "type": "string",
            "description": "Kind is a string value representing the REST resource this"
            " object represents.",
        },
        "metadata": {"type": "object"},
        "spec": spec,
    }
    if kind.has_status:
        status_model = fields["status"].annotation
        assert isinstance(status_model, type)
        status = structural_schema(status_model, path="status", defaults=False)
        status["description"] = fields["status"].description or status["description"]
        properties["status"] = status
    root: dict[str, Any] = {
        "type": "object",
        "description": _docstring(kind),
        "properties": properties,
        "required": ["spec"],
    }
    if kind.root_validations:
        root["x-kubernetes-validations"] = [dict(rule) for rule in kind.root_validations]
    return root


def _docstring(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split())


def build_crd(kind: type[KindModel]) -> dict[str, Any]:
    """The CustomResourceDefinition manifest of one kind."""
    kind_name = kind.model_fields["kind"].default
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "subresources": {"status": {}},
        "additionalPrinterColumns": [
            col.model_dump(by_alias=True, exclude_none=True, exclude_defaults=False)
            for col in kind.printer_columns
        ],
        "schema": {"openAPIV3Schema": _kind_schema(kind)},
    }
    if not kind.has_status:
        del version["subresources"]
    for col in version["additionalPrinterColumns"]:
        if not col["priority"]:
            del col["priority"]
    if kind.selectable_fields:
        version["selectableFields"] = [{"jsonPath": p} for p in kind.selectable_fields]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.crd_name(),
            "labels": {"app.kubernetes.io/part-of": "pgjit"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind_name,
                "listKind": f"{kind_name}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": list(kind.categories),
            },
            "versions": [version],
        },
    }


def build_crds() -> list[dict[str, Any]]:
    """The CRD manifests of every pgjit kind, in a stable order."""
    return [build_crd(kind) for kind in KINDS]
