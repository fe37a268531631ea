"""The operator's own /metrics scraped by the real Prometheus during a rollout, and notifications delivered
to receivers this test runs (one answering, one down), with a real operator process."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from modelrollout.notify import Notification, Notifier, NotifyTargets
from modelrollout_dev.devenv.environment import EnvironmentState
from modelrollout_dev.devenv.prometheus import PrometheusServer
from modelrollout_dev.sim.istio_exporter import IstioTrafficExporter
from scenario_support import CANARY, RPS, STABLE, Kubectl, OperatorProcess, Rollout, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("modelrollout_crd")]


class Receiver:
    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((self.path, json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    serving = Receiver()
    yield serving
    serving.close()


def test_metrics_and_notifications_during_a_rollback(
    api_client: client.ApiClient,
    kubectl: Kubectl,
    namespace: str,
    env_state: EnvironmentState,
    prometheus: PrometheusServer,
    exporter: IstioTrafficExporter,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    secret = client.V1Secret(
        metadata=client.V1ObjectMeta(name="notify", namespace=namespace),
        data={
            key: base64.b64encode(value.encode()).decode()
            for key, value in {
                "webhook-url": f"{receiver.url}/hook",
                "slack-webhook-url": f"{receiver.url}/slack",
            }.items()
        },
    )
    client.CoreV1Api(api_client).create_namespaced_secret(namespace, secret)
    metrics_port = _free_port()
    operator = OperatorProcess(env_state, prometheus.url, tmp_path)
    operator.start("--metrics-port", str(metrics_port), "--notify-secret", f"{namespace}/notify")
    prometheus.set_targets("modelrollout-operator", [f"127.0.0.1:{metrics_port}"])
    try:
        prometheus.wait_for_job_up("modelrollout-operator", timeout=30)
        exporter.set_traffic(CANARY, namespace, rps=RPS, error_ratio=0.0, latency_ms=200)
        exporter.set_traffic(STABLE, namespace, rps=RPS, error_ratio=0.0, latency_ms=200)
        rollout = Rollout(api_client, kubectl, namespace)
        rollout.create_vs()
        rollout.create(
            stages=[{"weight": 10, "duration": "2s"}, {"weight": 50, "duration": "60s"}, {"weight": 100}]
        )
        weight = f'modelrollout_canary_weight_percent{{namespace="{namespace}", name="chat"}}'

        def scraped_weight() -> float | None:
            found = prometheus.api_get("/api/v1/query", {"query": weight})["data"]["result"]
            return float(found[0]["value"][1]) if found else None

        wait_for("weight 10 scraped", lambda: scraped_weight() == 10, timeout=30)
        wait_for("weight 50 scraped", lambda: scraped_weight() == 50, timeout=30)  # the gauge follows stages
        exporter.set_traffic(CANARY, namespace, rps=RPS, error_ratio=0.3, latency_ms=200)
        rollout.wait_phase("RolledBack")
        wait_for("weight 0 scraped", lambda: scraped_weight() == 0, timeout=30)

        def rollback_delivered() -> list[tuple[str, dict[str, Any]]]:
            return [
                (path, body)
                for path, body in receiver.received
                if body.get("event") == "RolledBack" or "RolledBack" in body.get("text", "")
            ]

        delivered = wait_for("rollback notifications", lambda: len(rollback_delivered()) >= 2, timeout=20)
        by_path = dict(rollback_delivered())
        hook = by_path["/hook"]
        assert (hook["gate"], hook["threshold"], hook["namespace"], hook["name"]) == (
            "error-rate",
            "<= 0.02",
            namespace,
            "chat",
        )
        assert hook["value"] > 0.02
        assert "gate `error-rate`" in by_path["/slack"]["text"]
        assert delivered
    finally:
        prometheus.remove_targets("modelrollout-operator")
        operator.stop()


def test_a_receiver_that_is_down_delays_nothing() -> None:
    async def scenario() -> tuple[float, float, int]:
        notifier = Notifier(
            NotifyTargets(webhook_url=f"http://127.0.0.1:{_free_port()}/down"), attempts=3, first_backoff=0.2
        )
        sender = asyncio.create_task(notifier.run())
        started = time.monotonic()
        for _ in range(10):
            notifier.submit(Notification(event="Promoted", namespace="ns", name="r", message="m"))
        submitted = time.monotonic() - started
        tried = time.monotonic()
        await notifier.drain(60)
        sender.cancel()
        return submitted, time.monotonic() - tried, notifier.failed

    submitted, retrying, failed = asyncio.run(scenario())
    assert submitted < 0.05  # the caller (a reconciliation) never waits on delivery
    assert failed == 10  # each was tried 3 times, with backoff, then given up
    assert retrying >= 10 * 0.15  # 0.05 s + 0.1 s of backoff each: retried for real, off the caller's path
