"""The CRD generator: structural output, CEL rules kept, and the committed crds/ in step with the models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelrollout import api, crdgen

CRDS = Path(__file__).resolve().parents[2] / "crds"


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        found += _walk(sub, f"{path}.{name}")
    if "items" in node:
        found += _walk(node["items"], f"{path}[]")
    return found


def test_committed_crd_is_up_to_date_with_the_models() -> None:
    assert (CRDS / crdgen.CRD_FILE).read_text() == crdgen.render_crd(), "run `make crds`"


def test_schema_is_structural() -> None:
    version = crdgen.crd_manifest()["spec"]["versions"][0]
    for path, node in _walk(version["schema"]["openAPIV3Schema"]):
        assert "type" in node, path
        assert not {"$ref", "anyOf", "allOf", "oneOf", "additionalProperties"} & node.keys(), path
        # The models' defaults are applied by the operator; the API server fills in only the status default.
        assert "default" not in node or path == ".status", path


def test_rules_that_span_fields_are_cel() -> None:
    schema = crdgen.crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    messages = {v["message"] for _, node in _walk(spec) for v in node.get("x-kubernetes-validations", [])}
    assert {str(rule) for rule in api.Rule} <= messages
    gates = spec["properties"]["analysis"]["properties"]["gates"]
    assert gates["x-kubernetes-list-type"] == "map"
    assert gates["x-kubernetes-list-map-keys"] == ["name"]


def test_status_is_served_through_its_subresource_with_columns() -> None:
    version = crdgen.crd_manifest()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"] if "priority" not in c] == [
        "Phase",
        "Stage",
        "Weight",
        "Message",
        "Age",
    ]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert set(status["properties"]) == {
        field.alias or name for name, field in api.ModelRolloutStatus.model_fields.items()
    }
    # Until the operator writes a status, kstatus must read InProgress (generation 1 > 0), not Current.
    assert status["default"] == {"observedGeneration": 0}


@pytest.mark.parametrize(
    ("raw", "recorded"),
    [
        (None, False),
        ({}, False),
        ({"observedGeneration": 0}, False),  # the CRD's default
        ({"observedGeneration": 1}, True),
        ({"observedGeneration": 0, "phase": "Pending"}, True),
        ({"phase": "Pending"}, True),
    ],
)
def test_a_status_is_the_operators_when_it_holds_more_than_the_default(raw: object, recorded: bool) -> None:
    assert api.status_recorded(raw) is recorded


@pytest.mark.parametrize(
    ("schema", "complaint"),
    [
        (
            {"type": "object", "properties": {"x": {"oneOf": [{"type": "string"}, {"type": "integer"}]}}},
            "oneOf",
        ),
        (
            {"type": "object", "properties": {"x": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}},
            "only `X | None` unions",
        ),
        ({"type": "object", "additionalProperties": {"type": "string"}}, "free-form maps"),
        ({"properties": {}}, "needs a type"),
    ],
)
def test_unsupported_schemas_are_refused_not_weakened(schema: dict[str, Any], complaint: str) -> None:
    with pytest.raises(crdgen.SchemaError, match=complaint.replace("|", r"\|").replace("`", "`")):
        crdgen.structural(schema, {})
