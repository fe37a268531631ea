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

import re
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Literal

from modelrollout import api
from modelrollout.durations import format_duration
from modelrollout.metrics.promql import (
    KNOWN_VARIABLES,
    TemplateError,
    check_template,
    escape_promql_string,
    render_values,
)

__all__ = [
    "KNOWN_VARIABLES",
    "TargetVariables",
    "TemplateError",
    "TemplateVariables",
    "builtin_template",
    "check_template",
    "escape_promql_string",
    "render",
    "render_gate_query",
    "request_count_query",
    "spec_template_errors",
]

Role = Literal["stable", "canary"]

_SELECTOR = (
    'reporter="destination", destination_service_name="{{ target.service }}", '
    'destination_service_namespace="{{ target.namespace }}"'
)
_LABEL_NAME = re.compile(api.LABEL_NAME)


def builtin_template(template: api.GateTemplate, subset_label: str | None = None) -> str:
    """The PromQL template of a built-in gate; with `subset_label`, its series are also selected by
    `<subset_label>="{{ target.subset }}"` (for a target that names a subset)."""
    selector = _SELECTOR
    if subset_label is not None:
        if not _LABEL_NAME.match(subset_label):  # the API refuses it too; a label name is code, not a value
            raise TemplateError(f"subset label {subset_label!r} is not a Prometheus label name")
        selector += f', {subset_label}="{{{{ target.subset }}}}"'
    window = "[{{ window }}]"
    if template == api.GateTemplate.ISTIO_ERROR_RATE:
        # A healthy service may never have exported a 5xx series (Istio creates a series on its first request
        # with that response code), so the numerator falls back to 0; no traffic at all still gives no data
        # (empty denominator) or NaN (0/0), which the analysis reads as Inconclusive.
        return (
            f'(sum(rate(istio_requests_total{{{selector}, response_code=~"5.."}}{window}))'
            f" or vector(0)) / sum(rate(istio_requests_total{{{selector}}}{window}))"
        )
    if template == api.GateTemplate.ISTIO_LATENCY_P99:
        return (
            "histogram_quantile(0.99, sum by (le) "
            f"(rate(istio_request_duration_milliseconds_bucket{{{selector}}}{window})))"
        )
    return f"sum(increase(istio_requests_total{{{selector}}}{window}))"


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

    def targeting(self, role: Role) -> TemplateVariables:
        return replace(self, target=self.canary if role == "canary" else self.stable)

    def with_window(self, window: timedelta) -> TemplateVariables:
        return replace(self, window=window)

    def values(self) -> dict[str, str]:
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
        source = _builtin_for(gate.template, variables)
    elif gate.query is not None:
        source = gate.query
    else:  # the API refuses such a gate; a hand-built one still gets a clear error
        raise TemplateError(f"gate {gate.name} has neither a template nor a query")
    if gate.window is not None:
        variables = variables.with_window(gate.window)
    return render(source, variables)


def _builtin_for(template: api.GateTemplate, variables: TemplateVariables) -> str:
    return builtin_template(template, variables.subset_label if variables.target.subset else None)


def request_count_query(variables: TemplateVariables) -> str:
    """Requests served by the target over the window, for `analysis.minRequests`."""
    return render(_builtin_for(api.GateTemplate.ISTIO_REQUEST_COUNT, variables), variables)


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
                check_template(builtin_template(gate.template, spec.analysis.subset_label))
        except TemplateError as error:
            field = "query" if gate.query is not None else "template"
            errors.append(f"spec.analysis.gates[{index}].{field}: {error}")
    return errors
