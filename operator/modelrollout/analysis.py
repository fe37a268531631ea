"""Gate evaluation: measured values to verdicts, and gate verdicts to the verdict of a check. Pure.

A value proves a gate only when it is a finite number inside the bounds; NaN, +/-Inf and empty results never
pass. With several series the worst one decides. A check with fewer canary requests than `minRequests` in the
window cannot pass either: its passing gates become Inconclusive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from modelrollout import api


@dataclass(frozen=True)
class GateMeasurement:
    """What one gate's query returned: the series values, or the reason it could not run."""

    gate: api.Gate
    window: str
    values: tuple[float, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class CheckMeasurement:
    at: datetime
    gates: tuple[GateMeasurement, ...]
    canary_requests: float | None  # None when the request count itself could not be measured
    requests_error: str | None = None


@dataclass(frozen=True)
class CheckResult:
    at: datetime
    verdict: api.Verdict
    gates: tuple[api.GateResult, ...]
    canary_requests: float | None
    summary: str

    def failing(self) -> api.GateResult | None:
        return next((g for g in self.gates if g.verdict == api.Verdict.FAIL), None)


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.4g}"


def _violates(gate: api.Gate, value: float) -> bool:
    return (gate.max is not None and value > gate.max) or (gate.min is not None and value < gate.min)


def _worst(gate: api.Gate, comparable: Sequence[float]) -> float:
    """The value furthest on the wrong side: a failing one if any (highest above a max, else lowest below a
    min), otherwise the one nearest the bound."""
    failing = [v for v in comparable if _violates(gate, v)]
    if failing:
        above = [v for v in failing if gate.max is not None and v > gate.max]
        return max(above) if above else min(failing)
    return max(comparable) if gate.max is not None else min(comparable)


def bounds_text(minimum: float | None, maximum: float | None) -> str:
    parts = []
    if minimum is not None:
        parts.append(f">= {_number(minimum)}")
    if maximum is not None:
        parts.append(f"<= {_number(maximum)}")
    return " and ".join(parts)


def evaluate_gate(measurement: GateMeasurement) -> api.GateResult:
    gate = measurement.gate

    def result(verdict: api.Verdict, value: float | None, message: str) -> api.GateResult:
        return api.GateResult(
            name=gate.name,
            verdict=verdict,
            value=value,
            min=gate.min,
            max=gate.max,
            window=measurement.window,
            message=message,
        )

    if measurement.error is not None:
        return result(api.Verdict.ERROR, None, f"query failed: {measurement.error}")
    if not measurement.values:
        return result(api.Verdict.INCONCLUSIVE, None, "no data")
    comparable = [v for v in measurement.values if not math.isnan(v)]
    if not comparable:
        return result(api.Verdict.INCONCLUSIVE, None, "NaN: nothing to compare")
    worst = _worst(gate, comparable)
    if _violates(gate, worst):
        return result(api.Verdict.FAIL, worst, f"{_number(worst)} violates {bounds_text(gate.min, gate.max)}")
    if len(comparable) < len(measurement.values):
        return result(api.Verdict.INCONCLUSIVE, worst, "some series are NaN")
    if math.isinf(worst):
        return result(api.Verdict.INCONCLUSIVE, worst, f"{_number(worst)} is not a measurement")
    return result(api.Verdict.PASS, worst, f"{_number(worst)} {bounds_text(gate.min, gate.max)}")


def combine(verdicts: Sequence[api.Verdict]) -> api.Verdict:
    """Fail beats Error beats Inconclusive beats Pass."""
    for verdict in (api.Verdict.FAIL, api.Verdict.ERROR, api.Verdict.INCONCLUSIVE):
        if verdict in verdicts:
            return verdict
    return api.Verdict.PASS


def evaluate_check(measurement: CheckMeasurement, min_requests: int) -> CheckResult:
    results = [evaluate_gate(m) for m in measurement.gates]
    requests = measurement.canary_requests
    # Only a Pass is withheld below: a Fail or an Error already says something conclusive.
    withheld: tuple[api.Verdict, str] | None = None
    if requests is None:
        withheld = (api.Verdict.ERROR, f"request count failed: {measurement.requests_error}")
    elif math.isnan(requests) or requests < min_requests:
        withheld = (
            api.Verdict.INCONCLUSIVE,
            f"{_number(requests)} canary requests < minRequests {min_requests}",
        )
    count = None if requests is None or math.isnan(requests) else round(requests)
    adjusted = []
    for r in results:
        update: dict[str, object] = {"requests": count}
        if withheld and r.verdict == api.Verdict.PASS:
            update |= {"verdict": withheld[0], "message": f"{r.message}; {withheld[1]}"}
        adjusted.append(r.model_copy(update=update))
    verdict = combine([r.verdict for r in adjusted] or ([withheld[0]] if withheld else []))
    parts = [f"{r.name} {r.message}" for r in adjusted]
    if withheld and not adjusted:
        parts.append(withheld[1])
    return CheckResult(
        at=measurement.at,
        verdict=verdict,
        gates=tuple(adjusted),
        canary_requests=requests,
        summary="; ".join(parts) or "no gates",
    )
