"""The whole loop with traffic that really moves: the simulated mesh routes requests by the live
VirtualService, its backends answer, Prometheus scrapes the Istio metrics it exports, the operator queries
them and rewrites the VirtualService, and the simulator's routing follows."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from modelrollout_dev.devenv.prometheus import PrometheusServer
from modelrollout_dev.sim.istio_exporter import IstioTrafficExporter
from modelrollout_dev.sim.routing import Request
from modelrollout_dev.sim.simulator import Simulator
from scenario_support import (
    CANARY,
    STABLE,
    Kubectl,
    Rollout,
    prepared_rollout,
    remove_rollouts,
    simulated_mesh,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("modelrollout_crd", "operator")]

RPS = 80.0
SHARE_TOLERANCE = 0.10  # with >= 200 requests per window the binomial spread is under 0.035 at any weight


@pytest.fixture(scope="module")
def mesh(api_client: client.ApiClient, prometheus: PrometheusServer) -> Iterator[Simulator]:
    with simulated_mesh(api_client, prometheus, "mesh-scenarios") as simulator:
        yield simulator


@pytest.fixture
def rollout(
    api_client: client.ApiClient, kubectl: Kubectl, namespace: str, exporter: IstioTrafficExporter
) -> Iterator[Rollout]:
    """The simulated mesh is the only source of the rollout's Istio series. The synthetic exporter's, with
    Istio's coarser default buckets, would be summed by `le` with the simulator's denser ones, and
    histogram_quantile over that mix can land between 2000 and 2500 ms whenever a few of the simulator's
    requests are slower than 1 s: a p99 gate then fails or passes by the seeded draws, not by the backends."""
    with prepared_rollout(api_client, kubectl, namespace, exporter, synthetic_traffic=False) as subject:
        yield subject
    remove_rollouts(api_client, namespace)


class Traffic:
    """Steady load on the rollout's host, and what share of it each destination got."""

    def __init__(self, mesh: Simulator, namespace: str) -> None:
        self.mesh = mesh
        self.namespace = namespace
        self.host = f"llm.{namespace}.svc.cluster.local"
        mesh.set_load(self.host, RPS, source_namespace=namespace)

    def counts(self) -> dict[str, int]:
        destinations: dict[str, int] = self.mesh.stats.snapshot()["since_start"]["destinations"]
        return {host: destinations.get(f"{self.namespace}/{host}", 0) for host in (STABLE, CANARY)}

    def window(self, seconds: float) -> dict[str, int]:
        before = self.counts()
        time.sleep(seconds)
        after = self.counts()
        return {host: after[host] - before[host] for host in after}

    def stop(self) -> None:
        self.mesh.set_load(self.host, 0, source_namespace=self.namespace)

    def pinned(self, count: int) -> set[str | None]:
        """Where requests carrying the evaluation header go, `count` of them."""
        hosts = set()
        for _ in range(count):
            outcome = self.mesh.handle(
                Request(
                    host=self.host,
                    path="/v1/chat/completions",
                    headers={"x-llm-eval": "canary"},
                    source_namespace=self.namespace,
                )
            )
            hosts.add(outcome.destination.service if outcome.destination else None)
        return hosts


@pytest.fixture
def traffic(mesh: Simulator, rollout: Rollout) -> Iterator[Traffic]:
    flow = Traffic(mesh, rollout.namespace)
    yield flow
    flow.stop()


def _share(window: dict[str, int]) -> float:
    total = window[STABLE] + window[CANARY]
    assert total >= 150, window  # enough requests for the tolerance to mean something
    return window[CANARY] / total


def _gates(max_p99: float = 2000) -> dict[str, Any]:
    return {
        "interval": "1s",
        "window": "5s",
        "minRequests": 10,
        "failureLimit": 0,
        "inconclusiveLimit": 60,
        "gates": [
            {"name": "error-rate", "template": "istio-error-rate", "max": 0.02},
            {"name": "p99-latency-ms", "template": "istio-latency-p99", "max": max_p99},
        ],
    }


def test_traffic_follows_every_stage_and_ends_on_the_canary(rollout: Rollout, traffic: Traffic) -> None:
    rollout.create(
        stages=[
            {"weight": 10, "duration": "8s"},
            {"weight": 40, "duration": "8s"},
            {"weight": 70, "duration": "8s"},
            {"weight": 100},
        ],
        **_gates(),
    )
    measured: dict[int, float] = {}
    for stage, weight in enumerate((10, 40, 70)):
        rollout.wait_status(f"stage {stage + 1}", lambda s, stage=stage: s.get("stage") == stage, timeout=40)
        wait_for(f"VirtualService at {weight}%", lambda weight=weight: rollout.weights()[1] == weight)
        window = traffic.window(3.5)
        assert rollout.status()["stage"] == stage  # the whole window was inside the stage
        measured[weight] = _share(window)
        assert abs(measured[weight] - weight / 100) <= SHARE_TOLERANCE, (weight, window)
    rollout.wait_phase("Promoted", timeout=40)
    final = traffic.window(2)
    assert final[STABLE] == 0
    assert final[CANARY] > 100
    print(f"canary share by stage weight: {measured}")


@pytest.mark.parametrize(
    ("regression", "gate"),
    [
        ({"error_rate": 0.3}, "error-rate"),
        ({"latency_median_ms": 3000.0, "latency_p99_ms": 6000.0}, "p99-latency-ms"),
    ],
)
def test_a_regression_mid_rollout_is_rolled_back_and_the_canary_gets_nothing(
    rollout: Rollout, traffic: Traffic, mesh: Simulator, regression: dict[str, float], gate: str
) -> None:
    rollout.create(
        stages=[{"weight": 20, "duration": "3s"}, {"weight": 50, "duration": "60s"}, {"weight": 100}],
        **_gates(),
    )
    rollout.wait_status("stage 2", lambda s: s.get("stage") == 1, timeout=40)
    mesh.backends.update(CANARY, rollout.namespace, **regression)
    status = rollout.wait_phase("RolledBack", timeout=40)
    assert status["rollback"]["gate"] == gate
    window = traffic.window(2.5)
    assert window[CANARY] == 0
    assert window[STABLE] > 100
    # The user's header route is not the operator's: evaluators still reach the canary.
    assert traffic.pinned(30) == {CANARY}


def test_a_header_route_wins_whatever_the_weights(rollout: Rollout, traffic: Traffic) -> None:
    rollout.create(stages=[{"weight": 10, "duration": "60s"}, {"weight": 100}], **_gates())
    wait_for("VirtualService at 10%", lambda: rollout.weights() == (90, 10))
    assert traffic.pinned(100) == {CANARY}
    assert _share(traffic.window(2.5)) < 0.25
