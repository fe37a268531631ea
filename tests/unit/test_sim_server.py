"""The simulator's control API over real HTTP (loopback, no API server): backend settings, the LLM ones
included, are changed with PUT /backends/{ns}/{host}, and /request answers the vLLM view of a request."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from modelrollout_dev.sim.simulator import Simulator

NS = "llm"
VIRTUAL_SERVICE = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "chat", "namespace": NS, "creationTimestamp": "2026-01-01T00:00:00Z"},
    "spec": {"hosts": ["llm"], "http": [{"route": [{"destination": {"host": "llm-claude"}}]}]},
}


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator(None, [NS], seed=5, virtual_services=lambda: [VIRTUAL_SERVICE])
    simulator.server.start()
    try:
        yield simulator
    finally:
        simulator.server.stop()


def call(sim: Simulator, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{sim.url}{path}", data=data, method=method)  # noqa: S310
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310  (our loopback server)
        return json.load(response)


def test_put_sets_llm_settings_and_request_reports_them(sim: Simulator) -> None:
    changes = {
        "model_name": "anthropic/claude-x",
        "ttft_median_ms": 90,
        "ttft_p99_ms": 90,
        "itl_ms": 35.5,
        "truncation_rate": 1,
        "tokens_out_jitter": 0,
    }
    answer = call(sim, "PUT", f"/backends/{NS}/llm-claude", changes)
    assert answer["settings"] == {
        **answer["settings"],
        **{name: float(value) if name != "model_name" else value for name, value in changes.items()},
    }
    assert call(sim, "GET", "/backends")[f"{NS}/llm-claude"]["model_name"] == "anthropic/claude-x"
    outcome = call(sim, "POST", "/request", {"host": "llm", "source_namespace": NS})
    assert (outcome["status"], outcome["finished_reason"], outcome["model_name"]) == (
        200,
        "length",
        "anthropic/claude-x",
    )
    assert outcome["ttft_ms"] == pytest.approx(90.0)
    # null gives the model its host's name back.
    call(sim, "PUT", f"/backends/{NS}/llm-claude", {"model_name": None})
    assert call(sim, "POST", "/request", {"host": "llm"})["model_name"] == "llm-claude"
    metrics = urllib.request.urlopen(f"{sim.url}/metrics", timeout=10).read().decode()  # noqa: S310
    assert (
        'vllm:request_success_total{finished_reason="length",model_name="anthropic/claude-x"} 1.0' in metrics
    )
    assert 'vllm:request_success_total{finished_reason="length",model_name="llm-claude"} 1.0' in metrics


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model_name": 7}, "model_name must be a non-empty string"),
        ({"model_name": ""}, "model_name must be a non-empty string"),
        ({"itl_ms": "20"}, "itl_ms must be a number"),
        ({"truncation_rate": 2}, "truncation_rate must be in [0, 1]"),
    ],
)
def test_put_refuses_bad_llm_settings(sim: Simulator, body: dict[str, Any], message: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        call(sim, "PUT", f"/backends/{NS}/llm-claude", body)
    assert refused.value.code == 400
    assert message in json.load(refused.value)["error"]
    assert call(sim, "GET", f"/backends/{NS}/llm-claude")["settings"]["model_name"] == ""


def test_load_takes_bucket_settings(sim: Simulator) -> None:
    body = {"host": "llm", "rps": 5, "bucket_header": "x-user-bucket", "experiment_id": "exp-1"}
    flows = call(sim, "POST", "/load", body)["flows"]
    assert [(f["host"], f["bucket_header"], f["experiment_id"]) for f in flows] == [
        ("llm", "x-user-bucket", "exp-1")
    ]
    assert call(sim, "GET", "/load")["flows"] == flows
    # Without them a flow sends no bucket.
    assert call(sim, "POST", "/load", {"host": "llm", "rps": 5})["flows"][0]["bucket_header"] is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"bucket_header": 7, "experiment_id": "exp-1"}, '"bucket_header" must be a string'),
        ({"bucket_header": "x-user-bucket", "experiment_id": ["exp-1"]}, '"experiment_id" must be a string'),
        ({"bucket_header": "x-user-bucket"}, "bucket_header and experiment_id go together"),
        (
            {"bucket_header": "x-user-id", "experiment_id": "exp-1"},
            "bucket_header must differ from user_header",
        ),
    ],
)
def test_load_refuses_bad_bucket_settings(sim: Simulator, body: dict[str, Any], message: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        call(sim, "POST", "/load", {"host": "llm", "rps": 5, **body})
    assert refused.value.code == 400
    assert message in json.load(refused.value)["error"]
    assert call(sim, "GET", "/load")["flows"] == []
