"""Prometheus answering slowly for 50 rollouts at once: no healthy rollout is rolled back for it.

The operator (`modelrollout run`, a process) reaches the session's real Prometheus only through a loopback
proxy that holds every query 2 seconds. 50 healthy rollouts (their canaries serve no errors at 200 ms) start
together, with errorLimit 2 and onError Rollback, so three checks in a row that cannot run roll a rollout
back. The operator's own queue must absorb the load: every rollout promotes and none is rolled back, while
Prometheus itself answers each query in well under its timeout.
"""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from faults import DelayingProxy
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from modelrollout import api
from modelrollout_dev.devenv.netutil import free_port
from modelrollout_dev.devenv.prometheus import PrometheusServer
from modelrollout_dev.sim.istio_exporter import IstioTrafficExporter
from scenario_support import CANARY, RPS, STABLE, OperatorProcess

ROLLOUTS = 50
DELAY = 2.0  # seconds the proxy holds every query
BUDGET = 150.0  # seconds for all of them to promote

OperatorFactory = Callable[..., OperatorProcess]
ProxyFactory = Callable[..., DelayingProxy]

pytestmark = [pytest.mark.usefixtures("modelrollout_crd"), pytest.mark.timeout(300)]


def virtual_service(namespace: str, index: int) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": f"llm-{index}", "namespace": namespace},
        "spec": {
            "hosts": [f"llm-{index}"],
            "http": [{"name": "primary", "route": [{"destination": {"host": STABLE}, "weight": 100}]}],
        },
    }


def model_rollout(namespace: str, index: int) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": f"chat-{index}", "namespace": namespace},
        "spec": {
            "stable": {"host": STABLE, "model": "gpt-4o"},
            "canary": {"host": CANARY, "model": "claude-opus-4-8"},
            "trafficRouting": {"istio": {"virtualService": {"name": f"llm-{index}"}, "routes": ["primary"]}},
            "stages": [{"weight": 50, "duration": "5s"}, {"weight": 100}],
            "analysis": {
                "interval": "5s",
                "window": "20s",
                "minRequests": 20,
                "failureLimit": 0,
                "errorLimit": 2,
                "onError": "Rollback",
                "inconclusiveLimit": 100,
                "gates": [
                    {"name": "error-rate", "template": "istio-error-rate", "max": 0.02},
                    {"name": "p99-latency-ms", "template": "istio-latency-p99", "max": 1000},
                ],
            },
        },
    }


def operator_metrics(port: int) -> dict[str, float]:
    """Sums of the operator's own series by metric and verdict (where there is one)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    sums: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + (f"{{{sample.labels['verdict']}}}" if "verdict" in sample.labels else "")
            sums[key] += sample.value
    return dict(sums)


def test_a_slow_prometheus_rolls_back_no_healthy_rollout(
    api_client: client.ApiClient,
    namespace: str,
    prometheus: PrometheusServer,
    exporter: IstioTrafficExporter,
    delaying_proxy: ProxyFactory,
    operator_process: OperatorFactory,
) -> None:
    exporter.set_traffic(CANARY, namespace, rps=RPS, error_ratio=0.0, latency_ms=200)
    exporter.set_traffic(STABLE, namespace, rps=RPS, error_ratio=0.0, latency_ms=200)
    prometheus.wait_for_series(
        f'sum(increase(istio_requests_total{{destination_service_name="{CANARY}", '
        f'destination_service_namespace="{namespace}"}}[20s])) > 40'
    )
    proxy = delaying_proxy(prometheus.url, DELAY)
    metrics_port = free_port()
    # This namespace only: rollouts other tests of the session left behind are not its business.
    operator = operator_process(
        proxy.url, "--tick", "2", "--metrics-port", str(metrics_port), "--namespace", namespace
    )

    objects = client.CustomObjectsApi(api_client)
    for index in range(ROLLOUTS):
        objects.create_namespaced_custom_object(
            "networking.istio.io", "v1", namespace, "virtualservices", virtual_service(namespace, index)
        )
    started = time.monotonic()
    for index in range(ROLLOUTS):
        objects.create_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.PLURAL, model_rollout(namespace, index)
        )

    rolled_back: dict[str, str] = {}
    phases: Counter[str] = Counter()
    all_promoted_after = None
    elapsed = 0.0
    while (elapsed := time.monotonic() - started) < BUDGET:
        items = objects.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL)["items"]
        phases = Counter((item.get("status") or {}).get("phase", "None") for item in items)
        for item in items:
            status = item.get("status") or {}
            if status.get("phase") == "RolledBack":
                rolled_back[item["metadata"]["name"]] = (status.get("rollback") or {}).get("message", "")
        if rolled_back:
            break
        if phases["Promoted"] == ROLLOUTS:
            all_promoted_after = elapsed
            break
        time.sleep(2)

    figures = operator_metrics(metrics_port)
    wait_sum = figures.get("modelrollout_prometheus_queue_wait_seconds_sum", float("nan"))
    wait_count = figures.get("modelrollout_prometheus_queue_wait_seconds_count", 0.0)
    print(
        f"\n{ROLLOUTS} rollouts, Prometheus behind a {DELAY:g}s proxy: "
        + (
            f"all promoted after {all_promoted_after:.1f}s"
            if all_promoted_after
            else f"after {elapsed:.1f}s phases {dict(phases)}"
        )
        + f"\nproxy: {proxy.stats.summary()}"
        + "\noperator: checks "
        + ", ".join(f"{v} {figures.get(f'modelrollout_checks_total{{{v}}}', 0):g}" for v in api.Verdict)
        + f", deferred {figures.get('modelrollout_checks_deferred_total', float('nan')):g}"
        + (
            f", mean wait for a query thread {wait_sum / wait_count:.2f}s over {wait_count:g} queries"
            if wait_count
            else ""
        )
    )
    assert not rolled_back, (
        f"{len(rolled_back)} healthy rollouts rolled back, e.g. "
        + "; ".join(f"{name}: {message}" for name, message in list(rolled_back.items())[:3])
        + f"\noperator log tail:\n{operator.log_text()[-2000:]}"
    )
    assert phases["Promoted"] == ROLLOUTS, f"after {BUDGET:g}s: {dict(phases)}"
