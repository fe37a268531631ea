"""Every llm-* template on every source that serves it, as gates with their rendering variables: shared by
the unit tier (the PromQL) and the integration tier (a real Prometheus parses and runs each one)."""

from __future__ import annotations

from datetime import timedelta

from modelrollout import api
from modelrollout.metrics.families import EVENT_TEMPLATES, SUPPORTED_SOURCES
from modelrollout.metrics.templates import TemplateVariables

STABLE = api.Target(
    host="llm-gpt4o", model="gpt-4o", pricing=api.Pricing(input_per_million=2.5, output_per_million=10)
)
CANARY = api.Target(
    host="llm-claude",
    model='claude-"opus"\\4',  # quotes and a backslash: the value must stay inside its strings
    pricing=api.Pricing(input_per_million=5, output_per_million=25),
)


def llm_gate(template: str, source: str) -> api.Gate:
    if template in EVENT_TEMPLATES:
        return api.Gate(
            name="g",
            template=api.GateTemplate(template),
            source=api.MetricsSource(source),
            test=api.SequentialTest(),
        )
    return api.Gate(name="g", template=api.GateTemplate(template), source=api.MetricsSource(source), max=1)


EVERY_LLM_GATE = [(template, source) for template, sources in SUPPORTED_SOURCES.items() for source in sources]


def llm_variables(window: timedelta = timedelta(minutes=2)) -> TemplateVariables:
    return TemplateVariables.for_rollout(
        stable=STABLE, canary=CANARY, rollout_name="chat", rollout_namespace="llm", window=window
    )
