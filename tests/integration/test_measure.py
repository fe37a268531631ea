"""The Measurer (one check of a rollout's gates) against a loopback Prometheus look-alike: a crowd of
rollouts on a slow Prometheus gets checks or deferrals, never errors; short hosts are looked up in the
VirtualService's namespace; credentials go only where the operator allows, and a rotated token closes the old
session."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from test_prometheus_provider import FakePrometheus

from modelrollout import api
from modelrollout.config import OperatorConfig
from modelrollout.kube import RolloutRef
from modelrollout.measure import Measurer
from modelrollout.telemetry import Telemetry

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
TOKEN = "t0k3n-of-the-platform-team"


class SecretsOnly:
    """What the Measurer asks of the Kubernetes adapter: Secrets by namespace and name."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.reads = 0

    def put(self, namespace: str, name: str, **values: str) -> None:
        self.secrets[(namespace, name)] = {
            k: base64.b64encode(v.encode()).decode() for k, v in values.items()
        }

    async def read_secret_data(self, namespace: str, name: str) -> dict[str, str]:
        self.reads += 1
        return self.secrets[(namespace, name)]


@pytest.fixture
def fake() -> Iterator[FakePrometheus]:
    server = FakePrometheus(delay=0.0)
    yield server
    server.close()


def spec(
    address: str, *, interval: str = "5s", timeout: str = "5s", secret: str | None = None, **analysis: Any
) -> api.ModelRolloutSpec:
    prometheus: dict[str, Any] = {"address": address, "timeout": timeout}
    if secret:
        prometheus["secretRef"] = {"name": secret}
    return api.parse_spec(
        {
            "stable": {"host": "llm-gpt4o"},
            "canary": {"host": "llm-claude"},
            "trafficRouting": {"istio": {"virtualService": {"name": "llm", "namespace": "mesh"}}},
            "stages": [{"weight": 100}],
            "analysis": {
                "interval": interval,
                "minRequests": 0,
                "prometheus": prometheus,
                "gates": [
                    {"name": "error-rate", "template": "istio-error-rate", "max": 0.02},
                    {"name": "p99", "template": "istio-latency-p99", "max": 1000},
                ],
                **analysis,
            },
        }
    )


# Two gates, the canary's request count, and both variants' request counters (the stage's counts).
QUERIES_PER_CHECK = 5
# Grouped, both variants' request counters are one query (it names neither).
GROUPED_QUERIES_PER_CHECK = 4


def ref(name: str, namespace: str = "llm") -> RolloutRef:
    return RolloutRef(namespace=namespace, name=name, uid="")


def measure_crowd(measurer: Measurer, address: str, rollouts: int = 12) -> list[Any]:
    """One check each of `rollouts` rollouts at once (interval 2s), as a crowd of drivers would ask."""
    rollout_spec = spec(address, interval="2s")

    async def crowd() -> list[Any]:
        return await asyncio.gather(
            *(
                measurer.measure(rollout_spec, ref(f"r{i}"), NOW, virtual_service_namespace="mesh")
                for i in range(rollouts)
            )
        )

    return asyncio.run(crowd())


def test_a_crowd_on_a_slow_prometheus_gets_checks_or_deferrals_never_errors(fake: FakePrometheus) -> None:
    """12 rollouts of 5 queries each (two gates, the request count, and each variant's request counters for
    the stage's counts), Prometheus answering in 0.5s (well within its 1s timeout), 4 worker threads,
    interval 2s: about 16 queries fit in an interval, 60 are asked. The checks that got their turns are
    complete and error-free; the others are deferred (None) and counted as such, and come first in the next
    round. Before, a query's timeout included its wait for a slot, and most of these checks were Errors.
    Every rollout asks its own queries here (batching off, as for gates with a query of their own)."""
    fake.delay = 0.5
    telemetry = Telemetry()
    config = OperatorConfig(prometheus_workers=4, prometheus_queries_per_rollout=4, batch_max_age=None)
    measurer = Measurer(SecretsOnly(), config, telemetry=telemetry)  # type: ignore[arg-type]
    results = measure_crowd(measurer, fake.url)
    measurer.close()
    checks = [r for r in results if r is not None]
    deferred = len(results) - len(checks)
    print(f"12 rollouts, 4 threads, 0.5s per query: {len(checks)} checks, {deferred} deferred")
    assert checks, "no check got through"
    assert deferred, "the crowd was meant to exceed one interval"
    assert all(c.verdict != api.Verdict.ERROR for c in checks), [c.summary for c in checks]
    assert fake.max_in_flight <= 4
    counted = sum(
        s.value
        for family in telemetry.registry.collect()
        if family.name == "modelrollout_checks_deferred"
        for s in family.samples
        if s.name.endswith("_total")
    )
    assert counted == deferred
    # The rollouts deferred come first next time: a second round serves them before the others.
    assert len(fake.requests) <= 12 * QUERIES_PER_CHECK


def test_the_same_crowd_with_batching_shares_four_queries_and_every_check_completes(
    fake: FakePrometheus,
) -> None:
    fake.delay = 0.5
    telemetry = Telemetry()
    config = OperatorConfig(prometheus_workers=4, prometheus_queries_per_rollout=4)
    measurer = Measurer(SecretsOnly(), config, telemetry=telemetry)  # type: ignore[arg-type]
    results = measure_crowd(measurer, fake.url)
    measurer.close()
    assert all(r is not None and r.verdict != api.Verdict.ERROR for r in results), results
    queries = [params["query"][0] for params, _ in fake.requests]
    print(f"12 rollouts, batched: {len(queries)} queries")
    assert len(queries) == GROUPED_QUERIES_PER_CHECK
    assert all("sum by (" in q and "llm-claude" not in q for q in queries), queries
    answers = {
        s.labels["answer"]: s.value
        for s in telemetry.grouped_queries.collect()[0].samples
        if s.name.endswith("_total")
    }
    assert answers["shared"] + answers["waited"] == 12 * QUERIES_PER_CHECK - GROUPED_QUERIES_PER_CHECK
    assert answers["waited"] > 0  # the checks came at once, while the first asker's queries ran (0.5 s)


def test_with_batching_a_check_an_alert_asked_for_asks_its_own_queries_and_the_others_share(
    fake: FakePrometheus,
) -> None:
    fake.delay = 0.2
    measurer = Measurer(SecretsOnly(), OperatorConfig())  # type: ignore[arg-type]
    rollout_spec = spec(fake.url)

    async def periodic_and_alerted() -> list[Any]:
        return await asyncio.gather(
            *(
                measurer.measure(rollout_spec, ref(name), NOW, virtual_service_namespace="mesh")
                for name in ("a", "b")
            ),
            measurer.measure(
                rollout_spec, ref("alerted"), NOW, virtual_service_namespace="mesh", requested=True
            ),
        )

    results = asyncio.run(periodic_and_alerted())
    measurer.close()
    assert all(r is not None and r.verdict != api.Verdict.ERROR for r in results), results
    queries = [params["query"][0] for params, _ in fake.requests]
    # A rollout's own queries name the namespace they select; grouped ones name none.
    own = [q for q in queries if 'destination_service_namespace="mesh"' in q]
    grouped = [q for q in queries if "destination_service_namespace=" not in q]
    # The alerted check did not wait for the grouped ones; the two periodic checks shared them.
    assert (len(own), len(grouped), len(queries)) == (
        QUERIES_PER_CHECK,
        GROUPED_QUERIES_PER_CHECK,
        QUERIES_PER_CHECK + GROUPED_QUERIES_PER_CHECK,
    ), queries


def test_short_hosts_are_looked_up_in_the_virtual_services_namespace(fake: FakePrometheus) -> None:
    # Each rollout's own queries show the namespace they select (grouped ones name none).
    measurer = Measurer(SecretsOnly(), OperatorConfig(batch_max_age=None))  # type: ignore[arg-type]
    check = asyncio.run(
        measurer.measure(spec(fake.url), ref("chat", "rollouts"), NOW, virtual_service_namespace="mesh")
    )
    measurer.close()
    assert check is not None
    queries = [params["query"][0] for params, _ in fake.requests]
    assert len(queries) == QUERIES_PER_CHECK
    assert all('destination_service_namespace="mesh"' in q for q in queries), queries
    assert all("rollouts" not in q for q in queries)


def test_credentials_go_only_where_the_operator_allows(fake: FakePrometheus) -> None:
    kube = SecretsOnly()
    kube.put("llm", "prometheus-auth", token=TOKEN, address="http://prometheus.monitoring:9090")
    measurer = Measurer(kube, OperatorConfig(prometheus_url="http://prometheus.monitoring:9090"))  # type: ignore[arg-type]

    # Someone who may write rollouts points the platform team's Secret at their own server.
    check = asyncio.run(
        measurer.measure(
            spec(fake.url, secret="prometheus-auth"), ref("chat"), NOW, virtual_service_namespace="llm"
        )
    )
    assert check is not None
    assert check.verdict == api.Verdict.ERROR
    assert fake.requests == []  # nothing was sent at all
    for gate in check.gates:
        assert gate.message is not None
        assert "the credentials of Secret prometheus-auth are not sent to" in gate.message
        assert "belongs to http://prometheus.monitoring:9090" in gate.message
        assert TOKEN not in gate.message
    assert TOKEN not in check.summary

    # The Secret names the fake as its own address: the token goes there.
    kube.put("llm", "prometheus-auth", token=TOKEN, address=fake.url)
    check = asyncio.run(
        measurer.measure(
            spec(fake.url, secret="prometheus-auth"), ref("chat"), NOW, virtual_service_namespace="llm"
        )
    )
    assert check is not None
    assert check.verdict != api.Verdict.ERROR, check.summary
    assert {h["Authorization"] for _, h in fake.requests} == {f"Bearer {TOKEN}"}
    measurer.close()


def test_an_allow_listed_address_takes_credentials_from_a_secret_without_one(fake: FakePrometheus) -> None:
    kube = SecretsOnly()
    kube.put("llm", "prometheus-auth", username="sre", password=TOKEN)
    measurer = Measurer(kube, OperatorConfig(prometheus_credentials_allow=(fake.url + "/",)))  # type: ignore[arg-type]
    check = asyncio.run(
        measurer.measure(
            spec(fake.url, secret="prometheus-auth"), ref("chat"), NOW, virtual_service_namespace="llm"
        )
    )
    measurer.close()
    assert check is not None
    assert check.verdict != api.Verdict.ERROR, check.summary
    assert len(fake.requests) == GROUPED_QUERIES_PER_CHECK


def test_a_rotated_token_closes_the_old_session(fake: FakePrometheus) -> None:
    kube = SecretsOnly()
    telemetry = Telemetry()
    measurer = Measurer(kube, OperatorConfig(), telemetry=telemetry)  # type: ignore[arg-type]
    rollout_spec = spec(fake.url, secret="prometheus-auth")
    for token in ("first", "second", "third"):
        kube.put("llm", "prometheus-auth", token=token, address=fake.url)
        check = asyncio.run(measurer.measure(rollout_spec, ref("chat"), NOW, virtual_service_namespace="llm"))
        assert check is not None
        assert check.verdict != api.Verdict.ERROR, check.summary
    assert (len(measurer.providers), measurer.providers.closed) == (1, 2)
    assert telemetry.prometheus_connections._value.get() == 1
    # No answer asked with one token is shared with a check that holds another.
    sent = [h["Authorization"] for _, h in fake.requests]
    per_check = GROUPED_QUERIES_PER_CHECK
    assert sent == ["Bearer first"] * per_check + ["Bearer second"] * per_check + ["Bearer third"] * per_check
    measurer.close()
