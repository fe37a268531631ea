"""The simulated mesh against the real API server and Prometheus: it routes by the VirtualService it watches
(weights, a header route, a mirror), follows weight changes within moments, and the built-in gate queries read
back, through a real Prometheus scraping it, the error rate and p99 its backends were set to. An experiment's
VirtualService (sticky bucket routes, per-destination headers, a mirror), accepted by Istio's schema, keeps
every user on one destination and brings each backend the headers of its arm.

Tolerances and why they never need a rerun: the load generator draws from a seeded generator in one thread, so
the k-th request's picks are the same in every run and only the number of requests in a window varies. Shares
are judged over >= 1200 requests within 0.06 (a share's standard deviation there is <= 0.0145, so 0.06 is
four of them); a weight of 0 must get exactly nothing. Gate values are judged over a 10 s window at 300
requests/s per service: error rate within 0.02 of 5% (sd 0.004), p99 within 25% (the histogram estimate from
3000 requests has an sd of about 4.5%, measured over 2000 simulated windows; none was off by 20%). The vLLM
families are read the same way: the aborted share like the error rate, the truncated share within 0.06, the
time to first token's p99 within 25%, and the inter-token latency (the same for every gap) within 1%.
"""

from __future__ import annotations

import asyncio
import json
import select
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from modelrollout import api
from modelrollout.assign import bucket
from modelrollout.metrics.prometheus import PrometheusProvider
from modelrollout.metrics.templates import TemplateVariables, render_gate_query, request_count_query
from modelrollout_dev.devenv.environment import EnvironmentState
from modelrollout_dev.devenv.prometheus import PrometheusServer
from modelrollout_dev.sim.simulator import Simulator
from scenario_support import Kubectl, wait_for

pytestmark = pytest.mark.integration

STABLE, CANARY, SHADOW = "llm-gpt4o", "llm-claude", "llm-shadow"
STABLE_MODEL = "openai/gpt-4o"
RPS = 400.0
GATE_RPS = 600.0  # split 50/50: 300 requests/s per service for the gate queries
SEED = 20261123
SHARE_TOLERANCE = 0.06
SHARE_REQUESTS = 1200
WINDOW = timedelta(seconds=10)


class Control:
    """The simulator's JSON control API, over real HTTP."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)  # noqa: S310
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310  (our loopback server)
            return json.load(response)

    def measure(self, min_requests: int = SHARE_REQUESTS, timeout: float = 20.0) -> dict[str, Any]:
        """Counts of a fresh window of at least `min_requests` requests."""
        self.call("POST", "/stats/reset")

        def enough() -> dict[str, Any] | None:
            window: dict[str, Any] = self.call("GET", "/stats")["since_reset"]
            return window if window["requests"] >= min_requests else None

        measured: dict[str, Any] = wait_for(f"{min_requests} requests", enough, timeout)
        return measured

    def route(self, **request: Any) -> dict[str, Any]:
        outcome: dict[str, Any] = self.call("POST", "/request", request)
        return outcome


def share(window: dict[str, Any], key: str) -> float:
    return float(window["destinations"].get(key, 0)) / window["requests"]


def virtual_service(namespace: str, stable: int, canary: int, mirror_percent: float | None) -> dict[str, Any]:
    primary: dict[str, Any] = {
        "name": "primary",
        "timeout": "120s",
        "route": [
            {"destination": {"host": STABLE}, "weight": stable},
            {"destination": {"host": CANARY}, "weight": canary},
        ],
    }
    if mirror_percent is not None:
        primary["mirror"] = {"host": SHADOW}
        primary["mirrorPercentage"] = {"value": mirror_percent}
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "llm", "namespace": namespace},
        "spec": {
            "hosts": ["llm"],
            "http": [
                {
                    "name": "eval-pinned",
                    "match": [{"headers": {"x-llm-eval": {"exact": "canary"}}}],
                    "route": [{"destination": {"host": CANARY}}],
                },
                primary,
            ],
        },
    }


def apply_vs(
    kubectl: Kubectl, sim: Simulator, namespace: str, *weights: int, mirror: float | None = None
) -> None:
    """Create the VirtualService with kubectl (Istio's schema validates it) and wait until the simulator
    routes by it."""
    apply_manifest(kubectl, sim, virtual_service(namespace, *weights, mirror))


def apply_manifest(kubectl: Kubectl, sim: Simulator, manifest: dict[str, Any]) -> None:
    applied = kubectl("apply", "-o", "json", "-f", "-", input=json.dumps(manifest))
    assert applied.returncode == 0, applied.stderr
    metadata = json.loads(applied.stdout)["metadata"]
    assert sim.watcher is not None
    assert sim.watcher.wait_for(
        metadata["namespace"], metadata["name"], metadata["resourceVersion"], timeout=10
    )


def set_weights(api_client: client.ApiClient, namespace: str, stable: int, canary: int) -> str:
    """Rewrite the primary route's weights with the API, as the operator does; the new resourceVersion."""
    objects = client.CustomObjectsApi(api_client)
    vs = objects.get_namespaced_custom_object(
        "networking.istio.io", "v1", namespace, "virtualservices", "llm"
    )
    vs["spec"]["http"][1]["route"][0]["weight"] = stable
    vs["spec"]["http"][1]["route"][1]["weight"] = canary
    replaced = objects.replace_namespaced_custom_object(
        "networking.istio.io", "v1", namespace, "virtualservices", "llm", vs
    )
    return str(replaced["metadata"]["resourceVersion"])


@pytest.fixture
def sim(api_client: client.ApiClient, namespace: str) -> Iterator[Simulator]:
    simulator = Simulator(api_client, [namespace], SEED)
    simulator.start()
    try:
        assert simulator.wait_synced(timeout=30), simulator.watcher and simulator.watcher.last_error
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture
def control(sim: Simulator) -> Control:
    return Control(sim.url)


def test_shares_follow_the_weights(
    api_client: client.ApiClient, kubectl: Kubectl, namespace: str, sim: Simulator, control: Control
) -> None:
    apply_vs(kubectl, sim, namespace, 80, 20, mirror=25)
    control.call("POST", "/load", {"host": "llm", "rps": RPS})
    stable, canary, shadow = f"{namespace}/{STABLE}", f"{namespace}/{CANARY}", f"{namespace}/{SHADOW}"

    first = control.measure()
    assert share(first, canary) == pytest.approx(0.2, abs=SHARE_TOLERANCE), first
    assert first["destinations"][stable] + first["destinations"][canary] == first["requests"]
    assert first["routes"] == {f"{namespace}/llm#primary": first["requests"]}
    assert first["mirrored"][shadow] / first["requests"] == pytest.approx(0.25, abs=SHARE_TOLERANCE)

    # The weights change through the API; the watch delivers the change, and the share follows.
    written = time.monotonic()
    resource_version = set_weights(api_client, namespace, 50, 50)
    assert sim.watcher is not None
    assert sim.watcher.wait_for(namespace, "llm", resource_version, timeout=5)
    seen_after = time.monotonic() - written
    second = control.measure()
    assert share(second, canary) == pytest.approx(0.5, abs=SHARE_TOLERANCE), second

    # A weight of 0 gets nothing at all.
    resource_version = set_weights(api_client, namespace, 100, 0)
    assert sim.watcher.wait_for(namespace, "llm", resource_version, timeout=5)
    third = control.measure(min_requests=400)
    assert third["destinations"] == {stable: third["requests"]}
    assert third["statuses"] == {"200": third["requests"]}
    assert control.call("GET", "/stats")["load"]["failed"] == 0
    print(
        f"80/20: canary {share(first, canary):.3f} of {first['requests']}, mirrored "
        f"{first['mirrored'][shadow] / first['requests']:.3f}; change seen after {seen_after * 1000:.0f} ms; "
        f"50/50: canary {share(second, canary):.3f} of {second['requests']}; "
        f"100/0: canary 0 of {third['requests']}"
    )


def test_header_route_wins_over_weights(
    kubectl: Kubectl, namespace: str, sim: Simulator, control: Control
) -> None:
    apply_vs(kubectl, sim, namespace, 100, 0)
    for user in range(20):
        pinned = control.route(host="llm", headers={"x-llm-eval": "canary", "x-user-id": f"user-{user}"})
        assert (pinned["status"], pinned["route"], pinned["destination"]["service"]) == (
            200,
            "eval-pinned",
            CANARY,
        )
        plain = control.route(host=f"llm.{namespace}.svc.cluster.local", headers={"x-llm-eval": "stable"})
        assert (plain["route"], plain["destination"]["service"]) == ("primary", STABLE)
    assert control.route(host="no-such-service")["status"] == 404

    # Load with a fixed header follows the header route whatever the weights.
    control.call("POST", "/load", {"host": "llm", "rps": RPS, "headers": {"x-llm-eval": "canary"}})
    window = control.measure(min_requests=400)
    assert window["destinations"] == {f"{namespace}/{CANARY}": window["requests"]}
    assert window["routes"] == {f"{namespace}/llm#eval-pinned": window["requests"]}
    assert control.call("GET", "/load")["flows"][0]["headers"] == {"x-llm-eval": "canary"}

    # The control API refuses what it cannot apply, and says why.
    with pytest.raises(urllib.error.HTTPError) as refused:
        control.call("PUT", f"/backends/{namespace}/{CANARY}", {"error_rate": 2})
    assert refused.value.code == 400
    assert "error_rate must be in [0, 1]" in json.load(refused.value)["error"]


def test_gate_queries_read_the_backends(
    kubectl: Kubectl, namespace: str, sim: Simulator, control: Control, prometheus: PrometheusServer
) -> None:
    apply_vs(kubectl, sim, namespace, 50, 50)
    # Backends are set before any traffic: every request in Prometheus' window was served by these settings.
    control.call(
        "PUT",
        f"/backends/{namespace}/{STABLE}",
        {
            "error_rate": 0.0,
            "latency_median_ms": 100,
            "latency_p99_ms": 400,
            "tokens_in": 500,
            "tokens_out": 250,
            "model_name": STABLE_MODEL,
            "ttft_median_ms": 80,
            "ttft_p99_ms": 400,
            "itl_ms": 30,
        },
    )
    control.call(
        "PUT",
        f"/backends/{namespace}/{CANARY}",
        {"error_rate": 0.05, "latency_median_ms": 300, "latency_p99_ms": 1500, "truncation_rate": 0.2},
    )
    job = f"sim-{uuid.uuid4().hex[:6]}"
    prometheus.set_targets(job, [sim.address])
    provider = PrometheusProvider(prometheus.url, timeout=timedelta(seconds=5))
    try:
        prometheus.wait_for_job_up(job, timeout=30)
        control.call("POST", "/load", {"host": "llm", "rps": GATE_RPS})
        started = time.monotonic()
        variables = TemplateVariables.for_rollout(
            stable=api.Target(host=STABLE),
            canary=api.Target(host=CANARY),
            rollout_name="chat",
            rollout_namespace=namespace,
            window=WINDOW,
        )
        baseline = variables.targeting("stable")

        def value(promql: str) -> float:
            samples = asyncio.run(provider.query(promql))
            assert len(samples) == 1, (promql, samples)
            return samples[0].value

        def canary_requests() -> float:
            samples = asyncio.run(provider.query(request_count_query(variables)))
            return samples[0].value if samples else 0.0

        def gate(template: api.GateTemplate, on: TemplateVariables = variables) -> str:
            return render_gate_query(api.Gate(name="g", template=template, max=1.0), on)

        # The window is full once it holds about GATE_RPS/2 * 10 s requests per service.
        full = GATE_RPS / 2 * WINDOW.total_seconds() * 0.9
        wait_for("a full window of canary requests", lambda: canary_requests() >= full, timeout=30)
        filled_after = time.monotonic() - started
        canary_errors = value(gate(api.GateTemplate.ISTIO_ERROR_RATE))
        canary_p99 = value(gate(api.GateTemplate.ISTIO_LATENCY_P99))
        stable_errors = value(gate(api.GateTemplate.ISTIO_ERROR_RATE, baseline))
        stable_p99 = value(gate(api.GateTemplate.ISTIO_LATENCY_P99, baseline))
        assert canary_errors == pytest.approx(0.05, abs=0.02)
        assert canary_p99 == pytest.approx(1500, rel=0.25)
        assert stable_errors == 0.0  # no 5xx series at all: the template's `or vector(0)`
        assert stable_p99 == pytest.approx(400, rel=0.25)
        # Tokens are counted with the same destination labels: output tokens per successful request.
        selector = f'destination_service_name="{STABLE}", destination_service_namespace="{namespace}"'
        ok = f'reporter="destination", {selector}, response_code="200"'
        tokens_per_request = value(
            f'sum(rate(llm_tokens_total{{direction="output", {selector}}}[10s])) '
            f"/ sum(rate(istio_requests_total{{{ok}}}[10s]))"
        )
        assert tokens_per_request == pytest.approx(250, rel=0.02)

        # vLLM's families, by model: the stable's set name, the canary's host name (it has none set).
        def reasons(model: str, selector: str) -> float:
            finished = f'vllm:request_success_total{{model_name="{model}"'
            return value(f"sum(rate({finished}, {selector}}}[10s])) / sum(rate({finished}}}[10s]))")

        ttft_p99 = value(
            "histogram_quantile(0.99, sum by (le) "
            f'(rate(vllm:time_to_first_token_seconds_bucket{{model_name="{STABLE_MODEL}"}}[10s])))'
        )
        assert ttft_p99 == pytest.approx(0.4, rel=0.25)
        itl, stable_model = "vllm:inter_token_latency_seconds", f'{{model_name="{STABLE_MODEL}"}}'
        itl_mean = value(
            f"sum(rate({itl}_sum{stable_model}[10s])) / sum(rate({itl}_count{stable_model}[10s]))"
        )
        assert itl_mean == pytest.approx(0.03, rel=0.01)
        canary_aborted = reasons(CANARY, 'finished_reason="abort"')
        canary_truncated = reasons(CANARY, 'finished_reason="length"')
        assert canary_aborted == pytest.approx(0.05, abs=0.02)
        assert canary_truncated == pytest.approx(0.95 * 0.2, abs=SHARE_TOLERANCE)
        assert reasons(STABLE_MODEL, 'finished_reason="stop"') == 1.0

        # A backend made bad at runtime: the error-rate gate follows (over a 5 s window, to follow faster).
        control.call("PUT", f"/backends/{namespace}/{CANARY}", {"error_rate": 0.3})
        changed = time.monotonic()
        short = variables.with_window(timedelta(seconds=5))
        followed = wait_for(
            "the error-rate gate to read 0.3",
            lambda: abs(value(gate(api.GateTemplate.ISTIO_ERROR_RATE, short)) - 0.3) <= SHARE_TOLERANCE,
            timeout=20,
        )
        assert followed
        followed_after = time.monotonic() - changed
        assert value(gate(api.GateTemplate.ISTIO_ERROR_RATE, short.targeting("stable"))) == 0.0
        print(
            f"window filled after {filled_after:.1f}s: canary error rate {canary_errors:.4f} (set 0.05), "
            f"p99 {canary_p99:.0f} ms (set 1500); stable error rate {stable_errors} (set 0), "
            f"p99 {stable_p99:.0f} ms (set 400); output tokens/request {tokens_per_request:.1f} (set 250); "
            f"vLLM: stable ttft p99 {ttft_p99 * 1000:.0f} ms (set 400), "
            f"itl {itl_mean * 1000:.1f} ms (set 30); "
            f"canary aborted {canary_aborted:.3f} (set 0.05), truncated {canary_truncated:.3f} (0.95 * 0.2); "
            f"error rate 0.3 read after {followed_after:.1f}s"
        )
    finally:
        prometheus.remove_targets(job)
        provider.close()


def test_entry_point(env_state: EnvironmentState, kubectl: Kubectl, namespace: str) -> None:
    """`python -m modelrollout_dev.sim` prints its URL first, then routes its load by the VirtualService."""
    applied = kubectl("apply", "-f", "-", input=json.dumps(virtual_service(namespace, 0, 100, None)))
    assert applied.returncode == 0, applied.stderr
    argv = [sys.executable, "-m", "modelrollout_dev.sim", "--kubeconfig", env_state.kubeconfig]
    argv += ["--namespace", namespace, "--port", "0", "--rps", "50", "--host", "llm", "--seed", "1"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 20)
        assert ready, "no address printed within 20s"
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        control = Control(url)
        window = control.measure(min_requests=25, timeout=15)
        assert window["destinations"] == {f"{namespace}/{CANARY}": window["requests"]}
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr


EXPERIMENT_ID = "chat-exp-1"
CANARY_BUCKETS = 20  # buckets 0..19 go to the canary


def arm(host: str, model: str, prompt_version: str, variant: str) -> dict[str, Any]:
    """A route destination with the headers the operator writes for one arm of the experiment."""
    dimensions = {
        "x-model": model,
        "x-prompt-version": prompt_version,
        "x-experiment-id": EXPERIMENT_ID,
        "x-variant": variant,
    }
    return {"destination": {"host": host}, "headers": {"request": {"set": dimensions}}}


def experiment_virtual_service(namespace: str) -> dict[str, Any]:
    stable, canary = arm(STABLE, STABLE_MODEL, "p1", "stable"), arm(CANARY, "claude-x", "p2", "canary")
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "llm", "namespace": namespace},
        "spec": {
            "hosts": ["llm"],
            "http": [
                {
                    "name": "canary-buckets",
                    "match": [{"headers": {"x-user-bucket": {"regex": "[0-9]|1[0-9]"}}}],
                    "route": [canary],
                },
                {
                    # Stable's users are shadowed to a third service: the copies carry stable's arm.
                    "name": "stable-buckets",
                    "match": [{"headers": {"x-user-bucket": {"regex": "[2-9][0-9]"}}}],
                    "headers": {"request": {"remove": ["x-debug"]}},
                    "route": [stable],
                    "mirrors": [{"destination": {"host": SHADOW}, "percentage": {"value": 100}}],
                },
                {"name": "primary", "route": [{**stable, "weight": 80}, {**canary, "weight": 20}]},
            ],
        },
    }


def test_experiment_routes_keep_users_and_bring_backends_their_headers(
    kubectl: Kubectl, namespace: str, sim: Simulator, control: Control
) -> None:
    apply_manifest(kubectl, sim, experiment_virtual_service(namespace))
    load = {"host": "llm", "rps": RPS, "users": 300, "headers": {"x-debug": "1"}}
    control.call("POST", "/load", {**load, "bucket_header": "x-user-bucket", "experiment_id": EXPERIMENT_ID})
    control.measure()
    # Stopped before reading, so that the counts below are of the same requests: with no flow left the load
    # generator sends nothing once the batch under way is done.
    control.call("POST", "/load", {"host": "llm", "rps": 0})

    def stopped() -> dict[str, Any] | None:
        before = control.call("GET", "/stats")
        time.sleep(0.3)
        after: dict[str, Any] = control.call("GET", "/stats")
        return after if after["load"]["sent"] == before["load"]["sent"] else None

    window = wait_for("the load to stop", stopped, timeout=10)["since_reset"]
    users: dict[str, dict[str, int]] = control.call("GET", "/stats/users")["since_reset"]
    stable_key, canary_key = f"{namespace}/{STABLE}", f"{namespace}/{CANARY}"
    for user, answers in users.items():
        expected = canary_key if bucket(EXPERIMENT_ID, user) < CANARY_BUCKETS else stable_key
        assert list(answers) == [expected], (user, answers)
    assert sum(sum(answers.values()) for answers in users.values()) == window["requests"]
    assert set(window["routes"]) == {f"{namespace}/llm#canary-buckets", f"{namespace}/llm#stable-buckets"}

    received: dict[tuple[str, ...], float] = {}
    text = urllib.request.urlopen(f"{sim.url}/metrics", timeout=10).read().decode()  # noqa: S310
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sim_backend_requests_total":
                labels = sample.labels
                key = tuple(
                    labels[name] for name in ("service", "model", "prompt_version", "variant", "mirrored")
                )
                assert labels["experiment_id"] == EXPERIMENT_ID, labels
                received[key] = sample.value
    # Every request reached its backend with its arm's four headers; each of stable's also reached the shadow.
    at_stable = (STABLE, STABLE_MODEL, "p1", "stable", "false")
    at_shadow = (SHADOW, STABLE_MODEL, "p1", "stable", "true")
    assert set(received) == {at_stable, (CANARY, "claude-x", "p2", "canary", "false"), at_shadow}
    assert received[at_shadow] == received[at_stable]
    # One request through the control API: the route's removal and the arm's headers, what stable received.
    outcome = control.route(host="llm", headers={"x-user-id": "u", "x-user-bucket": "50", "x-debug": "1"})
    assert outcome["headers"] == {
        "x-user-id": "u",
        "x-user-bucket": "50",
        "x-model": STABLE_MODEL,
        "x-prompt-version": "p1",
        "x-experiment-id": EXPERIMENT_ID,
        "x-variant": "stable",
    }
    canary_users = sum(1 for answers in users.values() if canary_key in answers) / len(users)
    print(
        f"{len(users)} users over {window['requests']} requests, each answered by one destination; "
        f"{canary_users:.2f} of them on the canary (buckets 0..19); backends received {received}"
    )
