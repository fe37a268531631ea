"""The ModelRollout CustomResourceDefinition, generated from the pydantic models in `api.py`.

A small generator of our own rather than a library: pydantic already emits JSON Schema, and turning it into a
Kubernetes *structural* schema takes four well-defined steps (inline `$ref`s, `anyOf [X, null]` -> nullable X,
drop what structural schemas forbid or GitOps tools trip over, keep the CEL rules declared beside the models).
Any JSON Schema keyword not listed below is an error, so a model change can never produce a CRD that quietly
validates less than the models do.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import BaseModel

from modelrollout import api

CRD_FILE = f"{api.GROUP}_{api.PLURAL}.yaml"

# Keywords copied into the structural schema as they are.
_KEPT = {
    "type",
    "description",
    "properties",
    "required",
    "items",
    "enum",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}
# Keywords dropped on purpose: titles are noise in `kubectl explain`; defaults are applied by the operator,
# not the API server, so a GitOps diff never shows fields the user did not write (descriptions name them).
_DROPPED = {"title", "default"}


class SchemaError(ValueError):
    pass


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[1]])
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return {**target, **siblings}
    if "allOf" in node and len(node["allOf"]) == 1:
        siblings = {k: v for k, v in node.items() if k != "allOf"}
        return {**_resolve(node["allOf"][0], defs), **siblings}
    return node


def structural(node: dict[str, Any], defs: dict[str, Any], path: str = "") -> dict[str, Any]:
    node = _resolve(node, defs)
    out: dict[str, Any] = {}
    if "anyOf" in node:
        choices = [c for c in node["anyOf"] if c != {"type": "null"}]
        if len(choices) != 1 or len(node["anyOf"]) != 2:
            raise SchemaError(f"{path or '<root>'}: only `X | None` unions map to a structural schema")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        inner = structural(choices[0], defs, path)
        merged = {
            **inner,
            **{
                k: v
                for k, v in structural({**rest, "type": inner.get("type")}, defs, path).items()
                if k != "type"
            },
        }
        merged["nullable"] = True
        return merged
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "additionalProperties":
            if value is False and "properties" in node:
                continue  # structural schemas forbid it beside properties; unknown fields are pruned instead
            raise SchemaError(f"{path}: free-form maps are not part of this API")
        if key not in _KEPT:
            raise SchemaError(
                f"{path or '<root>'}: JSON Schema keyword {key!r} has no structural equivalent here"
            )
        if key == "properties":
            out[key] = {name: structural(sub, defs, f"{path}.{name}") for name, sub in value.items()}
        elif key == "items":
            out[key] = structural(value, defs, f"{path}[]")
        else:
            out[key] = copy.deepcopy(value)
    if "type" not in out:
        raise SchemaError(f"{path or '<root>'}: every node of a structural schema needs a type")
    return out


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return structural(raw, defs)


def _column(name: str, json_path: str, type_: str, description: str, priority: int = 0) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": type_, "jsonPath": json_path, "description": description}
    if priority:
        column["priority"] = priority
    return column


PRINTER_COLUMNS = [
    _column("Phase", ".status.phase", "string", "Where the rollout stands"),
    _column("Stage", ".status.progress", "string", "Current stage of all stages, e.g. 3/6"),
    _column("Weight", ".status.canaryWeight", "integer", "Canary share of traffic in percent"),
    _column(
        "Shadow", ".status.shadow", "integer", "Percent of live traffic mirrored to the canary", priority=1
    ),
    _column("Stable", ".spec.stable.model", "string", "Model serving today", priority=1),
    _column("Canary", ".spec.canary.model", "string", "Model being rolled out", priority=1),
    _column(
        "Shard",
        ".metadata.labels.modelrollout\\.io/shard",
        "string",
        "The shard whose operator drives the rollout (label modelrollout.io/shard); empty: the operator "
        "started without --shard",
        priority=1,
    ),
    _column("Message", ".status.message", "string", "Latest analysis or decision, in short"),
    _column("Age", ".metadata.creationTimestamp", "date", "Time since creation"),
]


_DESCRIPTION = (
    "A progressive, Prometheus-gated rollout of an LLM model or prompt version "
    "behind an Istio VirtualService."
)


def crd_manifest() -> dict[str, Any]:
    spec = model_schema(api.ModelRolloutSpec)
    spec["description"] = "What to roll out, through which stages, gated by which checks."
    status = model_schema(api.ModelRolloutStatus)
    status["description"] = (
        "Written by the operator through the status subresource; observedGeneration 0 until it first does."
    )
    status["default"] = dict(api.UNOBSERVED_STATUS)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": list(api.CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": _DESCRIPTION,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def render_crd() -> str:
    header = "# Generated from operator/modelrollout/api.py by `make crds`. Do not edit.\n"
    return header + yaml.safe_dump(crd_manifest(), sort_keys=False, width=120)
