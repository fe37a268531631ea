"""The grouped form of the built-in templates: one query for every target, whose rows the target's values
pick. That a row equals the target's own answer is checked against a real Prometheus (integration tier);
here, the exact PromQL, that no target value is in it, and that the key holds what the plain form matches."""

from __future__ import annotations

from datetime import timedelta

import pytest

from llm_gates import EVERY_LLM_GATE, llm_gate, llm_variables
from modelrollout import api
from modelrollout.metrics.templates import (
    TemplateVariables,
    escape_promql_string,
    grouped_gate_query,
    grouped_judge_counter_queries,
    grouped_request_count_query,
    grouped_requests_series_query,
    render_gate_query,
)

ISTIO = ("destination_service_name", "destination_service_namespace")


def variables(
    canary: api.Target, *, name: str = "chat", namespace: str = "llm", window: int = 120
) -> TemplateVariables:
    return TemplateVariables.for_rollout(
        stable=api.Target(host="llm-stable"),
        canary=canary,
        rollout_name=name,
        rollout_namespace=namespace,
        window=timedelta(seconds=window),
    )


def gate(template: str, **fields: object) -> api.Gate:
    return api.Gate.model_validate({"name": "g", "template": template, "max": 1, **fields})


def test_the_istio_error_rate_grouped() -> None:
    grouped = grouped_gate_query(gate("istio-error-rate"), variables(api.Target(host="llm-canary.prod")))
    assert grouped is not None
    by = "sum by (destination_service_name, destination_service_namespace)"
    requests = f'{by} (rate(istio_requests_total{{reporter="destination"}}[2m]))'
    assert grouped.promql == (
        f'({by} (rate(istio_requests_total{{reporter="destination", response_code=~"5.."}}[2m])) '
        f"or 0 * {requests}) / {requests}"
    )
    assert (grouped.labels, grouped.key) == (ISTIO, ("llm-canary", "prod"))


def test_a_subset_is_one_more_group_label() -> None:
    grouped = grouped_gate_query(gate("istio-latency-p99"), variables(api.Target(host="llm", subset="v2")))
    assert grouped is not None
    assert grouped.promql == (
        "histogram_quantile(0.99, sum by (le, destination_service_name, destination_service_namespace, "
        'destination_version) (rate(istio_request_duration_milliseconds_bucket{reporter="destination"}[2m])))'
    )
    assert (grouped.labels, grouped.key) == ((*ISTIO, "destination_version"), ("llm", "llm", "v2"))


def test_request_counts_and_counters_grouped() -> None:
    target = variables(api.Target(host="llm-canary"))
    count = grouped_request_count_query(target)
    assert count.promql == (
        "sum by (destination_service_name, destination_service_namespace) "
        '(increase(istio_requests_total{reporter="destination"}[2m]))'
    )
    counters = grouped_requests_series_query(target.targeting("stable"))
    assert counters.promql == (
        "sum by (instance, pod, destination_service_name, destination_service_namespace) "
        '(istio_requests_total{reporter="destination"})'
    )
    assert counters.key == ("llm-stable", "llm")
    failures, verdicts = grouped_judge_counter_queries(target)
    assert failures.promql == (
        "sum by (instance, pod, rollout_namespace, rollout) "
        '(modelrollout_judge_errors_total{reason=~"malformed|judge-unreachable"})'
    )
    assert (
        verdicts.promql
        == "sum by (instance, pod, rollout_namespace, rollout) (modelrollout_judge_verdicts_total)"
    )
    assert failures.key == verdicts.key == ("llm", "chat")


def test_a_gate_s_own_window_is_in_its_grouped_query() -> None:
    grouped = grouped_gate_query(gate("istio-error-rate", window="30s"), variables(api.Target(host="x")))
    assert grouped is not None
    assert "[30s]" in grouped.promql
    assert "[2m]" not in grouped.promql


def test_a_gate_with_its_own_query_has_no_grouped_form() -> None:
    own = api.Gate(name="g", query='sum(up{job="{{ target.service }}"})', max=1)
    assert grouped_gate_query(own, variables(api.Target(host="x"))) is None


def every_builtin_gate() -> list[api.Gate]:
    gates = [gate(t) for t in ("istio-error-rate", "istio-latency-p99", "istio-request-count")]
    gates.append(api.Gate(name="g", template=api.GateTemplate.ISTIO_ERROR_EVENTS, test=api.SequentialTest()))
    gates += [llm_gate(template, source) for template, source in EVERY_LLM_GATE]
    gates.append(api.Gate(name="g", template=api.GateTemplate.JUDGE_WIN_RATE, test=api.SequentialTest()))
    gates.append(gate("judge-score", criterion="safe", max=None, min=0))
    return gates


@pytest.mark.parametrize("builtin", every_builtin_gate(), ids=lambda g: f"{g.template.value}-{g.source}")
def test_two_rollouts_ask_the_same_grouped_query_and_pick_their_own_rows(builtin: api.Gate) -> None:
    one = llm_variables()
    other_target = api.Target(host="other.elsewhere", model="other-model", pricing=one.canary.pricing)
    other = TemplateVariables.for_rollout(
        stable=api.Target(host="x"),
        canary=other_target,
        rollout_name="other-rollout",
        rollout_namespace="other-ns",
        window=one.window,
    )
    mine, theirs = grouped_gate_query(builtin, one), grouped_gate_query(builtin, other)
    assert mine is not None
    assert theirs is not None
    assert mine.promql == theirs.promql
    assert mine.labels == theirs.labels
    assert mine.key != theirs.key
    for value in (*mine.key, *theirs.key):
        assert f'"{escape_promql_string(value)}"' not in mine.promql
    # The key holds exactly the values the plain form matches on its group labels.
    plain = render_gate_query(builtin, one)
    for label, value in zip(mine.labels, mine.key, strict=True):
        assert f'{label}="{escape_promql_string(value)}"' in plain
