"""Gates on the judge's verdicts: the judge-win-rate and judge-score templates, their validation, and how the
analysis treats them: a sequential test of the canary's losses against its wins at even odds whatever the
weights, untouched by the mesh's routing checks, and held Inconclusive while the judge itself fails."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from fakes import sample_spec
from modelrollout import api
from modelrollout.analysis import CheckContext, CheckMeasurement, CheckResult, GateMeasurement, evaluate_check
from modelrollout.analysis.sequential import JUDGE_FAILURES
from modelrollout.metrics.templates import (
    TemplateVariables,
    judge_counter_queries,
    render_gate_query,
    spec_template_errors,
)

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
P, F, INC = api.Verdict.PASS, api.Verdict.FAIL, api.Verdict.INCONCLUSIVE
WIN_RATE = api.Gate(
    name="quality", template=api.GateTemplate.JUDGE_WIN_RATE, test=api.SequentialTest(alpha=0.01, margin=0.1)
)
SCORE = api.Gate(
    name="accuracy",
    template=api.GateTemplate.JUDGE_SCORE,
    criterion="accuracy",
    compare=api.Compare(max_decrease=0.1),
)
VARIABLES = TemplateVariables.for_rollout(
    stable=api.Target(host="llm-a"),
    canary=api.Target(host="llm-b"),
    rollout_name='chat"}',
    rollout_namespace="team",
    window=timedelta(minutes=2),
)


# ---- templates ----


def test_judge_win_rate_counts_the_canary_losses_against_its_wins() -> None:
    canary = render_gate_query(WIN_RATE, VARIABLES)
    control = render_gate_query(WIN_RATE, VARIABLES.targeting("stable"))
    selector = 'rollout_namespace="team", rollout="chat\\"}"'
    assert (
        canary == f'sum by (instance, pod) (modelrollout_judge_verdicts_total{{{selector}, outcome="loss"}})'
    )
    assert (
        control == f'sum by (instance, pod) (modelrollout_judge_verdicts_total{{{selector}, outcome="win"}})'
    )


@pytest.mark.parametrize(
    ("criterion", "matcher"), [("accuracy", ', criterion="accuracy"'), (None, "")], ids=["one", "pooled"]
)
def test_judge_score_is_the_variant_mean_score_over_the_window(criterion: str | None, matcher: str) -> None:
    gate = SCORE.model_copy(update={"criterion": criterion})
    for role in ("canary", "stable"):
        selector = f'rollout_namespace="team", rollout="chat\\"}}", variant="{role}"{matcher}'
        assert render_gate_query(gate, VARIABLES.targeting(role)) == (
            f"sum(rate(modelrollout_judge_score_sum{{{selector}}}[2m])) / "
            f"sum(rate(modelrollout_judge_score_count{{{selector}}}[2m]))"
        )


def test_the_judge_reliability_queries_count_its_failures_not_budget_or_variant_errors() -> None:
    failures, verdicts = judge_counter_queries(VARIABLES)
    assert 'reason=~"malformed|judge-unreachable"' in failures
    assert failures.startswith("sum by (instance, pod) (modelrollout_judge_errors_total{")
    selector = 'rollout_namespace="team", rollout="chat\\"}"'
    assert verdicts == f"sum by (instance, pod) (modelrollout_judge_verdicts_total{{{selector}}})"


# ---- validation ----


def _analysis(gates: list[dict[str, Any]], judge: dict[str, Any] | None = None) -> dict[str, Any]:
    analysis: dict[str, Any] = {"gates": gates}
    if judge is not None:
        analysis["judge"] = {"model": {"url": "http://judge:8000/v1", "name": "j"}, **judge}
    return analysis


@pytest.mark.parametrize(
    ("analysis", "message"),
    [
        (
            _analysis([{"name": "q", "template": "judge-win-rate", "test": {}}]),
            "spec.analysis.judge must be set",
        ),
        (
            _analysis([{"name": "q", "template": "judge-score", "min": 6}]),
            "spec.analysis.judge must be set",
        ),
        (
            _analysis([{"name": "q", "template": "judge-win-rate", "max": 0.5}], {}),
            "an events template gives raw counters: it needs test",
        ),
        (
            _analysis([{"name": "q", "template": "istio-error-rate", "max": 0.1, "criterion": "accuracy"}]),
            "only the judge-score template takes it",
        ),
        (
            _analysis([{"name": "q", "template": "judge-score", "min": 6, "criterion": "tone"}], {}),
            "criterion tone is not one of spec.analysis.judge.criteria (accuracy, clarity, completeness)",
        ),
        (
            _analysis(
                [{"name": "q", "template": "judge-score", "min": 6, "criterion": "accuracy"}],
                {"criteria": ["tone"]},
            ),
            "criterion accuracy is not one of spec.analysis.judge.criteria (tone)",
        ),
    ],
    ids=[
        "win-rate-no-judge",
        "score-no-judge",
        "win-rate-threshold",
        "criterion-elsewhere",
        "unknown",
        "edited",
    ],
)
def test_judge_gates_are_refused_with_the_field_that_is_wrong(analysis: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=r".*") as refused:
        api.Analysis.model_validate(analysis)
    assert message in str(refused.value)


def test_valid_judge_gates_parse_and_render_for_both_variants() -> None:
    analysis = api.Analysis.model_validate(
        _analysis(
            [
                {"name": "quality", "template": "judge-win-rate", "test": {"margin": "5%"}},
                {
                    "name": "clarity",
                    "template": "judge-score",
                    "criterion": "clarity",
                    "compare": {"maxDecrease": "10%"},
                },
                {"name": "overall", "template": "judge-score", "min": 6},
            ],
            {},
        )
    )
    assert [g.judged for g in analysis.gates] == [True, True, True]
    spec = api.ModelRolloutSpec.model_validate(
        sample_spec(**analysis.model_dump(by_alias=True, exclude_none=True, mode="json"))
    )
    assert spec_template_errors(spec) == []


# ---- analysis ----


def check(
    at: datetime,
    losses: float,
    wins: float,
    *,
    previous: CheckResult | None = None,
    weight: int = 10,
    failures: float = 0.0,
    requests: tuple[float, float] | None = None,
    canary_requests: float = 1000.0,
    score: tuple[float, float] | None = None,
) -> CheckResult:
    """A check of a rollout at `weight` whose judge gave `wins + losses` decided verdicts (and as many ties)
    and failed `failures` times so far (raw counters, from one judge process)."""
    gates = [
        GateMeasurement(WIN_RATE, "2m", canary_counters={"judge": losses}, stable_counters={"judge": wins})
    ]
    if score is not None:
        gates.append(GateMeasurement(SCORE, "2m", values=(score[0],), control_values=(score[1],)))
    measurement = CheckMeasurement(
        at,
        tuple(gates),
        canary_requests,
        control_requests=1000.0,
        canary_request_counters={"p": requests[0] * at.timestamp()} if requests else None,
        stable_request_counters={"q": requests[1] * at.timestamp()} if requests else None,
        judge_failure_counters={"judge": failures},
        judge_verdict_counters={"judge": 2 * (losses + wins)},
    )
    context = CheckContext(
        100,
        canary_weight=weight,
        stage=1,
        stage_started_at=T0,
        rollout_started_at=T0,
        accumulations=(previous.accumulations or ()) if previous else (),
    )
    return evaluate_check(measurement, 100, context)


def run_until(
    losses_per_minute: float,
    wins_per_minute: float,
    minutes: int,
    *,
    failures: Callable[[int], float] = lambda minute: 0.0,
    **kwargs: Any,
) -> list[CheckResult]:
    """Checks a minute apart until the gate fails or `minutes` pass; `failures(minute)`: the judge's failed
    judgements so far."""
    results = [check(T0, 0.0, 0.0, **kwargs)]
    for minute in range(1, minutes + 1):
        results.append(
            check(
                T0 + timedelta(minutes=minute),
                losses_per_minute * minute,
                wins_per_minute * minute,
                previous=results[-1],
                failures=failures(minute),
                **kwargs,
            )
        )
        if results[-1].verdict == F:
            break
    return results


def test_a_canary_that_loses_twice_as_often_as_it_wins_fails_at_any_weight() -> None:
    """The share is 0.5 whatever the weight: at 1% or 50% the same verdicts give the same evidence."""
    for weight in (1, 10, 50):
        results = run_until(8.0, 4.0, 30, weight=weight)
        failed = results[-1]
        assert failed.verdict == F, failed.summary
        gate = failed.rejected_by_test()
        assert gate is not None
        assert gate.evidence is not None
        assert gate.evidence.canary_share == 0.5
        assert "the canary lost" in (gate.message or "")
        assert gate.value == pytest.approx(2.0)  # losses per win
        assert len(results) == len(run_until(8.0, 4.0, 30, weight=1))


def test_an_equal_canary_passes_with_evidence() -> None:
    results = run_until(100.0, 100.0, 60)
    last = results[-1]
    assert last.verdict == P, last.summary
    assert last.gates[0].evidence is not None
    assert last.gates[0].evidence.no_worse


def test_the_routing_checks_do_not_concern_judge_gates() -> None:
    """A sample-ratio mismatch, too few canary requests and no control at 100% hold the mesh's gates, not the
    judge's: the judge replays its pairs to both variants itself."""
    skewed = run_until(8.0, 4.0, 30, requests=(50.0, 50.0))  # the canary gets half the requests at 10%
    assert skewed[-1].verdict == F
    assert skewed[-1].sample_ratio is None  # requests are counted (for the report), the split not tested
    starved = run_until(100.0, 100.0, 60, canary_requests=3.0)
    assert starved[-1].gates[0].verdict == P
    full = run_until(8.0, 4.0, 30, weight=100)
    assert full[-1].verdict == F
    assert not full[-1].gates[0].advisory


def test_a_judge_that_fails_often_leaves_judge_gates_inconclusive() -> None:
    """One in five judgements failed: neither the clear loss nor the score comparison decides."""
    # 24 verdicts (8 losses, 4 wins, 12 ties) and 6 failures a minute
    results = run_until(8.0, 4.0, 30, failures=lambda minute: 6.0 * minute, score=(5.0, 8.0))
    last = results[-1]
    assert len(results) == 31
    assert [g.verdict for g in last.gates] == [INC, INC]
    assert last.verdict == INC
    assert "the judge failed 180 of 900 judgements this stage (20%" in (last.gates[0].message or "")
    assert last.gates[0].evidence is not None
    assert not last.gates[0].evidence.no_worse
    assert last.accumulations is not None
    [kept] = [a for a in last.accumulations if a.name == JUDGE_FAILURES]
    assert (kept.canary_events, kept.stable_events) == (180.0, 720.0)


def test_a_few_judge_failures_are_tolerated() -> None:
    # two failures in all: below the floor of three
    assert run_until(8.0, 4.0, 30, failures=lambda minute: min(minute, 2.0))[-1].verdict == F
