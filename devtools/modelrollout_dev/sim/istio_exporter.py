"""A synthetic Istio sidecar for tests and benchmarks: `/metrics` with Istio's standard request metrics for
the traffic the caller says each service receives (no requests are made: for fleets too large to simulate).

Counters are the integral of the configured rates over wall-clock time, computed at scrape time, so
Prometheus' `rate()` gives back the configured requests per second and the 5xx share the configured error
ratio, and every request of a service lands in the latency bucket that contains its configured latency.
Like Istio, a series appears on its first request: a service that never failed exports no 5xx series.
"""

from __future__ import annotations

import bisect
import functools
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Istio's default buckets for istio_request_duration_milliseconds.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.5,
    1,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
    30000,
    60000,
    300000,
    600000,
    1800000,
    3600000,
)
OK_CODE = "200"
ERROR_CODE = "503"
SOURCE_WORKLOAD = "istio-ingressgateway"


@dataclass
class _Counts:
    """Requests of one response code: total, per latency bucket (not cumulative), and summed latency."""

    requests: float = 0.0
    buckets: list[float] = field(default_factory=lambda: [0.0] * (len(LATENCY_BUCKETS_MS) + 1))
    latency_sum_ms: float = 0.0

    def add(self, requests: float, latency_ms: float) -> None:
        self.requests += requests
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += requests
        self.latency_sum_ms += requests * latency_ms

    def plus(self, requests: float, latency_ms: float) -> _Counts:
        total = _Counts(self.requests, list(self.buckets), self.latency_sum_ms)
        total.add(requests, latency_ms)
        return total


@dataclass
class _Service:
    """Counts up to `since` plus the rates that hold from `since` on."""

    since: float
    rps: float = 0.0
    error_ratio: float = 0.0
    latency_ms: float = 100.0
    counts: dict[str, _Counts] = field(default_factory=dict)

    def counts_at(self, now: float) -> dict[str, _Counts]:
        requests = self.rps * max(0.0, now - self.since)
        shares = {OK_CODE: 1.0 - self.error_ratio, ERROR_CODE: self.error_ratio}
        result = {}
        for code, share in shares.items():
            base = self.counts.get(code, _Counts())
            result[code] = base.plus(requests * share, self.latency_ms)
        return {code: counts for code, counts in result.items() if counts.requests > 0}

    def requests_at(self, now: float) -> dict[str, float]:
        """Only the request counters of `counts_at` (no latency buckets built): a fleet's scrape without
        histograms."""
        requests = self.rps * max(0.0, now - self.since)
        result = {}
        for code, share in ((OK_CODE, 1.0 - self.error_ratio), (ERROR_CODE, self.error_ratio)):
            base = self.counts.get(code)
            total = (base.requests if base is not None else 0.0) + requests * share
            if total > 0:
                result[code] = total
        return result

    def fold(self, now: float) -> None:
        self.counts = self.counts_at(now)
        self.since = now


class IstioTrafficExporter:
    def __init__(self, *, histograms: bool = True) -> None:
        """`histograms`: export istio_request_duration_milliseconds too (20 series per service and code; a
        fleet benchmark leaves them out and gates on requests only)."""
        self.histograms = histograms
        self._lock = threading.Lock()
        # When each service was first scraped showing a 5xx (the first breaching sample Prometheus holds).
        self.first_errors_scraped: dict[tuple[str, str], float] = {}
        # (service, namespace, version): a version is a subset's pods, labelled destination_version.
        self._services: dict[tuple[str, str, str], _Service] = {}
        self.scrapes = 0
        self.abandoned_scrapes = 0  # scrapes Prometheus hung up on before it had the whole answer
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404)
                    return
                text, at, errors_shown = exporter.scrape()
                body = text.encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    # Prometheus gave up on this scrape (its scrape timeout): it stored none of it.
                    exporter.abandoned_scrapes += 1
                    return
                exporter.shown(at, errors_shown)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="istio-exporter", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def set_traffic(
        self,
        service: str,
        namespace: str,
        *,
        rps: float,
        error_ratio: float = 0.0,
        latency_ms: float = 100.0,
        version: str = "",
    ) -> None:
        if rps < 0 or not 0.0 <= error_ratio <= 1.0 or latency_ms < 0:
            raise ValueError(f"bad traffic: rps={rps} error_ratio={error_ratio} latency_ms={latency_ms}")
        now = time.monotonic()
        with self._lock:
            state = self._services.setdefault((service, namespace, version), _Service(since=now))
            state.fold(now)
            state.rps, state.error_ratio, state.latency_ms = rps, error_ratio, latency_ms

    def stop_traffic(self, service: str, namespace: str, version: str = "") -> None:
        """No more requests; the counters stay (as a sidecar's do), so rate() falls to 0."""
        now = time.monotonic()
        with self._lock:
            state = self._services.get((service, namespace, version))
            if state is not None:
                state.fold(now)
                state.rps = 0.0

    def render(self) -> str:
        """The exposition, counted as scraped in full."""
        text, at, errors_shown = self.scrape()
        self.shown(at, errors_shown)
        return text

    def scrape(self) -> tuple[str, float, list[tuple[str, str]]]:
        """The exposition, when it was taken, and the services (name, namespace) whose 5xx it shows: `shown`
        records them once the scrape was delivered (a sample Prometheus hung up on is one it never held)."""
        errors_shown: list[tuple[str, str]] = []
        now = time.monotonic()
        render = self._render_all if self.histograms else self._render_requests
        return render(now, errors_shown), now, errors_shown

    def shown(self, at: float, errors_shown: list[tuple[str, str]]) -> None:
        for key in errors_shown:
            self.first_errors_scraped.setdefault(key, at)

    def _render_all(self, now: float, errors_shown: list[tuple[str, str]]) -> str:
        with self._lock:
            self.scrapes += 1
            snapshot = {key: state.counts_at(now) for key, state in sorted(self._services.items())}
        requests = [
            "# HELP istio_requests_total Total requests.",
            "# TYPE istio_requests_total counter",
        ]
        durations = [
            "# HELP istio_request_duration_milliseconds Request duration in milliseconds.",
            "# TYPE istio_request_duration_milliseconds histogram",
        ]
        for (service, namespace, version), by_code in snapshot.items():
            for code, counts in sorted(by_code.items()):
                labels = _labels(service, namespace, code, version)
                requests.append(f"istio_requests_total{{{labels}}} {counts.requests!r}")
                if code == ERROR_CODE and counts.requests > 0:
                    errors_shown.append((service, namespace))
                cumulative = 0.0
                for bound, in_bucket in zip((*LATENCY_BUCKETS_MS, None), counts.buckets, strict=True):
                    cumulative += in_bucket
                    le = "+Inf" if bound is None else _number(bound)
                    durations.append(
                        f'istio_request_duration_milliseconds_bucket{{{labels},le="{le}"}} {cumulative!r}'
                    )
                durations.append(
                    f"istio_request_duration_milliseconds_sum{{{labels}}} {counts.latency_sum_ms!r}"
                )
                durations.append(f"istio_request_duration_milliseconds_count{{{labels}}} {counts.requests!r}")
        return "\n".join([*requests, *durations]) + "\n"

    def _render_requests(self, now: float, errors_shown: list[tuple[str, str]]) -> str:
        # At thousands of services a scrape must stay well inside Prometheus' scrape timeout.
        with self._lock:
            self.scrapes += 1
            snapshot = [(key, state.requests_at(now)) for key, state in sorted(self._services.items())]
        lines = [
            "# HELP istio_requests_total Total requests.",
            "# TYPE istio_requests_total counter",
        ]
        for (service, namespace, version), by_code in snapshot:
            for code, requests in sorted(by_code.items()):
                labels = _labels(service, namespace, code, version)
                lines.append(f"istio_requests_total{{{labels}}} {requests!r}")
                if code == ERROR_CODE:
                    errors_shown.append((service, namespace))
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@functools.cache  # a fleet's scrape builds the same label sets every second
def _labels(service: str, namespace: str, code: str, version: str = "") -> str:
    pairs = {
        "reporter": "destination",
        "source_workload": SOURCE_WORKLOAD,
        "destination_service": f"{service}.{namespace}.svc.cluster.local",
        "destination_service_name": service,
        "destination_service_namespace": namespace,
        "destination_workload": f"{service}-{version}" if version else service,
        "response_code": code,
    }
    if version:  # Istio's label of the pods' `version` (app.kubernetes.io/version) label
        pairs["destination_version"] = version
        pairs["destination_canonical_revision"] = version
    return ",".join(f'{name}="{_escape_label_value(value)}"' for name, value in pairs.items())


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
