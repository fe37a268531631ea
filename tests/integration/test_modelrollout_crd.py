"""The generated ModelRollout CRD on the real API server: samples apply, invalid specs are refused with a
message naming the field, the status subresource keeps every field, and kubectl shows the columns."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from modelrollout import api
from scenario_support import Kubectl
from spec_cases import INVALID, OPERATOR_ONLY, SAMPLES, VALID, Case, edited, sample_rollout, sample_status

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("modelrollout_crd")]


def _rollout(namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def _create(api_client: client.ApiClient, body: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        api.GROUP, api.VERSION, body["metadata"]["namespace"], api.PLURAL, body
    )
    return created


def _in_namespace(documents: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    moved = []
    for document in documents:
        if document["kind"] == "Namespace":
            continue
        copied = copy.deepcopy(document)
        copied["metadata"]["namespace"] = namespace
        moved.append(copied)
    return moved


def test_samples_apply(namespace: str, kubectl: Kubectl) -> None:
    documents = []
    for name in ("services.yaml", "virtualservice.yaml", "modelrollout.yaml"):
        documents += list(yaml.safe_load_all((SAMPLES / name).read_text()))
    applied = kubectl("apply", "-f", "-", input=yaml.safe_dump_all(_in_namespace(documents, namespace)))
    assert applied.returncode == 0, applied.stderr
    assert "modelrollout.modelrollout.io/chat created" in applied.stdout
    assert "virtualservice.networking.istio.io/llm created" in applied.stdout
    live = kubectl("-n", namespace, "get", "mro", "chat", "-o", "json")
    assert json.loads(live.stdout)["spec"] == sample_rollout()["spec"]  # nothing pruned, nothing defaulted


@pytest.mark.parametrize(
    ("file", "name"),
    [("modelrollout-llm.yaml", "chat-llm"), ("modelrollout-experiment.yaml", "chat-experiment")],
)
def test_the_llm_and_experiment_samples_apply_and_nothing_is_pruned(
    namespace: str, kubectl: Kubectl, file: str, name: str
) -> None:
    sample = yaml.safe_load((SAMPLES / file).read_text())
    applied = kubectl("apply", "-f", "-", input=yaml.safe_dump_all(_in_namespace([sample], namespace)))
    assert applied.returncode == 0, applied.stderr
    live = kubectl("-n", namespace, "get", "mro", name, "-o", "json")
    assert json.loads(live.stdout)["spec"] == sample["spec"]


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_invalid_specs_are_refused_by_the_api_server(
    case: Case, namespace: str, api_client: client.ApiClient
) -> None:
    with pytest.raises(ApiException) as refused:
        _create(api_client, _rollout(namespace, case.id, edited(case)))
    assert refused.value.status == 422, refused.value.body
    message = json.loads(refused.value.body)["message"]
    assert case.field in message, message
    assert case.api_says in message, message


@pytest.mark.parametrize("case", OPERATOR_ONLY, ids=lambda c: c.id)
def test_specs_only_the_operator_refuses_get_past_the_api_server(
    case: Case, namespace: str, api_client: client.ApiClient
) -> None:
    """Where CEL ends: these need PromQL's lexer. The operator refuses them (InvalidSpec) before moving
    traffic; when CEL can check one of them, move it to INVALID."""
    created = _create(api_client, _rollout(namespace, case.id, edited(case)))
    assert created["spec"] == edited(case)


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.id)
def test_valid_specs_are_accepted_by_the_api_server(
    case: Case, namespace: str, api_client: client.ApiClient
) -> None:
    created = _create(api_client, _rollout(namespace, case.id, edited(case)))
    assert created["spec"] == edited(case)


def test_status_subresource_keeps_every_field(namespace: str, api_client: client.ApiClient) -> None:
    objects = client.CustomObjectsApi(api_client)
    body = _rollout(namespace, "chat", edited(VALID[0]))
    body["status"] = {"phase": "Promoted"}  # ignored on create: status belongs to the subresource
    created = _create(api_client, body)
    assert created["status"] == api.UNOBSERVED_STATUS  # the CRD's default: no generation observed yet

    status = sample_status()
    wire = status.model_dump(by_alias=True, mode="json", exclude_none=True)
    objects.patch_namespaced_custom_object_status(
        api.GROUP, api.VERSION, namespace, api.PLURAL, "chat", {"status": wire}
    )
    live = objects.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, "chat")
    assert live["status"] == wire
    assert api.ModelRolloutStatus.model_validate(live["status"]) == status


def test_kubectl_get_shows_phase_stage_weight_message(
    namespace: str, kubectl: Kubectl, api_client: client.ApiClient
) -> None:
    _create(api_client, _rollout(namespace, "chat", edited(VALID[0])))
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object_status(
        api.GROUP,
        api.VERSION,
        namespace,
        api.PLURAL,
        "chat",
        {
            "status": {
                "phase": "Progressing",
                "progress": "3/6",
                "canaryWeight": 10,
                "message": "all gates pass (error-rate 0.4% <= 2%)",
            }
        },
    )
    shown = kubectl("-n", namespace, "get", "modelrollouts")
    assert shown.returncode == 0, shown.stderr
    header, row = shown.stdout.splitlines()
    assert header.split() == ["NAME", "PHASE", "STAGE", "WEIGHT", "MESSAGE", "AGE"]
    assert row.split()[:4] == ["chat", "Progressing", "3/6", "10"]
    assert "all gates pass (error-rate 0.4% <= 2%)" in row

    labelled = kubectl("-n", namespace, "label", "mro", "chat", "modelrollout.io/shard=team-a")
    assert labelled.returncode == 0, labelled.stderr
    wide = kubectl("-n", namespace, "get", "mro", "-o", "wide")
    assert wide.returncode == 0, wide.stderr
    header, row = wide.stdout.splitlines()
    assert header.split() == [
        "NAME",
        "PHASE",
        "STAGE",
        "WEIGHT",
        "SHADOW",
        "STABLE",
        "CANARY",
        "SHARD",
        "MESSAGE",
        "AGE",
    ]
    assert "gpt-4o" in row
    assert "claude-opus-4-8" in row
    # Columns are aligned under their headers: the shard's label value is what stands under SHARD.
    assert row[header.index("SHARD") :].split()[0] == "team-a"
    by_category = kubectl("-n", namespace, "get", "progressive-delivery", "-o", "name")
    assert by_category.stdout.strip() == "modelrollout.modelrollout.io/chat"


def test_kubectl_explain_documents_the_fields(kubectl: Kubectl) -> None:
    explained = kubectl("explain", "modelrollouts.spec.analysis.minRequests")
    assert explained.returncode == 0, explained.stderr
    assert "Fewer canary requests in the window: Inconclusive." in explained.stdout
