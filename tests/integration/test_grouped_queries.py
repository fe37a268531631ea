"""Grouped queries against a real Prometheus: for every built-in template on every source, the row a grouped
query gives a target is exactly the answer of that target's own query, evaluated at the same instant.

Prometheus scrapes synthetic metrics for several targets at once: Istio's (services, one with two subsets),
each LLM source's families (three models, one with quotes and a backslash in its name) and the judge's (two
rollouts), with the label values the templates' matchers pick from (finish reasons, error types, token
types) and some they must not pick."""

from __future__ import annotations

import itertools
import math
import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from modelrollout import api
from modelrollout.metrics.families import EVENT_TEMPLATES, FAMILIES, SUPPORTED_SOURCES
from modelrollout.metrics.prometheus import rows_from_result, samples_from_result
from modelrollout.metrics.provider import Sample
from modelrollout.metrics.templates import (
    TemplateVariables,
    grouped_gate_query,
    grouped_judge_counter_queries,
    grouped_request_count_query,
    grouped_requests_series_query,
    judge_counter_queries,
    render_gate_query,
    request_count_query,
    requests_series_query,
)
from modelrollout_dev.devenv.prometheus import PrometheusServer
from modelrollout_dev.sim.istio_exporter import IstioTrafficExporter

pytestmark = pytest.mark.integration

WINDOW = timedelta(seconds=5)
SUFFIX = uuid.uuid4().hex[:6]
MODELS = (f"m-a-{SUFFIX}", f"m-b-{SUFFIX}", f'm-"c"\\{SUFFIX}')
ROLLOUTS = (("team-a", f"chat-{SUFFIX}"), ("team-b", f"chat-{SUFFIX}"))
# Values of the labels the families' matchers select on: some selected, some not.
LABEL_VALUES = {
    "finished_reason": ("stop", "length", "abort", "error"),
    "error_type": ("", "timeout"),
    "gen_ai_token_type": ("input", "output"),
}
BUCKETS = ((0.05, 0.2), (0.25, 0.6), (1.0, 0.9), (math.inf, 1.0))


def _label_text(labels: dict[str, str]) -> str:
    def escaped(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"')

    return ",".join(f'{name}="{escaped(value)}"' for name, value in labels.items() if value)


class FamilyExporter:
    """Every LLM family's counters and histograms for each model, and the judge's for each rollout, growing
    at a rate of their own per series."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.lines = self._series()
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _series(self) -> list[tuple[str, str, dict[str, str], float]]:
        """(kind, name, labels, rate per second) of every series."""
        series: list[tuple[str, str, dict[str, str], float]] = []
        rates = itertools.count(1)
        for family in FAMILIES.values():
            if family.model_label is None:
                continue  # Istio's: the Istio exporter's
            counters = [family.requests, family.errors, family.truncations]
            counters += [family.input_tokens, family.output_tokens, family.spend]
            histograms = [family.time_to_first_token, family.inter_token_latency, family.latency]
            names = {c.name: ("counter", c.matchers) for c in counters if c is not None}
            for histogram in (h for h in histograms if h is not None):
                names.pop(f"{histogram.name}_count", None)
                names.pop(f"{histogram.name}_sum", None)
                names[histogram.name] = ("histogram", _matchers_of(counters, histogram.name))
            for name, (kind, matchers) in names.items():
                varied = [label for label in LABEL_VALUES if label in matchers]
                for model in MODELS:
                    for values in itertools.product(*(LABEL_VALUES[label] for label in varied)):
                        labels = {family.model_label: model, **dict(zip(varied, values, strict=True))}
                        series.append((kind, name, labels, 0.5 * (next(rates) % 7) + 0.5))
        for namespace, rollout in ROLLOUTS:
            base = {"rollout_namespace": namespace, "rollout": rollout}
            for outcome in ("win", "loss", "tie"):
                labels = {**base, "outcome": outcome}
                series.append(("counter", "modelrollout_judge_verdicts_total", labels, next(rates) % 5 + 1))
            for reason in ("malformed", "judge-unreachable", "budget"):
                labels = {**base, "reason": reason}
                series.append(("counter", "modelrollout_judge_errors_total", labels, next(rates) % 3 + 1))
            for variant, criterion in itertools.product(("canary", "stable"), ("helpful", "safe")):
                labels = {**base, "variant": variant, "criterion": criterion}
                series.append(("summary", "modelrollout_judge_score", labels, next(rates) % 4 + 1))
        return series

    def render(self) -> str:
        elapsed = time.monotonic() - self.started
        out: list[str] = []
        for kind, name, labels, rate in self.lines:
            count = rate * elapsed
            if kind == "counter":
                out.append(f"{name}{{{_label_text(labels)}}} {count}")
                continue
            if kind == "histogram":
                for bound, share in BUCKETS:
                    le = "+Inf" if math.isinf(bound) else repr(bound)
                    out.append(f"{name}_bucket{{{_label_text({**labels, 'le': le})}}} {count * share}")
            out.append(f"{name}_sum{{{_label_text(labels)}}} {count * 0.3}")
            out.append(f"{name}_count{{{_label_text(labels)}}} {count}")
        return "\n".join(out) + "\n"


def _matchers_of(counters: list[Any], name: str) -> str:
    """The matchers of the family's counters on a histogram's _count or _sum (otel's errors)."""
    return " ".join(c.matchers for c in counters if c is not None and c.name.startswith(name))


@pytest.fixture(scope="module")
def metrics(prometheus: PrometheusServer) -> Iterator[IstioTrafficExporter]:
    """Istio traffic for three services (one with two subsets) and every LLM family, scraped for a window."""
    istio = IstioTrafficExporter()
    families = FamilyExporter()
    jobs = {f"grouped-istio-{SUFFIX}": istio.address, f"grouped-llm-{SUFFIX}": families.address}
    istio.set_traffic(f"svc-a-{SUFFIX}", "ns-1", rps=20, error_ratio=0.1, latency_ms=300)
    istio.set_traffic(f"svc-b-{SUFFIX}", "ns-1", rps=10, latency_ms=50)  # never an error: no 5xx series
    istio.set_traffic(f"svc-a-{SUFFIX}", "ns-2", rps=5, error_ratio=0.5, latency_ms=900)
    istio.set_traffic(f"svc-c-{SUFFIX}", "ns-1", rps=20, error_ratio=0.05, version="v1")
    istio.set_traffic(f"svc-c-{SUFFIX}", "ns-1", rps=10, error_ratio=0.2, latency_ms=700, version="v2")
    for job, address in jobs.items():
        prometheus.set_targets(job, [address])
    try:
        for job in jobs:
            prometheus.wait_for_job_up(job, timeout=30)
        time.sleep(WINDOW.total_seconds() + 2)  # the window fills with scrapes
        yield istio
    finally:
        for job in jobs:
            prometheus.remove_targets(job)
        istio.close()
        families.close()


def result_at(prometheus: PrometheusServer, promql: str, at: float) -> Any:
    params = {"query": promql, "time": f"{at:.3f}"}
    response = requests.get(f"{prometheus.url}/api/v1/query", params=params, timeout=10)
    body = response.json()
    assert body["status"] == "success", (promql, body)
    return body["data"]["result"]


def query_at(prometheus: PrometheusServer, promql: str, at: float) -> list[Sample]:
    return samples_from_result(promql, result_at(prometheus, promql, at))


def same(own: list[Sample], row: list[Sample]) -> bool:
    def key(sample: Sample) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(sample.labels.items()))

    own, row = sorted(own, key=key), sorted(row, key=key)
    if [key(s) for s in own] != [key(s) for s in row]:
        return False
    for a, b in zip(own, row, strict=True):
        if math.isnan(a.value) or math.isnan(b.value):
            if not (math.isnan(a.value) and math.isnan(b.value)):
                return False
        elif not math.isclose(a.value, b.value, rel_tol=1e-9, abs_tol=1e-12):
            return False
    return True


def istio_targets() -> list[api.Target]:
    return [
        api.Target(host=f"svc-a-{SUFFIX}", pricing=api.Pricing(input_per_million=1, output_per_million=2)),
        api.Target(host=f"svc-b-{SUFFIX}.ns-1"),
        api.Target(host=f"svc-a-{SUFFIX}.ns-2.svc.cluster.local"),
        api.Target(host=f"svc-c-{SUFFIX}", subset="v1"),
        api.Target(host=f"svc-c-{SUFFIX}", subset="v2"),
        api.Target(host=f"svc-absent-{SUFFIX}"),
    ]


def model_targets() -> list[api.Target]:
    pricing = api.Pricing(input_per_million=2.5, output_per_million=10)
    return [api.Target(host="llm", model=model, pricing=pricing) for model in (*MODELS, f"absent-{SUFFIX}")]


def pairs(targets: list[api.Target]) -> Iterator[TemplateVariables]:
    """Each target as the canary of a rollout (its stable the next one), and as the stable of another."""
    for index, target in enumerate(targets):
        other = targets[(index + 1) % len(targets)]
        namespace, name = ROLLOUTS[index % len(ROLLOUTS)]
        for role in ("canary", "stable"):
            yield TemplateVariables.for_rollout(
                stable=other if role == "canary" else target,
                canary=target if role == "canary" else other,
                rollout_name=name,
                rollout_namespace=namespace,
                hosts_namespace="ns-1",
                window=WINDOW,
            ).targeting(role)  # type: ignore[arg-type]


def gates() -> Iterator[tuple[api.Gate, list[api.Target]]]:
    thresholds = (api.GateTemplate.ISTIO_ERROR_RATE, api.GateTemplate.ISTIO_LATENCY_P99)
    for template in (*thresholds, api.GateTemplate.ISTIO_REQUEST_COUNT):
        yield api.Gate(name="g", template=template, max=1), istio_targets()
    events = api.Gate(name="g", template=api.GateTemplate.ISTIO_ERROR_EVENTS, test=api.SequentialTest())
    yield events, istio_targets()
    for template, sources in SUPPORTED_SOURCES.items():
        for source in sources:
            gate_source = api.MetricsSource(source)
            kind = api.GateTemplate(template)
            if template in EVENT_TEMPLATES:
                gate = api.Gate(name="g", template=kind, source=gate_source, test=api.SequentialTest())
            else:
                gate = api.Gate(name="g", template=kind, source=gate_source, max=1)
            yield gate, istio_targets() if source == "istio" else model_targets()
    judged = (
        api.Gate(name="g", template=api.GateTemplate.JUDGE_WIN_RATE, test=api.SequentialTest()),
        api.Gate(name="g", template=api.GateTemplate.JUDGE_SCORE, min=0),
        api.Gate(name="g", template=api.GateTemplate.JUDGE_SCORE, criterion="safe", min=0),
    )
    for gate in judged:
        yield gate, istio_targets()


def test_a_grouped_row_is_the_target_s_own_answer(
    prometheus: PrometheusServer, metrics: IstioTrafficExporter
) -> None:
    at = time.time() - 1.0  # both forms read the very same samples
    compared = rows_with_data = 0
    grouped_answers: dict[tuple[str, tuple[str, ...]], dict[tuple[str, ...], list[Sample]]] = {}

    def grouped_rows(promql: str, labels: tuple[str, ...], key: tuple[str, ...]) -> list[Sample]:
        if (promql, labels) not in grouped_answers:
            grouped_answers[promql, labels] = rows_from_result(
                promql, result_at(prometheus, promql, at), labels
            )
        return grouped_answers[promql, labels].get(key, [])

    def compare(own_promql: str, grouped: Any, what: str) -> None:
        nonlocal compared, rows_with_data
        own = query_at(prometheus, own_promql, at)
        row = grouped_rows(grouped.promql, grouped.labels, grouped.key)
        assert same(own, row), (
            f"{what}\nown {own_promql}: {own}\ngrouped {grouped.promql} {grouped.key}: {row}"
        )
        compared += 1
        rows_with_data += bool(own)

    for gate, targets in gates():
        for variables in pairs(targets):
            grouped = grouped_gate_query(gate, variables)
            assert grouped is not None
            what = f"{gate.template} {gate.source} {variables.target}"
            compare(render_gate_query(gate, variables), grouped, what)
    for variables in pairs(istio_targets()):
        compare(request_count_query(variables), grouped_request_count_query(variables), "request count")
        compare(
            requests_series_query(variables), grouped_requests_series_query(variables), "request counters"
        )
        judge = zip(judge_counter_queries(variables), grouped_judge_counter_queries(variables), strict=True)
        for own_promql, grouped in judge:
            compare(own_promql, grouped, "judge counters")
    print(
        f"{compared} answers compared ({rows_with_data} with data), "
        f"from {len(grouped_answers)} grouped queries"
    )
    # Most targets have data; the absent ones give nothing either way.
    assert rows_with_data > compared / 2


def test_a_custom_query_is_never_grouped() -> None:
    own = 'sum(rate(istio_requests_total{destination_service_name="{{ target.service }}"}[1m]))'
    gate = api.Gate(name="g", query=own, max=1)
    assert grouped_gate_query(gate, next(pairs(istio_targets()))) is None


def test_the_grouped_query_names_no_target(prometheus: PrometheusServer) -> None:
    """Every rollout with the same template, window, group labels (a subset is one more) and constants asks
    the very same grouped query, and Prometheus accepts each of them."""
    for gate, targets in gates():
        canaries = [v for v in pairs(targets) if v.role == "canary"]
        by_labels: dict[tuple[str, ...], set[str]] = {}
        for variables in canaries:
            grouped = grouped_gate_query(gate, variables)
            assert grouped is not None
            by_labels.setdefault(grouped.labels, set()).add(grouped.promql)
        prices = {t.pricing for t in targets}
        priced = gate.template == api.GateTemplate.LLM_COST_PER_REQUEST and len(prices) > 1
        assert all(len(q) == 1 for q in by_labels.values()) or priced, (gate.template, gate.source, by_labels)
        for promql in set().union(*by_labels.values()):
            assert not re.search(r"svc-|m-a-|chat-", promql), promql
            query_at(prometheus, promql, time.time())
