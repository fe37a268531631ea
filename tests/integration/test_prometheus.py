"""Prometheus is real: it scrapes a /metrics endpoint this test serves, and prometheus-api-client reads back
exactly the value that endpoint serves, including after it changes."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_api_client import PrometheusConnect

from modelrollout_dev.devenv.prometheus import PrometheusServer

pytestmark = pytest.mark.integration


class Exporter:
    """A /metrics endpoint in the Prometheus text format whose value the test sets."""

    def __init__(self) -> None:
        self.value = 0.0
        self.scrapes = 0
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                exporter.scrapes += 1
                body = (
                    "# HELP modelrollout_probe_value A value set by the test.\n"
                    "# TYPE modelrollout_probe_value gauge\n"
                    f'modelrollout_probe_value{{model="gpt-4o"}} {exporter.value!r}\n'
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    serving = Exporter()
    yield serving
    serving.close()


def _query_value(client: PrometheusConnect, promql: str) -> float | None:
    result = client.custom_query(promql)
    if not result:
        return None
    return float(result[0]["value"][1])


def test_prometheus_scrapes_a_test_endpoint_and_answers_promql(
    prometheus: PrometheusServer, exporter: Exporter
) -> None:
    job = f"probe-{uuid.uuid4().hex[:6]}"
    exporter.value = 42.5
    prometheus.set_targets(job, [exporter.address], {"team": "ml-platform"})
    try:
        prometheus.wait_for_job_up(job, timeout=30)
        client = PrometheusConnect(url=prometheus.url, disable_ssl=True)
        promql = f'modelrollout_probe_value{{job="{job}", model="gpt-4o", team="ml-platform"}}'

        deadline = time.monotonic() + 15
        while _query_value(client, promql) is None and time.monotonic() < deadline:
            time.sleep(0.25)
        assert _query_value(client, promql) == 42.5

        # A changed value shows up within a few 1s scrape intervals: the server really scrapes, live.
        exporter.value = 7.25
        deadline = time.monotonic() + 15
        while _query_value(client, promql) != 7.25 and time.monotonic() < deadline:
            time.sleep(0.25)
        assert _query_value(client, promql) == 7.25
        assert exporter.scrapes >= 2
    finally:
        prometheus.remove_targets(job)


def test_prometheus_reports_a_down_target(prometheus: PrometheusServer) -> None:
    """A target nobody listens on is scraped and reported down (up == 0), not silently absent."""
    job = f"absent-{uuid.uuid4().hex[:6]}"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    prometheus.set_targets(job, [address])
    try:
        series = prometheus.wait_for_series(f'up{{job="{job}"}}', timeout=30)
        assert series[0]["value"][1] == "0"
    finally:
        prometheus.remove_targets(job)
