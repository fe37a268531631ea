"""Batched analysis end to end: twenty rollouts, each in a namespace of its own with a canary of its own error
rate, checked by one operator whose built-in gates ask grouped queries that the rollouts share. Each rollout
still gets its own verdict on its own numbers: the one breaching canary is rolled back, the nineteen others
are promoted, and each status shows its own canary's error rate. The operator's metrics say how many queries
Prometheus answered for how many checks."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from modelrollout import api
from modelrollout_dev.devenv.environment import EnvironmentState
from modelrollout_dev.devenv.netutil import free_port
from modelrollout_dev.devenv.prometheus import PrometheusServer
from modelrollout_dev.sim.istio_exporter import IstioTrafficExporter
from scenario_support import (
    CANARY,
    RPS,
    STABLE,
    OperatorProcess,
    Rollout,
    operator_metric,
    remove_rollouts,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("modelrollout_crd")]

ROLLOUTS = 20
BREACHING = 7
# Every healthy canary its own error rate, all under the gate's 2%; the breaching one far over it.
ERROR_RATIOS = [0.3 if index == BREACHING else index * 0.0008 for index in range(ROLLOUTS)]


@pytest.fixture
def batching_operator(
    env_state: EnvironmentState, prometheus: PrometheusServer, tmp_path: Path
) -> Iterator[tuple[OperatorProcess, int]]:
    process = OperatorProcess(env_state, prometheus.url, tmp_path)
    yield process, free_port()
    process.stop()


@pytest.fixture
def fleet(
    api_client: client.ApiClient,
    kubectl: object,
    exporter: IstioTrafficExporter,
    batching_operator: tuple[OperatorProcess, int],
) -> Iterator[tuple[str, list[Rollout]]]:
    """Twenty namespaces named `<prefix>-NN`, each with its VirtualService and both services' traffic. The
    rollouts go while the operator still runs (it finishes their finalizers)."""
    prefix = f"batched-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api_client)
    rollouts = []
    for index, error_ratio in enumerate(ERROR_RATIOS):
        namespace = f"{prefix}-{index:02d}"
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        exporter.set_traffic(CANARY, namespace, rps=RPS, error_ratio=error_ratio, latency_ms=200)
        exporter.set_traffic(STABLE, namespace, rps=RPS, latency_ms=200)
        rollout = Rollout(api_client, kubectl, namespace)  # type: ignore[arg-type]
        rollout.create_vs()
        rollouts.append(rollout)
    try:
        yield prefix, rollouts
    finally:
        objects = client.CustomObjectsApi(api_client)
        for rollout in rollouts:
            with contextlib.suppress(client.ApiException):
                objects.delete_namespaced_custom_object(
                    api.GROUP, api.VERSION, rollout.namespace, api.PLURAL, rollout.name
                )
        for rollout in rollouts:
            remove_rollouts(api_client, rollout.namespace)  # what the operator did not finish in time
            exporter.stop_traffic(CANARY, rollout.namespace)
            exporter.stop_traffic(STABLE, rollout.namespace)
            core.delete_namespace(rollout.namespace)


def test_each_of_twenty_rollouts_gets_its_own_verdict_from_shared_queries(
    fleet: tuple[str, list[Rollout]],
    batching_operator: tuple[OperatorProcess, int],
    prometheus: PrometheusServer,
) -> None:
    prefix, rollouts = fleet
    operator, metrics_port = batching_operator
    prometheus.wait_for_series(
        f"count(sum by (destination_service_namespace) (rate(istio_requests_total{{destination_service_name="
        f'"{CANARY}", destination_service_namespace=~"{prefix}-.*"}}[5s]))) == {ROLLOUTS}'
    )
    operator.start("--namespace", f"{prefix}-*", "--metrics-port", str(metrics_port))
    for rollout in rollouts:
        rollout.create(stages=[{"weight": 20, "duration": "10s"}, {"weight": 100}], interval="2s")

    breaching = rollouts[BREACHING]
    rolled_back = breaching.wait_phase("RolledBack", timeout=60)
    assert rolled_back["rollback"]["gate"] == "error-rate"
    assert breaching.weights() == (100, 0)
    for index, rollout in enumerate(rollouts):
        if index != BREACHING:
            status = rollout.wait_phase("Promoted", timeout=90)
            assert rollout.weights() == (0, 100)
            assert "rollback" not in status or not status["rollback"]
    for index, rollout in enumerate(rollouts):
        [error_rate] = [g for g in rollout.status()["lastAnalysis"]["gates"] if g["name"] == "error-rate"]
        assert error_rate["value"] == pytest.approx(ERROR_RATIOS[index], abs=0.0005), rollout.namespace

    checks = sum(
        operator_metric(metrics_port, "modelrollout_checks_total", namespace=r.namespace, name=r.name)
        for r in rollouts
    )
    asked = operator_metric(metrics_port, "modelrollout_grouped_queries_total", answer="asked")
    shared = sum(  # answered already, or still under way (the check waited for it)
        operator_metric(metrics_port, "modelrollout_grouped_queries_total", answer=how)
        for how in ("shared", "waited")
    )
    print(
        f"\n{ROLLOUTS} rollouts, {checks:.0f} checks: Prometheus answered {asked:.0f} grouped queries, "
        f"{shared:.0f} answers were shared ({(asked + shared) / max(checks, 1):.1f} per check, "
        f"{asked / max(checks, 1):.2f} asked per check)"
    )
    assert checks >= ROLLOUTS * 3
    # Each check asks at least its two gates and its request counts; most of them took a shared answer.
    assert shared > 2 * asked
