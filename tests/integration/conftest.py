"""Fixtures of the integration tier (the operator and the exporter are in tests/conftest.py, shared with the
gitops tier; scenario_support has the pieces)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from istio_exporter import IstioTrafficExporter
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
