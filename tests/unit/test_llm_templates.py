"""The llm-* templates: the exact PromQL on vLLM, every template on every source that serves it selecting
each variant by that source's model label (or the mesh's destination), and combinations a source cannot
serve refused."""

from __future__ import annotations

import pytest
from test_metrics_templates import split_promql

from llm_gates import CANARY, EVERY_LLM_GATE, STABLE, llm_gate, llm_variables
from modelrollout import api
from modelrollout.metrics.families import FAMILIES, SUPPORTED_SOURCES
from modelrollout.metrics.templates import TemplateError, builtin_template, check_template, render_gate_query

CANARY_MODEL = 'model_name="claude-\\"opus\\"\\\\4"'


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (
            "llm-ttft-p99",
            "histogram_quantile(0.99, sum by (le) "
            f"(rate(vllm:time_to_first_token_seconds_bucket{{{CANARY_MODEL}}}[2m])))",
        ),
        (
            "llm-output-tokens",
            f"sum(rate(vllm:generation_tokens_total{{{CANARY_MODEL}}}[2m])) / "
            f"sum(rate(vllm:request_success_total{{{CANARY_MODEL}}}[2m]))",
        ),
        (
            "llm-error-rate",
            f'(sum(rate(vllm:request_success_total{{{CANARY_MODEL}, finished_reason=~"abort|error"}}[2m])) '
            f"or vector(0)) / sum(rate(vllm:request_success_total{{{CANARY_MODEL}}}[2m]))",
        ),
        (
            "llm-truncation-events",
            "sum by (instance, pod) "
            f'(vllm:request_success_total{{{CANARY_MODEL}, finished_reason="length"}})',
        ),
        (
            "llm-cost-per-request",
            f"(sum(rate(vllm:prompt_tokens_total{{{CANARY_MODEL}}}[2m])) * 5e-06 + "
            f"sum(rate(vllm:generation_tokens_total{{{CANARY_MODEL}}}[2m])) * 2.5e-05) / "
            f"sum(rate(vllm:request_success_total{{{CANARY_MODEL}}}[2m]))",
        ),
        (
            "llm-tokens-per-second",
            f"sum(rate(vllm:inter_token_latency_seconds_count{{{CANARY_MODEL}}}[2m])) / "
            f"(sum(rate(vllm:inter_token_latency_seconds_sum{{{CANARY_MODEL}}}[2m])) * 1.0)",
        ),
    ],
)
def test_vllm_templates_render_exact_promql(template: str, expected: str) -> None:
    assert render_gate_query(llm_gate(template, "vllm"), llm_variables()) == expected


@pytest.mark.parametrize(("template", "source"), EVERY_LLM_GATE)
def test_every_template_selects_each_variant_by_its_source_labels(template: str, source: str) -> None:
    gate = llm_gate(template, source)
    check_template(builtin_template(gate.template, source=gate.source, pricing=CANARY.pricing))  # type: ignore[arg-type]
    canary = render_gate_query(gate, llm_variables())
    stable = render_gate_query(gate, llm_variables().targeting("stable"))
    code, strings = split_promql(canary)
    label = FAMILIES[source].model_label
    selectors = "".join(code).count("{")
    assert selectors >= 1
    if label is None:  # the mesh: by destination service
        assert strings.count(CANARY.host) == selectors
        assert STABLE.host not in strings
    else:
        assert strings.count(CANARY.model) == selectors, canary  # every selector names the canary's model
        assert "".join(code).count(f"{label}=") == selectors
        assert STABLE.model not in strings
        assert split_promql(stable)[1].count(STABLE.model) == selectors
    assert canary != stable


def test_cost_per_request_is_priced_per_variant_or_read_from_a_spend_counter() -> None:
    gate = llm_gate("llm-cost-per-request", "vllm")
    assert "* 2.5e-06" in render_gate_query(gate, llm_variables().targeting("stable"))
    assert "* 5e-06" in render_gate_query(gate, llm_variables())
    litellm = render_gate_query(llm_gate("llm-cost-per-request", "litellm"), llm_variables())
    assert litellm.startswith('sum(rate(litellm_spend_metric_total{model="claude-')
    with pytest.raises(TemplateError, match="pricing"):
        builtin_template(api.GateTemplate.LLM_COST_PER_REQUEST, source=api.MetricsSource.VLLM)


@pytest.mark.parametrize(
    ("template", "source"),
    [
        (t, s.value)
        for t in SUPPORTED_SOURCES
        for s in api.MetricsSource
        if s.value not in SUPPORTED_SOURCES[t]
    ],
)
def test_a_source_that_cannot_serve_a_template_is_refused(template: str, source: str) -> None:
    with pytest.raises(TemplateError, match="does not export"):
        builtin_template(api.GateTemplate(template), source=api.MetricsSource(source))
    with pytest.raises(ValueError, match=f"template {template} is served by source"):
        llm_gate(template, source)


def test_istio_latency_is_read_in_seconds() -> None:
    query = render_gate_query(llm_gate("llm-latency-p99", "istio"), llm_variables())
    assert query.startswith(
        "histogram_quantile(0.99, sum by (le) (rate(istio_request_duration_milliseconds_bucket"
    )
    assert query.endswith(" * 0.001")
