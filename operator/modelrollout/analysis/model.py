"""What a check measured, and what it concluded. Pure data."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from modelrollout import api


@dataclass(frozen=True)
class GateMeasurement:
    """What one gate's query returned: the series values, or the reason it could not run. A comparing gate
    has the stable's answer too (`control_values`, or `control_error`)."""

    gate: api.Gate
    window: str
    values: tuple[float, ...] = ()
    error: str | None = None
    control_values: tuple[float, ...] | None = None
    control_error: str | None = None
    # A sequential gate's raw counters by series (key: a short fingerprint of the labels), per variant.
    canary_counters: Mapping[str, float] | None = None
    stable_counters: Mapping[str, float] | None = None


@dataclass(frozen=True)
class CheckMeasurement:
    at: datetime
    gates: tuple[GateMeasurement, ...]
    canary_requests: float | None  # None when the request count itself could not be measured
    requests_error: str | None = None
    control_requests: float | None = None  # measured when a gate compares with the stable
    control_requests_error: str | None = None
    # Raw request counters by series per variant, for the sample-ratio check of sequential gates (None: not
    # measured, or the query failed; the check is then skipped, the run goes on).
    canary_request_counters: Mapping[str, float] | None = None
    stable_request_counters: Mapping[str, float] | None = None
    # The judge's failed judgements and its verdicts, by series, when a gate reads the judge (None: not
    # measured, or a query failed; the judge's reliability is then not checked this time).
    judge_failure_counters: Mapping[str, float] | None = None
    judge_verdict_counters: Mapping[str, float] | None = None


@dataclass(frozen=True)
class CheckContext:
    """What evaluating a check needs besides its measurement."""

    min_requests: int
    canary_weight: int | None = None  # live; 100 leaves no control to compare with
    mirror: int = 0  # live percent mirrored to the canary (a shadow stage)
    stage: int = 0
    stage_started_at: datetime | None = None
    rollout_started_at: datetime | None = None
    accumulations: tuple[api.Accumulation, ...] = ()  # the sequential counts so far (from status)
    # Sticky assignment: users, not requests, are split by the weight, so the canary's share of requests
    # is measured (the stage's request counts), not taken from the weight.
    sticky: bool = False


@dataclass(frozen=True)
class CheckResult:
    at: datetime
    verdict: api.Verdict
    gates: tuple[api.GateResult, ...]
    canary_requests: float | None
    summary: str
    # The sequential counts to keep in status (None: no sequential gate was evaluated).
    accumulations: tuple[api.Accumulation, ...] | None = None
    sample_ratio: SampleRatio | None = None

    def failing(self) -> api.GateResult | None:
        """The first gate that failed and counts (an advisory gate never decides)."""
        return next((g for g in self.gates if g.verdict == api.Verdict.FAIL and not g.advisory), None)

    def rejected_by_test(self) -> api.GateResult | None:
        """A sequential gate that counts and whose test rejected: a conclusive failure."""
        return next(
            (g for g in self.gates if g.verdict == api.Verdict.FAIL and not g.advisory and g.evidence), None
        )


@dataclass(frozen=True)
class SampleRatio:
    """The routing check beside sequential gates: did the variants get the requests their weights say?"""

    mismatch: bool
    message: str
    p_value: float


def number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.4g}"
