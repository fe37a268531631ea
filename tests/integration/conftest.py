"""Fixtures of the tiers that run the operator for real (see scenario_support for the pieces)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from istio_exporter import IstioTrafficExporter
from modelrollout import api
from modelrollout_dev.devenv.environment import EnvironmentState
from modelrollout_dev.devenv.prometheus import PrometheusServer
from scenario_support import Kubectl, OperatorProcess, Rollout, prepared_rollout


@pytest.fixture(scope="module")
def exporter(prometheus: PrometheusServer) -> Iterator[IstioTrafficExporter]:
    serving = IstioTrafficExporter()
    prometheus.set_targets("scenario-istio", [serving.address])
    prometheus.wait_for_job_up("scenario-istio")
    yield serving
    prometheus.remove_targets("scenario-istio")
    serving.close()


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


def remove_rollouts(api_client: client.ApiClient, namespace: str) -> None:
    """Delete what a test left, so the next module's operator does not keep driving it (a namespace is never
    finalized here). The operator still running finishes the finalizers; any it could not are dropped."""
    objects = client.CustomObjectsApi(api_client)
    listed = objects.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL)
    for item in listed["items"]:
        objects.delete_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.PLURAL, item["metadata"]["name"]
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not objects.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL)["items"]:
            return
        time.sleep(0.2)
    for item in objects.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL)["items"]:
        objects.patch_namespaced_custom_object(
            api.GROUP,
            api.VERSION,
            namespace,
            api.PLURAL,
            item["metadata"]["name"],
            {"metadata": {"finalizers": []}},
        )
