"""The metric families of each LLM metrics source, and which built-in gate templates a source can serve.

Pure data. The API reads `SUPPORTED_SOURCES` to refuse a template that a source cannot serve before any
traffic moves; the templates module builds PromQL from `FAMILIES`.
Names and labels are those the servers export:

- `vllm`: vLLM's production metrics, labelled `model_name`; a finished request is counted in
  `vllm:request_success_total` by `finished_reason` (`stop`, `length` = truncated, `abort`/`error` = failed).
- `sglang`: SGLang's `--enable-metrics` families, labelled `model_name`; failures are
  `sglang:num_aborted_requests_total`; it has no truncation counter.
- `otel-genai`: the OpenTelemetry GenAI semantic conventions as Prometheus names them (`gen_ai.server.*`
  histograms in seconds, `gen_ai.client.token.usage` by `gen_ai_token_type`), labelled `gen_ai_request_model`;
  a failed request carries `error_type`.
- `litellm`: the LiteLLM proxy's metrics, labelled `model`, with its own spend counter (USD).
- `istio`: the mesh's standard metrics, selected by destination service as the Istio templates do.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Counter:
    """A counter and the matchers (PromQL, without braces) that select the events it counts."""

    name: str
    matchers: str = ""


@dataclass(frozen=True)
class HistogramFamily:
    """A histogram's base name (without `_bucket`, `_sum`, `_count`); `to_seconds` scales its unit."""

    name: str
    to_seconds: float = 1.0


@dataclass(frozen=True)
class Family:
    model_label: str | None  # the label naming the model; None: selected by destination service (Istio)
    requests: Counter  # every finished request
    time_to_first_token: HistogramFamily | None = None
    inter_token_latency: HistogramFamily | None = None
    latency: HistogramFamily | None = None  # end to end
    errors: Counter | None = None
    truncations: Counter | None = None
    input_tokens: Counter | None = None
    output_tokens: Counter | None = None
    spend: Counter | None = None  # USD


FAMILIES: MappingProxyType[str, Family] = MappingProxyType(
    {
        "vllm": Family(
            model_label="model_name",
            requests=Counter("vllm:request_success_total"),
            time_to_first_token=HistogramFamily("vllm:time_to_first_token_seconds"),
            inter_token_latency=HistogramFamily("vllm:inter_token_latency_seconds"),
            latency=HistogramFamily("vllm:e2e_request_latency_seconds"),
            errors=Counter("vllm:request_success_total", 'finished_reason=~"abort|error"'),
            truncations=Counter("vllm:request_success_total", 'finished_reason="length"'),
            input_tokens=Counter("vllm:prompt_tokens_total"),
            output_tokens=Counter("vllm:generation_tokens_total"),
        ),
        "sglang": Family(
            model_label="model_name",
            requests=Counter("sglang:num_requests_total"),
            time_to_first_token=HistogramFamily("sglang:time_to_first_token_seconds"),
            inter_token_latency=HistogramFamily("sglang:inter_token_latency_seconds"),
            latency=HistogramFamily("sglang:e2e_request_latency_seconds"),
            errors=Counter("sglang:num_aborted_requests_total"),
            input_tokens=Counter("sglang:prompt_tokens_total"),
            output_tokens=Counter("sglang:generation_tokens_total"),
        ),
        "otel-genai": Family(
            model_label="gen_ai_request_model",
            requests=Counter("gen_ai_server_request_duration_seconds_count"),
            time_to_first_token=HistogramFamily("gen_ai_server_time_to_first_token_seconds"),
            inter_token_latency=HistogramFamily("gen_ai_server_time_per_output_token_seconds"),
            latency=HistogramFamily("gen_ai_server_request_duration_seconds"),
            errors=Counter("gen_ai_server_request_duration_seconds_count", 'error_type!=""'),
            input_tokens=Counter("gen_ai_client_token_usage_sum", 'gen_ai_token_type="input"'),
            output_tokens=Counter("gen_ai_client_token_usage_sum", 'gen_ai_token_type="output"'),
        ),
        "litellm": Family(
            model_label="model",
            requests=Counter("litellm_requests_metric_total"),
            time_to_first_token=HistogramFamily("litellm_llm_api_time_to_first_token_metric"),
            latency=HistogramFamily("litellm_request_total_latency_metric"),
            input_tokens=Counter("litellm_input_tokens_metric_total"),
            output_tokens=Counter("litellm_output_tokens_metric_total"),
            spend=Counter("litellm_spend_metric_total"),
        ),
        "istio": Family(
            model_label=None,
            requests=Counter("istio_requests_total"),
            latency=HistogramFamily("istio_request_duration_milliseconds", to_seconds=0.001),
            errors=Counter("istio_requests_total", 'response_code=~"5.."'),
        ),
    }
)

# What each LLM template needs from a family (all of them). Cost per request needs a spend counter or both
# token counters (priced by spec.stable/canary.pricing): listed as two alternatives.
_NEEDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "llm-ttft-p50": (("time_to_first_token",),),
    "llm-ttft-p99": (("time_to_first_token",),),
    "llm-inter-token-latency-p99": (("inter_token_latency",),),
    "llm-tokens-per-second": (("inter_token_latency",),),
    "llm-latency-p99": (("latency",),),
    "llm-output-tokens": (("output_tokens",),),
    "llm-truncation-rate": (("truncations",),),
    "llm-error-rate": (("errors",),),
    "llm-cost-per-request": (("spend",), ("input_tokens", "output_tokens")),
    "llm-error-events": (("errors",),),
    "llm-truncation-events": (("truncations",),),
}


def _serves(family: Family, needs: tuple[tuple[str, ...], ...]) -> bool:
    return any(all(getattr(family, field) is not None for field in option) for option in needs)


# template -> the sources that can serve it, in FAMILIES order.
SUPPORTED_SOURCES: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(
    {
        template: tuple(source for source, family in FAMILIES.items() if _serves(family, needs))
        for template, needs in _NEEDS.items()
    }
)

# Templates that read the judge service's metrics (`modelrollout.judge.metrics`), not a model server's.
JUDGE_TEMPLATES = frozenset({"judge-win-rate", "judge-score"})

# Templates whose values are raw event counters, for sequential tests (not thresholds).
EVENT_TEMPLATES = frozenset(
    {"llm-error-events", "llm-truncation-events", "istio-error-events", "judge-win-rate"}
)


def priced_cost(source: str) -> bool:
    """Whether `llm-cost-per-request` on `source` prices token counters (no spend counter of its own)."""
    return FAMILIES[source].spend is None
