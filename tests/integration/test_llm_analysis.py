"""LLM analysis end to end: the simulated mesh routes by the live VirtualService, its backends export vLLM's
metric families per model, Prometheus scrapes them, and the operator gates on them: an absolute LLM gate, a
comparing gate, a sequential test on error counts, and the sample-ratio check of the split those tests assume.

Each test names its models uniquely: the vLLM families are labelled by model only, and the mesh serves every
test of the module."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from modelrollout_dev.devenv.prometheus import PrometheusServer
from modelrollout_dev.sim.simulator import Simulator
from scenario_support import (
    CANARY,
    STABLE,
    Kubectl,
    ServedRollout,
    served_rollout,
    simulated_mesh,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("modelrollout_crd", "operator")]


@pytest.fixture(scope="module")
def mesh(api_client: client.ApiClient, prometheus: PrometheusServer) -> Iterator[Simulator]:
    with simulated_mesh(api_client, prometheus, "llm-analysis", seed=5) as simulator:
        yield simulator


class Served(ServedRollout):
    def create(self, stages: list[dict[str, Any]], gates: list[dict[str, Any]], **analysis: Any) -> None:
        settings: dict[str, Any] = {
            "interval": "1s",
            "window": "5s",
            "minRequests": 10,
            "failureLimit": 0,
            "inconclusiveLimit": 120,
            **analysis,
        }
        self.rollout.create(stages=stages, models=self.models, gates=gates, **settings)


@pytest.fixture
def served(
    api_client: client.ApiClient, kubectl: Kubectl, namespace: str, exporter: Any, mesh: Simulator
) -> Iterator[Served]:
    with served_rollout(Served, api_client, kubectl, namespace, exporter, mesh) as subject:
        yield subject


def _gate(status: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(g for g in status["lastAnalysis"]["gates"] if g["name"] == name)
    return found


def test_a_canary_whose_ttft_p99_doubles_is_rolled_back_by_a_vllm_ttft_gate(served: Served) -> None:
    served.load(80)
    served.create(
        stages=[{"weight": 20, "duration": "4s"}, {"weight": 50, "duration": "60s"}, {"weight": 100}],
        gates=[{"name": "ttft-p99", "template": "llm-ttft-p99", "source": "vllm", "max": 1.0}],
    )
    stage_two = served.rollout.wait_status("stage 2", lambda s: s.get("stage") == 1, timeout=40)
    assert _gate(stage_two, "ttft-p99")["value"] < 1.0  # p99 about 0.6 s: the default backend
    served.backend(CANARY, ttft_median_ms=300.0, ttft_p99_ms=1200.0)  # the p99 doubles
    status = served.rollout.wait_phase("RolledBack", timeout=40)
    assert status["rollback"]["gate"] == "ttft-p99"
    assert status["rollback"]["value"] > 1.0
    assert served.rollout.weights() == (100, 0)


def test_a_prompt_that_raises_output_tokens_40_percent_fails_a_comparing_gate_not_an_absolute_one(
    served: Served,
) -> None:
    served.load(80)
    served.create(
        stages=[{"weight": 20, "duration": "4s"}, {"weight": 50, "duration": "60s"}, {"weight": 100}],
        gates=[
            {
                "name": "tokens",
                "template": "llm-output-tokens",
                "source": "vllm",
                "compare": {"maxIncrease": "20%"},
            },
            # What an absolute threshold would say: reported beside it, never deciding.
            {
                "name": "tokens-absolute",
                "template": "llm-output-tokens",
                "source": "vllm",
                "max": 400,
                "advisory": True,
            },
        ],
    )
    served.rollout.wait_status("stage 2", lambda s: s.get("stage") == 1, timeout=40)
    served.backend(CANARY, tokens_out=280)  # 200 -> 280 output tokens per request: +40%
    status = served.rollout.wait_phase("RolledBack", timeout=40)
    assert status["rollback"]["gate"] == "tokens"
    assert status["rollback"]["threshold"] == "<= +20% over the stable"
    tokens, absolute = _gate(status, "tokens"), _gate(status, "tokens-absolute")
    assert tokens["verdict"] == "Fail"
    assert tokens["control"] == pytest.approx(200, rel=0.02)
    assert tokens["relativeDelta"] > 0.2
    assert absolute["verdict"] == "Pass"  # an absolute max of 400 would have let it through
    assert absolute["advisory"] is True
    assert 240 < absolute["value"] <= 400


def test_a_2x_error_regression_at_1_percent_is_rolled_back_by_the_sequential_gate(served: Served) -> None:
    served.backend(STABLE, error_rate=0.01)
    served.backend(CANARY, error_rate=0.02)
    served.load(200)
    served.create(
        stages=[{"weight": 50, "duration": "180s"}, {"weight": 100}],
        gates=[
            {
                "name": "errors",
                "template": "llm-error-events",
                "source": "vllm",
                "test": {"kind": "sequential", "alpha": 0.01, "margin": "10%"},
            },
        ],
    )
    started = time.monotonic()
    status = served.rollout.wait_phase("RolledBack", timeout=150)
    took = time.monotonic() - started
    gate = _gate(status, "errors")
    evidence = gate["evidence"]
    assert gate["verdict"] == "Fail"
    assert evidence["pValue"] <= 0.01
    assert evidence["canaryEvents"] > evidence["stableEvents"] > 0
    assert evidence["canaryShare"] == 0.5
    assert evidence["ratioLow"] > 1.0
    assert status["rollback"]["gate"] == "errors"
    assert status["rollback"]["threshold"] == "anytime-valid p <= 0.01 (margin 10%)"
    assert "p=" in status["rollback"]["message"]
    [accumulation] = [a for a in status["accumulations"] if a["name"] == "errors"]
    assert accumulation["canaryEvents"] == evidence["canaryEvents"]
    print(f"2x regression at 1%: rolled back after {took:.0f} s, {evidence}")


def test_a_shared_bad_hour_does_not_roll_back_comparing_and_sequential_gates(served: Served) -> None:
    served.load(150)
    served.create(
        stages=[{"weight": 50, "duration": "40s"}, {"weight": 100}],
        gates=[
            {
                "name": "errors-vs-control",
                "template": "llm-error-events",
                "source": "vllm",
                "test": {"kind": "sequential", "alpha": 0.001, "margin": "10%"},
            },
            # 750 requests a side in 10s: the spread of the difference at 3% is under 0.009
            {
                "name": "error-delta",
                "template": "llm-error-rate",
                "source": "vllm",
                "window": "10s",
                "compare": {"maxDelta": 0.04},
            },
            {"name": "error-absolute", "template": "istio-error-rate", "max": 0.02, "advisory": True},
        ],
        minRequests=200,
    )
    served.rollout.wait_status(
        "checks at 50% with the sequential count running",
        lambda s: (
            s.get("lastAnalysis") is not None and _gate(s, "errors-vs-control").get("evidence") is not None
        ),
        timeout=30,
    )
    for host in (STABLE, CANARY):
        served.backend(host, error_rate=0.03)  # the bad hour: both variants at 3% errors
    at_half = served.rollout.wait_status(
        "the absolute gate failing at 50%",
        lambda s: s.get("stage") == 0 and _gate(s, "error-absolute")["verdict"] == "Fail",
        timeout=30,
    )
    assert _gate(at_half, "error-absolute")["value"] > 0.02  # an absolute gate would have rolled back
    status = served.rollout.wait_status(
        "phase Promoted", lambda s: s.get("phase") == "Promoted" or s.get("rollback") is not None, timeout=120
    )
    assert status.get("rollback") is None, status["rollback"]
    assert status["phase"] == "Promoted"
    assert "AnalysisFailed" not in served.rollout.reasons()


def test_a_routing_bias_raises_the_sample_ratio_mismatch_condition(served: Served, mesh: Simulator) -> None:
    served.backend(STABLE, error_rate=0.01)
    served.backend(CANARY, error_rate=0.01)
    # A second way to the canary: a client calling its Service directly, past the managed route.
    served.rollout.objects.create_namespaced_custom_object(
        "networking.istio.io",
        "v1",
        served.rollout.namespace,
        "virtualservices",
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "canary-direct", "namespace": served.rollout.namespace},
            "spec": {"hosts": [CANARY], "http": [{"route": [{"destination": {"host": CANARY}}]}]},
        },
    )
    served.load(100)
    served.create(
        stages=[{"weight": 20, "duration": "120s"}, {"weight": 100}],
        gates=[
            {
                "name": "errors",
                "template": "llm-error-events",
                "source": "vllm",
                "test": {"kind": "sequential"},
            },
        ],
    )
    served.rollout.wait_status("stage 1 checked", lambda s: s.get("lastAnalysis") is not None, timeout=30)
    served.load(40, host=f"{CANARY}.{served.rollout.namespace}.svc.cluster.local")  # 60 of 140 rps: 43%
    status = served.rollout.wait_status(
        "SampleRatioMismatch",
        lambda s: any(
            c["type"] == "SampleRatioMismatch" and c["status"] == "True" for c in s.get("conditions") or []
        ),
        timeout=60,
    )
    condition = next(c for c in status["conditions"] if c["type"] == "SampleRatioMismatch")
    assert "at 20% (p=" in condition["message"]
    assert "SampleRatioMismatch" in served.rollout.wait_reasons("SampleRatioMismatch")
    assert status["phase"] == "Progressing"  # a routing problem, not the canary's: no rollback
    errors = _gate(served.rollout.status(), "errors")
    assert errors["verdict"] != "Pass"
