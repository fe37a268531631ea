"""Gate evaluation: measured values to verdicts, and gate verdicts to the verdict of a check. Pure.

A value proves a gate only when it is a finite number inside the bounds; NaN, +/-Inf and empty results never
pass. With several series the worst one decides. A check with fewer canary requests than `minRequests` in the
window cannot pass either: its passing gates become Inconclusive.

A comparing gate also evaluates the stable (the control) with the same query over the same window and bounds
the canary's change from it; without a control value, or with fewer control requests than `minRequests`, it is
Inconclusive. Advisory gates are evaluated and reported like the others and never decide a check; neither do
gates that need a control while the canary takes all the traffic (there is none to compare with).

Gates that read the judge (`judge-*`) are about the pairs the judge replays to both variants itself, not the
mesh's traffic: the request counts, the control at 100% and the sample-ratio check do not apply to them. The
judge's own failures do (`sequential.judge_reliability`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from modelrollout import api
from modelrollout.analysis.gates import bounds_text, evaluate_gate
from modelrollout.analysis.model import (
    CheckContext,
    CheckMeasurement,
    CheckResult,
    GateMeasurement,
    SampleRatio,
)
from modelrollout.analysis.model import number as _number
from modelrollout.analysis.sequential import (
    JUDGE_FAILURES,
    SAMPLE_RATIO,
    Run,
    evaluate_sequential,
    judge_reliability,
    observed_share,
    sample_ratio,
)

__all__ = [
    "CheckContext",
    "CheckMeasurement",
    "CheckResult",
    "GateMeasurement",
    "SampleRatio",
    "bounds_text",
    "combine",
    "evaluate_check",
    "evaluate_gate",
    "needs_control",
    "needs_split",
]


def combine(verdicts: Sequence[api.Verdict]) -> api.Verdict:
    """Fail beats Error beats Inconclusive beats Pass."""
    for verdict in (api.Verdict.FAIL, api.Verdict.ERROR, api.Verdict.INCONCLUSIVE):
        if verdict in verdicts:
            return verdict
    return api.Verdict.PASS


def needs_control(gate: api.Gate) -> bool:
    return gate.compare is not None or gate.test is not None


def needs_split(gate: api.Gate) -> bool:
    """Whether the gate's test assumes the split the weights say (the sample-ratio check guards it)."""
    return gate.test is not None and not gate.judged


def evaluate_check(
    measurement: CheckMeasurement, min_requests: int, context: CheckContext | None = None
) -> CheckResult:
    context = context or CheckContext(min_requests)
    no_control = context.canary_weight is not None and context.canary_weight >= 100
    run = Run(
        context.stage,
        context.canary_weight or 0,
        context.stage_started_at or measurement.at,
        context.rollout_started_at,
        context.mirror,
    )
    previous = {a.name: a for a in context.accumulations}
    accumulations: list[api.Accumulation] = []
    split = any(needs_split(g.gate) for g in measurement.gates)
    # Requests per variant are counted for every rollout (the report shows them); the split is tested only
    # for sequential gates that rely on it, and not under sticky assignment, where the weight splits users.
    ratio, requests_counted = _requests(
        measurement, run, previous, accumulations, test=split and not context.sticky
    )
    share = observed_share(requests_counted) if context.sticky else None
    if share is not None and 0 < share < 1 and 0 < run.canary_weight < 100:
        run = replace(run, observed_share=share)
    results = []
    for gate_measurement in measurement.gates:
        if gate_measurement.gate.test is not None:
            evaluated, accumulation = evaluate_sequential(
                gate_measurement, run, previous.get(gate_measurement.gate.name)
            )
            if accumulation is not None:
                accumulations.append(accumulation)
        else:
            evaluated = evaluate_gate(gate_measurement)
        if needs_control(gate_measurement.gate) and not gate_measurement.gate.judged:
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
    if ratio is not None and ratio.mismatch:
        results = _held_by_routing(measurement, results)
    judged = {g.gate.name for g in measurement.gates if g.gate.judged}
    if judged:
        results = _judge_reliability(measurement, run, previous, accumulations, results, judged=judged)
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
        if withheld and r.verdict == api.Verdict.PASS and not r.advisory and r.name not in judged:
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
        # Nothing counted and nothing kept before: None leaves status as it is.
        accumulations=tuple(accumulations) if accumulations or context.accumulations else None,
        sample_ratio=ratio,
    )


def _requests(
    measurement: CheckMeasurement,
    run: Run,
    previous: dict[str, api.Accumulation],
    accumulations: list[api.Accumulation],
    *,
    test: bool,
) -> tuple[SampleRatio | None, api.Accumulation | None]:
    """The run's requests per variant, and (when `test`) the routing check of sequential gates."""
    if measurement.canary_request_counters is None or measurement.stable_request_counters is None:
        kept = previous.get(SAMPLE_RATIO)
        if kept is not None:
            accumulations.append(kept)  # the run goes on; this check could not count
        return None, kept if kept is not None and run.continues(kept) else None
    ratio, accumulation = sample_ratio(
        measurement.canary_request_counters,
        measurement.stable_request_counters,
        run,
        previous.get(SAMPLE_RATIO),
        test=test,
    )
    accumulations.append(accumulation)
    return ratio, accumulation


def _held_by_routing(measurement: CheckMeasurement, results: list[api.GateResult]) -> list[api.GateResult]:
    """While the routing check finds a mismatch, the tests that assume the split the weights say decide
    nothing: neither a pass nor a rejection is trusted, and none has evidence. A canary served more traffic
    than its weight also shows more events; rolling it back for that would blame it for the routing."""
    split = {g.gate.name for g in measurement.gates if needs_split(g.gate)}
    return [_held(r, "sample ratio mismatch") if r.evidence and r.name in split else r for r in results]


def _held(result: api.GateResult, why: str) -> api.GateResult:
    """A gate's Pass or Fail that cannot be trusted: Inconclusive, without evidence."""
    if result.verdict not in (api.Verdict.PASS, api.Verdict.FAIL):
        return result
    update: dict[str, object] = {
        "verdict": api.Verdict.INCONCLUSIVE,
        "message": f"{result.message}; not trusted: {why}",
    }
    if result.evidence is not None:
        update["evidence"] = result.evidence.model_copy(update={"no_worse": False})
    return result.model_copy(update=update)


def _judge_reliability(
    measurement: CheckMeasurement,
    run: Run,
    previous: dict[str, api.Accumulation],
    accumulations: list[api.Accumulation],
    results: list[api.GateResult],
    *,
    judged: set[str],
) -> list[api.GateResult]:
    """Judge gates (`judged`) decide nothing while too many of the stage's judgements failed."""
    failures, verdicts = measurement.judge_failure_counters, measurement.judge_verdict_counters
    if failures is None or verdicts is None:
        if JUDGE_FAILURES in previous:
            accumulations.append(previous[JUDGE_FAILURES])  # the run goes on; this check could not count
        return results
    reliability, accumulation = judge_reliability(failures, verdicts, run, previous.get(JUDGE_FAILURES))
    accumulations.append(accumulation)
    if reliability is None or not reliability.unreliable:
        return results
    return [_held(r, reliability.message) if r.name in judged else r for r in results]


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
