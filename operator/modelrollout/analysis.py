"""Gate evaluation: measured values to verdicts, and gate verdicts to the verdict of a check. Pure.

A value proves a gate only when it is a finite number inside the bounds; NaN, +/-Inf and empty results never
pass. With several series the worst one decides. A check with fewer canary requests than `minRequests` in the
window cannot pass either: its passing gates become Inconclusive.

A comparing gate also evaluates the stable (the control) with the same query over the same window and bounds
the canary's change from it; without a control value, or with fewer control requests than `minRequests`, it is
Inconclusive. Advisory gates are evaluated and reported like the others and never decide a check; neither do
gates that need a control while the canary takes all the traffic (there is none to compare with).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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


@dataclass(frozen=True)
class CheckMeasurement:
    at: datetime
    gates: tuple[GateMeasurement, ...]
    canary_requests: float | None  # None when the request count itself could not be measured
    requests_error: str | None = None
    control_requests: float | None = None  # measured when a gate compares with the stable
    control_requests_error: str | None = None


@dataclass(frozen=True)
class CheckContext:
    """What evaluating a check needs besides its measurement."""

    min_requests: int
    canary_weight: int | None = None  # live; 100 leaves no control to compare with


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
            advisory=gate.advisory,
        )

    if measurement.error is not None:
        return result(api.Verdict.ERROR, None, f"query failed: {measurement.error}")
    if not measurement.values:
        return result(api.Verdict.INCONCLUSIVE, None, "no data")
    comparable = [v for v in measurement.values if not math.isnan(v)]
    if not comparable:
        return result(api.Verdict.INCONCLUSIVE, None, "NaN: nothing to compare")
    if gate.min is None and gate.max is None:
        return _compared(measurement, comparable, result)
    worst = _worst(gate, comparable)
    if _violates(gate, worst):
        return result(api.Verdict.FAIL, worst, f"{_number(worst)} violates {bounds_text(gate.min, gate.max)}")
    if len(comparable) < len(measurement.values):
        return result(api.Verdict.INCONCLUSIVE, worst, "some series are NaN")
    if math.isinf(worst):
        return result(api.Verdict.INCONCLUSIVE, worst, f"{_number(worst)} is not a measurement")
    passed = result(api.Verdict.PASS, worst, f"{_number(worst)} {bounds_text(gate.min, gate.max)}")
    if gate.compare is None:
        return passed
    compared = _compared(measurement, comparable, result)
    return (
        compared
        if compared.verdict != api.Verdict.PASS
        else compared.model_copy(update={"message": f"{passed.message}; {compared.message}"})
    )


def _compared(
    measurement: GateMeasurement,
    comparable: Sequence[float],
    result: Callable[[api.Verdict, float | None, str], api.GateResult],
) -> api.GateResult:
    """The canary's value against the stable's, by the gate's compare bounds."""
    gate = measurement.gate
    compare = gate.compare
    if compare is None:  # the API refuses a gate with no bound at all
        return result(api.Verdict.ERROR, None, "the gate has no bound")
    # The worst series in the direction the bounds guard: up for an increase or a delta, down for a decrease.
    upward = compare.max_increase is not None or compare.max_delta is not None
    canary = max(comparable) if upward else min(comparable)
    if measurement.control_error is not None:
        return result(api.Verdict.ERROR, canary, f"control query failed: {measurement.control_error}")
    control_values = [v for v in measurement.control_values or () if not math.isnan(v)]
    if not control_values:
        return result(api.Verdict.INCONCLUSIVE, canary, "no control value: the stable has no data")
    control = max(control_values) if upward else min(control_values)
    if math.isinf(canary) or math.isinf(control):
        return result(
            api.Verdict.INCONCLUSIVE, canary, f"{_number(canary)} vs {_number(control)}: not comparable"
        )
    delta = canary - control
    relative = delta / control if control != 0 else None
    failures = []
    if compare.max_delta is not None and delta > compare.max_delta:
        failures.append(f"exceeds the stable by {_number(delta)} > {_number(compare.max_delta)}")
    undefined = None
    for bound, sign, word in ((compare.max_increase, 1, "above"), (compare.max_decrease, -1, "below")):
        if bound is None:
            continue
        if relative is None:  # from zero any change is infinitely relative: say so, do not guess
            if canary != 0:
                undefined = "stable is 0: a relative change is undefined (use maxDelta)"
        elif sign * relative > bound:
            failures.append(f"{_percent(abs(relative))} {word} the stable > {_percent(bound)}")
    text = f"{_number(canary)} vs stable {_number(control)} ({_signed(delta, relative)})"
    if failures:
        verdict, text = api.Verdict.FAIL, f"{text}: {'; '.join(failures)}"
    elif undefined:
        verdict, text = api.Verdict.INCONCLUSIVE, f"{text}: {undefined}"
    else:
        verdict = api.Verdict.PASS
    return result(verdict, canary, text).model_copy(
        update={"control": control, "delta": delta, "relative_delta": relative}
    )


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.3g}%"


def _signed(delta: float, relative: float | None) -> str:
    text = f"{'+' if delta >= 0 else ''}{_number(delta)}"
    return text if relative is None else f"{text}, {'+' if relative >= 0 else '-'}{_percent(abs(relative))}"


def combine(verdicts: Sequence[api.Verdict]) -> api.Verdict:
    """Fail beats Error beats Inconclusive beats Pass."""
    for verdict in (api.Verdict.FAIL, api.Verdict.ERROR, api.Verdict.INCONCLUSIVE):
        if verdict in verdicts:
            return verdict
    return api.Verdict.PASS


def needs_control(gate: api.Gate) -> bool:
    return gate.compare is not None or gate.test is not None


def evaluate_check(
    measurement: CheckMeasurement, min_requests: int, context: CheckContext | None = None
) -> CheckResult:
    context = context or CheckContext(min_requests)
    no_control = context.canary_weight is not None and context.canary_weight >= 100
    results = []
    for gate_measurement in measurement.gates:
        evaluated = evaluate_gate(gate_measurement)
        if needs_control(gate_measurement.gate):
            if no_control:
                evaluated = evaluated.model_copy(
                    update={
                        "advisory": True,
                        "message": f"{evaluated.message}; not counted: no control at 100%",
                    }
                )
            else:
                evaluated = _control_traffic(evaluated, measurement, min_requests)
        results.append(evaluated)
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
        if withheld and r.verdict == api.Verdict.PASS and not r.advisory:
            update |= {"verdict": withheld[0], "message": f"{r.message}; {withheld[1]}"}
        adjusted.append(r.model_copy(update=update))
    counted = [r for r in adjusted if not r.advisory]
    verdict = combine([r.verdict for r in counted] or ([withheld[0]] if withheld else []))
    parts = [f"{r.name}{' (advisory)' if r.advisory else ''} {r.message}" for r in adjusted]
    if withheld and not counted:
        parts.append(withheld[1])
    return CheckResult(
        at=measurement.at,
        verdict=verdict,
        gates=tuple(adjusted),
        canary_requests=requests,
        summary="; ".join(parts) or "no gates",
    )


def _control_traffic(
    evaluated: api.GateResult, measurement: CheckMeasurement, min_requests: int
) -> api.GateResult:
    """A gate that compares with the stable cannot pass on too little control traffic."""
    control = measurement.control_requests
    count = None if control is None or math.isnan(control) else round(control)
    evaluated = evaluated.model_copy(update={"control_requests": count})
    if evaluated.verdict != api.Verdict.PASS:
        return evaluated
    if control is None:
        return evaluated.model_copy(
            update={
                "verdict": api.Verdict.ERROR,
                "message": f"{evaluated.message}; control request count failed: "
                f"{measurement.control_requests_error}",
            }
        )
    if math.isnan(control) or control < min_requests:
        return evaluated.model_copy(
            update={
                "verdict": api.Verdict.INCONCLUSIVE,
                "message": f"{evaluated.message}; {_number(control)} control requests "
                f"< minRequests {min_requests}",
            }
        )
    return evaluated
