"""The `modelrollout.io/v1alpha1` ModelRollout API: the one source of truth.

The CRD in `crds/` is generated from these models (`make crds`): OpenAPI constraints come from the field
types, and the rules that span fields are CEL `x-kubernetes-validations` declared here beside the Python check
that enforces the same rule. So the API server refuses a bad spec at `kubectl apply`, and a spec that slipped
past an older CRD is still caught when the operator parses it (reported as an InvalidSpec condition).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from enum import StrEnum
from itertools import pairwise
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from modelrollout.durations import DURATION_PATTERN, format_duration, parse_duration
from modelrollout.metrics.families import EVENT_TEMPLATES, JUDGE_TEMPLATES, SUPPORTED_SOURCES, priced_cost
from modelrollout.metrics.promql import KNOWN_VARIABLES, check_template

GROUP = "modelrollout.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelRollout"
PLURAL = "modelrollouts"
SINGULAR = "modelrollout"
SHORT_NAMES = ("mro",)
CATEGORIES = ("modelrollout", "progressive-delivery")

MAX_STAGES = 20
MAX_GATES = 16
# Counter series a sequential gate follows per variant (their last values live in status): built-in event
# templates give one per serving process.
MAX_SERIES = 128

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
LABEL_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*$"  # a Prometheus label name
# Istio's metrics label a destination with its pods' `version` label as `destination_version`; a subset named
# after that label is selected by it.
DEFAULT_SUBSET_LABEL = "destination_version"


# Messages shared by the CEL rules and the Python validators, so both sides say the same thing.
class Rule(StrEnum):
    WEIGHTS_INCREASING = "stage weights must be strictly increasing"
    LAST_STAGE_FULL = "the last stage must have weight 100 (or every stage be a shadow stage)"
    WEIGHT_XOR_SHADOW = "a stage needs exactly one of weight and shadow"
    SHADOW_FIRST = "shadow stages come before weighted stages"
    OVERRIDE_HEADER_RESERVED = (
        "an override cannot match the bucket header or a dimension header "
        "(x-model, x-prompt-version, x-experiment-id, x-variant): the operator writes those"
    )
    INTERVAL_MIN = "must be at least 1s"
    TEMPLATE_XOR_QUERY = "a gate needs exactly one of template and query"
    GATE_BOUND = "a gate needs at least one of min, max, compare and test"
    COMPARE_BOUND = "compare needs at least one of maxIncrease, maxDecrease and maxDelta"
    TEST_ALONE = "a sequential gate tests event counts: it takes no min, max or compare"
    TEST_NEEDS_COUNTS = (
        "a sequential gate needs an events template (istio-error-events, llm-error-events, "
        "llm-truncation-events, judge-win-rate) or a query that returns event counters"
    )
    EVENTS_NEED_TEST = "an events template gives raw counters: it needs test (kind: sequential)"
    SOURCE_NEEDED = "an llm-* template needs a source (vllm, sglang, otel-genai, litellm or istio)"
    MIN_DURATION_LE_DURATION = "minDuration must not be longer than duration"
    MODELS_DIFFER = (
        "llm-* gates on a non-istio source select each variant by its model name: "
        "stable.model and canary.model must be set and differ (for a prompt-only change, use a query gate "
        "with labels that tell the variants apart)"
    )
    PRICING_NEEDED = (
        "llm-cost-per-request on this source prices token counters: stable.pricing and "
        "canary.pricing must be set"
    )
    GATE_MIN_LE_MAX = "min must not be greater than max"
    CANARY_DIFFERS = "canary must differ from stable: another host, or the same host with another subset"
    PROMETHEUS_URL = "must be an http or https URL"
    CRITERION_JUDGE_SCORE = "criterion selects one judge criterion: only the judge-score template takes it"
    JUDGE_GATES_NEED_JUDGE = (
        "judge-* gates read the judge service's verdicts on this rollout: spec.analysis.judge must be set"
    )


def _cel(
    rule: str, message: Rule | str, field_path: str | None = None, message_expression: str | None = None
) -> dict[str, str]:
    validation = {"rule": rule, "message": str(message)}
    if message_expression:
        validation["messageExpression"] = message_expression
    if field_path:
        validation["fieldPath"] = field_path
    return validation


def _validations(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


def _to_timedelta(value: Any) -> Any:
    return parse_duration(value) if isinstance(value, str) else value


Duration = Annotated[
    timedelta,
    BeforeValidator(_to_timedelta),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "maxLength": 32}),
]


def _at_least_one_second(value: timedelta) -> timedelta:
    if value < timedelta(seconds=1):
        raise ValueError(Rule.INTERVAL_MIN)
    return value


# A duration of one second or more, checked by CEL too (the pattern alone allows `0s` and `500ms`).
PositiveDuration = Annotated[
    timedelta,
    BeforeValidator(_to_timedelta),
    AfterValidator(_at_least_one_second),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 32,
            **_validations(_cel("duration(self) >= duration('1s')", Rule.INTERVAL_MIN)),
        }
    ),
]

DnsName = Annotated[str, Field(pattern=DNS_SUBDOMAIN, min_length=1, max_length=253)]
DnsLabel = Annotated[str, Field(pattern=DNS_LABEL, min_length=1, max_length=63)]


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(Rule.PROMETHEUS_URL)
    return value


HttpUrl = Annotated[
    str,
    AfterValidator(_http_url),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": 2048,
            **_validations(
                _cel(
                    "isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHost() != ''",
                    Rule.PROMETHEUS_URL,
                )
            ),
        }
    ),
]


PERCENT_PATTERN = r"^[0-9]{1,4}(\.[0-9]{1,4})?%$"


def _to_fraction(value: Any) -> Any:
    if isinstance(value, str):
        if not re.match(PERCENT_PATTERN, value):
            raise ValueError(f"must be a percentage like 10%, got {value!r}")
        return float(value[:-1]) / 100
    return value


def _format_percent(value: float) -> str:
    return f"{value * 100:g}%"


# A share written as `10%` on the wire (as people write thresholds), a fraction (0.1) in Python.
Percent = Annotated[
    float,
    BeforeValidator(_to_fraction),
    Field(ge=0),
    PlainSerializer(_format_percent, return_type=str),
    WithJsonSchema({"type": "string", "pattern": PERCENT_PATTERN, "maxLength": 10}),
]


def exposure(weight: int, mirror: int) -> str:
    """How a traffic position reads: `10%`, or `shadow 50%` in a shadow stage (stable serves everything,
    this percent of it is mirrored to the canary)."""
    return f"shadow {mirror}%" if mirror and not weight else f"{weight}%"


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class Approval(StrEnum):
    AUTO = "Auto"
    MANUAL = "Manual"


class OnError(StrEnum):
    ROLLBACK = "Rollback"
    HOLD = "Hold"


class OnInconclusive(StrEnum):
    HOLD = "Hold"
    ROLLBACK = "Rollback"


class GateTemplate(StrEnum):
    ISTIO_ERROR_RATE = "istio-error-rate"
    ISTIO_LATENCY_P99 = "istio-latency-p99"
    ISTIO_REQUEST_COUNT = "istio-request-count"
    ISTIO_ERROR_EVENTS = "istio-error-events"
    LLM_TTFT_P50 = "llm-ttft-p50"
    LLM_TTFT_P99 = "llm-ttft-p99"
    LLM_INTER_TOKEN_LATENCY_P99 = "llm-inter-token-latency-p99"  # noqa: S105 - a template name
    LLM_TOKENS_PER_SECOND = "llm-tokens-per-second"
    LLM_LATENCY_P99 = "llm-latency-p99"
    LLM_OUTPUT_TOKENS = "llm-output-tokens"
    LLM_TRUNCATION_RATE = "llm-truncation-rate"
    LLM_ERROR_RATE = "llm-error-rate"
    LLM_COST_PER_REQUEST = "llm-cost-per-request"
    LLM_ERROR_EVENTS = "llm-error-events"
    LLM_TRUNCATION_EVENTS = "llm-truncation-events"
    JUDGE_WIN_RATE = "judge-win-rate"
    JUDGE_SCORE = "judge-score"


class MetricsSource(StrEnum):
    """Who exports the metrics an llm-* template reads (see `metrics.families`)."""

    VLLM = "vllm"
    SGLANG = "sglang"
    OTEL_GENAI = "otel-genai"
    LITELLM = "litellm"
    ISTIO = "istio"


class IstioApiVersion(StrEnum):
    V1 = "networking.istio.io/v1"
    V1BETA1 = "networking.istio.io/v1beta1"


class Pricing(ApiModel):
    """What the model costs, for llm-cost-per-request gates on sources without a spend counter."""

    input_per_million: float = Field(ge=0, le=1e6, description="USD per million input (prompt) tokens.")
    output_per_million: float = Field(ge=0, le=1e6, description="USD per million output tokens.")


class Target(ApiModel):
    """A model service: where the VirtualService sends its share of traffic, and what it serves."""

    host: DnsName = Field(description="VirtualService destination host (Service name or FQDN).")
    subset: DnsLabel | None = Field(None, description="DestinationRule subset, if the host has several.")
    port: int | None = Field(None, ge=1, le=65535, description="Destination port, if the host has several.")
    model: str | None = Field(None, max_length=253, description="Model served (for reports and queries).")
    prompt_version: str | None = Field(None, max_length=253, description="Prompt version served.")
    pricing: Pricing | None = Field(None, description="USD per million tokens, for cost-per-request gates.")


class ObjectReference(ApiModel):
    name: DnsName
    namespace: DnsLabel | None = Field(None, description="Defaults to the ModelRollout's namespace.")


class IstioRouting(ApiModel):
    virtual_service: ObjectReference
    routes: list[Annotated[str, Field(min_length=1, max_length=253)]] | None = Field(
        None,
        min_length=1,
        max_length=32,
        description="Names of the http routes to manage; may be omitted when the VirtualService has exactly "
        "one http route.",
    )
    api_version: IstioApiVersion = Field(
        IstioApiVersion.V1, description="Istio networking API version to use (v1beta1 for older meshes)."
    )


class TrafficRouting(ApiModel):
    istio: IstioRouting


class Stage(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel("has(self.weight) != has(self.shadow)", Rule.WEIGHT_XOR_SHADOW),
            _cel(
                "!has(self.minDuration) || !has(self.duration) || "
                "duration(self.minDuration) <= duration(self.duration)",
                Rule.MIN_DURATION_LE_DURATION,
                ".minDuration",
            ),
        )
    )

    weight: int | None = Field(
        None, ge=1, le=100, description="Canary share of traffic in percent during this stage."
    )
    shadow: int | None = Field(
        None,
        ge=1,
        le=100,
        description="A shadow stage: stable keeps all live traffic and this percent of it is mirrored to "
        "the canary, whose answers the mesh drops. Shadow stages come before weighted ones.",
    )
    duration: Duration | None = Field(None, description="Soak time before the stage may advance (e.g. 2h).")
    min_duration: Duration | None = Field(
        None,
        description="With sequential gates: the stage may advance after this long, before its soak ends, "
        "when every sequential gate has evidence that the canary is no worse (pass with evidence).",
    )
    approval: Approval = Field(
        Approval.AUTO, description="Manual: after the soak, wait for a human to promote."
    )

    @property
    def canary_weight(self) -> int:
        """The canary's share of live traffic: 0 in a shadow stage."""
        return self.weight or 0

    @property
    def mirror(self) -> int:
        """The percent of live traffic mirrored to the canary: 0 in a weighted stage."""
        return self.shadow or 0

    @model_validator(mode="after")
    def _weight_or_shadow(self) -> Stage:
        if (self.weight is None) == (self.shadow is None):
            raise ValueError(Rule.WEIGHT_XOR_SHADOW)
        return self

    @model_validator(mode="after")
    def _min_duration_within_duration(self) -> Stage:
        if self.min_duration is not None and self.duration is not None and self.min_duration > self.duration:
            raise ValueError(Rule.MIN_DURATION_LE_DURATION)
        return self


# The API server refuses a query with an unknown variable too: CEL counts the placeholders and the known ones
# among them (RE2 has no lookahead to find an unknown one directly, and a regex of their complement costs
# more than CEL allows on 4096 characters); its message names the first unknown one, found in the query with
# the known ones (spaces inside the braces evened out) taken away. Everything else `check_template` refuses
# (misplaced or malformed placeholders, unterminated strings) needs PromQL's lexer: the operator reports it as
# InvalidSpec before it moves any traffic.
ANY_PLACEHOLDER = r"\{\{[ \t]*[\w.]+[ \t]*\}\}"
KNOWN_PLACEHOLDER = r"\{\{[ \t]*(?:" + "|".join(re.escape(name) for name in KNOWN_VARIABLES) + r")[ \t]*\}\}"
_KNOWN_TEXT = ", ".join(KNOWN_VARIABLES)


def _first_unknown_variable() -> str:
    """CEL: the name in the first placeholder of `self` that is not a known variable (or '')."""
    text = "self.replace('\\t', ' ')" + ".replace('{{ ', '{{').replace(' }}', '}}')" * 4
    for name in KNOWN_VARIABLES:
        text += f".replace('{{{{{name}}}}}', '')"
    return text + r".find(r'\{\{[\w.]+\}\}').replace('{{', '').replace('}}', '')"


_FIRST_UNKNOWN = _first_unknown_variable()

GateQuery = Annotated[
    str,
    Field(min_length=1, max_length=4096),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": 4096,
            **_validations(
                _cel(
                    f"size(self.findAll(r'{ANY_PLACEHOLDER}')) == size(self.findAll(r'{KNOWN_PLACEHOLDER}'))",
                    f"unknown variable in query (known: {_KNOWN_TEXT})",
                    # No cel.bind in CRD rules: the name is found twice, once to test it is there.
                    message_expression=(
                        f"{_FIRST_UNKNOWN} == '' ? 'unknown variable in query (known: {_KNOWN_TEXT})' : "
                        f"'unknown variable {{{{ ' + {_FIRST_UNKNOWN} + ' }}}} (known: {_KNOWN_TEXT})'"
                    ),
                )
            ),
        }
    ),
]


class LocalObjectReference(ApiModel):
    name: DnsName


class PrometheusConfig(ApiModel):
    address: HttpUrl = Field(description="Prometheus base URL, e.g. http://prometheus.monitoring:9090.")
    timeout: PositiveDuration = Field(timedelta(seconds=10), description="Per-query timeout. Default 10s.")
    secret_ref: LocalObjectReference | None = Field(
        None,
        description="Secret in the rollout's namespace with `token` (bearer) or `username` and `password`. "
        "They are sent only to an address the operator allows: the Secret's own `address` key, or one of "
        "the operator's --prometheus-credentials-allow addresses.",
    )


class Compare(ApiModel):
    """Canary against stable: the same query over the same window, one check evaluating both."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel("has(self.maxIncrease) || has(self.maxDecrease) || has(self.maxDelta)", Rule.COMPARE_BOUND)
        )
    )

    max_increase: Percent | None = Field(
        None, description="The canary may exceed the stable by at most this share of the stable's value."
    )
    max_decrease: Percent | None = Field(
        None, description="The canary may fall below the stable by at most this share of the stable's value."
    )
    max_delta: float | None = Field(
        None, ge=0, description="The canary may exceed the stable by at most this much (the gate's unit)."
    )

    @model_validator(mode="after")
    def _a_bound(self) -> Compare:
        if self.max_increase is None and self.max_decrease is None and self.max_delta is None:
            raise ValueError(Rule.COMPARE_BOUND)
        return self


class TestKind(StrEnum):
    SEQUENTIAL = "sequential"


class SequentialTest(ApiModel):
    """An anytime-valid test on event counts: is the canary's event rate worse than the stable's by more
    than `margin`? Checked at every interval without inflating the false-alarm rate above `alpha`."""

    kind: TestKind = TestKind.SEQUENTIAL
    alpha: float = Field(
        0.01, ge=0.0001, le=0.2, description="Chance of rolling back a canary that is no worse. Default 0.01."
    )
    margin: Percent = Field(
        0.1, le=10, description="How much worse than the stable is tolerated, e.g. 10%. Default 10%."
    )


DEFAULT_CRITERIA = ("accuracy", "clarity", "completeness")
_CRITERIA_LIST = "[" + ", ".join(f"'{c}'" for c in DEFAULT_CRITERIA) + "]"
_EVENT_LIST = "[" + ", ".join(f"'{t}'" for t in sorted(EVENT_TEMPLATES)) + "]"


def _served_by(template: str, sources: tuple[str, ...]) -> str:
    return f"template {template} is served by source(s) {', '.join(sources)}"


# One rule per template, each cheap for CEL's cost estimate (a map literal indexed by the template is not).
_SOURCE_RULES = tuple(
    _cel(
        f"!has(self.template) || self.template != '{template}' || !has(self.source) || self.source in ["
        + ", ".join(f"'{source}'" for source in sources)
        + "]",
        _served_by(template, sources),
        ".source",
    )
    for template, sources in SUPPORTED_SOURCES.items()
)


class Gate(ApiModel):
    """One check at every interval: a built-in template or any PromQL, compared with min and/or max, with the
    stable (compare), or tested sequentially on event counts (test)."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel("has(self.template) != has(self.query)", Rule.TEMPLATE_XOR_QUERY),
            _cel("has(self.min) || has(self.max) || has(self.compare) || has(self.test)", Rule.GATE_BOUND),
            _cel("!has(self.min) || !has(self.max) || self.min <= self.max", Rule.GATE_MIN_LE_MAX, ".min"),
            _cel(
                "!has(self.test) || !(has(self.min) || has(self.max) || has(self.compare))",
                Rule.TEST_ALONE,
                ".test",
            ),
            _cel(
                f"!has(self.test) || has(self.query) || self.template in {_EVENT_LIST}",
                Rule.TEST_NEEDS_COUNTS,
                ".test",
            ),
            _cel(
                f"!has(self.template) || !(self.template in {_EVENT_LIST}) || has(self.test)",
                Rule.EVENTS_NEED_TEST,
                ".template",
            ),
            _cel(
                "!has(self.template) || !self.template.startsWith('llm-') || has(self.source)",
                Rule.SOURCE_NEEDED,
                ".source",
            ),
            *_SOURCE_RULES,
            _cel(
                "!has(self.source) || (has(self.template) && (self.template.startsWith('llm-') || "
                "self.source == 'istio'))",
                "source selects the metric families of a built-in template: istio-* templates take none "
                "(or istio), a query takes none",
                ".source",
            ),
            _cel(
                "!has(self.criterion) || (has(self.template) && self.template == 'judge-score')",
                Rule.CRITERION_JUDGE_SCORE,
                ".criterion",
            ),
        )
    )

    name: DnsLabel
    template: GateTemplate | None = None
    source: MetricsSource | None = Field(
        None,
        description="Who exports the metrics of an llm-* template: vllm, sglang, otel-genai, litellm, istio.",
    )
    query: GateQuery | None = Field(None, description="PromQL; {{ ... }} variables.")
    min: float | None = Field(None, description="The value must be at least this.")
    max: float | None = Field(None, description="The value must be at most this.")
    compare: Compare | None = Field(None, description="Compare the canary with the stable.")
    test: SequentialTest | None = Field(
        None, description="A sequential test on event counts, canary against stable."
    )
    criterion: DnsLabel | None = Field(
        None,
        description="judge-score only: the judge criterion whose mean score is gated (default: the mean "
        "over all criteria).",
    )
    advisory: bool = Field(False, description="Measured and reported, never a reason to hold or roll back.")
    window: PositiveDuration | None = Field(
        None, description="Range of rate() for this gate; default analysis.window."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Gate:
        if (self.template is None) == (self.query is None):
            raise ValueError(Rule.TEMPLATE_XOR_QUERY)
        if self.min is None and self.max is None and self.compare is None and self.test is None:
            raise ValueError(Rule.GATE_BOUND)
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(Rule.GATE_MIN_LE_MAX)
        if self.test is not None and (self.min is not None or self.max is not None or self.compare):
            raise ValueError(Rule.TEST_ALONE)
        events = self.template is not None and self.template.value in EVENT_TEMPLATES
        if self.test is not None and self.query is None and not events:
            raise ValueError(Rule.TEST_NEEDS_COUNTS)
        if events and self.test is None:
            raise ValueError(Rule.EVENTS_NEED_TEST)
        template = self.template.value if self.template is not None else None
        if template is not None and template in SUPPORTED_SOURCES:
            supported = SUPPORTED_SOURCES[template]
            if self.source is None:
                raise ValueError(Rule.SOURCE_NEEDED)
            if self.source.value not in supported:
                raise ValueError(f"{_served_by(template, supported)}, not {self.source}")
        elif self.source is not None and (template is None or self.source != MetricsSource.ISTIO):
            raise ValueError(
                "source selects the metric families of a built-in template: istio-* templates take none "
                "(or istio), a query takes none"
            )
        if self.criterion is not None and self.template != GateTemplate.JUDGE_SCORE:
            raise ValueError(Rule.CRITERION_JUDGE_SCORE)
        return self

    @field_validator("query")
    @classmethod
    def _query_renders(cls, query: str | None) -> str | None:
        if query is not None:
            check_template(query)  # a TemplateError is a ValueError: reported with the field's path
        return query

    @property
    def judged(self) -> bool:
        """Whether the gate reads the judge service's verdicts: pairs the judge replays to both variants
        itself, whatever the mesh routes, so the routing checks (traffic split, request counts, a control
        at 100%) do not apply to it."""
        return self.template is not None and self.template.value in JUDGE_TEMPLATES

    @property
    def llm_source(self) -> MetricsSource | None:
        """The source of an llm-* template read from a model server's own metrics (not the mesh's)."""
        if self.source is None or self.source == MetricsSource.ISTIO:
            return None
        return self.source


class Analysis(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "!has(self.gates) || has(self.judge) || self.gates.all(g, !has(g.template) || "
                "!g.template.startsWith('judge-'))",
                Rule.JUDGE_GATES_NEED_JUDGE,
                ".gates",
            ),
            _cel(
                "!has(self.gates) || !has(self.judge) || self.gates.all(g, !has(g.criterion) || "
                f"g.criterion in (has(self.judge.criteria) ? self.judge.criteria : {_CRITERIA_LIST}))",
                "a judge-score criterion must be one of spec.analysis.judge.criteria",
                ".gates",
            ),
        )
    )

    interval: PositiveDuration = Field(
        timedelta(minutes=1), description="How often gates are checked. Default 1m."
    )
    window: PositiveDuration = Field(timedelta(minutes=2), description="Default range of rate(). Default 2m.")
    prometheus: PrometheusConfig | None = Field(None, description="Default: the operator's --prometheus-url.")
    min_requests: int = Field(100, ge=0, description="Fewer canary requests in the window: Inconclusive.")
    failure_limit: int = Field(
        1, ge=0, description="Failed checks tolerated in a rollout; one more rolls back."
    )
    error_limit: int = Field(
        4, ge=0, description="Consecutive checks that could not run; one more applies onError."
    )
    on_error: OnError = OnError.ROLLBACK
    inconclusive_limit: int = Field(
        10, ge=0, description="Consecutive inconclusive checks before onInconclusive."
    )
    on_inconclusive: OnInconclusive = OnInconclusive.HOLD
    subset_label: str = Field(
        DEFAULT_SUBSET_LABEL,
        pattern=LABEL_NAME,
        max_length=128,
        description="Label of Istio's metrics that built-in gates select a subset by, for a stable or canary "
        "that names a DestinationRule subset: destination_version (default; name subsets after the pods' "
        "`version` label) or destination_canonical_revision.",
    )
    gates: list[Gate] = Field(
        default_factory=list,
        max_length=MAX_GATES,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    judge: Judge | None = Field(None, description="Read by the judge service, not the operator.")

    @field_validator("gates")
    @classmethod
    def _unique_gate_names(cls, gates: list[Gate]) -> list[Gate]:
        names = [gate.name for gate in gates]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"gate names must be unique: {', '.join(duplicates)}")
        return gates

    @model_validator(mode="after")
    def _judged_gates(self) -> Analysis:
        judged = [gate.name for gate in self.gates if gate.judged]
        if judged and self.judge is None:
            raise ValueError(f"gates {', '.join(judged)}: {Rule.JUDGE_GATES_NEED_JUDGE}")
        criteria = self.judge.criteria if self.judge is not None else []
        for gate in self.gates:
            if gate.criterion is not None and gate.criterion not in criteria:
                raise ValueError(
                    f"gate {gate.name}: criterion {gate.criterion} is not one of "
                    f"spec.analysis.judge.criteria ({', '.join(criteria)})"
                )
        return self


# ---- the judge (read by the judge service; the operator only validates it) ----


class JudgeModelRef(ApiModel):
    url: HttpUrl = Field(
        description="OpenAI-compatible base URL of the judge model, e.g. http://judge:8000/v1."
    )
    name: str = Field(min_length=1, max_length=253, description="The judge model's name.")
    secret_ref: LocalObjectReference | None = Field(
        None,
        description="Secret in the rollout's namespace with `api-key` and `url`: the key is sent as a bearer "
        "token only when the Secret's own `url` equals `url`, so a spec edit cannot send it elsewhere.",
    )
    pricing: Pricing | None = Field(
        None, description="The judge model's prices, for the estimated cost of judging (a metric)."
    )


class EvalSet(ApiModel):
    config_map_ref: LocalObjectReference = Field(description="ConfigMap in the rollout's namespace.")
    key: str = Field("prompts", min_length=1, max_length=253, description="Its key: one prompt per line.")


class JudgeEndpoints(ApiModel):
    stable: HttpUrl | None = Field(
        None, description="OpenAI-compatible base URL of the stable's model server."
    )
    canary: HttpUrl | None = Field(None, description="... and of the canary's.")


class Judge(ApiModel):
    """LLM-as-judge pairwise comparison of the stable's and the canary's answers, run by the judge service
    (`modelrollout judge`), which exports its verdicts as Prometheus metrics for gates to read."""

    model: JudgeModelRef
    eval_set: EvalSet | None = Field(None, description="Prompts replayed to both variants.")
    endpoints: JudgeEndpoints | None = Field(
        None,
        description="Where prompts are replayed. Default: http://HOST.NAMESPACE.svc.cluster.local[:PORT]/v1 "
        "of the stable and the canary.",
    )
    rate_per_minute: int = Field(30, ge=1, le=600, description="Pairs judged per minute at most.")
    budget_per_hour: int = Field(500, ge=1, le=100_000, description="Judge model calls per hour at most.")
    timeout: PositiveDuration = Field(timedelta(seconds=30), description="Per model call. Default 30s.")
    criteria: list[DnsLabel] = Field(
        default_factory=lambda: list(DEFAULT_CRITERIA),
        min_length=1,
        max_length=8,
        description="What the judge scores, 0-10 each, beside naming a winner.",
    )


_PRICED_SOURCES = "[" + ", ".join(f"'{s.value}'" for s in MetricsSource if priced_cost(s.value)) + "]"


# ---- experiments: sticky assignment, overrides, dimensions ----

# A request header name as Istio matches it: lower case (Istio refuses upper-case keys in header matches),
# no pseudo-headers.
HEADER_NAME = r"^[a-z0-9]([a-z0-9_-]*[a-z0-9])?$"
HeaderName = Annotated[str, Field(pattern=HEADER_NAME, min_length=1, max_length=64)]
# What an experiment id may hold: it travels in a header value and into the bucket hash.
EXPERIMENT_ID = r"^[A-Za-z0-9]([A-Za-z0-9._:/-]*[A-Za-z0-9])?$"
DIMENSION_HEADERS = ("x-model", "x-prompt-version", "x-experiment-id", "x-variant")
MAX_OVERRIDES = 8
_DIMENSION_LIST = "[" + ", ".join(f"'{h}'" for h in DIMENSION_HEADERS) + "]"


class Variant(StrEnum):
    STABLE = "stable"
    CANARY = "canary"


DEFAULT_BUCKET_HEADER = "x-modelrollout-bucket"


class Stickiness(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "has(self.bucketHeader) || has(self.userHeader)",
                "set bucketHeader (apps send the bucket), userHeader (the mesh computes it), or both",
            ),
            _cel(
                "!has(self.userHeader) || self.userHeader != "
                f"(has(self.bucketHeader) ? self.bucketHeader : '{DEFAULT_BUCKET_HEADER}')",
                "the user header and the bucket header must differ",
                ".userHeader",
            ),
        )
    )

    bucket_header: HeaderName | None = Field(
        None,
        description="Request header carrying the user's bucket (0-99): buckets 0 .. weight-1 go to the "
        "canary, the rest to stable, so a user never moves back from canary to stable as the rollout "
        "advances. Requests without it follow the weighted route. Apps compute the bucket with "
        "modelrollout.assign.bucket(experiment id, user id). Default with userHeader: "
        f"{DEFAULT_BUCKET_HEADER}.",
    )
    user_header: HeaderName | None = Field(
        None,
        description="Request header carrying the user id: the operator manages an Istio EnvoyFilter (Lua, on "
        "the client sidecars of this namespace, for the VirtualService's hosts only) that computes the "
        "user's bucket into the bucket header and drops any bucket a client sent. Requests without a user "
        "id follow the weighted route.",
    )

    @model_validator(mode="after")
    def _headers(self) -> Stickiness:
        if self.bucket_header is None and self.user_header is None:
            raise ValueError(
                "set bucketHeader (apps send the bucket), userHeader (the mesh computes it), or both"
            )
        if self.user_header is not None and self.user_header == self.header:
            raise ValueError("userHeader: the user header and the bucket header must differ")
        return self

    @property
    def header(self) -> str:
        """The header the bucket routes match: bucketHeader, or the default the bucket filter writes."""
        return self.bucket_header or DEFAULT_BUCKET_HEADER


class Override(ApiModel):
    header: HeaderName = Field(description="Request header to match (lower case).")
    value: str = Field(min_length=1, max_length=256, description="Exact value that pins the request.")
    variant: Variant = Field(description="Where a matching request always goes: stable or canary.")


class Experiment(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "!has(self.overrides) || self.overrides.all(o, !(o.header in "
                f"{_DIMENSION_LIST}) && (!has(self.stickiness) || o.header != "
                "(has(self.stickiness.bucketHeader) ? self.stickiness.bucketHeader : "
                f"'{DEFAULT_BUCKET_HEADER}')))",
                Rule.OVERRIDE_HEADER_RESERVED,
                ".overrides",
            ),
            _cel(
                "!has(self.stickiness) || ((!has(self.stickiness.bucketHeader) || "
                f"!(self.stickiness.bucketHeader in {_DIMENSION_LIST})) && "
                f"(!has(self.stickiness.userHeader) || !(self.stickiness.userHeader in {_DIMENSION_LIST})))",
                "the bucket and user headers cannot be dimension headers "
                "(x-model, x-prompt-version, x-experiment-id, x-variant)",
                ".stickiness",
            ),
        )
    )

    id: str | None = Field(
        None,
        pattern=EXPERIMENT_ID,
        max_length=253,
        description="Experiment id, sent in x-experiment-id and hashed into user buckets; defaults to "
        "<namespace>/<name>/<pair hash>, shown in status.experimentId.",
    )
    stickiness: Stickiness | None = Field(
        None, description="Sticky per-user assignment, by a bucket header or a user-id header."
    )
    overrides: list[Override] = Field(
        default_factory=list,
        max_length=MAX_OVERRIDES,
        description="Header matches that always route to one variant (testers, internal traffic), placed "
        "ahead of every other route of the rollout, whatever the weights.",
    )
    dimensions: bool = Field(
        True,
        description="Set x-model, x-prompt-version, x-experiment-id and x-variant on every request the "
        "managed routes send to stable or canary.",
    )

    @model_validator(mode="after")
    def _reserved_headers(self) -> Experiment:
        bucket = self.stickiness.header if self.stickiness else None
        user = self.stickiness.user_header if self.stickiness else None
        if bucket in DIMENSION_HEADERS or user in DIMENSION_HEADERS:
            raise ValueError(
                "stickiness: the bucket and user headers cannot be dimension headers "
                "(x-model, x-prompt-version, x-experiment-id, x-variant)"
            )
        for override in self.overrides:
            if override.header in DIMENSION_HEADERS or override.header == bucket:
                raise ValueError(f"overrides: {Rule.OVERRIDE_HEADER_RESERVED}")
        return self


class ModelRolloutSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "self.stable.host != self.canary.host || (has(self.stable.subset) && has(self.canary.subset) "
                "&& self.stable.subset != self.canary.subset)",
                Rule.CANARY_DIFFERS,
                ".canary",
            ),
            _cel(
                "!has(self.analysis) || !has(self.analysis.gates) || self.analysis.gates.all(g, "
                "!has(g.source) || g.source == 'istio' || (has(self.stable.model) && has(self.canary.model) "
                "&& self.stable.model != self.canary.model))",
                Rule.MODELS_DIFFER,
                ".analysis.gates",
            ),
            _cel(
                "!has(self.analysis) || !has(self.analysis.gates) || self.analysis.gates.all(g, "
                "!has(g.template) || g.template != 'llm-cost-per-request' || !has(g.source) || "
                f"!(g.source in {_PRICED_SOURCES}) || "
                "(has(self.stable.pricing) && has(self.canary.pricing)))",
                Rule.PRICING_NEEDED,
                ".analysis.gates",
            ),
        )
    )

    stable: Target
    canary: Target
    traffic_routing: TrafficRouting
    stages: list[Stage] = Field(
        min_length=1,
        max_length=MAX_STAGES,
        json_schema_extra=_validations(
            _cel(
                "self.filter(s, has(s.weight)).all(a, self.filter(s, has(s.weight)).exists_one(b, "
                "b.weight == a.weight)) && self.filter(s, has(s.weight)).map(s, s.weight).isSorted()",
                Rule.WEIGHTS_INCREASING,
            ),
            _cel("self.map(s, has(s.shadow) ? 0 : 1).isSorted()", Rule.SHADOW_FIRST),
            _cel(
                "!has(self[size(self) - 1].weight) || self[size(self) - 1].weight == 100",
                Rule.LAST_STAGE_FULL,
            ),
        ),
    )
    experiment: Experiment | None = Field(
        None,
        description="Sticky per-user assignment, tester overrides and experiment dimension headers; all of "
        "it is removed again by abort, rollback, promotion and deletion.",
    )
    analysis: Analysis = Field(Analysis(), description="Gates and the limits that act on them.")  # frozen
    paused: bool = Field(False, description="Freeze: weights stay as they are and nothing advances.")

    @field_validator("stages")
    @classmethod
    def _weights_rise_to_100(cls, stages: list[Stage]) -> list[Stage]:
        weights = [stage.weight for stage in stages if stage.weight is not None]
        if any(later <= earlier for earlier, later in pairwise(weights)):
            raise ValueError(Rule.WEIGHTS_INCREASING)
        shadow = [stage.shadow is not None for stage in stages]
        if shadow != sorted(shadow, reverse=True):
            raise ValueError(Rule.SHADOW_FIRST)
        if stages and stages[-1].weight not in (None, 100):
            raise ValueError(Rule.LAST_STAGE_FULL)
        return stages

    @model_validator(mode="after")
    def _llm_gates_can_tell_the_variants_apart(self) -> ModelRolloutSpec:
        for gate in self.analysis.gates:
            models = (self.stable.model, self.canary.model)
            if gate.llm_source is not None and (None in models or models[0] == models[1]):
                raise ValueError(f"gate {gate.name}: {Rule.MODELS_DIFFER}")
            if (
                gate.template == GateTemplate.LLM_COST_PER_REQUEST
                and gate.source is not None
                and priced_cost(gate.source.value)
                and (self.stable.pricing is None or self.canary.pricing is None)
            ):
                raise ValueError(f"gate {gate.name}: {Rule.PRICING_NEEDED}")
        return self

    @field_validator("canary")
    @classmethod
    def _canary_differs_from_stable(cls, canary: Target, info: ValidationInfo) -> Target:
        stable: Target | None = info.data.get("stable")
        if (
            stable is not None
            and stable.host == canary.host
            and (stable.subset is None or canary.subset is None or stable.subset == canary.subset)
        ):
            raise ValueError(Rule.CANARY_DIFFERS)
        return canary


# ---- status: everything the operator writes, declared so the API server prunes none of it ----


class StatusModel(BaseModel):
    """Status is written by the operator; fields a newer operator adds are kept, not refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Phase(StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    ABORTED = "Aborted"
    DEGRADED = "Degraded"


class Verdict(StrEnum):
    PASS = "Pass"  # noqa: S105 - a verdict, not a password
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"


class Evidence(StatusModel):
    """Where a sequential test stands: the counts since the stage began, and what they prove."""

    canary_events: float
    stable_events: float
    canary_share: float = Field(description="The canary's share of traffic the test assumes (the weight).")
    p_value: float = Field(description="Anytime-valid p-value of 'the canary is worse than the margin'.")
    ratio_low: float | None = Field(None, description="Confidence sequence for canary/stable event rate.")
    ratio_high: float | None = Field(None, description="Upper end; none: not bounded yet.")
    no_worse: bool = Field(False, description="The upper end is below 1 + margin: a pass with evidence.")


class GateResult(StatusModel):
    name: str
    verdict: Verdict
    value: float | None = None
    min: float | None = None
    max: float | None = None
    requests: int | None = None
    window: str | None = None
    message: str | None = None
    bound: str | None = Field(None, description="What the gate requires, in words (for a test or compare).")
    control: float | None = Field(None, description="The stable's value, for a comparing gate.")
    delta: float | None = Field(None, description="Canary minus stable.")
    relative_delta: float | None = Field(None, description="(canary - stable) / stable.")
    control_requests: int | None = None
    evidence: Evidence | None = None
    advisory: bool = Field(False, description="Not counted in the check's verdict (advisory, or no control).")


class AnalysisResult(StatusModel):
    at: datetime
    stage: int
    verdict: Verdict
    gates: list[GateResult] = Field(default_factory=list)


class Condition(StatusModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: datetime
    observed_generation: int | None = None


class Rollback(StatusModel):
    """Why traffic went back to stable: the gate, its value, the threshold and the window that decided."""

    at: datetime
    reason: str
    gate: str | None = None
    value: float | None = None
    threshold: str | None = None
    window: str | None = None
    message: str = ""


class RouteReturn(StatusModel):
    """A return to stable, recorded on the VirtualService by the write that makes it (annotation
    `modelrollout.io/returning`, one entry per rollout): a restart between that write and the status write
    finishes the return instead of taking the stable-only routes for drift. It binds to the status it was
    decided from: the run (`rolloutStartedAt`) and the stage (`stage`, `stageStartedAt`)."""

    rollback: Rollback
    rollout_started_at: datetime | None = None
    stage: int = 0
    stage_started_at: datetime | None = None


class ActionRecord(StatusModel):
    action: str
    at: datetime
    result: str


class Hold(StrEnum):
    """Why a rollout stopped advancing until a human says `resume`."""

    INCONCLUSIVE = "Inconclusive"
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    DRIFT_LIMIT = "DriftLimit"


class PendingAction(StatusModel):
    """An action taken from the annotation and not applied yet: it survives a failed write or a restart."""

    action: str
    accepted_at: datetime


class RoutingRecord(StatusModel):
    """Where this rollout moves traffic, as recorded before its first write: the deletion finalizer and a
    change of spec.trafficRouting act on what was claimed, not on what the spec says now."""

    virtual_service: str = Field(description="namespace/name")
    api_version: str
    routes: list[str] | None = None


class SeriesValue(StatusModel):
    """A counter's value when last seen, by series (a short fingerprint of its labels)."""

    series: str
    value: float


class Accumulation(StatusModel):
    """Event counts of a sequential gate (or of the sample-ratio check) since its stage began: raw counter
    values last seen per series (to take reset-aware deltas), totals, and the running test results."""

    name: str = Field(description="The gate's name, or (sample-ratio) for the routing check.")
    stage: int
    canary_weight: int
    since: datetime
    canary_last: list[SeriesValue] = Field(default_factory=list, max_length=MAX_SERIES)
    stable_last: list[SeriesValue] = Field(default_factory=list, max_length=MAX_SERIES)
    canary_events: float = 0.0
    stable_events: float = 0.0
    p_value: float = 1.0
    ratio_low: float | None = None
    ratio_high: float | None = None
    margin: float | None = None
    log_evidence: float = Field(0.0, description="Log Bayes factor of this stage's counts, at the last look.")
    carried_log_evidence: float = Field(
        0.0, description="Log Bayes factor carried from the rollout's earlier stages."
    )


class GateSummary(StatusModel):
    """A gate's last verdict in a stage, for the report: the canary's value against the control's."""

    name: str
    verdict: Verdict
    value: float | None = Field(None, description="The canary's value.")
    control: float | None = Field(None, description="The stable's value (comparing and sequential gates).")
    bound: str | None = Field(None, description="What the gate required, in words.")
    p_value: float | None = None
    no_worse: bool = Field(False, description="A sequential test proved the canary no worse than the margin.")
    advisory: bool = Field(False, description="Reported only: never decided anything.")
    canary_events: float | None = Field(None, description="A sequential test's canary events in the stage.")
    stable_events: float | None = Field(None, description="A sequential test's stable events in the stage.")
    ratio_low: float | None = Field(None, description="A sequential test's interval of the rate ratio.")
    ratio_high: float | None = Field(None, description="Its upper end; none: not bounded yet.")


REPORT_LINE = 240  # characters of one line of status.report
REPORT_STAGES = 12  # the latest stages in status.report


class ReportSummary(StatusModel):
    """The decision report, compact and bounded (a few KiB), where Argo CD and `kubectl get -o yaml` show it:
    the decision, a line per stage (the latest), a line per gate of the latest check."""

    decision: str = Field("", max_length=REPORT_LINE)
    stages: list[Annotated[str, Field(max_length=REPORT_LINE)]] = Field(
        default_factory=list, max_length=REPORT_STAGES
    )
    gates: list[Annotated[str, Field(max_length=REPORT_LINE)]] = Field(
        default_factory=list, max_length=MAX_GATES
    )


class StageRecord(StatusModel):
    """One finished stage of this rollout: where it ran, how it ended and the last check made in it."""

    stage: int = Field(description="Index in spec.stages (0 is the first stage).")
    weight: int
    shadow: int = 0
    started_at: datetime | None = None
    ended_at: datetime
    outcome: str = Field(
        description="Advanced (by Soak, Evidence or Promote), StagesChanged, Promoted, RolledBack or Aborted."
    )
    verdict: Verdict | None = Field(None, description="The last check made in the stage.")
    canary_requests: float | None = Field(
        None, description="Requests the canary served in the stage (counted by sequential gates)."
    )
    stable_requests: float | None = None
    gates: list[GateSummary] = Field(default_factory=list, max_length=MAX_GATES)


# The status the CRD gives an object before the operator writes one: "no generation observed yet". Without it
# kstatus (Flux's health checks) reads a new ModelRollout as Current, so a Kustomization turned Ready on the
# commit itself, before the operator had seen the rollout; observedGeneration 0 is behind every generation
# (they start at 1), which kstatus reads as InProgress until the operator's first status.
UNOBSERVED_STATUS: dict[str, Any] = {"observedGeneration": 0}


def status_recorded(raw: Any) -> bool:
    """Whether the operator has written a status: anything beyond the CRD's default."""
    return isinstance(raw, dict) and any(
        key != "observedGeneration" or value != 0 for key, value in raw.items()
    )


class ModelRolloutStatus(StatusModel):
    observed_generation: int | None = None
    phase: Phase = Phase.PENDING
    reason: str | None = Field(None, description="Why the rollout is in its phase, e.g. AwaitingApproval.")
    stage: int = 0
    stage_count: int | None = None
    progress: str | None = Field(None, description="Stage as shown by kubectl get, e.g. 3/6.")
    canary_weight: int = 0
    shadow: int = Field(0, description="Percent of live traffic mirrored to the canary (shadow stages).")
    experiment_id: str | None = Field(None, description="The experiment id requests carry.")
    bucket_filter: str | None = Field(
        None, description="The EnvoyFilter this rollout manages (stickiness.userHeader), while it exists."
    )
    stage_started_at: datetime | None = None
    advanced_by: str | None = Field(
        None,
        description="What ended the previous stage: Soak (its duration passed), Evidence (sequential gates "
        "proved the canary no worse after minDuration), Promote (a human), or Recovery.",
    )
    pair_hash: str | None = Field(
        None, description="Identity of the stable/canary pair this rollout is about."
    )
    stable: Target | None = Field(None, description="The stable this rollout started from.")
    canary: Target | None = Field(None, description="The canary this rollout is about.")
    rollout_started_at: datetime | None = None
    hold: Hold | None = None
    awaiting_approval: bool = Field(False, description="The stage soaked and passes; waiting for promote.")
    routing: RoutingRecord | None = None
    pending_action: PendingAction | None = None
    write_failures: int = Field(0, description="VirtualService writes that failed in a row.")
    drift_corrections: list[datetime] = Field(default_factory=list, description="Recent weight corrections.")
    failed_checks: int = 0
    consecutive_errors: int = 0
    consecutive_inconclusive: int = 0
    last_analysis: AnalysisResult | None = None
    accumulations: list[Accumulation] = Field(
        default_factory=list, description="Counts of the sequential gates in this stage."
    )
    rollback: Rollback | None = None
    stage_history: list[StageRecord] = Field(
        default_factory=list,
        max_length=2 * MAX_STAGES,
        description="The finished stages of this rollout, oldest first (the report reads them).",
    )
    last_action: ActionRecord | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    message: str = ""
    report: ReportSummary | None = Field(
        None, description="The decision report in compact form (`kubectl modelrollout report` has it all)."
    )


def parse_spec(raw: dict[str, Any]) -> ModelRolloutSpec:
    return ModelRolloutSpec.model_validate(raw)


def checked_spec(raw: dict[str, Any]) -> ModelRolloutSpec | list[str]:
    """The parsed spec, or every problem of it as `spec.<field path>: <message>` (for an InvalidSpec
    condition): one validation for callers that need either."""
    try:
        return ModelRolloutSpec.model_validate(raw)
    except ValidationError as invalid:
        return [_describe(error) for error in invalid.errors()]


def spec_errors(raw: dict[str, Any]) -> list[str]:
    checked = checked_spec(raw)
    return checked if isinstance(checked, list) else []


def _describe(error: Any) -> str:
    path = "spec"
    for part in error["loc"]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    message = re.sub(r"^(Value|Assertion) error, ", "", error["msg"])
    return f"{path}: {message}"
