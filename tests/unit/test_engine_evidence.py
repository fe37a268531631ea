"""What the engine does with sequential gates: a rejection rolls back at once (failureLimit does not apply),
the counts are kept in status, a sample-ratio mismatch is a condition and an Event, and a stage with
minDuration advances early only on evidence."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from test_engine import STARTED, T0

from modelrollout import api, engine
from modelrollout.analysis import CheckResult, SampleRatio
from modelrollout.engine import Observation, RoutingView

P, F = api.Verdict.PASS, api.Verdict.FAIL


def spec(**stage: Any) -> api.ModelRolloutSpec:
    return api.parse_spec(
        {
            "stable": {"host": "llm-gpt4o", "model": "gpt-4o"},
            "canary": {"host": "llm-claude", "model": "claude-opus-4-8"},
            "trafficRouting": {"istio": {"virtualService": {"name": "llm"}}},
            "stages": [{"weight": 10, "duration": "2h", **stage}, {"weight": 100}],
            "analysis": {
                "interval": "1m",
                "window": "1m",
                "failureLimit": 3,
                "gates": [
                    {"name": "errors", "template": "istio-error-events", "test": {"kind": "sequential"}},
                    {"name": "cost", "query": "x", "max": 0.01, "advisory": True},
                ],
            },
        }
    )


def sequential_check(
    at: datetime,
    verdict: api.Verdict,
    *,
    no_worse: bool = False,
    ratio: SampleRatio | None = None,
    accumulation_events: float = 10.0,
) -> CheckResult:
    evidence = api.Evidence(
        canary_events=accumulation_events,
        stable_events=40.0,
        canary_share=0.1,
        p_value=0.004 if verdict == F else 0.6,
        ratio_low=1.3 if verdict == F else 0.5,
        ratio_high=4.0 if verdict == F else (1.05 if no_worse else 1.8),
        no_worse=no_worse,
    )
    gate = api.GateResult(
        name="errors",
        verdict=verdict,
        window="stage",
        evidence=evidence,
        bound="anytime-valid p <= 0.01 (margin 10%)",
        message="counts",
        requests=500,
    )
    advisory = api.GateResult(
        name="cost", verdict=F, value=0.5, max=0.01, advisory=True, message="over budget"
    )
    accumulation = api.Accumulation(
        name="errors",
        stage=0,
        canary_weight=10,
        since=T0,
        canary_events=accumulation_events,
        stable_events=40,
    )
    return CheckResult(
        at=at,
        verdict=verdict,
        gates=(gate, advisory),
        canary_requests=500,
        summary=f"errors {verdict}",
        accumulations=(accumulation,),
        sample_ratio=ratio,
    )


class Run:
    def __init__(self, rollout: api.ModelRolloutSpec) -> None:
        self.spec = rollout
        self.status = api.ModelRolloutStatus()
        self.now = T0
        self.live = 0
        self.plan: engine.Plan | None = None

    def tick(self, after: timedelta = timedelta(0), check: CheckResult | None = None) -> engine.Plan:
        self.now += after
        obs = Observation(
            now=self.now,
            generation=1,
            operator_started_at=STARTED,
            routing=RoutingView(canary_weight=self.live, last_writer=engine.FIELD_MANAGER),
            check=check,
        )
        self.plan = engine.decide(self.spec, self.status, obs)
        self.status = self.plan.status
        if self.plan.canary_weight is not None:
            self.live = self.plan.canary_weight
        return self.plan

    def events(self) -> list[tuple[str, str]]:
        assert self.plan is not None
        return [(e.reason, e.message) for e in self.plan.events]


def test_a_sequential_rejection_rolls_back_at_once_and_says_why() -> None:
    run = Run(spec())
    run.tick()
    plan = run.tick(timedelta(minutes=2), sequential_check(run.now + timedelta(minutes=2), F))
    assert run.status.phase == api.Phase.ROLLED_BACK  # failureLimit 3 does not apply to a test's rejection
    assert plan.canary_weight == 0
    assert run.status.rollback is not None
    assert run.status.rollback.gate == "errors"
    assert run.status.rollback.threshold == "anytime-valid p <= 0.01 (margin 10%)"
    assert [r for r, _ in run.events()][:2] == ["AnalysisFailed", "RolledBack"]


def test_an_advisory_failure_never_rolls_back_and_counts_are_kept() -> None:
    run = Run(spec())
    run.tick()
    run.tick(
        timedelta(minutes=2), sequential_check(run.now + timedelta(minutes=2), P, accumulation_events=12)
    )
    assert run.status.phase == api.Phase.PROGRESSING
    assert run.status.failed_checks == 0
    assert [a.canary_events for a in run.status.accumulations] == [12]


def test_a_sample_ratio_mismatch_is_a_condition_and_an_event_once() -> None:
    run = Run(spec())
    run.tick()
    biased = SampleRatio(
        mismatch=True, message="the canary got 14% of 9000 requests at weight 10%", p_value=1e-9
    )
    run.tick(timedelta(minutes=2), sequential_check(run.now + timedelta(minutes=2), P, ratio=biased))
    conditions = {c.type: c for c in run.status.conditions}
    assert conditions["SampleRatioMismatch"].status == "True"
    assert "14% of 9000" in conditions["SampleRatioMismatch"].message
    assert [r for r, _ in run.events()] == ["SampleRatioMismatch"]
    run.tick(timedelta(minutes=1), sequential_check(run.now + timedelta(minutes=1), P, ratio=biased))
    assert "SampleRatioMismatch" not in [r for r, _ in run.events()]
    fair = SampleRatio(mismatch=False, message="the canary got 10% of 9000 requests", p_value=0.5)
    run.tick(timedelta(minutes=1), sequential_check(run.now + timedelta(minutes=1), P, ratio=fair))
    assert {c.type: c.status for c in run.status.conditions}["SampleRatioMismatch"] == "False"


def test_evidence_advances_a_stage_after_min_duration_and_not_before() -> None:
    run = Run(spec(minDuration="30m"))
    run.tick()
    # 20 minutes in: evidence, but before minDuration
    run.tick(timedelta(minutes=20), sequential_check(run.now + timedelta(minutes=20), P, no_worse=True))
    assert run.status.stage == 0
    # 40 minutes in: passing, but the interval still reaches above 1 + margin: the soak applies
    run.tick(timedelta(minutes=20), sequential_check(run.now + timedelta(minutes=20), P, no_worse=False))
    assert run.status.stage == 0
    run.tick(timedelta(minutes=1), sequential_check(run.now + timedelta(minutes=1), P, no_worse=True))
    assert run.status.stage == 1
    assert run.status.advanced_by == "Evidence"
    [message] = [m for r, m in run.events() if r == "StageAdvanced"]
    assert "passed with evidence, 1h19m before the end of its soak" in message


def test_without_min_duration_evidence_does_not_shorten_the_soak() -> None:
    run = Run(spec())
    run.tick()
    run.tick(timedelta(minutes=90), sequential_check(run.now + timedelta(minutes=90), P, no_worse=True))
    assert run.status.stage == 0
    run.tick(timedelta(minutes=31), sequential_check(run.now + timedelta(minutes=31), P, no_worse=False))
    assert run.status.stage == 1  # the soak is over: a pass advances as always, evidence or not
    assert run.status.advanced_by == "Soak"
