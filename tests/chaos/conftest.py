"""Fixtures of the chaos tier: the operator as a process against the real control plane and Prometheus (the
session fixtures of tests/conftest.py), with faults put in between (faults.py). Tests here check what the
operator does when the world misbehaves: they take longer than the integration tier and use what they need
of these fixtures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from faults import DelayingProxy
from kubernetes import client

from modelrollout_dev.devenv.environment import EnvironmentState
from modelrollout_dev.devenv.prometheus import PrometheusServer
from modelrollout_dev.sim.istio_exporter import IstioTrafficExporter
from scenario_support import OperatorProcess, mark_tier, remove_rollouts, serving_exporter

OperatorFactory = Callable[..., OperatorProcess]
ProxyFactory = Callable[..., DelayingProxy]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_tier(items, Path(__file__).parent, pytest.mark.integration, pytest.mark.chaos)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: the operator against faults in the real world it talks to")


@pytest.fixture
def exporter(prometheus: PrometheusServer) -> Iterator[IstioTrafficExporter]:
    """Synthetic Istio metrics the session's Prometheus scrapes; tests set each service's traffic."""
    with serving_exporter(prometheus, "chaos-istio") as serving:
        yield serving


@pytest.fixture(autouse=True)
def rollouts_removed(
    api_client: client.ApiClient, namespace: str, operator_process: OperatorFactory
) -> Iterator[None]:
    """Whatever a test created is deleted while its operator still runs (it lifts the finalizers), so no
    later operator of the session keeps driving it."""
    yield
    remove_rollouts(api_client, namespace)


@pytest.fixture
def delaying_proxy() -> Iterator[ProxyFactory]:
    """`delaying_proxy(upstream, delay)`: a loopback proxy holding every request `delay` seconds."""
    made: list[DelayingProxy] = []

    def make(upstream: str, delay: float) -> DelayingProxy:
        proxy = DelayingProxy(upstream, delay)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


@pytest.fixture
def operator_process(env_state: EnvironmentState, tmp_path: Path) -> Iterator[OperatorFactory]:
    """`operator_process(prometheus_url, *flags)`: `modelrollout run` started with those flags, stopped at
    the end of the test."""
    started: list[OperatorProcess] = []

    def start(prometheus_url: str, *flags: str) -> OperatorProcess:
        process = OperatorProcess(env_state, prometheus_url, tmp_path / f"operator-{len(started)}")
        process.log_dir.mkdir()
        process.start(*flags)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
