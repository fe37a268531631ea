"""Sequential gates in the analysis: counts accumulated per stage from raw counters (resets included), the
test's verdicts and evidence, the evidence carried across the stages of one rollout, the sample-ratio check,
and what the engine does with them (immediate rollback, a condition, an early advance)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from modelrollout import api
from modelrollout.analysis import CheckContext, CheckMeasurement, CheckResult, GateMeasurement, evaluate_check
from modelrollout.analysis.sequential import SAMPLE_RATIO

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
P, F, INC, E = api.Verdict.PASS, api.Verdict.FAIL, api.Verdict.INCONCLUSIVE, api.Verdict.ERROR
GATE = api.Gate(
    name="errors",
    template=api.GateTemplate.ISTIO_ERROR_EVENTS,
    test=api.SequentialTest(alpha=0.01, margin=0.1),
)


def check(
    at: datetime,
    canary: dict[str, float] | None,
    stable: dict[str, float] | None,
    *,
    previous: CheckResult | None = None,
    weight: int = 50,
    stage: int = 2,
    stage_started_at: datetime = T0,
    rollout_started_at: datetime = T0 - timedelta(hours=1),
    requests: tuple[dict[str, float], dict[str, float]] | None = None,
    error: str | None = None,
) -> CheckResult:
    measured = GateMeasurement(GATE, "2m", canary_counters=canary, stable_counters=stable, error=error)
    measurement = CheckMeasurement(
        at,
        (measured,),
        1000.0,
        control_requests=1000.0,
        canary_request_counters=requests[0] if requests else None,
        stable_request_counters=requests[1] if requests else None,
    )
    context = CheckContext(
        100,
        canary_weight=weight,
        stage=stage,
        stage_started_at=stage_started_at,
        rollout_started_at=rollout_started_at,
        accumulations=previous.accumulations or () if previous else (),
    )
    return evaluate_check(measurement, 100, context)


def test_the_first_check_of_a_stage_is_its_baseline_and_counts_follow_resets() -> None:
    first = check(T0, {"a": 500.0, "b": 40.0}, {"c": 900.0})
    assert first.verdict == INC
    assert "baseline" in first.summary
    [baseline] = first.accumulations or ()
    assert (baseline.canary_events, baseline.stable_events) == (0.0, 0.0)
    # a: +10; b restarted (its pod did) and counts 3 anew; a new series d counts in full; c: +12
    second = check(T0 + timedelta(minutes=1), {"a": 510.0, "b": 3.0, "d": 2.0}, {"c": 912.0}, previous=first)
    [counted] = second.accumulations or ()
    assert (counted.canary_events, counted.stable_events) == (15.0, 12.0)
    assert second.gates[0].evidence is not None
    assert second.gates[0].evidence.canary_events == 15.0


def test_a_regression_fails_at_once_with_its_evidence_and_a_healthy_canary_passes_with_evidence() -> None:
    bad = check(T0, {"a": 0.0}, {"b": 0.0})
    good = bad
    for minute in range(1, 40):  # 50/50 split: the canary errs twice as often as the stable
        bad = check(T0 + timedelta(minutes=minute), {"a": 6.0 * minute}, {"b": 3.0 * minute}, previous=bad)
        if bad.verdict == F:
            break
    for minute in range(1, 61):  # as often as the stable, 6,000 events each in the hour
        good = check(
            T0 + timedelta(minutes=minute), {"a": 100.0 * minute}, {"b": 100.0 * minute}, previous=good
        )
    assert bad.verdict == F, bad.summary
    gate = bad.gates[0]
    assert bad.rejected_by_test() == gate
    assert gate.evidence is not None
    assert gate.evidence.p_value <= 0.01
    assert gate.evidence.ratio_low is not None
    assert (
        gate.evidence.ratio_low > 1.0
    )  # the two-sided interval excludes "as good"; the one-sided test is sharper
    assert gate.bound == "anytime-valid p <= 0.01 (margin 10%)"
    assert "worse than the stable by more than 10%" in (gate.message or "")
    assert good.verdict == P
    assert good.gates[0].evidence is not None
    assert good.gates[0].evidence.p_value > 0.5
    assert good.gates[0].evidence.no_worse  # the upper end of the interval is below 1.1
    assert good.gates[0].value == pytest.approx(1.0)


def test_evidence_carries_into_the_next_stage_but_counts_and_interval_start_over() -> None:
    run = check(T0, {"a": 0.0}, {"b": 0.0}, stage=1)
    run = check(T0 + timedelta(minutes=10), {"a": 12.0}, {"b": 6.0}, previous=run, stage=1)
    [stage_one] = run.accumulations or ()
    assert stage_one.log_evidence > 0
    later = T0 + timedelta(minutes=11)
    moved = check(later, {"a": 12.0}, {"b": 6.0}, previous=run, stage=2, stage_started_at=later)
    [stage_two] = moved.accumulations or ()
    assert (stage_two.canary_events, stage_two.stable_events) == (0.0, 0.0)
    assert stage_two.carried_log_evidence == pytest.approx(stage_one.log_evidence)
    assert stage_two.p_value == stage_one.p_value
    assert stage_two.ratio_high is None
    # a retried rollout (started after that stage) carries nothing
    retried = check(later, {"a": 12.0}, {"b": 6.0}, previous=run, stage=2, stage_started_at=later,
                    rollout_started_at=later)  # fmt: skip
    [fresh] = retried.accumulations or ()
    assert (fresh.carried_log_evidence, fresh.p_value) == (0.0, 1.0)
    # a change of weight within a stage (drift put back, or an edit) restarts the counts
    reweighted = check(T0 + timedelta(minutes=12), {"a": 20.0}, {"b": 9.0}, previous=run, stage=1, weight=25)
    assert reweighted.verdict == INC
    assert "baseline" in reweighted.summary


def test_carried_evidence_detects_what_one_short_stage_cannot() -> None:
    """Seeded: a 2x regression at 1% errors and 5 req/s over 10-minute stages at 5/25/50%; with the evidence
    carried, the rollout is rejected in more runs than with each stage on its own."""
    rng = np.random.default_rng(7)
    carried_rejections = alone_rejections = 0
    for _ in range(200):
        result: CheckResult | None = None
        alone = False
        start = T0
        for stage, weight in enumerate((5, 25, 50)):
            canary_total = stable_total = 0.0
            result = check(start, {"a": 0.0}, {"b": 0.0}, previous=result, stage=stage, weight=weight,
                           stage_started_at=start)  # fmt: skip
            single: CheckResult | None = None
            for minute in range(1, 11):
                canary_total += rng.poisson(300 * weight / 100 * 0.02)
                stable_total += rng.poisson(300 * (100 - weight) / 100 * 0.01)
                at = start + timedelta(minutes=minute)
                result = check(at, {"a": canary_total}, {"b": stable_total}, previous=result, stage=stage,
                               weight=weight, stage_started_at=start)  # fmt: skip
                single = check(at, {"a": canary_total}, {"b": stable_total}, weight=weight, stage=stage,
                               stage_started_at=start, rollout_started_at=start,
                               previous=_first_of_stage(start, stage, weight))  # fmt: skip
                alone = alone or single.verdict == F
                if result.verdict == F:
                    break
            if result.verdict == F:
                break
            start += timedelta(minutes=11)
        carried_rejections += result is not None and result.verdict == F
        alone_rejections += alone
    assert carried_rejections > alone_rejections
    assert carried_rejections >= 60  # of 200


def _first_of_stage(start: datetime, stage: int, weight: int) -> CheckResult:
    return check(start, {"a": 0.0}, {"b": 0.0}, stage=stage, weight=weight, stage_started_at=start,
                 rollout_started_at=start)  # fmt: skip


def test_a_query_error_keeps_the_counts_and_too_many_series_is_an_error() -> None:
    first = check(T0, {"a": 5.0}, {"b": 5.0})
    failed = check(T0 + timedelta(minutes=1), None, None, previous=first, error="timeout")
    assert failed.verdict == E
    assert failed.accumulations == first.accumulations
    many = {f"s{i}": 1.0 for i in range(api.MAX_SERIES + 1)}
    crowded = check(T0 + timedelta(minutes=2), many, {"b": 6.0}, previous=first)
    assert crowded.verdict == E
    assert "aggregate the query" in crowded.summary
    assert crowded.accumulations == first.accumulations


def test_at_100_percent_the_sequential_gate_does_not_decide() -> None:
    first = check(T0, {"a": 0.0}, {"b": 0.0}, weight=100)
    later = check(T0 + timedelta(minutes=1), {"a": 50.0}, {"b": 0.0}, previous=first, weight=100)
    assert later.verdict == P
    assert later.gates[0].advisory
    assert "no control at 100%" in later.summary


def test_a_sample_ratio_mismatch_holds_sequential_gates() -> None:
    first = check(T0, {"a": 0.0}, {"b": 0.0}, requests=({"r": 0.0}, {"s": 0.0}))
    assert first.sample_ratio is None  # the baseline
    # weight 50, but the canary got 60% of 20,000 requests; its error rate equals the stable's
    biased = check(T0 + timedelta(minutes=5), {"a": 120.0}, {"b": 80.0}, previous=first,
                   requests=({"r": 12000.0}, {"s": 8000.0}))  # fmt: skip
    assert biased.sample_ratio is not None
    assert biased.sample_ratio.mismatch
    assert "the canary got 60.00% of 2e+04 requests at 50%" in biased.sample_ratio.message
    assert biased.gates[0].verdict == INC
    assert "sample ratio mismatch" in (biased.gates[0].message or "")
    assert biased.gates[0].evidence is not None
    assert not biased.gates[0].evidence.no_worse
    names = [a.name for a in biased.accumulations or ()]
    assert names == [SAMPLE_RATIO, "errors"]
    # more canary traffic than its weight also means more canary events: not the canary's fault
    inflated = check(T0 + timedelta(minutes=5), {"a": 300.0}, {"b": 80.0}, previous=first,
                     requests=({"r": 12000.0}, {"s": 8000.0}))  # fmt: skip
    assert inflated.gates[0].verdict == INC
    assert inflated.rejected_by_test() is None
    fair = check(T0 + timedelta(minutes=5), {"a": 100.0}, {"b": 100.0}, previous=first,
                 requests=({"r": 10050.0}, {"s": 9950.0}))  # fmt: skip
    assert fair.sample_ratio is not None
    assert not fair.sample_ratio.mismatch
    assert fair.gates[0].verdict == P


def test_counts_never_go_negative_or_nan() -> None:
    first = check(T0, {"a": 5.0}, {"b": 5.0})
    weird = check(T0 + timedelta(minutes=1), {"a": math.nan}, {"b": -3.0}, previous=first)
    [accumulation] = weird.accumulations or ()
    assert (accumulation.canary_events, accumulation.stable_events) == (0.0, 0.0)


def test_counts_of_gates_that_are_no_longer_sequential_are_dropped() -> None:
    first = check(T0, {"a": 5.0}, {"b": 5.0})
    assert first.accumulations
    plain = GateMeasurement(api.Gate(name="rate", query="x", max=1), "2m", values=(0.1,))
    measurement = CheckMeasurement(T0 + timedelta(minutes=1), (plain,), 1000.0)
    context = CheckContext(
        100, canary_weight=50, stage=2, stage_started_at=T0, accumulations=first.accumulations
    )
    assert evaluate_check(measurement, 100, context).accumulations == ()
    assert evaluate_check(measurement, 100, CheckContext(100, canary_weight=50)).accumulations is None


def sticky_check(
    minute: int, canary_errors: float, stable_errors: float, previous: CheckResult | None, *, sticky: bool
) -> CheckResult:
    """At 10% of the users, whose share of the requests is 20% (heavier users): 200 and 800 a minute."""
    at = T0 + timedelta(minutes=minute)
    measured = GateMeasurement(
        GATE,
        "2m",
        canary_counters={"a": canary_errors * minute},
        stable_counters={"b": stable_errors * minute},
    )
    measurement = CheckMeasurement(
        at,
        (measured,),
        1000.0,
        control_requests=1000.0,
        canary_request_counters={"c": 200.0 * minute},
        stable_request_counters={"s": 800.0 * minute},
    )
    context = CheckContext(
        100,
        canary_weight=10,
        stage=1,
        stage_started_at=T0,
        rollout_started_at=T0,
        accumulations=previous.accumulations or () if previous else (),
        sticky=sticky,
    )
    return evaluate_check(measurement, 100, context)


def test_sticky_assignment_tests_against_the_measured_share_of_requests() -> None:
    """The canary's users send 20% of the requests at 10% of the buckets. Per request it errs exactly as
    often as the stable (2 and 8 errors a minute): against its weight it would look twice as bad (and the
    split would look broken); against its measured share it is no worse. Twice the stable's rate per
    request still fails."""
    weighted, sticky, worse = None, None, None
    for minute in range(0, 61):
        weighted = sticky_check(minute, 2.0, 8.0, weighted, sticky=False)
        sticky = sticky_check(minute, 2.0, 8.0, sticky, sticky=True)
        worse = sticky_check(minute, 4.0, 8.0, worse, sticky=True)
        if worse.verdict == F and weighted.verdict == INC and sticky.verdict == P:
            break
    assert weighted is not None
    assert sticky is not None
    assert worse is not None
    assert weighted.sample_ratio is not None
    assert weighted.sample_ratio.mismatch  # the weight says 10%
    assert sticky.sample_ratio is None  # users, not requests, follow the weight: not tested
    assert sticky.verdict == P, sticky.summary
    assert sticky.gates[0].evidence is not None
    assert sticky.gates[0].evidence.canary_share == pytest.approx(0.2)
    assert worse.verdict == F, worse.summary
    assert worse.gates[0].evidence is not None
    assert worse.gates[0].evidence.canary_share == pytest.approx(0.2)


def test_requests_are_counted_per_stage_without_sequential_gates() -> None:
    plain = api.Gate(name="error-rate", template=api.GateTemplate.ISTIO_ERROR_RATE, max=0.02)
    previous = None
    for minute in range(3):
        measurement = CheckMeasurement(
            T0 + timedelta(minutes=minute),
            (GateMeasurement(plain, "2m", values=(0.001,)),),
            1000.0,
            canary_request_counters={"c": 100.0 * minute},
            stable_request_counters={"s": 900.0 * minute},
        )
        context = CheckContext(
            100,
            canary_weight=10,
            stage=0,
            stage_started_at=T0,
            accumulations=previous.accumulations or () if previous else (),
        )
        previous = evaluate_check(measurement, 100, context)
    assert previous is not None
    [requests] = previous.accumulations or ()
    assert (requests.name, requests.canary_events, requests.stable_events) == (SAMPLE_RATIO, 200.0, 1800.0)
    assert previous.sample_ratio is None  # nothing relies on the split: counted, not tested
