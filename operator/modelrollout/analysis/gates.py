"""One gate's measurement to its verdict: thresholds on the canary, and comparison with the stable."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from modelrollout import api
from modelrollout.analysis.model import GateMeasurement
from modelrollout.analysis.model import number as _number


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
            bound=bound_text(gate),
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


def bound_text(gate: api.Gate) -> str:
    """What the gate requires, in words: `<= 0.02`, `<= +20% over the stable`, `anytime-valid p <= 0.01
    (margin 10%)`."""
    parts = [bounds_text(gate.min, gate.max)] if gate.min is not None or gate.max is not None else []
    compare = gate.compare
    if compare is not None:
        if compare.max_increase is not None:
            parts.append(f"<= +{compare.max_increase * 100:g}% over the stable")
        if compare.max_decrease is not None:
            parts.append(f">= -{compare.max_decrease * 100:g}% under the stable")
        if compare.max_delta is not None:
            parts.append(f"<= stable + {_number(compare.max_delta)}")
    if gate.test is not None:
        parts.append(f"anytime-valid p <= {_number(gate.test.alpha)} (margin {gate.test.margin * 100:g}%)")
    return " and ".join(parts)
