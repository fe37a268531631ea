"""One table of spec edits on both sides of every API rule, used by the unit tier (the pydantic models) and
the integration tier (the real API server with the generated CRD), so the two can never drift apart."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from modelrollout import api
from modelrollout.metrics.promql import KNOWN_VARIABLES

SAMPLES = Path(__file__).resolve().parents[1] / "manifests" / "samples"

Spec = dict[str, Any]


def sample_rollout() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((SAMPLES / "modelrollout.yaml").read_text())
    return loaded


def sample_spec() -> Spec:
    return copy.deepcopy(sample_rollout()["spec"])


_JUDGE = {"model": {"url": "http://judge.models:8000/v1", "name": "judge"}}
_JUDGE_SCORE = {"name": "score", "template": "judge-score", "compare": {"maxDecrease": "10%"}}


def _edits(*edits: Callable[[Spec], None]) -> Callable[[Spec], None]:
    def edit(spec: Spec) -> None:
        for one in edits:
            one(spec)

    return edit


@dataclass(frozen=True)
class Case:
    id: str
    edit: Callable[[Spec], None]
    field: str = ""  # the field both the API server and the models must name (invalid cases)
    api_says: str = ""  # a fragment of the API server's message
    model_says: str = ""  # a fragment of the models' message


def _set(path: str, value: Any) -> Callable[[Spec], None]:
    def edit(spec: Spec) -> None:
        node: Any = spec
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        for key in keys[:-1]:
            node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
        node[keys[-1]] = value

    return edit


def _delete(path: str) -> Callable[[Spec], None]:
    def edit(spec: Spec) -> None:
        node: Any = spec
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]

    return edit


_EVERY_VARIABLE = "x{" + ", ".join(f'v{i}="{{{{ {name} }}}}"' for i, name in enumerate(KNOWN_VARIABLES)) + "}"
_EVERY_VARIABLE += "[{{ window }}]"
# The longest query the API takes, full of placeholders: the CEL rule stays within its cost budget.
_UNIT = 'x{a="{{ canary.promptVersion }}"} + '
_LONGEST_QUERY = (_UNIT * ((4096 - 9) // len(_UNIT)) + "vector(1)").ljust(4096)


def _stages(*weights: int) -> Callable[[Spec], None]:
    return _set("stages", [{"weight": w, "duration": "1m"} for w in weights])


INVALID = [
    Case(
        "weight-0",
        _set("stages.0.weight", 0),
        "spec.stages[0].weight",
        "greater than or equal to 1",
        "greater than or equal to 1",
    ),
    Case(
        "weight-101",
        _set("stages.5.weight", 101),
        "spec.stages[5].weight",
        "less than or equal to 100",
        "less than or equal to 100",
    ),
    Case(
        "weight-not-integer",
        _set("stages.0.weight", 1.5),
        "spec.stages[0].weight",
        "must be of type integer",
        "valid integer",
    ),
    Case(
        "weights-repeat",
        _stages(1, 5, 5, 100),
        "spec.stages",
        "stage weights must be strictly increasing",
        "stage weights must be strictly increasing",
    ),
    Case(
        "weights-decrease",
        _stages(10, 5, 100),
        "spec.stages",
        "stage weights must be strictly increasing",
        "stage weights must be strictly increasing",
    ),
    Case(
        "last-not-100",
        _stages(1, 5, 50),
        "spec.stages",
        "the last stage must have weight 100",
        "the last stage must have weight 100",
    ),
    Case("no-stages", _set("stages", []), "spec.stages", "should have at least 1 items", "at least 1 item"),
    Case(
        "duration-words",
        _set("stages.0.duration", "2 hours"),
        "spec.stages[0].duration",
        "should match",
        "not a duration",
    ),
    Case(
        "duration-days",
        _set("stages.0.duration", "1d"),
        "spec.stages[0].duration",
        "should match",
        "not a duration",
    ),
    Case(
        "interval-500ms",
        _set("analysis.interval", "500ms"),
        "spec.analysis.interval",
        "must be at least 1s",
        "must be at least 1s",
    ),
    Case(
        "interval-0s",
        _set("analysis.interval", "0s"),
        "spec.analysis.interval",
        "must be at least 1s",
        "must be at least 1s",
    ),
    Case(
        "gate-template-and-query",
        _set("analysis.gates.0.query", "up"),
        "spec.analysis.gates[0]",
        "exactly one of template and query",
        "exactly one of template and query",
    ),
    Case(
        "gate-neither-template-nor-query",
        _delete("analysis.gates.0.template"),
        "spec.analysis.gates[0]",
        "exactly one of template and query",
        "exactly one of template and query",
    ),
    Case(
        "gate-no-bound",
        _delete("analysis.gates.0.max"),
        "spec.analysis.gates[0]",
        "at least one of min, max, compare and test",
        "at least one of min, max, compare and test",
    ),
    Case(
        "gate-min-above-max",
        _set("analysis.gates.0.min", 0.5),
        "spec.analysis.gates[0]",
        "min must not be greater than max",
        "min must not be greater than max",
    ),
    Case(
        "template-unknown",
        _set("analysis.gates.0.template", "istio-latency-p95"),
        "spec.analysis.gates[0].template",
        "Unsupported value",
        "istio-error-rate",
    ),
    Case(
        "gate-names-repeat",
        _set("analysis.gates.1.name", "error-rate"),
        "spec.analysis.gates",
        "Duplicate value",
        "gate names must be unique: error-rate",
    ),
    Case(
        "canary-same-host",
        _set("canary.host", "llm-gpt4o"),
        "spec.canary",
        "canary must differ from stable",
        "canary must differ from stable",
    ),
    Case(
        "canary-same-host-and-subset",
        lambda s: (s["stable"].update(host="llm", subset="v1"), s["canary"].update(host="llm", subset="v1")),
        "spec.canary",
        "canary must differ from stable",
        "canary must differ from stable",
    ),
    Case(
        "canary-same-host-one-subset",
        lambda s: s["canary"].update(host="llm-gpt4o", subset="v2"),
        "spec.canary",
        "canary must differ from stable",
        "canary must differ from stable",
    ),
    Case(
        "host-not-dns", _set("stable.host", "LLM_GPT4o"), "spec.stable.host", "should match", "should match"
    ),
    Case(
        "host-empty", _set("canary.host", ""), "spec.canary.host", "at least 1 chars", "at least 1 character"
    ),
    Case(
        "failure-limit-negative",
        _set("analysis.failureLimit", -1),
        "spec.analysis.failureLimit",
        "greater than or equal to 0",
        "greater than or equal to 0",
    ),
    Case(
        "error-limit-negative",
        _set("analysis.errorLimit", -1),
        "spec.analysis.errorLimit",
        "greater than or equal to 0",
        "greater than or equal to 0",
    ),
    Case(
        "inconclusive-limit-negative",
        _set("analysis.inconclusiveLimit", -1),
        "spec.analysis.inconclusiveLimit",
        "greater than or equal to 0",
        "greater than or equal to 0",
    ),
    Case(
        "min-requests-negative",
        _set("analysis.minRequests", -5),
        "spec.analysis.minRequests",
        "greater than or equal to 0",
        "greater than or equal to 0",
    ),
    Case(
        "route-empty",
        _set("trafficRouting.istio.routes", ["primary", ""]),
        "spec.trafficRouting.istio.routes[1]",
        "at least 1 chars",
        "at least 1 character",
    ),
    Case(
        "prometheus-ftp",
        _set("analysis.prometheus.address", "ftp://prometheus:9090"),
        "spec.analysis.prometheus.address",
        "must be an http or https URL",
        "must be an http or https URL",
    ),
    Case(
        "prometheus-no-scheme",
        _set("analysis.prometheus.address", "prometheus.monitoring:9090"),
        "spec.analysis.prometheus.address",
        "must be an http or https URL",
        "must be an http or https URL",
    ),
    Case(
        "query-unknown-variable",
        _set("analysis.gates.2.query", 'sum(rate(x{model="{{ canary.modle }}"}[{{ window }}]))'),
        "spec.analysis.gates[2].query",
        "unknown variable {{ canary.modle }} (known: target.host,",
        "unknown variable {{ canary.modle }} (known: target.host,",
    ),
    Case(
        "query-unknown-variable-unspaced",
        _set("analysis.gates.2.query", 'x{a="{{ target.host }}", b="{{rollout.nam}}"}[{{window}}]'),
        "spec.analysis.gates[2].query",
        "unknown variable {{ rollout.nam }}",
        "unknown variable {{ rollout.nam }}",
    ),
    Case(
        "query-unknown-variable-longer",
        _set("analysis.gates.2.query", 'x{a="{{ windows }}"}'),
        "spec.analysis.gates[2].query",
        "unknown variable {{ windows }}",
        "unknown variable {{ windows }}",
    ),
    Case(
        "query-longest-unknown-variable-last",
        _set(
            "analysis.gates.2.query",
            _LONGEST_QUERY.replace("vector(1)", 'x{a="{{\tcanary.modle  }}"}')[:4096],
        ),
        "spec.analysis.gates[2].query",
        "unknown variable {{ canary.modle }}",
        "unknown variable {{ canary.modle }}",
    ),
    Case(
        "subset-label-not-a-label",
        _set("analysis.subsetLabel", "destination-version"),
        "spec.analysis.subsetLabel",
        "should match",
        "should match",
    ),
    Case(
        "on-error-unknown",
        _set("analysis.onError", "Ignore"),
        "spec.analysis.onError",
        "Unsupported value",
        "'Rollback' or 'Hold'",
    ),
    Case(
        "llm-template-without-source",
        _set("analysis.gates.0", {"name": "ttft", "template": "llm-ttft-p99", "max": 2}),
        "spec.analysis.gates[0]",
        "needs a source",
        "needs a source",
    ),
    Case(
        "llm-template-unserved-source",
        _set(
            "analysis.gates.0",
            {"name": "cut", "template": "llm-truncation-rate", "source": "sglang", "max": 1},
        ),
        "spec.analysis.gates[0]",
        "served by source(s) vllm",
        "served by source(s) vllm, not sglang",
    ),
    Case(
        "source-on-a-query",
        _set("analysis.gates.2.source", "vllm"),
        "spec.analysis.gates[2]",
        "a query takes none",
        "a query takes none",
    ),
    Case(
        "source-unknown",
        _set("analysis.gates.0", {"name": "t", "template": "llm-ttft-p99", "source": "tgi", "max": 2}),
        "spec.analysis.gates[0].source",
        "Unsupported value",
        "'vllm', 'sglang', 'otel-genai', 'litellm' or 'istio'",
    ),
    Case(
        "compare-without-bound",
        _set("analysis.gates.0", {"name": "e", "template": "istio-error-rate", "compare": {}}),
        "spec.analysis.gates[0].compare",
        "compare needs at least one of maxIncrease, maxDecrease and maxDelta",
        "compare needs at least one of maxIncrease, maxDecrease and maxDelta",
    ),
    Case(
        "compare-percent-malformed",
        _set(
            "analysis.gates.0",
            {"name": "e", "template": "istio-error-rate", "compare": {"maxIncrease": "10"}},
        ),
        "spec.analysis.gates[0].compare.maxIncrease",
        "should match",
        "must be a percentage like 10%",
    ),
    Case(
        "test-with-threshold",
        _set(
            "analysis.gates.0",
            {"name": "e", "template": "istio-error-events", "test": {"kind": "sequential"}, "max": 1},
        ),
        "spec.analysis.gates[0]",
        "it takes no min, max or compare",
        "it takes no min, max or compare",
    ),
    Case(
        "test-on-a-rate-template",
        _set(
            "analysis.gates.0", {"name": "e", "template": "istio-error-rate", "test": {"kind": "sequential"}}
        ),
        "spec.analysis.gates[0]",
        "a sequential gate needs an events template",
        "a sequential gate needs an events template",
    ),
    Case(
        "events-without-test",
        _set("analysis.gates.0", {"name": "e", "template": "istio-error-events", "max": 3}),
        "spec.analysis.gates[0]",
        "an events template gives raw counters: it needs test",
        "an events template gives raw counters: it needs test",
    ),
    Case(
        "test-alpha-too-large",
        _set(
            "analysis.gates.0",
            {"name": "e", "template": "istio-error-events", "test": {"kind": "sequential", "alpha": 0.5}},
        ),
        "spec.analysis.gates[0].test.alpha",
        "less than or equal to 0.2",
        "less than or equal to 0.2",
    ),
    Case(
        "llm-gate-same-model",
        lambda s: (
            s["canary"].update(model="gpt-4o"),
            s["analysis"]["gates"].append(
                {"name": "t", "template": "llm-ttft-p99", "source": "vllm", "max": 2}
            ),
        ),
        "spec",
        "stable.model and canary.model must be set and differ",
        "stable.model and canary.model must be set and differ",
    ),
    Case(
        "cost-without-pricing",
        lambda s: s["analysis"]["gates"].append(
            {"name": "cost", "template": "llm-cost-per-request", "source": "vllm", "max": 0.01}
        ),
        "spec",
        "stable.pricing and canary.pricing must be set",
        "stable.pricing and canary.pricing must be set",
    ),
    Case(
        "min-duration-above-duration",
        _set("stages.0.minDuration", "3h"),
        "spec.stages[0]",
        "minDuration must not be longer than duration",
        "minDuration must not be longer than duration",
    ),
    Case(
        "approval-unknown",
        _set("stages.2.approval", "Maybe"),
        "spec.stages[2].approval",
        "Unsupported value",
        "'Auto' or 'Manual'",
    ),
]

_SHADOW_THEN_WEIGHTS = [{"shadow": 100, "duration": "1h"}, {"weight": 10, "duration": "1h"}, {"weight": 100}]
_EXPERIMENT = {
    "id": "exp-claude-migration-v1",
    "stickiness": {"bucketHeader": "x-user-bucket"},
    "overrides": [
        {"header": "x-experiment", "value": "canary", "variant": "canary"},
        {"header": "x-internal", "value": "yes", "variant": "stable"},
    ],
    "dimensions": True,
}


def _override(**changes: Any) -> Callable[[Spec], None]:
    return _set(
        "experiment",
        {"overrides": [{"header": "x-experiment", "value": "on", "variant": "canary", **changes}]},
    )


INVALID += [
    Case(
        "shadow-after-weight",
        _set("stages", [{"weight": 5}, {"shadow": 50}, {"weight": 100}]),
        "spec.stages",
        "shadow stages come before weighted stages",
        "shadow stages come before weighted stages",
    ),
    Case(
        "shadow-and-weight",
        _set("stages.0", {"weight": 1, "shadow": 50}),
        "spec.stages[0]",
        "exactly one of weight and shadow",
        "exactly one of weight and shadow",
    ),
    Case(
        "stage-without-weight-or-shadow",
        _set("stages.0", {"duration": "1h"}),
        "spec.stages[0]",
        "exactly one of weight and shadow",
        "exactly one of weight and shadow",
    ),
    Case(
        "shadow-0",
        _set("stages", [{"shadow": 0}, {"weight": 100}]),
        "spec.stages[0].shadow",
        "greater than or equal to 1",
        "greater than or equal to 1",
    ),
    Case(
        "shadow-101",
        _set("stages", [{"shadow": 101}, {"weight": 100}]),
        "spec.stages[0].shadow",
        "less than or equal to 100",
        "less than or equal to 100",
    ),
    Case(
        "override-names-no-variant",
        _override(variant="treatment"),
        "spec.experiment.overrides[0].variant",
        "Unsupported value",
        "'stable' or 'canary'",
    ),
    Case(
        "override-without-variant",
        lambda s: s.update(experiment={"overrides": [{"header": "x-experiment", "value": "on"}]}),
        "spec.experiment.overrides[0].variant",
        "Required value",
        "Field required",
    ),
    Case(
        "override-header-upper-case",
        _override(header="X-Experiment"),
        "spec.experiment.overrides[0].header",
        "should match",
        "should match",
    ),
    Case(
        "override-header-reserved",
        _override(header="x-variant"),
        "spec.experiment",
        "the operator writes those",
        "the operator writes those",
    ),
    Case(
        "bucket-header-not-a-header-name",
        _set("experiment", {"stickiness": {"bucketHeader": "x user bucket"}}),
        "spec.experiment.stickiness.bucketHeader",
        "should match",
        "should match",
    ),
    Case(
        "bucket-header-reserved",
        _set("experiment", {"stickiness": {"bucketHeader": "x-model"}}),
        "spec.experiment",
        "cannot be dimension headers",
        "cannot be dimension headers",
    ),
    Case(
        "user-header-reserved",
        _set("experiment", {"stickiness": {"userHeader": "x-variant"}}),
        "spec.experiment",
        "cannot be dimension headers",
        "cannot be dimension headers",
    ),
    Case(
        "stickiness-without-a-header",
        _set("experiment", {"stickiness": {}}),
        "spec.experiment.stickiness",
        "set bucketHeader (apps send the bucket), userHeader",
        "set bucketHeader (apps send the bucket), userHeader",
    ),
    Case(
        "user-header-is-the-bucket-header",
        _set("experiment", {"stickiness": {"userHeader": "x-user", "bucketHeader": "x-user"}}),
        "spec.experiment.stickiness",
        "the user header and the bucket header must differ",
        "the user header and the bucket header must differ",
    ),
    Case(
        "user-header-is-the-default-bucket-header",
        _set("experiment", {"stickiness": {"userHeader": "x-modelrollout-bucket"}}),
        "spec.experiment.stickiness",
        "the user header and the bucket header must differ",
        "the user header and the bucket header must differ",
    ),
    Case(
        "user-header-not-a-header-name",
        _set("experiment", {"stickiness": {"userHeader": "X-User-Id"}}),
        "spec.experiment.stickiness.userHeader",
        "should match",
        "should match",
    ),
    Case(
        "experiment-id-with-spaces",
        _set("experiment", {"id": "my experiment"}),
        "spec.experiment.id",
        "should match",
        "should match",
    ),
    Case(
        "judge-gate-without-judge",
        _set("analysis.gates.0", {"name": "quality", "template": "judge-win-rate", "test": {}}),
        "spec.analysis",
        "spec.analysis.judge must be set",
        "spec.analysis.judge must be set",
    ),
    Case(
        "criterion-on-another-template",
        _set("analysis.gates.0.criterion", "accuracy"),
        "spec.analysis.gates[0]",
        "only the judge-score template takes it",
        "only the judge-score template takes it",
    ),
    Case(
        "criterion-not-judged",
        _edits(
            _set("analysis.judge", _JUDGE), _set("analysis.gates.0", _JUDGE_SCORE | {"criterion": "tone"})
        ),
        "spec.analysis",
        "must be one of spec.analysis.judge.criteria",
        "criterion tone is not one of spec.analysis.judge.criteria",
    ),
]

# Specs the models refuse and the API server cannot: placing a variable needs PromQL's lexer (strings,
# escapes, comments), which CEL does not have. The operator refuses them with an InvalidSpec condition before
# it moves any traffic.
OPERATOR_ONLY = [
    Case(
        "query-variable-outside-a-string",
        _set("analysis.gates.2.query", "sum(rate(x{m={{ canary.model }}}[{{ window }}]))"),
        "spec.analysis.gates[2].query",
        model_says="is outside any string",
    ),
    Case(
        "query-malformed-placeholder",
        _set("analysis.gates.2.query", 'x{m="{{ canary.model | upper }}"}'),
        "spec.analysis.gates[2].query",
        model_says="malformed placeholder",
    ),
    Case(
        "query-unterminated-string",
        _set("analysis.gates.2.query", 'x{m="{{ canary.model }}}'),
        "spec.analysis.gates[2].query",
        model_says="unterminated string",
    ),
]

# The other side of each edge: specs that must be accepted.
VALID = [
    Case(
        "judge-gates",
        _edits(
            _set("analysis.judge", _JUDGE | {"criteria": ["accuracy", "tone"]}),
            _set(
                "analysis.gates.0",
                {"name": "quality", "template": "judge-win-rate", "test": {"margin": "5%"}},
            ),
            _set("analysis.gates.1", _JUDGE_SCORE | {"criterion": "tone"}),
            _set("analysis.gates.2", _JUDGE_SCORE | {"name": "mean-score"}),
        ),
    ),
    Case("sample", lambda s: None),
    Case("shadow-then-weights", _set("stages", _SHADOW_THEN_WEIGHTS)),
    Case(
        "shadow-only", _set("stages", [{"shadow": 10, "duration": "1h"}, {"shadow": 100, "duration": "1h"}])
    ),
    Case("experiment-full", _set("experiment", _EXPERIMENT)),
    Case("experiment-empty", _set("experiment", {})),
    Case("sticky-by-user-id", _set("experiment", {"stickiness": {"userHeader": "x-user-id"}})),
    Case(
        "sticky-by-user-id-into-a-named-header",
        _set("experiment", {"stickiness": {"userHeader": "x-user-id", "bucketHeader": "x-user-bucket"}}),
    ),
    Case("single-stage-100", _stages(100)),
    Case("weights-1-and-100", _stages(1, 100)),
    Case("duration-compound", _set("stages.0.duration", "1h30m")),
    Case("duration-milliseconds", _set("stages.0.duration", "1500ms")),
    Case("stage-without-duration", _delete("stages.0.duration")),
    Case("interval-1s", _set("analysis.interval", "1s")),
    Case(
        "gate-min-only",
        lambda s: (s["analysis"]["gates"][0].pop("max"), s["analysis"]["gates"][0].update(min=0)),
    ),
    Case("gate-min-equals-max", _set("analysis.gates.0.min", 0.02)),
    Case("gate-query-only", _set("analysis.gates", [{"name": "up", "query": "up", "min": 1}])),
    Case(
        "query-every-known-variable",
        _set("analysis.gates.2.query", _EVERY_VARIABLE),
    ),
    Case("query-longest", _set("analysis.gates.2.query", _LONGEST_QUERY)),
    Case("subset-label-canonical-revision", _set("analysis.subsetLabel", "destination_canonical_revision")),
    Case("no-gates", _set("analysis.gates", [])),
    Case(
        "same-host-other-subsets",
        lambda s: (s["stable"].update(host="llm", subset="v1"), s["canary"].update(host="llm", subset="v2")),
    ),
    Case("host-fqdn", _set("stable.host", "llm-gpt4o.llm.svc.cluster.local")),
    Case(
        "limits-zero",
        lambda s: s["analysis"].update(failureLimit=0, errorLimit=0, inconclusiveLimit=0, minRequests=0),
    ),
    Case("routes-omitted", _delete("trafficRouting.istio.routes")),
    Case("prometheus-https", _set("analysis.prometheus.address", "https://prom.example.com/prometheus")),
    Case("prometheus-omitted", _delete("analysis.prometheus")),
    Case("analysis-omitted", _delete("analysis")),
    Case("istio-v1beta1", _set("trafficRouting.istio.apiVersion", "networking.istio.io/v1beta1")),
    Case(
        "llm-gates",
        _set(
            "analysis.gates",
            [
                {"name": "ttft", "template": "llm-ttft-p99", "source": "vllm", "max": 2},
                {
                    "name": "tokens",
                    "template": "llm-output-tokens",
                    "source": "sglang",
                    "compare": {"maxIncrease": "20%"},
                },
                {
                    "name": "latency",
                    "template": "llm-latency-p99",
                    "source": "istio",
                    "max": 5,
                    "advisory": True,
                },
                {
                    "name": "errors",
                    "template": "llm-error-events",
                    "source": "otel-genai",
                    "test": {"kind": "sequential", "alpha": 0.01, "margin": "10%"},
                },
                {"name": "spend", "template": "llm-cost-per-request", "source": "litellm", "max": 0.05},
                {"name": "slow", "query": 'x{h="{{ target.host }}"}', "test": {"kind": "sequential"}},
                {
                    "name": "err",
                    "template": "istio-error-rate",
                    "source": "istio",
                    "compare": {"maxDelta": 0.005, "maxDecrease": "0.5%"},
                },
            ],
        ),
    ),
    Case(
        "cost-with-pricing",
        lambda s: (
            s["stable"].update(pricing={"inputPerMillion": 2.5, "outputPerMillion": 10}),
            s["canary"].update(pricing={"inputPerMillion": 5, "outputPerMillion": 25}),
            s["analysis"]["gates"].append(
                {"name": "cost", "template": "llm-cost-per-request", "source": "vllm", "max": 0.01}
            ),
        ),
    ),
    Case("min-duration-equals-duration", _set("stages.0.minDuration", "2h")),
]


def edited(case: Case) -> Spec:
    spec = sample_spec()
    case.edit(spec)
    return spec


def sample_status() -> api.ModelRolloutStatus:
    """A status with every field the operator writes set, for round trips through the models and the API."""
    now = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    return api.ModelRolloutStatus(
        observed_generation=1,
        phase=api.Phase.PROGRESSING,
        reason="StageAdvanced",
        stage=2,
        stage_count=6,
        progress="3/6",
        canary_weight=10,
        stage_started_at=now,
        pair_hash="9f2c",
        stable=api.Target(host="llm-gpt4o", model="gpt-4o", prompt_version="v12"),
        canary=api.Target(host="llm-claude", model="claude-opus-4-8", prompt_version="v13"),
        rollout_started_at=now,
        hold=api.Hold.INCONCLUSIVE,
        drift_corrections=[now],
        failed_checks=1,
        consecutive_errors=2,
        consecutive_inconclusive=3,
        last_analysis=api.AnalysisResult(
            at=now,
            stage=2,
            verdict=api.Verdict.PASS,
            gates=[
                api.GateResult(
                    name="error-rate",
                    verdict=api.Verdict.PASS,
                    value=0.004,
                    max=0.02,
                    requests=1532,
                    window="5m",
                    message="0.004 <= 0.02",
                ),
                api.GateResult(name="p99-latency-ms", verdict=api.Verdict.INCONCLUSIVE, max=5000.0),
            ],
        ),
        rollback=api.Rollback(
            at=now,
            reason="AnalysisFailed",
            gate="error-rate",
            value=0.05,
            threshold="<= 0.02",
            window="5m",
            message="earlier generation",
        ),
        last_action=api.ActionRecord(action="promote", at=now, result="advanced to stage 3/6"),
        conditions=[
            api.Condition(
                type="Ready",
                status="False",
                reason="Progressing",
                message="stage 3/6",
                last_transition_time=now,
                observed_generation=1,
            ),
            api.Condition(
                type="Progressing", status="True", reason="StageAdvanced", last_transition_time=now
            ),
        ],
        message="stage 3/6 at 10%: all gates pass",
    )
