"""One check's queries (`measure._CheckQueries`): a check that batches asks the grouped forms only and renders
no query of its own; one that does not batch (no batcher, or a check an alert asked for) asks its own."""

from __future__ import annotations

import asyncio

import pytest

from fakes import NAMESPACE, sample_spec
from modelrollout import api, measure
from modelrollout.metrics.provider import Sample
from modelrollout.metrics.templates import GroupedQuery, TemplateVariables


def check_queries(*, batching: bool) -> tuple[measure._CheckQueries, list[str], list[GroupedQuery]]:
    raw = sample_spec()
    raw["analysis"]["gates"] = [{"name": "error-rate", "template": "istio-error-rate", "max": 0.05}]
    spec = api.parse_spec(raw)
    variables = TemplateVariables.for_spec(
        spec, rollout_name="chat", rollout_namespace=NAMESPACE, hosts_namespace=NAMESPACE
    )
    own: list[str] = []
    grouped: list[GroupedQuery] = []

    async def ask(promql: str) -> list[Sample]:
        own.append(promql)
        return [Sample({}, 0.01)]

    async def ask_grouped(query: GroupedQuery) -> list[Sample]:
        grouped.append(query)
        return [Sample({}, 0.02)]

    queries = measure._CheckQueries(ask, variables, spec.analysis, ask_grouped if batching else None)
    return queries, own, grouped


def test_a_batching_check_renders_and_asks_no_query_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_rendered(*_: object) -> str:
        raise AssertionError("rendered a query nobody asks")

    for name in ("render_gate_query", "request_count_query", "requests_series_query"):
        monkeypatch.setattr(measure, name, not_rendered)
    queries, own, grouped = check_queries(batching=True)
    gate = queries.analysis.gates[0]

    async def scenario() -> None:
        measured = await queries.gate(gate)
        assert (measured.values, measured.error) == ((0.02,), None)
        assert await queries.requests("canary") == (0.02, None)
        canary, stable = await queries.request_counters()
        assert canary is not None
        assert stable is not None
        assert (list(canary.values()), list(stable.values())) == ([0.02], [0.02])

    asyncio.run(scenario())
    assert own == []
    assert len(grouped) == 4  # the gate, the request count, both variants' request series


def test_a_check_that_does_not_batch_asks_its_own_queries() -> None:
    queries, own, grouped = check_queries(batching=False)
    gate = queries.analysis.gates[0]

    async def scenario() -> None:
        measured = await queries.gate(gate)
        assert (measured.values, measured.error) == ((0.01,), None)
        assert await queries.requests("canary") == (0.01, None)

    asyncio.run(scenario())
    assert grouped == []
    assert len(own) == 2
    assert 'destination_service_name="' in own[0]
