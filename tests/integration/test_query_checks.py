"""A gate query the operator could not render is refused before any traffic moves: `modelrollout run` as a
process, against the real API server (whose CEL rule lets such a query through: placing a variable needs
PromQL's lexer) and Prometheus."""

from __future__ import annotations

import time

import pytest

from scenario_support import Rollout

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("modelrollout_crd")]


def test_a_query_the_operator_cannot_render_moves_no_traffic(rollout: Rollout) -> None:
    rollout.create(
        gates=[
            {"name": "error-rate", "template": "istio-error-rate", "max": 0.02},
            {
                "name": "refusals",
                "query": "sum(rate(llm_refusals_total{model={{ canary.model }}}[1m]))",
                "max": 1,
            },
        ]
    )
    status = rollout.wait_status(
        "an InvalidSpec condition",
        lambda s: any(c["type"] == "InvalidSpec" and c["status"] == "True" for c in s.get("conditions", [])),
    )
    message = next(c["message"] for c in status["conditions"] if c["type"] == "InvalidSpec")
    assert message.startswith("spec.analysis.gates[1].query: placeholder {{ canary.model }} at offset 34")
    assert "outside any string" in message
    assert status["phase"] == "Degraded"
    rollout.wait_reasons("InvalidSpec")
    time.sleep(2)  # several ticks: none moves traffic or starts a check
    assert rollout.weights() == (100, 0)
    assert rollout.status().get("lastAnalysis") is None
