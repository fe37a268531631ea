"""Istio's standard request metrics, as the destination's sidecar reports them (reporter="destination"), an
LLM token counter, and the request metrics of a vLLM engine serving each backend's model, all on a registry of
their own so that nothing else in the process leaks into `/metrics`.

The built-in gate templates select `reporter="destination"`, `destination_service_name`,
`destination_service_namespace` and `response_code=~"5.."`; the names and labels here are Istio's, so those
templates (and dashboards written for a real mesh) work unchanged.

The vLLM families carry vLLM's names, units and `model_name` label (and `finished_reason` on
`vllm:request_success_total`), and no Istio label: a real vLLM is scraped from its engine, which knows its
model, not the mesh. `model_name` is the backend's setting, or the Service's host name if it has none:

    vllm:time_to_first_token_seconds      histogram, one observation per request that produced a token
    vllm:inter_token_latency_seconds      histogram, one observation per output token after the first
    vllm:time_per_output_token_seconds    the same observations under vLLM's older (deprecated) name
    vllm:e2e_request_latency_seconds      histogram, every request (errors too: the Istio latency, in seconds)
    vllm:request_success_total            counter by finished_reason: stop, length, abort (every error)
    vllm:prompt_tokens_total              counter of input tokens (errors too: their prompt was taken in)
    vllm:generation_tokens_total          counter of output tokens
    vllm:request_prompt_tokens            histogram of input tokens per request
    vllm:request_generation_tokens        histogram of output tokens per request

Their bounds are vLLM's, plus denser ones (at most 1.25x apart from 1 ms to 60 s, to 600 s for the end-to-end
latency) so that histogram_quantile reads a p99 within a few percent; the token histograms have vLLM's 1-2-5
bounds. The inter-token latency is `itl_ms` for every gap, so its quantiles read within its bucket.

A request the mesh answered itself (404 no route, 503 no weighted destination) never reached a destination
sidecar, so a destination reporter has nothing to say about it; the simulator counts it in its own stats only.
A mirror copy reached its backend, so it is recorded like any request, in the Istio and the vLLM families.

One family is the simulator's own, what each fake backend received: `sim_backend_requests_total` by the
backend (`service`, `namespace`), the experiment headers the request carried when it arrived (after the
VirtualService's header operations: `model` from x-model, `prompt_version` from x-prompt-version,
`experiment_id` from x-experiment-id, `variant` from x-variant; "" when absent) and `mirrored` ("true" for a
mirror copy). A test reads from it that the headers the operator writes reach the backends.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from modelrollout_dev.sim.backends import Served
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


def _dense_seconds(low: float, high: float) -> tuple[float, ...]:
    """Bounds from `low` to `high` seconds, at most 1.25x apart: the mantissas of LATENCY_BUCKETS_MS from
    100 ms to 1 s, in every decade."""
    mantissas = (1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8)
    bounds = {round(m * 10.0**exponent, 9) for exponent in range(-4, 5) for m in mantissas}
    return tuple(sorted(bound for bound in bounds if low <= bound <= high))


def _with_dense(vllm_bounds: Sequence[float], low: float = 0.001, high: float = 60.0) -> tuple[float, ...]:
    """vLLM's bounds, every one kept (a query written against a real vLLM's `le` values finds them), with
    dense ones added between `low` and `high`."""
    return tuple(sorted({*vllm_bounds, *_dense_seconds(low, high)}))


# vLLM's own bounds (its PrometheusStatLogger), in seconds.
VLLM_TTFT_BOUNDS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
VLLM_ITL_BOUNDS: tuple[float, ...] = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
VLLM_E2E_BOUNDS: tuple[float, ...] = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)

TTFT_BUCKETS_S = _with_dense(VLLM_TTFT_BOUNDS)
ITL_BUCKETS_S = _with_dense(VLLM_ITL_BOUNDS)
E2E_BUCKETS_S = _with_dense(VLLM_E2E_BOUNDS, high=600.0)  # reasoning models take minutes
# vLLM's 1-2-5 series up to the model's context length; 100k covers a 128k-token model.
TOKEN_BUCKETS: tuple[float, ...] = tuple(
    float(m * 10**e) for e in range(6) for m in (1, 2, 5) if m * 10**e <= 100_000
)

MODEL_LABELS: tuple[str, ...] = ("model_name",)

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
    # Set only by an Istio Telemetry tag override (`sim.telemetry`); empty, i.e. absent, otherwise.
    "variant",
)


# The request headers that say which experiment arm a request belongs to, by the label each is counted under.
DIMENSION_HEADERS: tuple[tuple[str, str], ...] = (
    ("model", "x-model"),
    ("prompt_version", "x-prompt-version"),
    ("experiment_id", "x-experiment-id"),
    ("variant", "x-variant"),
)
BACKEND_REQUEST_LABELS: tuple[str, ...] = (
    "service",
    "namespace",
    *(label for label, _ in DIMENSION_HEADERS),
    "mirrored",
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


class RepeatedHistogram:
    """A histogram that takes one value many times in one call (prometheus_client's observes once): the
    inter-token latency is one observation per output token, hundreds per request, which one by one would
    cost more than the rest of the request. Registered on `registry` as a collector; exposed like a
    prometheus_client Histogram (cumulative `_bucket` with `le`, `_count`, `_sum`)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(sorted(buckets))
        self._lock = threading.Lock()
        # Per label values: the count of each bucket (not cumulative; the last is +Inf) and the sum.
        self._series: dict[tuple[str, ...], tuple[list[float], list[float]]] = {}
        registry.register(self)

    def observe(self, labels: Sequence[str], value: float, times: int = 1) -> None:
        if times <= 0:
            return
        index = bisect.bisect_left(self.bounds, value)  # the first bound >= value; past them all: +Inf
        key = tuple(labels)
        with self._lock:
            counts, total = self._series.setdefault(key, ([0.0] * (len(self.bounds) + 1), [0.0]))
            counts[index] += times
            total[0] += value * times

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            series = [(key, list(counts), total[0]) for key, (counts, total) in self._series.items()]
        for key, counts, total in series:
            cumulative, buckets = 0.0, []
            for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
            family.add_metric(list(key), buckets, total)
        return [family]


class VllmMetrics:
    """The request metrics of a vLLM engine, per model (see the module's docstring)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            MODEL_LABELS,
            buckets=TTFT_BUCKETS_S,
            registry=registry,
        )
        self.inter_token_latency = RepeatedHistogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            MODEL_LABELS,
            ITL_BUCKETS_S,
            registry,
        )
        self.time_per_output_token = RepeatedHistogram(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds (vLLM's older name of the inter-token latency).",
            MODEL_LABELS,
            ITL_BUCKETS_S,
            registry,
        )
        self.e2e_latency = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            MODEL_LABELS,
            buckets=E2E_BUCKETS_S,
            registry=registry,
        )
        self.request_success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            (*MODEL_LABELS, "finished_reason"),
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", MODEL_LABELS, registry=registry
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            MODEL_LABELS,
            registry=registry,
        )
        self.request_prompt_tokens = Histogram(
            "vllm:request_prompt_tokens",
            "Number of prefill tokens processed.",
            MODEL_LABELS,
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.request_generation_tokens = Histogram(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            MODEL_LABELS,
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self._models: dict[str, _ModelSeries] = {}

    def record(self, model_name: str, served: Served) -> None:
        """One finished request of `model_name`."""
        model = self._models.get(model_name) or self._bind(model_name)
        if served.ttft_ms is not None:
            model.ttft.observe(served.ttft_ms / 1000)
        gaps = served.tokens_out - 1
        if gaps > 0:
            self.inter_token_latency.observe((model_name,), served.itl_ms / 1000, gaps)
            self.time_per_output_token.observe((model_name,), served.itl_ms / 1000, gaps)
        model.e2e_latency.observe(served.latency_ms / 1000)
        self.request_success.labels(model_name, served.finished_reason).inc()
        model.prompt_tokens.inc(served.tokens_in)
        model.generation_tokens.inc(served.tokens_out)
        model.request_prompt_tokens.observe(served.tokens_in)
        model.request_generation_tokens.observe(served.tokens_out)

    def _bind(self, model_name: str) -> _ModelSeries:
        """The series of one model, looked up once (`labels()` costs more than the observation)."""
        model = _ModelSeries(
            ttft=self.ttft.labels(model_name),
            e2e_latency=self.e2e_latency.labels(model_name),
            prompt_tokens=self.prompt_tokens.labels(model_name),
            generation_tokens=self.generation_tokens.labels(model_name),
            request_prompt_tokens=self.request_prompt_tokens.labels(model_name),
            request_generation_tokens=self.request_generation_tokens.labels(model_name),
        )
        # Two threads binding one model at once get the same children from prometheus_client: either may win.
        self._models[model_name] = model
        return model


@dataclass(frozen=True)
class _ModelSeries:
    ttft: Histogram
    e2e_latency: Histogram
    prompt_tokens: Counter
    generation_tokens: Counter
    request_prompt_tokens: Histogram
    request_generation_tokens: Histogram


def model_name(destination: Destination, served: Served) -> str:
    """The `model_name` of a request: the backend's setting, else the Service's host name."""
    return served.model_name or destination.service


class MeshMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.vllm = VllmMetrics(self.registry)
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
        self.backend_requests = Counter(
            "sim_backend_requests",
            "Requests each simulated backend received, by the experiment headers they carried "
            "(empty when absent) and whether they were mirror copies.",
            BACKEND_REQUEST_LABELS,
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
        variant: str = "",
    ) -> None:
        where = destination_labels(destination)
        labels = {
            "reporter": "destination",
            "source_workload": source_workload,
            "source_workload_namespace": source_namespace,
            **where,
            "request_protocol": "http",
            "response_code": str(status),
            "variant": variant,
        }
        self.requests.labels(**labels).inc()
        self.duration.labels(**labels).observe(latency_ms)
        if tokens_in:
            self.tokens.labels(direction="input", **where).inc(tokens_in)
        if tokens_out:
            self.tokens.labels(direction="output", **where).inc(tokens_out)

    def record_served(
        self,
        destination: Destination,
        served: Served,
        *,
        source_workload: str,
        source_namespace: str,
        variant: str = "",
    ) -> None:
        """A request that reached `destination`'s backend: in the Istio families and the vLLM ones."""
        self.record(
            destination,
            status=served.status,
            latency_ms=served.latency_ms,
            tokens_in=served.tokens_in,
            tokens_out=served.tokens_out,
            source_workload=source_workload,
            source_namespace=source_namespace,
            variant=variant,
        )
        self.vllm.record(model_name(destination, served), served)

    def record_received(
        self, destination: Destination, headers: Mapping[str, str], *, mirrored: bool
    ) -> None:
        """A request (or, `mirrored`, a mirror copy) that reached `destination`'s backend with `headers`
        (lower-case names)."""
        self.backend_requests.labels(
            destination.service,
            destination.namespace,
            *(headers.get(header, "") for _, header in DIMENSION_HEADERS),
            "true" if mirrored else "false",
        ).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of everything recorded."""
        return generate_latest(self.registry)
