"""Watch, do not poll; react to alerts. Against the real API server and Prometheus, with an operator whose
tick is a minute: a VirtualService edited by hand is put back from the watch (no tick needed), an idle rollout
makes no VirtualService GETs (the API server's own request counters say so) nor status writes while its
checks keep passing, and one in a long soak is not
reconciled at all between its checks, and an Alertmanager webhook
makes a rollout check its gates at once, which decides as usual (a healthy canary stays, a breaching one is
rolled back in well under the analysis interval)."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelrollout_dev.devenv.environment import EnvironmentState
from modelrollout_dev.devenv.netutil import free_port
from modelrollout_dev.devenv.prometheus import PrometheusServer
from modelrollout_dev.sim.istio_exporter import IstioTrafficExporter
from scenario_support import (
    CANARY,
    STABLE,
    Kubectl,
    OperatorProcess,
    Rollout,
    operator_metric,
    wait_for,
)

TOKEN = "alert-token-for-tests"


class SlowOperator(OperatorProcess):
    """The operator on one namespace, ticking once a minute, with its alert receiver and metrics served."""

    def __init__(self, env_state: EnvironmentState, prometheus_url: str, log_dir: Path, namespace: str):
        super().__init__(env_state, prometheus_url, log_dir)
        self.env["MODELROLLOUT_ALERTS_TOKEN"] = TOKEN
        self.alerts_port, self.metrics_port = free_port(), free_port()
        self.namespace = namespace

    def run(self, tick: float = 60.0) -> None:
        self.start(
            "--namespace",
            self.namespace,
            "--tick",
            f"{tick:g}",
            "--alerts-port",
            str(self.alerts_port),
            "--metrics-port",
            str(self.metrics_port),
        )

    def alert(self, labels: dict[str, str], token: str = TOKEN, status: str = "firing") -> tuple[int, Any]:
        payload = {
            "version": "4",
            "status": status,
            "receiver": "modelrollout",
            "alerts": [{"status": status, "labels": labels, "annotations": {}}],
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.alerts_port}/alerts",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - http on loopback
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read())

    def metric(self, name: str, **labels: str) -> float:
        return operator_metric(self.metrics_port, name, **labels)


@pytest.fixture
def slow_operator(
    env_state: EnvironmentState,
    prometheus: PrometheusServer,
    tmp_path: Path,
    namespace: str,
    modelrollout_crd: str,
) -> Iterator[SlowOperator]:
    process = SlowOperator(env_state, prometheus.url, tmp_path, namespace)
    yield process
    process.stop()


def virtual_service_gets(kubectl: Kubectl) -> float:
    """GETs of single VirtualServices the API server has answered since it started, from its own metrics."""
    raw = kubectl("get", "--raw", "/metrics")
    assert raw.returncode == 0, raw.stderr
    pattern = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
    total = 0.0
    for line in raw.stdout.splitlines():
        found = pattern.match(line)
        if found and 'resource="virtualservices"' in found["labels"] and 'verb="GET"' in found["labels"]:
            total += float(found["value"])
    return total


def traffic_seen(prometheus: PrometheusServer, rollout: Rollout) -> None:
    """Prometheus has both variants' request rates over the gates' window: a rollout whose first check comes
    at once (its next one minutes later) then finds data."""
    for service in (CANARY, STABLE):
        prometheus.wait_for_series(
            f'sum(rate(istio_requests_total{{destination_service_name="{service}",'
            f'destination_service_namespace="{rollout.namespace}"}}[5s])) > 0'
        )


def test_a_hand_edit_is_put_back_from_the_watch_without_waiting_for_a_tick(
    slow_operator: SlowOperator, subject: Rollout, prometheus: PrometheusServer
) -> None:
    """Nothing else would wake the driver for minutes: a tick of 60 s, checks every 10 minutes, the first
    one made and its window over."""
    slow_operator.run(tick=60)
    traffic_seen(prometheus, subject)
    subject.create(stages=[{"weight": 10, "duration": "1h"}, {"weight": 100}], interval="10m", window="2s")
    wait_for("stage 1 weights", lambda: subject.weights() == (90, 10))
    subject.wait_status("the first check", lambda s: (s.get("lastAnalysis") or {}).get("verdict") == "Pass")
    time.sleep(3)
    edited_at = time.monotonic()
    subject.edit_weights(40, 60)
    wait_for("weights put back", lambda: subject.weights() == (90, 10), timeout=20)
    reaction = time.monotonic() - edited_at
    print(f"\nhand edit -> weights put back: within {reaction:.2f} s of starting kubectl (tick 60 s)")
    assert reaction < 5, f"put back after {reaction:.1f} s: that was not the watch"
    subject.wait_reasons("DriftCorrected")
    assert slow_operator.metric("modelrollout_virtualservice_reads_total", source="cache") >= 1


def test_each_check_reads_the_virtual_service_from_the_watch_not_the_api(
    slow_operator: SlowOperator, subject: Rollout, kubectl: Kubectl
) -> None:
    slow_operator.run(tick=0.2)
    subject.create(stages=[{"weight": 10, "duration": "10m"}, {"weight": 100}])  # a check every second
    wait_for("stage 1 weights", lambda: subject.weights() == (90, 10))
    subject.wait_status("the first check", lambda s: (s.get("lastAnalysis") or {}).get("verdict") == "Pass")
    time.sleep(1)  # the first writes and their echoes are done
    version = subject.get()["metadata"]["resourceVersion"]
    checks_before = slow_operator.metric("modelrollout_checks_total")
    gets_before = virtual_service_gets(kubectl)
    cache_before = slow_operator.metric("modelrollout_virtualservice_reads_total", source="cache")
    api_before = slow_operator.metric("modelrollout_virtualservice_reads_total", source="api")
    time.sleep(4)
    cache_reads = (
        slow_operator.metric("modelrollout_virtualservice_reads_total", source="cache") - cache_before
    )
    api_reads = slow_operator.metric("modelrollout_virtualservice_reads_total", source="api") - api_before
    gets = virtual_service_gets(kubectl) - gets_before
    checks = slow_operator.metric("modelrollout_checks_total") - checks_before
    print(f"\n4 s at one check a second: {checks:.0f} checks, {cache_reads:.0f} reads from the watch, "
          f"{api_reads:.0f} from the API, the API server answered {gets:.0f} VirtualService GETs; the "
          "rollout was not written")  # fmt: skip
    assert cache_reads >= 3
    assert api_reads == 0
    assert gets == 0
    # Passing checks that change only numbers stay in memory (--status-refresh): no status write.
    assert 3 <= checks <= 5
    assert subject.get()["metadata"]["resourceVersion"] == version


def test_a_rollout_in_a_long_soak_costs_nothing_between_its_checks(
    slow_operator: SlowOperator, subject: Rollout, kubectl: Kubectl, prometheus: PrometheusServer
) -> None:
    """Ticking every 0.2 s, the driver still sleeps until the next timed moment (the next check, 10 minutes
    away; the resync a minute away): no reconciliation, no read, no write in between."""
    slow_operator.run(tick=0.2)
    traffic_seen(prometheus, subject)
    subject.create(stages=[{"weight": 10, "duration": "1h"}, {"weight": 100}], interval="10m", window="2s")
    wait_for("stage 1 weights", lambda: subject.weights() == (90, 10))
    subject.wait_status("the first check", lambda s: (s.get("lastAnalysis") or {}).get("verdict") == "Pass")
    time.sleep(3)  # past the end of the stage's first check window, its last timed moment for 10 minutes
    version = subject.get()["metadata"]["resourceVersion"]
    reconciles = slow_operator.metric("modelrollout_reconcile_duration_seconds_count")
    reads = slow_operator.metric("modelrollout_virtualservice_reads_total")
    gets = virtual_service_gets(kubectl)
    time.sleep(5)
    idle_reconciles = slow_operator.metric("modelrollout_reconcile_duration_seconds_count") - reconciles
    print(f"\n5 s of a 1 h soak at tick 0.2 s: {idle_reconciles:.0f} reconciliations (a polling driver: 25)")
    assert idle_reconciles == 0
    assert slow_operator.metric("modelrollout_virtualservice_reads_total") == reads
    assert virtual_service_gets(kubectl) == gets
    assert subject.get()["metadata"]["resourceVersion"] == version


def test_an_alert_makes_the_rollout_check_at_once_and_the_check_decides(
    slow_operator: SlowOperator,
    subject: Rollout,
    exporter: IstioTrafficExporter,
    prometheus: PrometheusServer,
) -> None:
    slow_operator.run(tick=60)
    traffic_seen(prometheus, subject)
    subject.create(stages=[{"weight": 10, "duration": "10m"}, {"weight": 100}], interval="10m")
    wait_for("stage 1 weights", lambda: subject.weights() == (90, 10))
    first = subject.wait_status(
        "the first check", lambda s: (s.get("lastAnalysis") or {}).get("verdict") == "Pass"
    )
    first_at = first["lastAnalysis"]["at"]
    rollout = f"{subject.namespace}/{subject.name}"

    # Refused without the token: nothing is checked.
    code, answer = slow_operator.alert(
        {"modelrollout": subject.name, "namespace": subject.namespace}, "wrong"
    )
    assert code == 401, answer
    time.sleep(1.2)  # past the least spacing of asked-for checks
    assert subject.status()["lastAnalysis"]["at"] == first_at

    # An alert naming the canary Service: the rollout checks now; healthy, it stays at stage 1.
    code, answer = slow_operator.alert(
        {"alertname": "CanaryErrors", "destination_service_name": CANARY,
         "destination_service_namespace": subject.namespace}
    )  # fmt: skip
    assert code == 200, answer
    assert answer["checked"] == [rollout]
    second = subject.wait_status(
        "a check on the alert", lambda s: s["lastAnalysis"]["at"] != first_at, timeout=5
    )
    assert second["lastAnalysis"]["verdict"] == "Pass"
    assert second["phase"] == "Progressing"
    assert subject.weights() == (90, 10)

    # The canary breaches; once Prometheus has scraped it, an alert naming the rollout rolls it back at once.
    exporter.set_traffic(CANARY, subject.namespace, rps=40, error_ratio=0.3, latency_ms=200)
    prometheus.wait_for_series(
        f'sum(rate(istio_requests_total{{destination_service_name="{CANARY}",'
        f'destination_service_namespace="{subject.namespace}",response_code=~"5.."}}[5s])) > 1'
    )
    time.sleep(1.1)
    sent = time.monotonic()
    code, answer = slow_operator.alert({"modelrollout": subject.name, "namespace": subject.namespace})
    assert code == 200, answer
    assert answer["checked"] == [rollout]
    wait_for("stable-only weights", lambda: subject.weights() == (100, 0), timeout=10)
    reaction = time.monotonic() - sent
    print(f"\nalert -> rollback written: {reaction:.2f} s (interval 10 m; target < 2 s)")
    assert reaction < 5
    status = subject.wait_phase("RolledBack")
    assert status["rollback"]["gate"] == "error-rate"
    assert slow_operator.metric("modelrollout_alerts_total", outcome="refused") == 1
    assert slow_operator.metric("modelrollout_alerts_total", outcome="checked") == 2
