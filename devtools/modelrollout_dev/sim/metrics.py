"""Istio's standard request metrics, as the destination's sidecar reports them (reporter="destination"), plus
an LLM token counter, on a registry of their own so that nothing else in the process leaks into `/metrics`.

The built-in gate templates select `reporter="destination"`, `destination_service_name`,
`destination_service_namespace` and `response_code=~"5.."`; the names and labels here are Istio's, so those
templates (and dashboards written for a real mesh) work unchanged.

A request the mesh answered itself (404 no route, 503 no weighted destination) never reached a destination
sidecar, so a destination reporter has nothing to say about it; the simulator counts it in its own stats only.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from modelrollout_dev.sim.routing import Destination

# Istio's default buckets (0.5 ms .. 1 h) with extra bounds from 50 ms to 60 s, where LLM latencies and their
# SLOs live: histogram_quantile interpolates linearly within a bucket, so from 100 ms to 60 s each step is at
# most 1.25x, which keeps a p99 read from a few thousand requests within about 5% (one standard deviation)
# of the truth. Every Istio default bound is kept, so a query written against a real mesh's `le` values still
# finds its buckets.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.5,
    1,
    5,
    10,
    25,
    50,
    75,
    100,
    125,
    150,
    175,
    200,
    250,
    300,
    350,
    400,
    500,
    600,
    700,
    800,
    1000,
    1250,
    1500,
    1750,
    2000,
    2500,
    3000,
    3500,
    4000,
    5000,
    6000,
    7000,
    8000,
    10000,
    12500,
    15000,
    17500,
    20000,
    25000,
    30000,
    35000,
    40000,
    50000,
    60000,
    120000,
    300000,
    600000,
    1800000,
    3600000,
)

DESTINATION_LABELS: tuple[str, ...] = (
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_workload",
    "destination_workload_namespace",
    "destination_version",
)
REQUEST_LABELS: tuple[str, ...] = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    *DESTINATION_LABELS,
    "request_protocol",
    "response_code",
)


def destination_labels(destination: Destination) -> dict[str, str]:
    """The destination_* labels Istio gives a request served by `destination`. The workload is named after the
    Service (and the subset, since subsets are distinct Deployments)."""
    workload = f"{destination.service}-{destination.subset}" if destination.subset else destination.service
    return {
        "destination_service": destination.fqdn,
        "destination_service_name": destination.service,
        "destination_service_namespace": destination.namespace,
        "destination_workload": workload,
        "destination_workload_namespace": destination.namespace,
        "destination_version": destination.subset or "unknown",
    }


class MeshMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "istio_requests",
            "Total requests (Istio standard metric).",
            REQUEST_LABELS,
            registry=self.registry,
        )
        self.duration = Histogram(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds (Istio standard metric).",
            REQUEST_LABELS,
            buckets=LATENCY_BUCKETS_MS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "llm_tokens",
            "LLM tokens by direction (input: prompt, output: completion).",
            ("direction", *DESTINATION_LABELS),
            registry=self.registry,
        )

    def record(
        self,
        destination: Destination,
        *,
        status: int,
        latency_ms: float,
        tokens_in: int,
        tokens_out: int,
        source_workload: str,
        source_namespace: str,
    ) -> None:
        where = destination_labels(destination)
        labels = {
            "reporter": "destination",
            "source_workload": source_workload,
            "source_workload_namespace": source_namespace,
            **where,
            "request_protocol": "http",
            "response_code": str(status),
        }
        self.requests.labels(**labels).inc()
        self.duration.labels(**labels).observe(latency_ms)
        if tokens_in:
            self.tokens.labels(direction="input", **where).inc(tokens_in)
        if tokens_out:
            self.tokens.labels(direction="output", **where).inc(tokens_out)

    def render(self) -> bytes:
        """The Prometheus text exposition of everything recorded."""
        return generate_latest(self.registry)
