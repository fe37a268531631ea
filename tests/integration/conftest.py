"""Fixtures of the tiers that run the operator for real (see scenario_support for the pieces)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from istio_exporter import IstioTrafficExporter
from modelrollout_dev.devenv.environment import EnvironmentState
from modelrollout_dev.devenv.prometheus import PrometheusServer
from scenario_support import (
    Kubectl,
    OperatorProcess,
    Rollout,
    prepared_rollout,
    remove_rollouts,
    serving_exporter,
)


@pytest.fixture(scope="module")
def exporter(prometheus: PrometheusServer) -> Iterator[IstioTrafficExporter]:
    with serving_exporter(prometheus, "scenario-istio") as serving:
        yield serving


@pytest.fixture(scope="module")
def operator(
    env_state: EnvironmentState, prometheus: PrometheusServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(env_state, prometheus.url, tmp_path_factory.mktemp("operator"))
    process.start()
    yield process
    process.stop()


@pytest.fixture
def rollout(
    api_client: client.ApiClient,
    kubectl: Kubectl,
    namespace: str,
    exporter: IstioTrafficExporter,
    operator: OperatorProcess,
) -> Iterator[Rollout]:
    with prepared_rollout(api_client, kubectl, namespace, exporter) as subject:
        yield subject
    remove_rollouts(api_client, namespace)
