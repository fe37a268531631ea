"""PrometheusProvider against a real Prometheus scraping synthetic Istio metrics: the built-in gate queries
give back the traffic the test set, and every way a query can fail is a MetricsError that says which query
and why, within the configured time."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from llm_gates import EVERY_LLM_GATE, llm_gate, llm_variables
from modelrollout import api
from modelrollout.metrics.prometheus import PrometheusProvider, QueryDeferred, QueryPool
from modelrollout.metrics.provider import MetricsError, Sample
from modelrollout.metrics.templates import (
    TemplateVariables,
    grouped_gate_query,
    render_gate_query,
    request_count_query,
)
from modelrollout_dev.devenv.prometheus import PrometheusServer
from modelrollout_dev.sim.istio_exporter import IstioTrafficExporter

pytestmark = pytest.mark.integration

WINDOW = timedelta(seconds=10)
RPS = 20.0


def gate(template: api.GateTemplate) -> api.Gate:
    return api.Gate(name="g", template=template, max=1.0)


def query(provider: PrometheusProvider, promql: str) -> list[Sample]:
    return asyncio.run(provider.query(promql))


def poll(
    provider: PrometheusProvider, promql: str, done: Callable[[list[Sample]], bool], timeout: float = 30.0
) -> list[Sample]:
    """Query until `done(samples)` holds or `timeout` passes; the last answer either way."""
    deadline = time.monotonic() + timeout
    while True:
        samples = query(provider, promql)
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.5)


@pytest.fixture
def exporter(prometheus: PrometheusServer) -> Iterator[IstioTrafficExporter]:
    serving = IstioTrafficExporter()
    job = f"istio-{uuid.uuid4().hex[:6]}"
    prometheus.set_targets(job, [serving.address])
    try:
        prometheus.wait_for_job_up(job, timeout=30)
        yield serving
    finally:
        prometheus.remove_targets(job)
        serving.close()


@pytest.fixture
def provider(prometheus: PrometheusServer) -> Iterator[PrometheusProvider]:
    client = PrometheusProvider(prometheus.url, timeout=timedelta(seconds=5))
    yield client
    client.close()


def test_builtin_gates_read_back_the_traffic(
    exporter: IstioTrafficExporter, provider: PrometheusProvider
) -> None:
    suffix = uuid.uuid4().hex[:6]
    canary, stable = f"llm-claude-{suffix}", f"llm-gpt4o-{suffix}"
    exporter.set_traffic(canary, "llm", rps=RPS, error_ratio=0.05, latency_ms=800)
    exporter.set_traffic(stable, "llm", rps=RPS, error_ratio=0.0, latency_ms=100)
    started = time.monotonic()
    # The canary by short name (namespace from the rollout), the stable by FQDN.
    variables = TemplateVariables.for_rollout(
        stable=api.Target(host=f"{stable}.llm.svc.cluster.local"),
        canary=api.Target(host=canary),
        rollout_name="chat",
        rollout_namespace="llm",
        window=WINDOW,
    )
    error_rate = render_gate_query(gate(api.GateTemplate.ISTIO_ERROR_RATE), variables)
    p99 = render_gate_query(gate(api.GateTemplate.ISTIO_LATENCY_P99), variables)
    count = request_count_query(variables)

    # Let the window fill with scrapes of the new traffic before judging the numbers.
    time.sleep(max(0.0, WINDOW.total_seconds() + 3 - (time.monotonic() - started)))
    assert poll(provider, count, bool), "no samples for the canary"

    [canary_errors] = query(provider, error_rate)
    assert canary_errors.labels == {}
    assert canary_errors.value == pytest.approx(0.05, abs=0.005)
    [canary_p99] = query(provider, p99)
    assert 500 < canary_p99.value <= 1000
    [canary_count] = query(provider, count)
    assert canary_count.value == pytest.approx(RPS * WINDOW.total_seconds(), rel=0.15)

    baseline = variables.targeting("stable")
    # The stable never failed, so it has no 5xx series at all: the template still says 0, not "no data".
    [stable_errors] = query(provider, render_gate_query(gate(api.GateTemplate.ISTIO_ERROR_RATE), baseline))
    assert stable_errors.value == 0.0
    [stable_p99] = query(provider, render_gate_query(gate(api.GateTemplate.ISTIO_LATENCY_P99), baseline))
    assert 50 < stable_p99.value <= 100
    [stable_count] = query(provider, request_count_query(baseline))
    assert stable_count.value == pytest.approx(RPS * WINDOW.total_seconds(), rel=0.15)
    print(
        f"canary: error rate {canary_errors.value:.4f}, p99 {canary_p99.value:.1f}ms, "
        f"{canary_count.value:.1f} requests in {WINDOW.total_seconds():g}s; "
        f"stable: error rate {stable_errors.value}, p99 {stable_p99.value:.1f}ms, "
        f"{stable_count.value:.1f} requests"
    )

    # A gate's own window is honoured: over 5s the canary served about half as many requests.
    short = render_gate_query(
        api.Gate(
            name="g", query=count.replace("[10s]", "[{{ window }}]"), window=timedelta(seconds=5), min=0
        ),
        variables,
    )
    assert "[5s]" in short
    [short_count] = query(provider, short)
    assert short_count.value == pytest.approx(RPS * 5, rel=0.2)


@pytest.mark.parametrize("subset_label", ["destination_version", "destination_canonical_revision"])
def test_builtin_gates_tell_a_subset_canary_from_its_stable(
    exporter: IstioTrafficExporter, provider: PrometheusProvider, subset_label: str
) -> None:
    """One host, two DestinationRule subsets named after their pods' version label: the built-in gates read
    each side's own traffic (before, both read the sum of the two)."""
    host = f"llm-{uuid.uuid4().hex[:6]}"
    exporter.set_traffic(host, "llm", rps=RPS, error_ratio=0.0, latency_ms=100, version="v1")
    exporter.set_traffic(host, "llm", rps=RPS / 2, error_ratio=0.2, latency_ms=800, version="v2")
    variables = TemplateVariables.for_rollout(
        stable=api.Target(host=host, subset="v1"),
        canary=api.Target(host=host, subset="v2"),
        rollout_name="chat",
        rollout_namespace="rollouts",
        hosts_namespace="llm",
        window=WINDOW,
        subset_label=subset_label,
    )
    count = request_count_query(variables)
    assert poll(provider, count, lambda s: bool(s) and s[0].value > RPS / 2 * 5), "no canary samples"
    time.sleep(WINDOW.total_seconds() / 2)

    [canary_errors] = query(provider, render_gate_query(gate(api.GateTemplate.ISTIO_ERROR_RATE), variables))
    assert canary_errors.value == pytest.approx(0.2, abs=0.02)
    [canary_p99] = query(provider, render_gate_query(gate(api.GateTemplate.ISTIO_LATENCY_P99), variables))
    assert 500 < canary_p99.value <= 1000
    baseline = variables.targeting("stable")
    [stable_errors] = query(provider, render_gate_query(gate(api.GateTemplate.ISTIO_ERROR_RATE), baseline))
    assert stable_errors.value == 0.0
    [stable_p99] = query(provider, render_gate_query(gate(api.GateTemplate.ISTIO_LATENCY_P99), baseline))
    assert 50 < stable_p99.value <= 100
    [canary_count], [stable_count] = query(provider, count), query(provider, request_count_query(baseline))
    assert canary_count.value < stable_count.value  # a third of the host's requests, not all of them


def test_a_grouped_query_comes_back_split_per_target_read_off_the_event_loop(
    exporter: IstioTrafficExporter, provider: PrometheusProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One grouped query answers for every target: each service's row holds its own error rate, and the
    answer (a fleet's, thousands of rows) is read and split in Prometheus' worker thread, not on the loop."""
    from modelrollout.metrics import prometheus as module  # noqa: PLC0415

    suffix = uuid.uuid4().hex[:6]
    failing, healthy = f"llm-a-{suffix}", f"llm-b-{suffix}"
    exporter.set_traffic(failing, "llm", rps=RPS, error_ratio=0.25)
    exporter.set_traffic(healthy, "llm", rps=RPS, error_ratio=0.0)
    variables = TemplateVariables.for_rollout(
        stable=api.Target(host=healthy), canary=api.Target(host=failing),
        rollout_name="chat", rollout_namespace="llm", window=WINDOW,
    )  # fmt: skip
    grouped = grouped_gate_query(gate(api.GateTemplate.ISTIO_ERROR_RATE), variables)
    assert grouped is not None
    assert poll(provider, request_count_query(variables), lambda s: bool(s) and s[0].value > RPS * 5)

    read_on: list[str] = []
    read = module.rows_from_result

    def recorded(promql: str, raw: object, labels: tuple[str, ...]) -> object:
        read_on.append(threading.current_thread().name)
        return read(promql, raw, labels)

    monkeypatch.setattr(module, "rows_from_result", recorded)

    async def ask() -> tuple[object, str]:
        rows = await provider.query_rows(grouped.promql, grouped.labels)
        return rows, threading.current_thread().name

    rows, loop_thread = asyncio.run(ask())
    assert isinstance(rows, Mapping)
    [failing_row] = rows[(failing, "llm")]
    assert failing_row.labels == {}
    assert failing_row.value == pytest.approx(0.25, abs=0.03)
    [healthy_row] = rows[(healthy, "llm")]
    assert healthy_row.value == 0.0
    assert len(read_on) == 1
    assert read_on[0] != loop_thread


def test_no_traffic_is_no_data_or_nan_never_a_number(
    exporter: IstioTrafficExporter, provider: PrometheusProvider
) -> None:
    suffix = uuid.uuid4().hex[:6]
    quiet = f"llm-quiet-{suffix}"
    window = timedelta(seconds=3)

    def gates(host: str) -> tuple[str, str, str]:
        variables = TemplateVariables.for_rollout(
            stable=api.Target(host="llm-gpt4o"),
            canary=api.Target(host=host),
            rollout_name="chat",
            rollout_namespace="llm",
            window=window,
        )
        return (
            render_gate_query(gate(api.GateTemplate.ISTIO_ERROR_RATE), variables),
            render_gate_query(gate(api.GateTemplate.ISTIO_LATENCY_P99), variables),
            request_count_query(variables),
        )

    # A service Prometheus has never seen: every built-in gives an empty vector (no series), not NaN or 0.
    for promql in gates(f"llm-absent-{suffix}"):
        assert query(provider, promql) == []

    # A service whose traffic stopped: its series are still there but flat, so rates are 0/0 = NaN and
    # the request count is 0.
    exporter.set_traffic(quiet, "llm", rps=RPS, error_ratio=0.1, latency_ms=300)
    error_rate, p99, count = gates(quiet)
    assert poll(provider, count, lambda samples: bool(samples) and samples[0].value > 0)
    exporter.stop_traffic(quiet, "llm")
    samples = poll(provider, error_rate, lambda samples: bool(samples) and math.isnan(samples[0].value))
    assert len(samples) == 1
    assert math.isnan(samples[0].value)
    [latency] = query(provider, p99)
    assert math.isnan(latency.value)
    [requests] = query(provider, count)
    assert requests.value == 0.0


def test_scalars_and_special_values_come_back_as_prometheus_says(provider: PrometheusProvider) -> None:
    assert query(provider, "1.5") == [Sample(labels={}, value=1.5)]
    [nan] = query(provider, "NaN")
    assert nan.labels == {}
    assert math.isnan(nan.value)
    assert query(provider, "1/0") == [Sample(labels={}, value=math.inf)]
    assert query(provider, "-1/0") == [Sample(labels={}, value=-math.inf)]
    assert query(provider, 'label_replace(vector(2), "model", "gpt-4o", "", "")') == [
        Sample(labels={"model": "gpt-4o"}, value=2.0)
    ]


def test_a_promql_error_carries_prometheus_message_and_the_query(provider: PrometheusProvider) -> None:
    broken = 'sum(rate(istio_requests_total{reporter="destination"}[1m])'
    with pytest.raises(MetricsError) as failed:
        query(provider, broken)
    assert failed.value.query == broken
    assert "parse error" in failed.value.reason
    assert "unclosed left parenthesis" in failed.value.reason
    assert "HTTP 400" in failed.value.reason
    assert broken in str(failed.value)
    assert "unclosed left parenthesis" in str(failed.value)


def test_a_range_vector_is_refused_as_unexpected(provider: PrometheusProvider) -> None:
    with pytest.raises(MetricsError, match="range vector") as failed:
        query(provider, "up[1m]")
    assert failed.value.query == "up[1m]"


def free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_an_unreachable_prometheus_fails_fast() -> None:
    client = PrometheusProvider(free_address(), timeout=timedelta(seconds=10))
    started = time.monotonic()
    with pytest.raises(MetricsError, match="cannot reach Prometheus") as failed:
        query(client, "up")
    elapsed = time.monotonic() - started
    assert failed.value.query == "up"
    assert "Connection refused" in failed.value.reason
    assert elapsed < 1.0, f"connection refused took {elapsed:.2f}s: retries or backoff?"


def test_a_silent_prometheus_fails_after_about_the_timeout() -> None:
    """The server accepts the connection (the kernel completes the handshake) and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        client = PrometheusProvider(
            f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=timedelta(seconds=1)
        )
        started = time.monotonic()
        with pytest.raises(MetricsError, match="within 1s") as failed:
            query(client, "up")
        elapsed = time.monotonic() - started
    assert failed.value.query == "up"
    print(f"silent server: MetricsError after {elapsed:.2f}s (timeout 1s)")
    # Bounded by the timeout plus the asyncio backstop's one second of slack, whichever fires first on a
    # busy machine; never unbounded.
    assert 0.9 <= elapsed < 2.5


@dataclass
class FakePrometheus:
    """A slow Prometheus look-alike on loopback: answers an empty vector after `delay` seconds, sending the
    first `trickle` seconds' worth of the body one byte every 0.25s (which never lets a read timeout fire),
    and records how many requests it held at once and what they carried."""

    delay: float
    trickle: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    requests: list[tuple[dict[str, list[str]], dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with fake.lock:
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    fake.requests.append((parse_qs(urlsplit(self.path).query), dict(self.headers.items())))
                try:
                    time.sleep(fake.delay)
                    padding = b" " * int(fake.trickle / 0.25)
                    body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}})
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(padding) + len(body)))
                    self.end_headers()
                    for byte in padding:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.25)
                    self.wfile.write(body.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_prometheus() -> Iterator[FakePrometheus]:
    fake = FakePrometheus(delay=0.3)
    yield fake
    fake.close()


async def _many(client: PrometheusProvider, count: int) -> list[list[Sample] | BaseException]:
    return await asyncio.gather(*(client.query(f"q{i}") for i in range(count)), return_exceptions=True)


def test_concurrent_queries_respect_the_limit(fake_prometheus: FakePrometheus) -> None:
    client = PrometheusProvider(fake_prometheus.url, timeout=timedelta(seconds=5), max_concurrency=3)
    started = time.monotonic()
    results = asyncio.run(_many(client, 12))
    elapsed = time.monotonic() - started
    assert results == [[]] * 12
    assert fake_prometheus.max_in_flight == 3
    assert len(fake_prometheus.requests) == 12
    # Four rounds of three 0.3s answers: the limit really queued them.
    assert 1.1 <= elapsed < 3.0


async def _timed(
    client: PrometheusProvider, promql: str, after: float = 0.0
) -> tuple[float, BaseException | None]:
    await asyncio.sleep(after)
    started = time.monotonic()
    try:
        await client.query(promql)
    except MetricsError as failed:
        return time.monotonic() - started, failed
    return time.monotonic() - started, None


def test_a_call_past_its_deadline_keeps_its_slot(fake_prometheus: FakePrometheus) -> None:
    """A server that trickles its answer defeats the HTTP read timeout (each byte resets it); the caller
    still gets a MetricsError at timeout + slack, and the abandoned thread keeps its slot until it ends (3s):
    the query queued behind it is not sent before, and then gets its own full timeout, as it is not to blame
    for the wait."""
    fake_prometheus.delay, fake_prometheus.trickle = 0.0, 3.0
    client = PrometheusProvider(fake_prometheus.url, timeout=timedelta(seconds=1), max_concurrency=1)

    async def both() -> list[tuple[float, BaseException | None]]:
        return await asyncio.gather(_timed(client, "first"), _timed(client, "queued", after=0.5))

    (first_s, first), (queued_s, queued) = asyncio.run(both())
    print(f"trickling server: MetricsError after {first_s:.2f}s, queued query after {queued_s:.2f}s")
    assert isinstance(first, MetricsError)
    assert first.query == "first"
    assert "within 1s" in first.reason
    assert isinstance(queued, MetricsError)
    assert queued.query == "queued"
    assert 1.9 <= first_s < 2.5
    # Queued 0.5s after the first; its turn came when the first thread ended (about 3s), then its own 2s.
    assert 4.2 <= queued_s < 5.5
    assert len(fake_prometheus.requests) == 2
    assert fake_prometheus.max_in_flight == 1


def test_the_timeout_starts_when_the_query_does(fake_prometheus: FakePrometheus) -> None:
    """Six queries of 0.6s on one thread with a 1s timeout: each waits its turn (up to 3s) and none fails,
    because the wait is the operator's own queue, not Prometheus' slowness."""
    fake_prometheus.delay = 0.6
    client = PrometheusProvider(fake_prometheus.url, timeout=timedelta(seconds=1), max_concurrency=1)
    started = time.monotonic()
    results = asyncio.run(_many(client, 6))
    elapsed = time.monotonic() - started
    assert results == [[]] * 6, results
    assert fake_prometheus.max_in_flight == 1
    assert 3.4 <= elapsed < 6.0


def test_a_query_that_gets_no_turn_in_time_is_deferred_not_failed(fake_prometheus: FakePrometheus) -> None:
    fake_prometheus.delay = 1.0
    client = PrometheusProvider(fake_prometheus.url, timeout=timedelta(seconds=5), max_concurrency=1)

    async def crowded() -> list[list[Sample] | BaseException]:
        loop = asyncio.get_running_loop()
        running = asyncio.ensure_future(client.query("running", owner="a"))
        await asyncio.sleep(0.1)
        late = await asyncio.gather(
            client.query("late", owner="b", not_after=loop.time() + 0.3), return_exceptions=True
        )
        return [*late, await running]

    late, running = asyncio.run(crowded())
    assert isinstance(late, QueryDeferred)
    assert not isinstance(late, MetricsError)  # the analysis never counts it as a query that failed
    assert running == []
    assert [params["query"] for params, _ in fake_prometheus.requests] == [["running"]]


def test_providers_share_one_pool_and_rollouts_take_turns(fake_prometheus: FakePrometheus) -> None:
    """Two providers (two credentials) on one pool of two threads: never more than two queries at once in
    all, and a rollout with many queries does not delay another's beyond its cap."""
    fake_prometheus.delay = 0.3
    pool = QueryPool(workers=2, per_owner=1)
    one = PrometheusProvider(fake_prometheus.url, bearer_token="one", pool=pool)
    two = PrometheusProvider(fake_prometheus.url, bearer_token="two", pool=pool)

    async def crowd() -> tuple[float, float]:
        async def timed(coro: Awaitable[object]) -> float:
            started = time.monotonic()
            await coro
            return time.monotonic() - started

        busy = asyncio.gather(*(one.query(f"busy{i}", owner="busy") for i in range(6)))
        quick = timed(two.query("quick", owner="quick"))
        quick_s = await quick
        return quick_s, await timed(busy)

    quick_s, _ = asyncio.run(crowd())
    pool.shutdown()
    assert fake_prometheus.max_in_flight == 2
    assert quick_s < 0.6, f"the one-query rollout waited {quick_s:.2f}s behind the busy one"
    headers = {h["Authorization"] for _, h in fake_prometheus.requests}
    assert headers == {"Bearer one", "Bearer two"}


def test_credentials_and_the_server_side_timeout_are_sent(fake_prometheus: FakePrometheus) -> None:
    fake_prometheus.delay = 0.0
    query(PrometheusProvider(fake_prometheus.url, bearer_token="s3cret", timeout=timedelta(seconds=4)), "up")
    query(PrometheusProvider(fake_prometheus.url, basic_auth=("sre", "p@ss")), "up")
    (bearer_params, bearer_headers), (_, basic_headers) = fake_prometheus.requests
    assert bearer_params == {"query": ["up"], "timeout": ["4.0"]}
    assert bearer_headers["Authorization"] == "Bearer s3cret"
    assert basic_headers["Authorization"] == "Basic " + base64.b64encode(b"sre:p@ss").decode()


def test_prometheus_parses_every_llm_template_on_every_source(provider: PrometheusProvider) -> None:
    """Each llm-* template on each source that serves it is PromQL that a real Prometheus accepts and runs
    (with no such series here, the answer is empty, never an error), for both variants."""
    for template, source in EVERY_LLM_GATE:
        gate = llm_gate(template, source)
        for role in ("canary", "stable"):
            promql = render_gate_query(gate, llm_variables().targeting(role))
            assert query(provider, promql) == [], (template, source, role, promql)
