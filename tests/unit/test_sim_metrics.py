"""The simulator's `/metrics`: vLLM's request families, by the names, labels and units of a real vLLM engine,
next to the Istio ones on the same registry, and the experiment headers each backend received, read back by
parsing the exposition text.

The histogram test reads a p99 the way Prometheus does (histogram_quantile: linear within the bucket) from
20,000 seeded requests and wants it within 5% of the configured p99: the sample p99's own standard error is
about 1.5% here, the rest is the bucket interpolation the dense bounds keep small.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from modelrollout_dev.sim.backends import Backend, BackendSettings, Served
from modelrollout_dev.sim.metrics import (
    E2E_BUCKETS_S,
    ITL_BUCKETS_S,
    TTFT_BUCKETS_S,
    VLLM_E2E_BOUNDS,
    VLLM_ITL_BOUNDS,
    VLLM_TTFT_BOUNDS,
    MeshMetrics,
)
from modelrollout_dev.sim.routing import Destination, Request
from modelrollout_dev.sim.simulator import Simulator

NS = "llm"
STABLE = Destination(service="llm-gpt4o", namespace=NS, fqdn=f"llm-gpt4o.{NS}.svc.cluster.local")
CANARY = Destination(service="llm-claude", namespace=NS, fqdn=f"llm-claude.{NS}.svc.cluster.local")

VLLM_SAMPLE_NAMES = {
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:time_to_first_token_seconds_count",
    "vllm:time_to_first_token_seconds_sum",
    "vllm:inter_token_latency_seconds_bucket",
    "vllm:inter_token_latency_seconds_count",
    "vllm:inter_token_latency_seconds_sum",
    "vllm:time_per_output_token_seconds_bucket",
    "vllm:time_per_output_token_seconds_count",
    "vllm:time_per_output_token_seconds_sum",
    "vllm:e2e_request_latency_seconds_bucket",
    "vllm:e2e_request_latency_seconds_count",
    "vllm:e2e_request_latency_seconds_sum",
    "vllm:request_success_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_prompt_tokens_bucket",
    "vllm:request_prompt_tokens_count",
    "vllm:request_prompt_tokens_sum",
    "vllm:request_generation_tokens_bucket",
    "vllm:request_generation_tokens_count",
    "vllm:request_generation_tokens_sum",
}


def seeded(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311  (simulated traffic: repeatable draws, not secrets)


def samples(metrics: MeshMetrics) -> list[Sample]:
    text = metrics.render().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def value(found: Iterable[Sample], name: str, **labels: str) -> float:
    """The one sample called `name` whose labels include `labels` (0 if none)."""
    matching = [s for s in found if s.name == name and labels.items() <= s.labels.items()]
    assert len(matching) <= 1, matching
    return matching[0].value if matching else 0.0


def histogram_quantile(q: float, found: Iterable[Sample], name: str, **labels: str) -> float:
    """Prometheus' histogram_quantile over cumulative `le` buckets: linear within the bucket."""
    buckets = sorted(
        (float(s.labels["le"]), s.value)
        for s in found
        if s.name == f"{name}_bucket" and labels.items() <= s.labels.items()
    )
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            assert math.isfinite(bound), "the quantile fell in the +Inf bucket"
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    raise AssertionError("no bucket reached the rank")


def served(
    status: int = 200,
    *,
    latency_ms: float = 500.0,
    tokens_in: int = 400,
    tokens_out: int = 200,
    ttft_ms: float | None = 150.0,
    reason: str = "stop",
    model_name: str = "",
    itl_ms: float = 20.0,
) -> Served:
    return Served(status, latency_ms, tokens_in, tokens_out, ttft_ms, reason, model_name, itl_ms)


def record(metrics: MeshMetrics, destination: Destination, *answers: Served) -> None:
    for answer in answers:
        metrics.record_served(destination, answer, source_workload="loadgen", source_namespace=NS)


def test_vllm_families_names_labels_and_counts() -> None:
    metrics = MeshMetrics()
    record(
        metrics,
        STABLE,
        served(),
        served(tokens_out=50, reason="length", ttft_ms=80.0, latency_ms=2000.0),
        served(503, tokens_out=0, ttft_ms=None, reason="abort"),
    )
    record(metrics, CANARY, served(model_name="claude-x", tokens_in=100, tokens_out=10, itl_ms=50.0))
    found = samples(metrics)

    # prometheus_client adds a `_created` gauge to its counters and histograms, as it does in vLLM.
    vllm = [s for s in found if s.name.startswith("vllm:") and not s.name.endswith("_created")]
    assert {s.name for s in vllm} == VLLM_SAMPLE_NAMES
    # Only vLLM's labels: the model (the Service's host name unless set), the finish reason, the bucket bound.
    for sample in vllm:
        expected = {"model_name"}
        if sample.name == "vllm:request_success_total":
            expected.add("finished_reason")
        if sample.name.endswith("_bucket"):
            expected.add("le")
        assert set(sample.labels) == expected, sample
    assert {s.labels["model_name"] for s in vllm} == {"llm-gpt4o", "claude-x"}

    stable, canary = {"model_name": "llm-gpt4o"}, {"model_name": "claude-x"}
    success = "vllm:request_success_total"
    assert value(found, success, finished_reason="stop", **stable) == 1
    assert value(found, success, finished_reason="length", **stable) == 1
    assert value(found, success, finished_reason="abort", **stable) == 1
    assert value(found, success, finished_reason="stop", **canary) == 1
    assert value(found, "vllm:prompt_tokens_total", **stable) == 1200  # the aborted one's prompt too
    assert value(found, "vllm:generation_tokens_total", **stable) == 250
    assert value(found, "vllm:generation_tokens_total", **canary) == 10
    assert value(found, "vllm:request_prompt_tokens_count", **stable) == 3
    assert value(found, "vllm:request_generation_tokens_sum", **stable) == 250
    assert value(found, "vllm:request_generation_tokens_bucket", le="0.0", **stable) == 0
    assert value(found, "vllm:request_generation_tokens_bucket", le="1.0", **stable) == 1  # the abort: 0
    # A first token only where one came; every request has an end-to-end latency.
    assert value(found, "vllm:time_to_first_token_seconds_count", **stable) == 2
    assert value(found, "vllm:time_to_first_token_seconds_sum", **stable) == pytest.approx(0.23)
    assert value(found, "vllm:e2e_request_latency_seconds_count", **stable) == 3
    assert value(found, "vllm:e2e_request_latency_seconds_sum", **stable) == pytest.approx(3.0)
    # One inter-token gap per output token after the first, in both names.
    for name in ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"):
        assert value(found, f"{name}_count", **stable) == 199 + 49
        assert value(found, f"{name}_sum", **stable) == pytest.approx(248 * 0.02)
        assert value(found, f"{name}_bucket", le="0.02", **stable) == 248
        assert value(found, f"{name}_bucket", le="0.0175", **stable) == 0
        assert value(found, f"{name}_bucket", le="+Inf", **canary) == 9
        assert value(found, f"{name}_bucket", le="0.04", **canary) == 0
        assert value(found, f"{name}_bucket", le="0.05", **canary) == 9

    # The Istio families are still there, with the same requests.
    ok = {"destination_service_name": "llm-gpt4o", "response_code": "200"}
    assert value(found, "istio_requests_total", **ok) == 2
    assert (
        value(found, "istio_requests_total", destination_service_name="llm-gpt4o", response_code="503") == 1
    )


def test_exposition_declares_the_vllm_types() -> None:
    metrics = MeshMetrics()
    record(metrics, STABLE, served())
    types = {family.name: family.type for family in text_string_to_metric_families(metrics.render().decode())}
    vllm = {name: kind for name, kind in types.items() if name.startswith("vllm:")}
    assert {name: kind for name, kind in vllm.items() if not name.endswith("_created")} == {
        "vllm:time_to_first_token_seconds": "histogram",
        "vllm:inter_token_latency_seconds": "histogram",
        "vllm:time_per_output_token_seconds": "histogram",
        "vllm:e2e_request_latency_seconds": "histogram",
        "vllm:request_success": "counter",
        "vllm:prompt_tokens": "counter",
        "vllm:generation_tokens": "counter",
        "vllm:request_prompt_tokens": "histogram",
        "vllm:request_generation_tokens": "histogram",
    }
    text = metrics.render().decode()
    for line in (
        "# TYPE vllm:request_success_total counter",
        "# TYPE vllm:time_to_first_token_seconds histogram",
        'vllm:request_success_total{finished_reason="stop",model_name="llm-gpt4o"} 1.0',
    ):
        assert line in text.splitlines()


def test_buckets_keep_every_vllm_bound() -> None:
    for ours, vllms in ((TTFT_BUCKETS_S, VLLM_TTFT_BOUNDS), (ITL_BUCKETS_S, VLLM_ITL_BOUNDS)):
        assert set(vllms) <= set(ours)
    assert set(VLLM_E2E_BOUNDS) <= set(E2E_BUCKETS_S)
    for buckets in (TTFT_BUCKETS_S, ITL_BUCKETS_S, E2E_BUCKETS_S):
        assert list(buckets) == sorted(set(buckets))
        # Dense from 1 ms to 60 s: no step wider than 1.25x.
        dense = [bound for bound in buckets if 0.001 <= bound <= 60.0]
        assert (dense[0], dense[-1]) == (0.001, 60.0)
        assert max(high / low for low, high in itertools.pairwise(dense)) <= 1.25 + 1e-9


@pytest.mark.parametrize(
    ("ttft_median", "ttft_p99", "latency_median", "latency_p99"),
    [(150.0, 600.0, 200.0, 800.0), (40.0, 90.0, 3000.0, 20000.0), (800.0, 6000.0, 30000.0, 90000.0)],
)
def test_histogram_quantile_reads_the_configured_p99(
    ttft_median: float, ttft_p99: float, latency_median: float, latency_p99: float
) -> None:
    metrics = MeshMetrics()
    backend = Backend(
        BackendSettings(
            ttft_median_ms=ttft_median,
            ttft_p99_ms=ttft_p99,
            latency_median_ms=latency_median,
            latency_p99_ms=latency_p99,
        )
    )
    rng = seeded(29)
    record(metrics, STABLE, *(backend.serve(rng) for _ in range(20_000)))
    found = samples(metrics)
    labels = {"model_name": "llm-gpt4o"}
    ttft = histogram_quantile(0.99, found, "vllm:time_to_first_token_seconds", **labels)
    e2e = histogram_quantile(0.99, found, "vllm:e2e_request_latency_seconds", **labels)
    assert ttft == pytest.approx(ttft_p99 / 1000, rel=0.05)
    assert e2e == pytest.approx(latency_p99 / 1000, rel=0.05)
    assert histogram_quantile(0.5, found, "vllm:time_to_first_token_seconds", **labels) == pytest.approx(
        ttft_median / 1000, rel=0.05
    )


def test_simulator_records_routed_and_mirrored_requests_not_mesh_answers() -> None:
    virtual_service = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "chat", "namespace": NS, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {
            "hosts": ["llm"],
            "http": [
                {
                    "name": "primary",
                    "route": [{"destination": {"host": "llm-gpt4o"}, "weight": 100}],
                    "mirror": {"host": "llm-shadow"},
                    "mirrorPercentage": {"value": 100},
                }
            ],
        },
    }
    sim = Simulator(None, [NS], seed=3, virtual_services=lambda: [virtual_service])
    try:
        sim.backends.update("llm-shadow", NS, model_name="shadow-model", truncation_rate=1.0)
        rng = seeded(31)
        outcomes = [sim.handle(Request("llm", source_namespace=NS), rng=rng) for _ in range(20)]
        assert sim.handle(Request("no-such-host"), rng=rng).status == 404
        found = samples(sim.metrics)
    finally:
        sim.server.stop()
    assert {(o.status, o.finished_reason, o.model_name) for o in outcomes} == {(200, "stop", "llm-gpt4o")}
    assert outcomes[0].as_dict()["ttft_ms"] == outcomes[0].ttft_ms is not None
    success = "vllm:request_success_total"
    assert value(found, success, model_name="llm-gpt4o", finished_reason="stop") == 20
    # The mirror's backend serves every copy (it does not know it is a mirror), truncated as it was set.
    assert value(found, success, model_name="shadow-model", finished_reason="length") == 20
    # The mesh's own 404 reached no engine.
    assert sum(s.value for s in found if s.name == success) == 40
    assert {s.labels["model_name"] for s in found if s.name.startswith("vllm:")} == {
        "llm-gpt4o",
        "shadow-model",
    }


def dimensions(model: str, prompt_version: str, variant: str) -> dict[str, Any]:
    """A destination's `headers`, as the operator writes them for one arm of experiment exp-1."""
    return {
        "request": {
            "set": {
                "x-model": model,
                "x-prompt-version": prompt_version,
                "x-experiment-id": "exp-1",
                "x-variant": variant,
            }
        }
    }


STABLE_ARM = dimensions("gpt-4o", "p1", "stable")
CANARY_ARM = dimensions("claude-x", "p2", "canary")

# Sticky buckets 0..19 to the canary, 20..99 to stable, an override header to the canary, and the weighted
# route (all on stable here) for requests without a bucket, mirrored to a shadow service.
EXPERIMENT = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "chat", "namespace": NS, "creationTimestamp": "2026-01-01T00:00:00Z"},
    "spec": {
        "hosts": ["llm"],
        "http": [
            {
                "name": "override-canary",
                "match": [{"headers": {"x-experiment": {"exact": "canary"}}}],
                "route": [{"destination": {"host": "llm-claude"}, "headers": CANARY_ARM}],
            },
            {
                "name": "canary-buckets",
                "match": [{"headers": {"x-user-bucket": {"regex": "[0-9]|1[0-9]"}}}],
                "route": [{"destination": {"host": "llm-claude"}, "headers": CANARY_ARM}],
            },
            {
                "name": "stable-buckets",
                "match": [{"headers": {"x-user-bucket": {"regex": "[2-9][0-9]"}}}],
                "route": [{"destination": {"host": "llm-gpt4o"}, "headers": STABLE_ARM}],
            },
            {
                "name": "primary",
                "route": [
                    {"destination": {"host": "llm-gpt4o"}, "weight": 100, "headers": STABLE_ARM},
                    {"destination": {"host": "llm-claude"}, "weight": 0, "headers": CANARY_ARM},
                ],
                "mirrors": [{"destination": {"host": "llm-shadow"}}],
            },
        ],
    },
}
PLAIN = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "embed", "namespace": NS, "creationTimestamp": "2026-01-01T00:00:00Z"},
    "spec": {"hosts": ["embed"], "http": [{"route": [{"destination": {"host": "llm-embed"}}]}]},
}


def test_backends_count_the_experiment_headers_they_received() -> None:
    sim = Simulator(None, [NS], seed=3, virtual_services=lambda: [EXPERIMENT, PLAIN])
    try:
        rng = seeded(37)
        for bucket in range(100):
            sim.handle(Request("llm", headers={"x-user-bucket": str(bucket)}), rng=rng)
        for _ in range(5):
            sim.handle(Request("llm", headers={"x-experiment": "canary"}), rng=rng)
        for _ in range(10):
            sim.handle(Request("llm"), rng=rng)
        # The client's own experiment headers are overwritten by the arm's.
        sim.handle(Request("llm", headers={"x-user-bucket": "3", "x-variant": "stable"}), rng=rng)
        sim.handle(Request("embed"), rng=rng)
        assert sim.handle(Request("no-such-host"), rng=rng).status == 404
        found = samples(sim.metrics)
    finally:
        sim.server.stop()
    received = [s for s in found if s.name == "sim_backend_requests_total"]
    for sample in received:
        assert set(sample.labels) == {
            "service",
            "namespace",
            "model",
            "prompt_version",
            "experiment_id",
            "variant",
            "mirrored",
        }
    name = "sim_backend_requests_total"
    canary = {"model": "claude-x", "prompt_version": "p2", "experiment_id": "exp-1", "variant": "canary"}
    stable = {"model": "gpt-4o", "prompt_version": "p1", "experiment_id": "exp-1", "variant": "stable"}
    assert value(found, name, service="llm-claude", namespace=NS, mirrored="false", **canary) == 26
    assert value(found, name, service="llm-gpt4o", namespace=NS, mirrored="false", **stable) == 90
    # A mirror copy carries what the picked destination received: stable's arm, at the shadow service.
    assert value(found, name, service="llm-shadow", namespace=NS, mirrored="true", **stable) == 10
    # A request without the headers counts under empty values; the mesh's own 404 reached no backend.
    unlabelled = {"model": "", "prompt_version": "", "experiment_id": "", "variant": ""}
    assert value(found, name, service="llm-embed", mirrored="false", **unlabelled) == 1
    assert sum(s.value for s in received) == 26 + 90 + 10 + 1
