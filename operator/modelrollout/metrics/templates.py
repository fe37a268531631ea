"""Gate queries: the built-in Istio templates and the rendering of `{{ ... }}` variables into PromQL.

Pure: no I/O, no clients. The variables and the scanner that keeps every value inside its string live in
`promql`; this module knows the API (targets, gates, the spec) and the built-in templates.

Built-in templates select the target's Istio metrics by `destination_service_name` and
`destination_service_namespace` (`reporter="destination"`), and, when the target names a DestinationRule
subset, by the subset label (`analysis.subsetLabel`, default `destination_version`): the convention is that a
subset is named after the version label of its pods, which Istio's metrics carry as `destination_version`
(and `destination_canonical_revision`). A short host is a Service in the VirtualService's namespace, as Istio
resolves it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Literal, TypeVar

from modelrollout import api
from modelrollout.durations import format_duration
from modelrollout.metrics.families import (
    FAMILIES,
    JUDGE_TEMPLATES,
    SUPPORTED_SOURCES,
    Counter,
    Family,
    HistogramFamily,
)
from modelrollout.metrics.promql import (
    KNOWN_VARIABLES,
    TemplateError,
    check_template,
    escape_promql_string,
    render_shared,
    render_values,
)

__all__ = [
    "KNOWN_VARIABLES",
    "GroupedQuery",
    "Role",
    "Selection",
    "TargetVariables",
    "TemplateError",
    "TemplateVariables",
    "builtin_template",
    "check_template",
    "escape_promql_string",
    "grouped_gate_query",
    "grouped_judge_counter_queries",
    "grouped_request_count_query",
    "grouped_requests_series_query",
    "judge_counter_queries",
    "render",
    "render_gate_query",
    "request_count_query",
    "requests_series_query",
    "spec_template_errors",
]

Role = Literal["stable", "canary"]

_LABEL_NAME = re.compile(api.LABEL_NAME)
_SERVER_ERRORS = 'response_code=~"5.."'


@dataclass(frozen=True)
class Selection:
    """How a built-in template selects its target's series: `fixed` matchers, and `keys`, the labels whose
    values name the target (each with the variable that holds the value).

    A template is written once against a Selection and comes out in two forms. The plain form matches the
    keys' values (one target's series, summed to one value). The grouped form (`grouped=True`) matches only
    the fixed part and keeps the keys in every aggregation, so one query answers for every target at once,
    one row per key: the row whose key labels hold a target's values is exactly what the plain form gives
    for that target (an exact-match matcher selects the same series a group does)."""

    fixed: str
    # (label, variable), e.g. ("destination_service_name", "target.service")
    keys: tuple[tuple[str, str], ...]
    grouped: bool = False

    @property
    def key_labels(self) -> tuple[str, ...]:
        return tuple(label for label, _ in self.keys)

    def matchers(self, extra: str = "") -> str:
        keyed = [] if self.grouped else [f'{label}="{{{{ {variable} }}}}"' for label, variable in self.keys]
        return ", ".join(part for part in (self.fixed, *keyed, extra) if part)

    def series(self, name: str, extra: str = "") -> str:
        matchers = self.matchers(extra)
        return f"{name}{{{matchers}}}" if matchers else name

    def sum(self, expression: str, by: tuple[str, ...] = ()) -> str:
        labels = (*by, *self.key_labels) if self.grouped else by
        return f"sum by ({', '.join(labels)}) ({expression})" if labels else f"sum({expression})"

    def or_zero(self, events: str, requests: str) -> str:
        """`events`, or 0 where the target has no series of them yet (a series appears with its first event).
        Grouped, the zero must carry each target's key: 0 times its requests."""
        return f"({events} or 0 * {requests})" if self.grouped else f"({events} or vector(0))"


def istio_selection(subset_label: str | None = None, *, grouped: bool = False) -> Selection:
    """The target's destination service (and, with `subset_label`, its subset) in Istio's metrics."""
    keys: tuple[tuple[str, str], ...] = (
        ("destination_service_name", "target.service"),
        ("destination_service_namespace", "target.namespace"),
    )
    if subset_label is not None:
        if not _LABEL_NAME.match(subset_label):  # the API refuses it too; a label name is code, not a value
            raise TemplateError(f"subset label {subset_label!r} is not a Prometheus label name")
        keys += ((subset_label, "target.subset"),)
    return Selection('reporter="destination"', keys, grouped)


def _judge_selection(grouped: bool) -> Selection:
    return Selection("", (("rollout_namespace", "rollout.namespace"), ("rollout", "rollout.name")), grouped)


def builtin_template(
    template: api.GateTemplate,
    subset_label: str | None = None,
    *,
    source: api.MetricsSource | None = None,
    pricing: api.Pricing | None = None,
    role: Role = "canary",
    criterion: str | None = None,
    grouped: bool = False,
) -> str:
    """The PromQL template of a built-in gate. Istio metrics (the istio-* templates, and llm-* ones on source
    `istio`) select the target's destination service and, with `subset_label`, its subset
    (`<subset_label>="{{ target.subset }}"`); the other sources select the target's model by their model
    label. `pricing` (the target's) prices token counters for llm-cost-per-request. The judge-* templates
    read the judge service's metrics on this rollout for `role` (and `criterion`, for judge-score).
    `grouped`: the form that answers for every target at once (`builtin_selection` says by which labels)."""
    selection = builtin_selection(template, subset_label, source=source, grouped=grouped)
    name = template.value
    if name in JUDGE_TEMPLATES:
        return _judge_template(template, selection, role, criterion)
    if name in SUPPORTED_SOURCES:  # llm-*; istio-* read Istio whatever the source says (none, or istio)
        family = FAMILIES[(source or api.MetricsSource.ISTIO).value]
        return _llm_template(name, family, selection, pricing)
    window = "[{{ window }}]"
    requests = f"rate({selection.series('istio_requests_total')}{window})"
    if template == api.GateTemplate.ISTIO_ERROR_RATE:
        # A healthy service may never have exported a 5xx series (Istio creates a series on its first request
        # with that response code), so the numerator falls back to 0; no traffic at all still gives no data
        # (empty denominator) or NaN (0/0), which the analysis reads as Inconclusive.
        errors = f"rate({selection.series('istio_requests_total', _SERVER_ERRORS)}{window})"
        return (
            f"{selection.or_zero(selection.sum(errors), selection.sum(requests))} / {selection.sum(requests)}"
        )
    if template == api.GateTemplate.ISTIO_LATENCY_P99:
        buckets = f"rate({selection.series('istio_request_duration_milliseconds_bucket')}{window})"
        return f"histogram_quantile(0.99, {selection.sum(buckets, by=('le',))})"
    if template == api.GateTemplate.ISTIO_ERROR_EVENTS:
        return per_process(selection.series("istio_requests_total", _SERVER_ERRORS), selection)
    return selection.sum(f"increase({selection.series('istio_requests_total')}{window})")


def builtin_selection(
    template: api.GateTemplate,
    subset_label: str | None = None,
    *,
    source: api.MetricsSource | None = None,
    grouped: bool = False,
) -> Selection:
    """How `template` selects its target: by destination service (Istio), model label, or rollout (judge)."""
    name = template.value
    if name in JUDGE_TEMPLATES:
        return _judge_selection(grouped)
    if name in SUPPORTED_SOURCES:  # llm-*; istio-* read Istio whatever the source says (none, or istio)
        family = FAMILIES[(source or api.MetricsSource.ISTIO).value]
        if family.model_label is not None:
            return Selection("", ((family.model_label, "target.model"),), grouped)
    return istio_selection(subset_label, grouped=grouped)


def _series(counter: Counter, selection: Selection) -> str:
    return selection.series(counter.name, counter.matchers)


def _rate(counter: Counter, selection: Selection) -> str:
    return selection.sum(f"rate({_series(counter, selection)}[{{{{ window }}}}])")


def _quantile(quantile: float, histogram: HistogramFamily, selection: Selection) -> str:
    buckets = f"rate({selection.series(f'{histogram.name}_bucket')}[{{{{ window }}}}])"
    query = f"histogram_quantile({quantile}, {selection.sum(buckets, by=('le',))})"
    return query if histogram.to_seconds == 1.0 else f"{query} * {histogram.to_seconds!r}"


T = TypeVar("T")


def _need(value: T | None, name: str) -> T:
    if value is None:  # the API refuses such a gate; a hand-built one still gets a clear error
        raise TemplateError(f"template {name}: its source does not export the metric it needs")
    return value


def _llm_template(name: str, family: Family, selection: Selection, pricing: api.Pricing | None) -> str:
    """The PromQL of an llm-* template on one family."""
    requests = _rate(family.requests, selection)
    if name in ("llm-ttft-p50", "llm-ttft-p99"):
        ttft = _need(family.time_to_first_token, name)
        return _quantile(0.5 if name.endswith("p50") else 0.99, ttft, selection)
    if name == "llm-inter-token-latency-p99":
        return _quantile(0.99, _need(family.inter_token_latency, name), selection)
    if name == "llm-tokens-per-second":
        # Generation speed as a user sees it: 1 / the mean time between two output tokens.
        itl = _need(family.inter_token_latency, name)
        count, total = (Counter(f"{itl.name}_{part}") for part in ("count", "sum"))
        return f"{_rate(count, selection)} / ({_rate(total, selection)} * {itl.to_seconds!r})"
    if name == "llm-latency-p99":
        return _quantile(0.99, _need(family.latency, name), selection)
    if name == "llm-output-tokens":
        return f"{_rate(_need(family.output_tokens, name), selection)} / {requests}"
    if name in ("llm-truncation-rate", "llm-error-rate"):
        events = _need(family.truncations if name == "llm-truncation-rate" else family.errors, name)
        # No series of the events yet is zero events (a series appears with its first event), as for Istio.
        return f"{selection.or_zero(_rate(events, selection), requests)} / {requests}"
    if name == "llm-cost-per-request":
        if family.spend is not None:
            return f"{_rate(family.spend, selection)} / {requests}"
        input_tokens, output_tokens = _need(family.input_tokens, name), _need(family.output_tokens, name)
        if pricing is None:  # the API refuses such a spec; a hand-built one still gets a clear error
            raise TemplateError("llm-cost-per-request needs the target's pricing on this source")
        # Prices are numbers the API validated, never text: they go into the query as float literals.
        per_input = pricing.input_per_million / 1e6
        per_output = pricing.output_per_million / 1e6
        return (
            f"({_rate(input_tokens, selection)} * {per_input!r} + "
            f"{_rate(output_tokens, selection)} * {per_output!r}) / {requests}"
        )
    if name in ("llm-error-events", "llm-truncation-events"):
        events = _need(family.errors if name == "llm-error-events" else family.truncations, name)
        return per_process(_series(events, selection), selection)
    raise TemplateError(f"no built-in template {name}")


# judge-win-rate's events: for the canary its losses, for the control (the stable) the canary's wins. Under
# equal quality a decided pair is a loss or a win with even odds whatever the traffic split: the test runs at
# share 0.5 (analysis.sequential), and ties carry no evidence either way.
_JUDGE_EVENTS: dict[Role, str] = {"canary": "loss", "stable": "win"}


def _judge_template(
    template: api.GateTemplate, selection: Selection, role: Role, criterion: str | None
) -> str:
    if template == api.GateTemplate.JUDGE_WIN_RATE:
        verdicts = selection.series("modelrollout_judge_verdicts_total", f'outcome="{_JUDGE_EVENTS[role]}"')
        return per_process(verdicts, selection)
    extra = f'variant="{role}"'
    if criterion is not None:  # a DNS label (the API's), escaped all the same
        extra += f', criterion="{escape_promql_string(criterion)}"'
    # The mean score over the window: every criterion's scores pooled unless one is named.
    scores, count = (
        selection.sum(f"rate({selection.series(name, extra)}[{{{{ window }}}}])")
        for name in ("modelrollout_judge_score_sum", "modelrollout_judge_score_count")
    )
    return f"{scores} / {count}"


def judge_failures_template(*, grouped: bool = False) -> str:
    """The judge's failures on this rollout, per process: verdicts it could not give (malformed twice, or
    the judge model unreachable). Budget refusals and unreachable variants are not the judge's failures."""
    selection = _judge_selection(grouped)
    failures = selection.series("modelrollout_judge_errors_total", 'reason=~"malformed|judge-unreachable"')
    return per_process(failures, selection)


def judge_verdicts_template(*, grouped: bool = False) -> str:
    """Every verdict the judge gave on this rollout (win, loss or tie), per process."""
    selection = _judge_selection(grouped)
    return per_process(selection.series("modelrollout_judge_verdicts_total"), selection)


def per_process(counters: str, selection: Selection) -> str:
    """Raw counters summed per scraped process (`instance`, and `pod` where relabelling adds it), not per
    series: the operator takes reset-aware deltas of each sum, and all of a process's counters reset
    together when it restarts, so a sum that falls is a restart; a series that appears within a process adds
    to its sum. This keeps the series the operator follows (and keeps in status) to one per process.
    Grouped (`selection`'s grouped form), per process and target."""
    return selection.sum(counters, by=("instance", "pod"))


def requests_series_template(subset_label: str | None = None, *, grouped: bool = False) -> str:
    """The target's raw Istio request counters per process, for the sample-ratio check of sequential gates."""
    selection = istio_selection(subset_label, grouped=grouped)
    return per_process(selection.series("istio_requests_total"), selection)


@dataclass(frozen=True)
class TargetVariables:
    """What `{{ target.* }}` (and `stable.*`, `canary.*`) expand to for one model service."""

    host: str
    service: str
    namespace: str
    subset: str | None = None
    port: int | None = None
    model: str | None = None
    prompt_version: str | None = None
    pricing: api.Pricing | None = None

    @classmethod
    def of(cls, target: api.Target, hosts_namespace: str) -> TargetVariables:
        """Service and namespace as Istio's metrics label them: `llm`, `llm.ns` and `llm.ns.svc.cluster.local`
        all name Service `llm`, in `ns` or, for a short name, in `hosts_namespace`: the namespace of the
        VirtualService that routes to it, where Istio resolves short hosts."""
        labels = target.host.split(".")
        return cls(
            host=target.host,
            service=labels[0],
            namespace=labels[1] if len(labels) > 1 else hosts_namespace,
            subset=target.subset,
            port=target.port,
            model=target.model,
            prompt_version=target.prompt_version,
            pricing=target.pricing,
        )

    def values(self, prefix: str) -> dict[str, str]:
        raw: dict[str, str | int | None] = {
            "host": self.host,
            "service": self.service,
            "namespace": self.namespace,
            "subset": self.subset,
            "port": self.port,
            "model": self.model,
            "promptVersion": self.prompt_version,
        }
        return {f"{prefix}.{name}": "" if value is None else str(value) for name, value in raw.items()}


@dataclass(frozen=True)
class TemplateVariables:
    """Everything a query template may use. `target` is the service under evaluation: the canary, or the
    stable for the baseline of a comparing gate."""

    target: TargetVariables
    stable: TargetVariables
    canary: TargetVariables
    window: timedelta
    rollout_name: str
    rollout_namespace: str
    subset_label: str = api.DEFAULT_SUBSET_LABEL
    role: Role = "canary"  # which variant `target` is

    def __post_init__(self) -> None:
        if format_duration(self.window) == "0s":
            raise TemplateError(f"window must be a positive duration, got {self.window}")

    @classmethod
    def for_rollout(
        cls,
        *,
        stable: api.Target,
        canary: api.Target,
        rollout_name: str,
        rollout_namespace: str,
        window: timedelta,
        target: Role = "canary",
        hosts_namespace: str | None = None,
        subset_label: str = api.DEFAULT_SUBSET_LABEL,
    ) -> TemplateVariables:
        """`hosts_namespace`: where short hosts live, the VirtualService's namespace (default the
        rollout's)."""
        stable_vars = TargetVariables.of(stable, hosts_namespace or rollout_namespace)
        canary_vars = TargetVariables.of(canary, hosts_namespace or rollout_namespace)
        return cls(
            target=canary_vars if target == "canary" else stable_vars,
            stable=stable_vars,
            canary=canary_vars,
            window=window,
            rollout_name=rollout_name,
            rollout_namespace=rollout_namespace,
            subset_label=subset_label,
            role=target,
        )

    @classmethod
    def for_spec(
        cls, spec: api.ModelRolloutSpec, *, rollout_name: str, rollout_namespace: str, hosts_namespace: str
    ) -> TemplateVariables:
        return cls.for_rollout(
            stable=spec.stable,
            canary=spec.canary,
            rollout_name=rollout_name,
            rollout_namespace=rollout_namespace,
            window=spec.analysis.window,
            hosts_namespace=hosts_namespace,
            subset_label=spec.analysis.subset_label,
        )

    @property
    def target_subset_label(self) -> str | None:
        """The subset label built-in templates select the target by: only when the target names a subset."""
        return self.subset_label if self.target.subset else None

    def targeting(self, role: Role) -> TemplateVariables:
        return replace(self, target=self.canary if role == "canary" else self.stable, role=role)

    def with_window(self, window: timedelta) -> TemplateVariables:
        return replace(self, window=window)

    def values(self) -> Mapping[str, str]:
        return self._values

    # Kept with the (frozen) variables: a check renders several queries from the same variables, each of
    # which asked for all 24 values afresh.
    @functools.cached_property
    def _values(self) -> Mapping[str, str]:
        return {
            **self.target.values("target"),
            **self.stable.values("stable"),
            **self.canary.values("canary"),
            "window": format_duration(self.window),
            "rollout.name": self.rollout_name,
            "rollout.namespace": self.rollout_namespace,
        }


def render_gate_query(gate: api.Gate, variables: TemplateVariables) -> str:
    """The PromQL of a gate: its built-in template or its own query, over its own window if it sets one."""
    if gate.template is not None:
        source = _builtin_for(gate.template, variables, gate.source, gate.criterion)
    elif gate.query is not None:
        source = gate.query
    else:  # the API refuses such a gate; a hand-built one still gets a clear error
        raise TemplateError(f"gate {gate.name} has neither a template nor a query")
    if gate.window is not None:
        variables = variables.with_window(gate.window)
    return render(source, variables)


def _builtin_for(
    template: api.GateTemplate,
    variables: TemplateVariables,
    source: api.MetricsSource | None = None,
    criterion: str | None = None,
    *,
    grouped: bool = False,
) -> str:
    return builtin_template(
        template,
        variables.target_subset_label,
        source=source,
        pricing=variables.target.pricing,
        role=variables.role,
        criterion=criterion,
        grouped=grouped,
    )


@dataclass(frozen=True)
class GroupedQuery:
    """A query in its grouped form, which answers for every target at once, one row per value of `labels`;
    `key` holds this target's values of them (empty for a label it does not have, as Prometheus omits
    empty labels). The promql holds no value of the target's, so every rollout with the same template,
    window and constants asks the very same query."""

    promql: str
    labels: tuple[str, ...]
    key: tuple[str, ...]


def _grouped(template: str, selection: Selection, variables: TemplateVariables) -> GroupedQuery:
    values = variables.values()
    key = tuple(values[variable] for _, variable in selection.keys)
    return GroupedQuery(render_shared(template, values), selection.key_labels, key)


def grouped_gate_query(gate: api.Gate, variables: TemplateVariables) -> GroupedQuery | None:
    """The grouped form of a built-in gate's query; None for a gate with its own query (not groupable: the
    operator cannot know which labels tell its targets apart)."""
    if gate.template is None:
        return None
    if gate.window is not None:
        variables = variables.with_window(gate.window)
    template = _builtin_for(gate.template, variables, gate.source, gate.criterion, grouped=True)
    selection = builtin_selection(
        gate.template, variables.target_subset_label, source=gate.source, grouped=True
    )
    return _grouped(template, selection, variables)


def grouped_request_count_query(variables: TemplateVariables) -> GroupedQuery:
    """`request_count_query` for every target at once."""
    subset_label = variables.target_subset_label
    template = builtin_template(api.GateTemplate.ISTIO_REQUEST_COUNT, subset_label, grouped=True)
    return _grouped(template, istio_selection(subset_label, grouped=True), variables)


def grouped_requests_series_query(variables: TemplateVariables) -> GroupedQuery:
    """`requests_series_query` for every target at once."""
    subset_label = variables.target_subset_label
    template = requests_series_template(subset_label, grouped=True)
    return _grouped(template, istio_selection(subset_label, grouped=True), variables)


def grouped_judge_counter_queries(variables: TemplateVariables) -> tuple[GroupedQuery, GroupedQuery]:
    """`judge_counter_queries` for every rollout at once."""
    selection = _judge_selection(grouped=True)
    return (
        _grouped(judge_failures_template(grouped=True), selection, variables),
        _grouped(judge_verdicts_template(grouped=True), selection, variables),
    )


def request_count_query(variables: TemplateVariables) -> str:
    """Requests served by the target over the window, for `analysis.minRequests`."""
    return render(_builtin_for(api.GateTemplate.ISTIO_REQUEST_COUNT, variables), variables)


def requests_series_query(variables: TemplateVariables) -> str:
    """The target's raw request counters by series, for the sample-ratio check."""
    subset_label = variables.target_subset_label
    return render(requests_series_template(subset_label), variables)


def judge_counter_queries(variables: TemplateVariables) -> tuple[str, str]:
    """The judge's failures and its verdicts on this rollout, as raw counters per process."""
    return render(judge_failures_template(), variables), render(judge_verdicts_template(), variables)


def render(template: str, variables: TemplateVariables) -> str:
    return render_values(template, variables.values())


def spec_template_errors(spec: api.ModelRolloutSpec) -> list[str]:
    """Every gate query of `spec` that could not be rendered whatever the values (unknown variables,
    misplaced or malformed placeholders, unterminated strings), as `spec.analysis.gates[i].query: why`: a
    check made before any traffic moves. Built-in templates are checked with the spec's subset label."""
    errors = []
    for index, gate in enumerate(spec.analysis.gates):
        try:
            if gate.query is not None:
                check_template(gate.query)
            elif gate.template is not None:
                roles: tuple[Role, ...] = ("stable", "canary")
                for role, target in zip(roles, (spec.stable, spec.canary), strict=True):
                    check_template(
                        builtin_template(
                            gate.template,
                            spec.analysis.subset_label,
                            source=gate.source,
                            pricing=target.pricing,
                            role=role,
                            criterion=gate.criterion,
                        )
                    )
        except TemplateError as error:
            field = "query" if gate.query is not None else "template"
            errors.append(f"spec.analysis.gates[{index}].{field}: {error}")
    return errors
