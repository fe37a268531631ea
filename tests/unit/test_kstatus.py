"""The summary conditions kstatus reads (Ready, Reconciling, Stalled), for every phase the engine can reach.

What kstatus makes of them is checked by kstatus itself: tests/gitops/test_gitops_readers.py runs
sigs.k8s.io/cli-utils' status.Compute on rollouts the operator drove into each phase. This table stays as the
engine-level check: it drives `engine.decide` tick by tick, the way the operator drives it, through twenty
scenarios (holds, drift limits, retries, recoveries) that would take minutes to reach on a live rollout, in a
fraction of a second and with no Go build. It holds the engine to the contract those readings rest on: Ready
is True only when Promoted; Reconciling is True while Pending, Progressing or Paused (a human may still be
needed, but nothing has failed); Stalled is True for RolledBack, Aborted and Degraded; each condition carries
the status's generation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelrollout import api, engine
from modelrollout.analysis import CheckResult
from modelrollout.conditions import summary_conditions
from modelrollout.engine import Observation, RoutingView

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
GENERATION = 7
SUMMARY = ("Ready", "Reconciling", "Stalled")
EXPECTED: dict[api.Phase, tuple[str, str, str]] = {
    api.Phase.PENDING: ("False", "True", "False"),
    api.Phase.PROGRESSING: ("False", "True", "False"),
    api.Phase.PAUSED: ("False", "True", "False"),
    api.Phase.PROMOTED: ("True", "False", "False"),
    api.Phase.ROLLED_BACK: ("False", "False", "True"),
    api.Phase.ABORTED: ("False", "False", "True"),
    api.Phase.DEGRADED: ("False", "False", "True"),
}
P, F, INC, E = api.Verdict.PASS, api.Verdict.FAIL, api.Verdict.INCONCLUSIVE, api.Verdict.ERROR


def spec(paused: bool = False, **analysis: Any) -> api.ModelRolloutSpec:
    return api.parse_spec(
        {
            "stable": {"host": "llm-gpt4o", "model": "gpt-4o"},
            "canary": {"host": "llm-claude", "model": "claude-opus-4-8"},
            "trafficRouting": {"istio": {"virtualService": {"name": "llm"}}},
            "stages": [
                {"weight": 5, "duration": "1m"},
                {"weight": 20, "duration": "1m", "approval": "Manual"},
                {"weight": 100},
            ],
            "analysis": {
                "window": "10s",
                "gates": [{"name": "error-rate", "template": "istio-error-rate", "max": 0.02}],
                **analysis,
            },
            "paused": paused,
        }
    )


def check(verdict: api.Verdict, at: datetime) -> CheckResult:
    gate = api.GateResult(
        name="error-rate", verdict=verdict, value=0.004, max=0.02, window="2m", message="0.004 <= 0.02"
    )
    return CheckResult(at=at, verdict=verdict, gates=(gate,), canary_requests=500, summary="error-rate")


@dataclass
class Ticks:
    """Feeds each decision back as the next status; the VirtualService shows what was written."""

    spec: api.ModelRolloutSpec = field(default_factory=spec)
    status: api.ModelRolloutStatus = field(default_factory=api.ModelRolloutStatus)
    live: int = 0
    now: datetime = T0

    def tick(
        self,
        after: timedelta = timedelta(0),
        *,
        verdict: api.Verdict | None = None,
        action: str | None = None,
        routing: RoutingView | None = None,
        generation: int = GENERATION,
    ) -> api.ModelRolloutStatus:
        self.now += after
        obs = Observation(
            now=self.now,
            generation=generation,
            operator_started_at=T0 - timedelta(hours=1),
            routing=routing or RoutingView(canary_weight=self.live, last_writer=engine.FIELD_MANAGER),
            check=check(verdict, self.now) if verdict else None,
            action=action,
        )
        decision = engine.decide(self.spec, self.status, obs)
        self.status = decision.status
        if decision.canary_weight is not None:
            self.live = decision.canary_weight
        return self.status

    def to_manual_gate(self) -> api.ModelRolloutStatus:
        self.tick()
        self.tick(timedelta(minutes=1), verdict=P)  # stage 1 soaked and passed: stage 2
        return self.tick(timedelta(minutes=1), verdict=P)  # stage 2 soaked and passed: awaiting approval


def truth(status: api.ModelRolloutStatus) -> tuple[str, ...]:
    by_type = {c.type: c.status for c in status.conditions}
    return tuple(by_type.get(type_, "absent") for type_ in SUMMARY)


def assert_kstatus(status: api.ModelRolloutStatus, phase: api.Phase, reason: str) -> None:
    assert (status.phase, status.reason) == (phase, reason), status.message
    assert truth(status) == EXPECTED[phase]
    assert status.observed_generation == GENERATION
    for condition in status.conditions:
        assert condition.observed_generation == GENERATION, condition
    summary = [c for c in status.conditions if c.type in (*SUMMARY, "Progressing")]
    assert {(c.reason, c.message) for c in summary} == {(reason, status.message)}


def _progressing() -> api.ModelRolloutStatus:
    return Ticks().tick()


def _progressing_after_an_advance() -> api.ModelRolloutStatus:
    ticks = Ticks()
    ticks.tick()
    return ticks.tick(timedelta(minutes=1), verdict=P)


def _analysing() -> api.ModelRolloutStatus:
    ticks = Ticks()
    ticks.tick()
    return ticks.tick(timedelta(seconds=10), verdict=P)


def _awaiting_approval() -> api.ModelRolloutStatus:
    return Ticks().to_manual_gate()


def _paused_by_spec() -> api.ModelRolloutStatus:
    ticks = Ticks(spec=spec(paused=True))
    ticks.tick()
    return ticks.tick(timedelta(minutes=1), verdict=P)


def _inconclusive_hold() -> api.ModelRolloutStatus:
    ticks = Ticks(spec=spec(inconclusiveLimit=0, onInconclusive="Hold"))
    ticks.tick()
    return ticks.tick(timedelta(seconds=10), verdict=INC)


def _metrics_hold() -> api.ModelRolloutStatus:
    ticks = Ticks(spec=spec(errorLimit=0, onError="Hold"))
    ticks.tick()
    return ticks.tick(timedelta(seconds=10), verdict=E)


def _promoted() -> api.ModelRolloutStatus:
    ticks = Ticks()
    ticks.to_manual_gate()
    ticks.tick(action="promote")
    return ticks.tick(timedelta(seconds=10), verdict=P)


def _promoted_by_promote_full() -> api.ModelRolloutStatus:
    ticks = Ticks()
    ticks.tick()
    ticks.tick(action="promote-full")
    return ticks.tick(timedelta(seconds=10), verdict=P)


def _rolled_back() -> api.ModelRolloutStatus:
    ticks = Ticks(spec=spec(failureLimit=0))
    ticks.tick()
    return ticks.tick(timedelta(seconds=10), verdict=F)


def _rolled_back_while_awaiting_approval() -> api.ModelRolloutStatus:
    ticks = Ticks(spec=spec(failureLimit=0))
    ticks.to_manual_gate()
    return ticks.tick(timedelta(seconds=10), verdict=F)


def _rolled_back_on_errors() -> api.ModelRolloutStatus:
    ticks = Ticks(spec=spec(errorLimit=0, onError="Rollback"))
    ticks.tick()
    return ticks.tick(timedelta(seconds=10), verdict=E)


def _aborted() -> api.ModelRolloutStatus:
    ticks = Ticks()
    ticks.tick()
    return ticks.tick(action="abort")


def _retried() -> api.ModelRolloutStatus:
    ticks = Ticks()
    ticks.tick()
    ticks.tick(action="abort")
    return ticks.tick(action="retry")


def _resumed() -> api.ModelRolloutStatus:
    ticks = Ticks(spec=spec(inconclusiveLimit=0, onInconclusive="Hold"))
    ticks.tick()
    ticks.tick(timedelta(seconds=10), verdict=INC)
    return ticks.tick(action="resume")


def _virtual_service_missing() -> api.ModelRolloutStatus:
    ticks = Ticks()
    ticks.tick()
    missing = RoutingView(problem_reason="VirtualServiceNotFound", problem="VirtualService llm/llm not found")
    return ticks.tick(routing=missing)


def _conflict_from_the_start() -> api.ModelRolloutStatus:
    return Ticks().tick(routing=RoutingView(conflict_owner="llm/other"))


def _drift_limit() -> api.ModelRolloutStatus:
    ticks = Ticks()
    ticks.tick()
    status = ticks.status
    for _ in range(engine.DRIFT_LIMIT + 1):
        status = ticks.tick(
            timedelta(seconds=5), routing=RoutingView(canary_weight=60, last_writer="kubectl")
        )
    return status


def _invalid_spec() -> api.ModelRolloutStatus:
    running = Ticks().tick()
    decision = engine.invalid_spec(
        running, ["spec.stages: the last stage must have weight 100"], T0 + timedelta(minutes=1), GENERATION
    )
    return decision.status


def _recovered() -> api.ModelRolloutStatus:
    ticks = Ticks()
    ticks.tick()
    ticks.tick(routing=RoutingView(problem_reason="RouteNotFound", problem="no route"))
    return ticks.tick(timedelta(seconds=5))


SCENARIOS = [
    pytest.param(_progressing, api.Phase.PROGRESSING, "RolloutStarted", id="progressing-started"),
    pytest.param(
        _progressing_after_an_advance, api.Phase.PROGRESSING, "StageAdvanced", id="progressing-advanced"
    ),
    pytest.param(_analysing, api.Phase.PROGRESSING, "RolloutStarted", id="progressing-checked"),
    pytest.param(_retried, api.Phase.PROGRESSING, "Retried", id="progressing-retried"),
    pytest.param(_resumed, api.Phase.PROGRESSING, "Analysing", id="progressing-resumed"),
    pytest.param(_recovered, api.Phase.PROGRESSING, "Analysing", id="progressing-recovered"),
    pytest.param(_awaiting_approval, api.Phase.PAUSED, "AwaitingApproval", id="paused-awaiting-approval"),
    pytest.param(_paused_by_spec, api.Phase.PAUSED, "Paused", id="paused-by-spec"),
    pytest.param(_inconclusive_hold, api.Phase.PAUSED, "Inconclusive", id="paused-inconclusive-hold"),
    pytest.param(_metrics_hold, api.Phase.PAUSED, "MetricsUnavailable", id="paused-metrics-hold"),
    pytest.param(_promoted, api.Phase.PROMOTED, "Promoted", id="promoted"),
    pytest.param(_promoted_by_promote_full, api.Phase.PROMOTED, "Promoted", id="promoted-full"),
    pytest.param(_rolled_back, api.Phase.ROLLED_BACK, "AnalysisFailed", id="rolled-back"),
    pytest.param(
        _rolled_back_while_awaiting_approval, api.Phase.ROLLED_BACK, "AnalysisFailed", id="rolled-back-paused"
    ),
    pytest.param(
        _rolled_back_on_errors, api.Phase.ROLLED_BACK, "MetricsUnavailable", id="rolled-back-errors"
    ),
    pytest.param(_aborted, api.Phase.ABORTED, "Aborted", id="aborted"),
    pytest.param(_virtual_service_missing, api.Phase.DEGRADED, "VirtualServiceNotFound", id="degraded-vs"),
    pytest.param(_conflict_from_the_start, api.Phase.DEGRADED, "Conflict", id="degraded-conflict"),
    pytest.param(_drift_limit, api.Phase.DEGRADED, "DriftLimit", id="degraded-drift-limit"),
    pytest.param(_invalid_spec, api.Phase.DEGRADED, "InvalidSpec", id="degraded-invalid-spec"),
]


@pytest.mark.parametrize(("drive", "phase", "reason"), SCENARIOS)
def test_conditions_follow_the_phase(drive: Any, phase: api.Phase, reason: str) -> None:
    assert_kstatus(drive(), phase, reason)


def test_every_phase_the_engine_reaches_is_covered() -> None:
    reached = {param.values[1] for param in SCENARIOS}
    # Pending is the status before the operator's first tick; decide never returns it (see below).
    assert reached | {api.Phase.PENDING} == set(api.Phase)


def test_pending_is_only_the_status_before_the_first_tick() -> None:
    """decide never writes Pending: its first tick starts stage 1 (or degrades). Until that first status is
    written the object has no conditions and no observedGeneration, which kstatus reads as Current."""
    before = api.ModelRolloutStatus()
    assert (before.phase, before.conditions, before.observed_generation) == (api.Phase.PENDING, [], None)
    assert Ticks().tick().phase == api.Phase.PROGRESSING


def test_pending_would_be_reconciling() -> None:
    conditions = summary_conditions(
        [], api.Phase.PENDING, reason="Pending", message="", now=T0, generation=GENERATION
    )
    assert {c.type: c.status for c in conditions if c.type in SUMMARY} == dict(
        zip(SUMMARY, EXPECTED[api.Phase.PENDING], strict=True)
    )


def test_observed_generation_follows_a_spec_edit() -> None:
    ticks = Ticks()
    ticks.tick(generation=1)
    status = ticks.tick(timedelta(seconds=10), verdict=P, generation=2)
    assert status.observed_generation == 2
    assert {c.observed_generation for c in status.conditions} == {2}


def test_last_transition_time_moves_only_when_a_condition_flips() -> None:
    ticks = Ticks()
    ticks.tick()
    started = {c.type: c.last_transition_time for c in ticks.status.conditions}
    ticks.tick(timedelta(seconds=10), verdict=P)
    same = {c.type: c.last_transition_time for c in ticks.status.conditions}
    assert same["Reconciling"] == started["Reconciling"]  # still True: no transition
    ticks.tick(timedelta(minutes=1), verdict=P)
    ticks.tick(timedelta(minutes=1), verdict=P)  # awaiting approval: Progressing flips, Reconciling stays
    paused = {c.type: c.last_transition_time for c in ticks.status.conditions}
    assert paused["Reconciling"] == started["Reconciling"]
    assert paused["Progressing"] == ticks.now


def test_summary_conditions_follow_a_spec_edit_while_promoted_and_the_virtual_service_is_gone() -> None:
    ticks = Ticks()
    ticks.to_manual_gate()
    ticks.tick(action="promote", generation=1)
    ticks.tick(timedelta(seconds=10), verdict=P, generation=1)
    missing = RoutingView(problem_reason="VirtualServiceNotFound", problem="VirtualService llm/llm not found")
    status = ticks.tick(timedelta(seconds=10), routing=missing, generation=2)
    assert status.phase == api.Phase.PROMOTED
    assert {c.observed_generation for c in status.conditions} == {2}


def test_a_drift_limit_hold_shows_a_true_degraded_condition() -> None:
    status = _drift_limit()
    assert {c.type: c.status for c in status.conditions}["Degraded"] == "True"
