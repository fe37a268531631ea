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

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
LABEL_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*$"  # a Prometheus label name
# Istio's metrics label a destination with its pods' `version` label as `destination_version`; a subset named
# after that label is selected by it.
DEFAULT_SUBSET_LABEL = "destination_version"


# Messages shared by the CEL rules and the Python validators, so both sides say the same thing.
class Rule(StrEnum):
    WEIGHTS_INCREASING = "stage weights must be strictly increasing"
    LAST_STAGE_FULL = "the last stage must have weight 100"
    INTERVAL_MIN = "must be at least 1s"
    TEMPLATE_XOR_QUERY = "a gate needs exactly one of template and query"
    GATE_BOUND = "a gate needs at least one of min and max"
    GATE_MIN_LE_MAX = "min must not be greater than max"
    CANARY_DIFFERS = "canary must differ from stable: another host, or the same host with another subset"
    PROMETHEUS_URL = "must be an http or https URL"


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


class IstioApiVersion(StrEnum):
    V1 = "networking.istio.io/v1"
    V1BETA1 = "networking.istio.io/v1beta1"


class Target(ApiModel):
    """A model service: where the VirtualService sends its share of traffic, and what it serves."""

    host: DnsName = Field(description="VirtualService destination host (Service name or FQDN).")
    subset: DnsLabel | None = Field(None, description="DestinationRule subset, if the host has several.")
    port: int | None = Field(None, ge=1, le=65535, description="Destination port, if the host has several.")
    model: str | None = Field(None, max_length=253, description="Model served (for reports and queries).")
    prompt_version: str | None = Field(None, max_length=253, description="Prompt version served.")


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
    weight: int = Field(ge=1, le=100, description="Canary share of traffic in percent during this stage.")
    duration: Duration | None = Field(None, description="Soak time before the stage may advance (e.g. 2h).")
    approval: Approval = Field(
        Approval.AUTO, description="Manual: after the soak, wait for a human to promote."
    )


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


class Gate(ApiModel):
    """One check at every interval: a built-in template or any PromQL, compared with min and/or max."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel("has(self.template) != has(self.query)", Rule.TEMPLATE_XOR_QUERY),
            _cel("has(self.min) || has(self.max)", Rule.GATE_BOUND),
            _cel("!has(self.min) || !has(self.max) || self.min <= self.max", Rule.GATE_MIN_LE_MAX, ".min"),
        )
    )

    name: DnsLabel
    template: GateTemplate | None = None
    query: GateQuery | None = Field(None, description="PromQL; {{ ... }} variables.")
    min: float | None = Field(None, description="The value must be at least this.")
    max: float | None = Field(None, description="The value must be at most this.")
    window: PositiveDuration | None = Field(
        None, description="Range of rate() for this gate; default analysis.window."
    )

    @model_validator(mode="after")
    def _one_source_and_a_bound(self) -> Gate:
        if (self.template is None) == (self.query is None):
            raise ValueError(Rule.TEMPLATE_XOR_QUERY)
        if self.min is None and self.max is None:
            raise ValueError(Rule.GATE_BOUND)
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(Rule.GATE_MIN_LE_MAX)
        return self

    @field_validator("query")
    @classmethod
    def _query_renders(cls, query: str | None) -> str | None:
        if query is not None:
            check_template(query)  # a TemplateError is a ValueError: reported with the field's path
        return query


class Analysis(ApiModel):
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

    @field_validator("gates")
    @classmethod
    def _unique_gate_names(cls, gates: list[Gate]) -> list[Gate]:
        names = [gate.name for gate in gates]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"gate names must be unique: {', '.join(duplicates)}")
        return gates


class ModelRolloutSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "self.stable.host != self.canary.host || (has(self.stable.subset) && has(self.canary.subset) "
                "&& self.stable.subset != self.canary.subset)",
                Rule.CANARY_DIFFERS,
                ".canary",
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
                "self.all(a, self.exists_one(b, b.weight == a.weight)) && self.map(s, s.weight).isSorted()",
                Rule.WEIGHTS_INCREASING,
            ),
            _cel("self[size(self) - 1].weight == 100", Rule.LAST_STAGE_FULL),
        ),
    )
    analysis: Analysis = Field(Analysis(), description="Gates and the limits that act on them.")  # frozen
    paused: bool = Field(False, description="Freeze: weights stay as they are and nothing advances.")

    @field_validator("stages")
    @classmethod
    def _weights_rise_to_100(cls, stages: list[Stage]) -> list[Stage]:
        weights = [stage.weight for stage in stages]
        if any(later <= earlier for earlier, later in pairwise(weights)):
            raise ValueError(Rule.WEIGHTS_INCREASING)
        if weights and weights[-1] != 100:
            raise ValueError(Rule.LAST_STAGE_FULL)
        return stages

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


class GateResult(StatusModel):
    name: str
    verdict: Verdict
    value: float | None = None
    min: float | None = None
    max: float | None = None
    requests: int | None = None
    window: str | None = None
    message: str | None = None


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


class ModelRolloutStatus(StatusModel):
    observed_generation: int | None = None
    phase: Phase = Phase.PENDING
    reason: str | None = Field(None, description="Why the rollout is in its phase, e.g. AwaitingApproval.")
    stage: int = 0
    stage_count: int | None = None
    progress: str | None = Field(None, description="Stage as shown by kubectl get, e.g. 3/6.")
    canary_weight: int = 0
    stage_started_at: datetime | None = None
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
    rollback: Rollback | None = None
    last_action: ActionRecord | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    message: str = ""


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
