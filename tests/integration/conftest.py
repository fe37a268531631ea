"""Fixtures of the integration tier (the operator and the exporter are in tests/conftest.py, shared with the
gitops tier; scenario_support has the pieces)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from install_support import HELM_MODULE, ensure_helm
from modelrollout_dev.devenv.binaries import BinariesError
from modelrollout_dev.sim.istio_exporter import IstioTrafficExporter
from scenario_support import (
    Kubectl,
    OperatorProcess,
    Rollout,
    prepared_rollout,
    remove_rollouts,
)


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


@pytest.fixture
def subject(
    api_client: client.ApiClient, kubectl: Kubectl, namespace: str, exporter: IstioTrafficExporter
) -> Iterator[Rollout]:
    """The test's VirtualService and healthy traffic, without the module's operator: the test runs its own."""
    with prepared_rollout(api_client, kubectl, namespace, exporter) as prepared:
        yield prepared
    remove_rollouts(api_client, namespace)


@pytest.fixture(scope="session")
def helm() -> Path:
    try:
        return ensure_helm(lambda message: print(f"[helm] {message}"))
    except BinariesError as error:  # never a skip: the install path must be checked in CI
        pytest.fail(f"helm could not be built from {HELM_MODULE}: {error}", pytrace=False)
