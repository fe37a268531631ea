"""Every transition of the rollout state machine, tick by tick, with plain inputs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelrollout import api, engine
from modelrollout.analysis import CheckResult
from modelrollout.engine import Observation, Plan, RoutingView
from spec_cases import sample_spec

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
STARTED = T0 - timedelta(hours=1)  # the operator's start, before everything below


def make_spec(**analysis: Any) -> api.ModelRolloutSpec:
    raw: dict[str, Any] = {
        "stable": {"host": "llm-gpt4o", "model": "gpt-4o"},
        "canary": {"host": "llm-claude", "model": "claude-opus-4-8"},
        "trafficRouting": {"istio": {"virtualService": {"name": "llm"}}},
        "stages": [
            {"weight": 1, "duration": "1m"},
            {"weight": 10, "duration": "1m", "approval": "Manual"},
            {"weight": 50, "duration": "1m"},
            {"weight": 100},
        ],
        "analysis": {
            "interval": "10s",
            "window": "30s",
            "gates": [{"name": "error-rate", "template": "istio-error-rate", "max": 0.02}],
            **analysis,
        },
    }
    return api.parse_spec(raw)


def check(verdict: api.Verdict, at: datetime, value: float = 0.004) -> CheckResult:
    gate = api.GateResult(
        name="error-rate",
        verdict=verdict,
        value=value,
        max=0.02,
        window="2m",
        message=f"{value} vs <= 0.02",
        requests=500,
    )
    return CheckResult(
        at=at, verdict=verdict, gates=(gate,), canary_requests=500, summary=f"error-rate {value}"
    )


@dataclass
class Rollout:
    """Feeds decisions back as the next status and plays the VirtualService: what is written is live."""

    spec: api.ModelRolloutSpec = field(default_factory=make_spec)
    status: api.ModelRolloutStatus = field(default_factory=api.ModelRolloutStatus)
    live: int = 0
    now: datetime = T0
    started: datetime = STARTED
    last: Plan | None = None

    def tick(
        self,
        after: timedelta = timedelta(0),
        *,
        verdict: api.Verdict | None = None,
        value: float = 0.004,
        action: str | None = None,
        routing: RoutingView | None = None,
        deferred: bool = False,
    ) -> Plan:
        self.now += after
        obs = Observation(
            now=self.now,
            generation=1,
            operator_started_at=self.started,
            routing=routing or RoutingView(canary_weight=self.live, last_writer=engine.FIELD_MANAGER),
            check=check(verdict, self.now, value) if verdict else None,
            check_deferred=deferred,
            action=action,
        )
        decision = engine.decide(self.spec, self.status, obs)
        self.status, self.last = decision.status, decision
        if decision.canary_weight is not None:
            self.live = decision.canary_weight
        return decision

    def reasons(self) -> list[str]:
        """Every Event of the last plan, the ones posted before the write first."""
        return [e.reason for e in ((*self.last.early_events, *self.last.events) if self.last else ())]

    def at_stage(self, stage: int) -> None:
        """Walk from the start to `stage` the normal way (promoting through the manual gate)."""
        self.tick()
        while self.status.stage < stage:
            if self.status.reason == "AwaitingApproval":
                self.tick(action="promote")
            else:
                self.tick(timedelta(minutes=1), verdict=api.Verdict.PASS)
        assert self.status.stage == stage


P, F, INC, E = api.Verdict.PASS, api.Verdict.FAIL, api.Verdict.INCONCLUSIVE, api.Verdict.ERROR


def test_the_pair_hash_stays_what_stored_statuses_carry() -> None:
    """Rollouts in a cluster carry their pair's hash in status: a different hash for the same pair would
    start every one of them anew after an upgrade. Values recorded from the first implementation."""
    raw = sample_spec()
    for _ in range(2):  # the second time from the cache
        assert engine.pair_hash(api.ModelRolloutSpec.model_validate(raw)) == "0c164194dba0520e"
    raw["canary"] = {**raw["canary"], "host": raw["stable"]["host"], "subset": "v2"}
    raw["stable"] = {**raw["stable"], "subset": "v1"}
    assert engine.pair_hash(api.ModelRolloutSpec.model_validate(raw)) == "ed25457f796c2c2a"


def test_first_tick_starts_stage_one() -> None:
    r = Rollout()
    d = r.tick()
    assert (d.status.phase, d.status.stage, d.status.progress, d.canary_weight) == (
        api.Phase.PROGRESSING,
        0,
        "1/4",
        1,
    )
    assert r.reasons() == ["RolloutStarted"]
    assert d.status.pair_hash == engine.pair_hash(r.spec)
    assert d.status.stable == r.spec.stable


def test_no_advance_before_the_soak_even_with_a_pass() -> None:
    r = Rollout()
    r.tick()
    d = r.tick(timedelta(seconds=59), verdict=P)
    assert (d.status.stage, d.canary_weight) == (0, None)
    assert "soaking until 2026-11-23T10:01:00Z" in d.status.message


def test_no_advance_after_the_soak_without_a_check() -> None:
    r = Rollout()
    r.tick()
    d = r.tick(timedelta(minutes=5))
    assert d.status.stage == 0


def test_soak_and_a_pass_in_this_stage_advance() -> None:
    r = Rollout()
    r.tick()
    d = r.tick(timedelta(minutes=1), verdict=P)
    assert (d.status.stage, d.status.progress, d.canary_weight) == (1, "2/4", 10)
    assert r.reasons() == ["StageAdvanced"]
    assert d.status.stage_started_at == r.now


def test_a_pass_made_before_the_operator_restarted_does_not_advance() -> None:
    r = Rollout()
    r.tick()
    r.tick(timedelta(seconds=30), verdict=P)
    r.started = r.now + timedelta(seconds=1)  # the operator restarts after that check
    d = r.tick(timedelta(minutes=1))
    assert d.status.stage == 0
    assert engine.analysis_due(r.spec, r.status, r.now, r.started)
    d = r.tick(timedelta(seconds=1), verdict=P)
    assert d.status.stage == 1


def test_inconclusive_or_error_checks_never_advance() -> None:
    for verdict in (INC, E):
        r = Rollout()
        r.tick()
        d = r.tick(timedelta(minutes=2), verdict=verdict)
        assert d.status.stage == 0, verdict


def test_failure_limit_tolerates_then_rolls_back() -> None:
    r = Rollout()
    r.at_stage(2)
    d = r.tick(timedelta(seconds=10), verdict=F, value=0.05)
    assert (d.status.phase, d.status.failed_checks, d.canary_weight) == (api.Phase.PROGRESSING, 1, None)
    assert r.reasons() == ["AnalysisFailed"]
    d = r.tick(timedelta(seconds=10), verdict=F, value=0.06)
    assert (d.status.phase, d.canary_weight, d.rollback_reason is not None) == (
        api.Phase.ROLLED_BACK,
        0,
        True,
    )
    rollback = d.status.rollback
    assert rollback is not None
    assert (rollback.gate, rollback.value, rollback.threshold, rollback.window) == (
        "error-rate",
        0.06,
        "<= 0.02",
        "2m",
    )
    assert r.reasons() == ["AnalysisFailed", "RolledBack"]
    assert "rolled back at stage 3/4" in d.status.message
    conditions = {c.type: c.status for c in d.status.conditions}
    assert (conditions["Ready"], conditions["Stalled"]) == ("False", "True")


def test_failure_limit_zero_rolls_back_on_the_first_failure() -> None:
    r = Rollout(spec=make_spec(failureLimit=0))
    r.at_stage(0)
    d = r.tick(timedelta(seconds=10), verdict=F, value=0.5)
    assert d.status.phase == api.Phase.ROLLED_BACK


def test_failures_count_across_stages_of_one_rollout() -> None:
    r = Rollout()
    r.tick()
    r.tick(timedelta(seconds=10), verdict=F)
    r.tick(timedelta(minutes=1), verdict=P)
    assert r.status.stage == 1
    assert r.tick(timedelta(seconds=10), verdict=F).status.phase == api.Phase.ROLLED_BACK


@pytest.mark.parametrize(
    ("on_error", "phase"), [("Rollback", api.Phase.ROLLED_BACK), ("Hold", api.Phase.PAUSED)]
)
def test_error_limit_applies_on_error(on_error: str, phase: api.Phase) -> None:
    r = Rollout(spec=make_spec(errorLimit=2, onError=on_error))
    r.tick()
    d = r.tick(timedelta(seconds=10), verdict=E)
    assert "MetricsUnavailable" in r.reasons()
    assert {c.type: c.status for c in d.status.conditions}["MetricsUnavailable"] == "True"
    d = r.tick(timedelta(seconds=10), verdict=E)
    assert r.reasons() == []  # one event when metrics go away, not one per check
    assert d.status.phase == api.Phase.PROGRESSING
    d = r.tick(timedelta(seconds=10), verdict=E)
    assert d.status.phase == phase
    if phase == api.Phase.PAUSED:
        assert (d.status.reason, d.status.hold, d.canary_weight) == (
            "MetricsUnavailable",
            api.Hold.METRICS_UNAVAILABLE,
            None,
        )
        # metrics come back: still held (a human decides), the condition clears
        d = r.tick(timedelta(minutes=2), verdict=P)
        assert (d.status.phase, d.status.stage) == (api.Phase.PAUSED, 0)
        assert {c.type: c.status for c in d.status.conditions}["MetricsUnavailable"] == "False"
        d = r.tick(action="resume")
        assert d.status.hold is None
        assert r.tick(timedelta(seconds=10), verdict=P).status.stage == 1
    else:
        assert d.status.rollback is not None
        assert d.status.rollback.reason == "MetricsUnavailable"


def test_a_check_the_operator_put_off_is_said_and_decides_nothing() -> None:
    """An operator that cannot keep up checks less often and says so; the delay is never a verdict: no
    limit counts it, the stage neither advances nor goes back."""
    r = Rollout(spec=make_spec(errorLimit=0, inconclusiveLimit=0, failureLimit=0))
    r.tick()
    r.tick(timedelta(seconds=10), verdict=P)
    before = r.status
    for _ in range(5):
        d = r.tick(timedelta(seconds=30), deferred=True)
        assert (d.status.phase, d.status.stage, d.canary_weight) == (api.Phase.PROGRESSING, 0, None)
        assert (d.status.consecutive_errors, d.status.consecutive_inconclusive) == (0, 0)
        assert d.status.last_analysis == before.last_analysis
    delayed = {c.type: c for c in d.status.conditions}["AnalysisDelayed"]
    assert (delayed.status, delayed.reason) == ("True", "OperatorBehind")
    assert "last check 2m30s ago" in delayed.message
    assert r.reasons() == []  # one Event when the delays start, not one per deferral
    d = r.tick(timedelta(seconds=1), verdict=P)
    assert {c.type: c.status for c in d.status.conditions}["AnalysisDelayed"] == "False"
    assert d.status.stage == 1  # the soak passed meanwhile; the first check after it decides


def test_the_first_deferral_posts_one_event() -> None:
    r = Rollout()
    r.tick()
    r.tick(timedelta(seconds=10), deferred=True)
    assert r.reasons() == ["AnalysisDelayed"]
    r.tick(timedelta(seconds=10), deferred=True)
    assert r.reasons() == []


def test_a_finished_rollout_is_not_behind() -> None:
    r = Rollout()
    r.tick()
    r.tick(timedelta(seconds=10), deferred=True)
    d = r.tick(timedelta(seconds=10), action="abort")
    assert d.status.phase == api.Phase.ABORTED
    assert {c.type: c.status for c in d.status.conditions}["AnalysisDelayed"] == "False"


def test_an_error_between_errors_resets_nothing_but_a_pass_does() -> None:
    r = Rollout(spec=make_spec(errorLimit=1))
    r.tick()
    r.tick(timedelta(seconds=10), verdict=E)
    r.tick(timedelta(seconds=10), verdict=P)
    assert r.status.consecutive_errors == 0
    assert r.tick(timedelta(seconds=10), verdict=E).status.phase == api.Phase.PROGRESSING


@pytest.mark.parametrize(
    ("policy", "phase"), [("Hold", api.Phase.PAUSED), ("Rollback", api.Phase.ROLLED_BACK)]
)
def test_inconclusive_limit_applies_on_inconclusive(policy: str, phase: api.Phase) -> None:
    r = Rollout(spec=make_spec(inconclusiveLimit=2, onInconclusive=policy))
    r.tick()
    for _ in range(2):
        assert r.tick(timedelta(seconds=10), verdict=INC).status.phase == api.Phase.PROGRESSING
    d = r.tick(timedelta(seconds=10), verdict=INC)
    assert d.status.phase == phase
    if phase == api.Phase.PAUSED:
        assert d.status.reason == "Inconclusive"


def test_manual_gate_waits_then_promote_advances() -> None:
    r = Rollout()
    r.at_stage(1)
    d = r.tick(timedelta(minutes=1), verdict=P)
    assert (d.status.phase, d.status.reason, d.status.stage) == (api.Phase.PAUSED, "AwaitingApproval", 1)
    assert r.reasons() == ["AwaitingApproval"]
    d = r.tick(timedelta(seconds=10), verdict=P)
    assert r.reasons() == []  # no repeated event while waiting
    assert "awaiting approval" in d.status.message
    d = r.tick(action="promote")
    assert (d.status.stage, d.canary_weight, d.status.phase) == (2, 50, api.Phase.PROGRESSING)
    assert d.status.last_action is not None
    assert d.status.last_action.result == "advanced to stage 3/4"


def test_a_breach_while_awaiting_approval_rolls_back() -> None:
    r = Rollout(spec=make_spec(failureLimit=0))
    r.at_stage(1)
    r.tick(timedelta(minutes=1), verdict=P)
    assert r.status.reason == "AwaitingApproval"
    d = r.tick(timedelta(seconds=10), verdict=F, value=0.3)
    assert (d.status.phase, d.canary_weight) == (api.Phase.ROLLED_BACK, 0)


def test_last_stage_passing_promotes() -> None:
    r = Rollout()
    r.at_stage(3)
    assert r.live == 100
    d = r.tick(timedelta(seconds=10), verdict=P)
    assert d.status.phase == api.Phase.PROGRESSING  # that check's window began before the stage did
    assert "waiting until 2026-11-23T10:03:30Z for a check over this stage's traffic only (window 30s)" in (
        d.status.message
    )
    d = r.tick(timedelta(seconds=20), verdict=P)
    assert (d.status.phase, d.status.canary_weight) == (api.Phase.PROMOTED, 100)
    assert r.reasons() == ["Promoted"]
    conditions = {c.type: c.status for c in d.status.conditions}
    assert (conditions["Ready"], conditions["Reconciling"], conditions["Stalled"]) == (
        "True",
        "False",
        "False",
    )
    assert not engine.analysis_due(r.spec, r.status, r.now + timedelta(hours=1), r.started)


def test_promote_full_goes_to_100_and_is_still_analysed() -> None:
    r = Rollout()
    r.tick()
    d = r.tick(action="promote-full")
    assert (d.status.stage, d.canary_weight, d.status.phase) == (3, 100, api.Phase.PROGRESSING)
    d = r.tick(timedelta(seconds=10), verdict=F)
    d = r.tick(timedelta(seconds=10), verdict=F)
    assert (d.status.phase, d.canary_weight) == (api.Phase.ROLLED_BACK, 0)


def test_abort_then_retry() -> None:
    r = Rollout()
    r.at_stage(2)
    d = r.tick(action="abort")
    assert (d.status.phase, d.canary_weight) == (api.Phase.ABORTED, 0)
    assert r.reasons() == ["Aborted"]
    d = r.tick(timedelta(minutes=5), verdict=P)
    assert (d.status.phase, d.canary_weight) == (api.Phase.ABORTED, None)  # stays on stable
    d = r.tick(action="retry")
    assert (d.status.phase, d.status.stage, d.canary_weight, d.status.failed_checks) == (
        api.Phase.PROGRESSING,
        0,
        1,
        0,
    )
    assert "Retried" in r.reasons()


@pytest.mark.parametrize(
    ("action", "why"),
    [
        ("retry", "retry restarts an aborted or rolled-back rollout"),
        ("resume", "nothing is on hold"),
        ("rollback-now", "unknown action"),
    ],
)
def test_actions_in_the_wrong_state_are_ignored_and_said(action: str, why: str) -> None:
    r = Rollout()
    r.tick()
    d = r.tick(action=action)
    assert d.status.last_action is not None
    assert why in d.status.last_action.result
    assert "ActionIgnored" in r.reasons()
    assert (d.status.stage, d.canary_weight) == (0, None)


def test_promote_after_promoted_is_ignored() -> None:
    r = Rollout()
    r.at_stage(3)
    r.tick(timedelta(seconds=30), verdict=P)
    d = r.tick(action="promote")
    assert d.status.phase == api.Phase.PROMOTED
    assert "ActionIgnored" in r.reasons()


def test_spec_paused_freezes_but_a_breach_still_rolls_back() -> None:
    r = Rollout(spec=make_spec(failureLimit=0).model_copy(update={"paused": True}))
    r.tick()
    d = r.tick(timedelta(minutes=5), verdict=P)
    assert (d.status.phase, d.status.reason, d.status.stage) == (api.Phase.PAUSED, "Paused", 0)
    d = r.tick(timedelta(seconds=10), verdict=F)
    assert d.status.phase == api.Phase.ROLLED_BACK


def test_a_new_canary_restarts_from_stage_one() -> None:
    r = Rollout()
    r.at_stage(2)
    r.spec = r.spec.model_copy(
        update={"canary": api.Target(host="llm-claude", model="claude-opus-4-8", prompt_version="v14")}
    )
    d = r.tick()
    assert (d.status.stage, d.canary_weight) == (0, 1)
    assert r.reasons() == ["RolloutStarted"]
    assert d.status.canary is not None
    assert d.status.canary.prompt_version == "v14"


def test_the_gitops_cycle_after_promotion_warns_only_when_stable_is_not_what_served() -> None:
    r = Rollout()
    r.at_stage(3)
    r.tick(timedelta(seconds=30), verdict=P)
    assert r.status.phase == api.Phase.PROMOTED
    promoted = r.spec.canary
    # the usual commit: the promoted model becomes stable, a new canary comes
    r.spec = r.spec.model_copy(update={"stable": promoted, "canary": api.Target(host="llm-next")})
    r.tick()
    assert r.reasons() == ["RolloutStarted"]
    # a commit whose stable is not what serves 100% now
    r.spec = r.spec.model_copy(
        update={"stable": api.Target(host="llm-old"), "canary": api.Target(host="llm-x")}
    )
    r.tick()
    assert r.reasons() == ["StableChanged", "RolloutStarted"]


def test_other_spec_edits_take_effect_without_restarting() -> None:
    r = Rollout()
    r.at_stage(2)
    r.spec = make_spec(failureLimit=5)
    d = r.tick(timedelta(seconds=10), verdict=P)
    assert (d.status.stage, d.canary_weight) == (2, None)


def test_a_weight_changed_by_someone_else_is_put_back() -> None:
    r = Rollout()
    r.at_stage(2)
    d = r.tick(routing=RoutingView(canary_weight=80, last_writer="kubectl-edit"))
    assert d.canary_weight == 50
    assert r.reasons() == ["DriftCorrected"]
    assert "set by kubectl-edit put back to 50%" in d.events[0].message


def test_our_own_unrecorded_write_is_put_back_quietly() -> None:
    r = Rollout()
    r.at_stage(2)
    d = r.tick(routing=RoutingView(canary_weight=10, last_writer=engine.FIELD_MANAGER))
    assert (d.canary_weight, r.reasons()) == (50, [])


def test_our_own_unrecorded_advance_is_adopted_not_repeated() -> None:
    """The operator wrote stage 3's weight and stopped before the status said so."""
    r = Rollout()
    r.at_stage(2)
    r.tick(timedelta(seconds=10), verdict=P)  # stage 3 is live at 50
    before = r.status
    r.status = before.model_copy(update={"stage": 1, "canary_weight": 10})
    d = r.tick(routing=RoutingView(canary_weight=50, last_writer=engine.FIELD_MANAGER))
    assert (d.status.stage, d.status.canary_weight, d.canary_weight) == (2, 50, None)
    assert r.reasons() == ["StageAdvanced"]


def test_no_advance_while_the_stage_weight_is_not_live() -> None:
    """A write that keeps failing: checks pass and the soak is over, yet nothing is claimed beyond it."""
    r = Rollout()
    r.tick()
    d = r.tick(
        timedelta(minutes=5), verdict=P, routing=RoutingView(canary_weight=0, last_writer="kubectl-create")
    )
    assert (d.status.stage, d.canary_weight) == (0, 1)  # it tries to write stage 1 again, and stays there


def test_drift_past_the_limit_holds_in_degraded() -> None:
    r = Rollout()
    r.at_stage(2)
    for _ in range(engine.DRIFT_LIMIT):
        r.tick(timedelta(seconds=5), routing=RoutingView(canary_weight=0, last_writer="argocd-controller"))
        assert r.reasons() == ["DriftCorrected"]
    d = r.tick(timedelta(seconds=5), routing=RoutingView(canary_weight=0, last_writer="argocd-controller"))
    assert (d.canary_weight, d.status.phase, d.status.hold) == (
        None,
        api.Phase.DEGRADED,
        api.Hold.DRIFT_LIMIT,
    )
    assert r.reasons() == ["DriftLimit"]
    d = r.tick(action="resume")
    assert d.status.hold is None


def test_a_missing_virtual_service_degrades_without_writes_and_recovers() -> None:
    r = Rollout()
    r.at_stage(2)
    missing = RoutingView(problem_reason="VirtualServiceNotFound", problem="VirtualService llm/llm not found")
    d = r.tick(timedelta(minutes=2), verdict=P, routing=missing)
    assert (d.status.phase, d.status.reason, d.canary_weight) == (
        api.Phase.DEGRADED,
        "VirtualServiceNotFound",
        None,
    )
    assert d.status.stage == 2
    assert {c.type: c.reason for c in d.status.conditions}["Degraded"] == "VirtualServiceNotFound"
    assert r.reasons() == ["VirtualServiceNotFound"]
    assert r.tick(timedelta(seconds=10), routing=missing).events == ()
    d = r.tick(timedelta(seconds=10), routing=RoutingView(canary_weight=0, last_writer="kubectl-create"))
    assert d.status.phase == api.Phase.PROGRESSING
    assert d.canary_weight == 50  # the recreated VirtualService gets the stage's weight back
    assert "Recovered" in r.reasons()


def test_a_conflict_changes_nothing() -> None:
    r = Rollout()
    d = r.tick(routing=RoutingView(conflict_owner="llm/first"))
    assert (d.status.phase, d.status.reason, d.canary_weight) == (api.Phase.DEGRADED, "Conflict", None)
    assert d.status.pair_hash is None  # not even started
    assert {c.type: c.status for c in d.status.conditions}["Conflict"] == "True"
    assert r.reasons() == ["Conflict"]


def test_a_terminal_rollout_keeps_its_phase_when_the_vs_goes_missing() -> None:
    r = Rollout()
    r.at_stage(3)
    r.tick(timedelta(seconds=30), verdict=P)
    missing = RoutingView(problem_reason="VirtualServiceNotFound", problem="gone")
    d = r.tick(routing=missing)
    assert d.status.phase == api.Phase.PROMOTED
    assert {c.type: c.status for c in d.status.conditions}["Degraded"] == "True"


def test_invalid_spec_is_reported_not_acted_on() -> None:
    d = engine.invalid_spec(
        api.ModelRolloutStatus(), ["spec.stages: the last stage must have weight 100"], T0, 2
    )
    assert (d.status.phase, d.status.reason, d.canary_weight) == (api.Phase.DEGRADED, "InvalidSpec", None)
    assert "spec.stages: the last stage must have weight 100" in d.status.message
    assert d.status.observed_generation == 2


def test_analysis_is_due_every_interval_and_at_once_in_a_new_stage() -> None:
    r = Rollout()
    assert not engine.analysis_due(r.spec, r.status, r.now, r.started)  # not started yet
    r.tick()
    assert engine.analysis_due(r.spec, r.status, r.now, r.started)  # no check yet
    r.tick(timedelta(seconds=1), verdict=P)
    assert not engine.analysis_due(r.spec, r.status, r.now + timedelta(seconds=9), r.started)
    assert engine.analysis_due(r.spec, r.status, r.now + timedelta(seconds=10), r.started)


def test_a_check_asked_for_out_of_turn_runs_now_but_not_twice_in_a_second() -> None:
    r = Rollout()
    assert not engine.analysis_due(r.spec, r.status, r.now, r.started, requested=True)  # not started
    r.tick()
    r.tick(timedelta(seconds=1), verdict=P)
    soon, later = r.now + timedelta(milliseconds=500), r.now + timedelta(seconds=1)
    assert not engine.analysis_due(r.spec, r.status, later, r.started)  # the interval is 10 s
    assert engine.analysis_due(r.spec, r.status, later, r.started, requested=True)
    assert not engine.analysis_due(r.spec, r.status, soon, r.started, requested=True)  # an alert storm


def test_an_accepted_abort_is_finished_after_a_restart() -> None:
    r = Rollout()
    r.at_stage(2)
    decided = r.tick(action="abort")
    assert decided.status.phase == api.Phase.ABORTED
    # The operator recorded the accepted abort and the pending return, then died before the VirtualService
    # write.
    assert decided.intent is not None
    r.status, r.live = decided.intent, 50
    assert r.status.phase == api.Phase.PROGRESSING  # the status does not claim what the VS does not show
    assert r.status.rollback is not None
    r.started = r.now + timedelta(seconds=1)
    d = r.tick(timedelta(seconds=5), verdict=P)  # even a passing check does not undo it
    assert (d.status.phase, d.canary_weight) == (api.Phase.ABORTED, 0)


def test_a_rollback_goes_to_the_virtual_service_first_and_records_itself_there() -> None:
    """No status write holds a rollback back: the return is recorded on the VirtualService by the write that
    makes it, bound to the status it was decided from."""
    r = Rollout(spec=make_spec(failureLimit=0))
    r.at_stage(2)
    before = r.status
    decided = r.tick(timedelta(seconds=10), verdict=F)
    assert decided.intent is None
    assert decided.write is not None
    record = decided.write.returning
    assert record is not None
    assert record.rollback == decided.status.rollback
    assert (record.rollout_started_at, record.stage, record.stage_started_at) == (
        before.rollout_started_at,
        before.stage,
        before.stage_started_at,
    )


@pytest.mark.parametrize(
    ("live", "writer"), [(0, engine.FIELD_MANAGER), (50, "kubectl-edit")], ids=["as-written", "edited-since"]
)
def test_a_rollback_written_but_not_recorded_is_finished_after_a_restart(live: int, writer: str) -> None:
    r = Rollout(spec=make_spec(failureLimit=0))
    r.at_stage(2)
    before = r.status
    decided = r.tick(timedelta(seconds=10), verdict=F)
    assert decided.write is not None
    # The VirtualService write went through (and carried the return); the operator died before the status
    # write. Whatever the VirtualService shows since, our latest write there was this return.
    r.status, r.started = before, r.now + timedelta(seconds=1)
    found = RoutingView(canary_weight=live, last_writer=writer, returning=decided.write.returning)
    d = r.tick(timedelta(seconds=5), verdict=P, routing=found)  # even a passing check does not undo it
    assert (d.status.phase, d.canary_weight) == (api.Phase.ROLLED_BACK, 0)
    assert d.status.rollback == decided.status.rollback
    assert d.rollback_reason == "AnalysisFailed"
    assert "DriftCorrected" not in r.reasons()


def test_a_return_recorded_on_the_virtual_service_for_an_earlier_stage_is_history() -> None:
    r = Rollout(spec=make_spec(failureLimit=0))
    r.at_stage(1)
    earlier = r.status
    rollback = api.Rollback(at=r.now, reason="AnalysisFailed", message="error-rate 0.3 > 0.02")
    record = engine.route_return(rollback, earlier)
    r.tick(action="promote")  # stage 3 of 4 (its own write has no return: the record is history)
    assert r.status.stage == 2
    d = r.tick(
        timedelta(seconds=5),
        verdict=P,
        routing=RoutingView(canary_weight=r.live, last_writer=engine.FIELD_MANAGER, returning=record),
    )
    assert (d.status.phase, d.status.rollback) == (api.Phase.PROGRESSING, None)
    assert d.canary_weight is None  # nothing to write


def test_the_soak_message_names_its_end_and_does_not_count_down() -> None:
    """A message that changed at every tick would rewrite the status (and wake every watcher of it, Argo CD
    included) for nothing; a moment stays true however long ago it was written."""
    r = Rollout(
        spec=make_spec().model_copy(
            update={"stages": [api.Stage(weight=10, duration=timedelta(hours=2)), api.Stage(weight=100)]}
        )
    )
    r.tick()
    first = r.tick(timedelta(seconds=5), verdict=P).status.message
    assert "soaking until 2026-11-23T12:00:00Z" in first
    assert r.tick(timedelta(seconds=50), verdict=P).status.message == first
    r.tick(timedelta(hours=2) - timedelta(seconds=100))
    assert r.tick(timedelta(seconds=0), verdict=P).status.message == first


def test_an_action_on_an_unusable_virtual_service_is_recorded_as_ignored() -> None:
    r = Rollout()
    r.at_stage(1)
    d = r.tick(action="promote", routing=RoutingView(problem_reason="VirtualServiceNotFound", problem="gone"))
    assert d.status.last_action is not None
    assert d.status.last_action.result.startswith("ignored: the VirtualService cannot be used")
    assert "ActionIgnored" in r.reasons()
    assert d.status.stage == 1


def test_an_action_arriving_with_a_new_pair_is_recorded_as_ignored() -> None:
    r = Rollout()
    r.at_stage(1)
    r.spec = r.spec.model_copy(update={"canary": api.Target(host="llm-next")})
    d = r.tick(action="promote")
    assert d.status.stage == 0
    assert d.status.last_action is not None
    assert "a new rollout" in d.status.last_action.result


def test_abort_after_promotion_is_refused() -> None:
    r = Rollout()
    r.at_stage(3)
    r.tick(timedelta(seconds=30), verdict=P)
    d = r.tick(action="abort")
    assert (d.status.phase, d.canary_weight) == (api.Phase.PROMOTED, None)
    assert d.status.last_action is not None
    assert "the rollout is Promoted" in d.status.last_action.result


# ---- stage semantics ----


def test_a_manual_gate_on_the_last_stage_waits_for_promote() -> None:
    spec = make_spec().model_copy(
        update={"stages": [api.Stage(weight=10), api.Stage(weight=100, approval=api.Approval.MANUAL)]}
    )
    r = Rollout(spec=spec)
    r.tick()
    r.tick(timedelta(seconds=30), verdict=P)
    assert r.status.stage == 1
    d = r.tick(timedelta(seconds=30), verdict=P)
    assert (d.status.phase, d.status.reason) == (api.Phase.PAUSED, "AwaitingApproval")
    assert r.reasons() == ["AwaitingApproval"]
    d = r.tick(action="promote")
    assert d.status.phase == api.Phase.PROMOTED


def test_promote_full_at_the_last_stage_does_not_restart_its_soak() -> None:
    r = Rollout()
    r.tick()
    r.tick(action="promote-full")
    started = r.status.stage_started_at
    d = r.tick(timedelta(seconds=20), action="promote-full")
    assert d.status.stage_started_at == started
    assert d.status.last_action is not None
    assert d.status.last_action.result.startswith("ignored: the rollout is already at its last stage")
    assert d.canary_weight is None


@pytest.mark.parametrize(
    "hold_by", [{"inconclusiveLimit": 0, "onInconclusive": "Hold"}, {"errorLimit": 0, "onError": "Hold"}]
)
def test_promote_while_held_lifts_the_hold_and_moves_on(hold_by: dict[str, Any]) -> None:
    r = Rollout(spec=make_spec(**hold_by))
    r.tick()
    verdict = INC if "inconclusiveLimit" in hold_by else E
    d = r.tick(timedelta(seconds=10), verdict=verdict)
    assert d.status.phase == api.Phase.PAUSED
    d = r.tick(action="promote")
    assert (d.status.phase, d.status.hold, d.status.stage, d.canary_weight) == (
        api.Phase.PROGRESSING,
        None,
        1,
        10,
    )
    assert d.status.last_action is not None
    assert "hold is lifted" in d.status.last_action.result


def test_promote_is_refused_while_spec_paused_freezes_the_rollout() -> None:
    r = Rollout(spec=make_spec().model_copy(update={"paused": True}))
    r.tick()
    d = r.tick(action="promote")
    assert d.canary_weight is None
    assert d.status.last_action is not None
    assert "spec.paused" in d.status.last_action.result


def test_a_stage_without_a_soak_waits_for_a_check_over_its_own_traffic() -> None:
    """The check that lets a stage advance must measure that stage only: its window starts after the stage
    did. Without a duration the stage waits for such a check rather than advancing on the previous one."""
    spec = make_spec().model_copy(update={"stages": [api.Stage(weight=10), api.Stage(weight=100)]})
    r = Rollout(spec=spec)
    r.tick()
    d = r.tick(timedelta(seconds=10), verdict=P)
    assert (d.status.stage, d.canary_weight) == (0, None)
    assert "waiting until 2026-11-23T10:00:30Z for a check over this stage's traffic only" in d.status.message
    d = r.tick(timedelta(seconds=20), verdict=P)
    assert (d.status.stage, d.canary_weight) == (1, 100)


def test_a_gate_with_a_longer_window_sets_the_wait() -> None:
    spec = make_spec(gates=[{"name": "slow", "template": "istio-error-rate", "max": 0.02, "window": "5m"}])
    r = Rollout(spec=spec)
    r.tick()
    d = r.tick(timedelta(minutes=2), verdict=P)
    assert d.status.stage == 0
    d = r.tick(timedelta(minutes=3), verdict=P)
    assert d.status.stage == 1


# ---- plans: what is recorded before the write ----


def test_an_action_is_recorded_as_accepted_before_it_takes_effect() -> None:
    r = Rollout()
    r.at_stage(1)
    r.tick(timedelta(minutes=1), verdict=P)
    d = r.tick(action="promote")
    assert d.intent is not None
    assert d.intent.pending_action is not None
    assert d.intent.pending_action.action == "promote"
    assert (d.intent.stage, d.intent.phase) == (1, api.Phase.PAUSED)  # nothing claimed yet
    assert d.consume_action == "promote"
    assert d.status.pending_action is None
    # Applied again to the status it was accepted in (a failed write, a restart): the same outcome.
    again = engine.decide(
        r.spec,
        d.intent,
        Observation(
            now=r.now,
            generation=1,
            operator_started_at=r.started,
            routing=RoutingView(canary_weight=10, last_writer=engine.FIELD_MANAGER),
        ),
    )
    assert (again.status.stage, again.canary_weight) == (d.status.stage, d.canary_weight)
    assert again.consume_action is None


def test_a_pending_action_and_a_new_annotation_are_taken_one_at_a_time() -> None:
    r = Rollout()
    r.at_stage(1)
    r.tick(timedelta(minutes=1), verdict=P)
    first = r.tick(action="promote")
    assert first.intent is not None
    r.status = first.intent  # recorded, the write failed
    d = r.tick(action="abort")
    assert d.consume_action is None  # abort waits on the annotation until promote is done
    assert d.status.stage == 2
    d = r.tick(action="abort")
    assert (d.status.phase, d.consume_action) == (api.Phase.ABORTED, "abort")


def test_write_failed_keeps_the_check_and_claims_nothing_else() -> None:
    r = Rollout(spec=make_spec(failureLimit=0))
    r.at_stage(2)
    base = r.status
    decided = engine.decide(
        r.spec,
        base,
        Observation(
            now=r.now + timedelta(seconds=10),
            generation=1,
            operator_started_at=r.started,
            routing=RoutingView(canary_weight=50, last_writer=engine.FIELD_MANAGER),
            check=check(F, r.now + timedelta(seconds=10), 0.4),
        ),
    )
    assert decided.intent is None  # the return travels on the write
    failed = engine.write_failed(decided, base, "HTTP 403: denied", r.now)
    assert (failed.status.phase, failed.status.canary_weight) == (api.Phase.PROGRESSING, 50)
    assert failed.status.failed_checks == 1
    assert failed.status.rollback == decided.status.rollback  # the return is recorded to be finished
    assert "returning traffic to stable" in failed.status.message
    assert failed.write is None
    assert failed.notifications == ()
    assert [e.reason for e in failed.events] == ["AnalysisFailed", "WriteFailed"]
    again = engine.write_failed(decided, failed.status, "HTTP 403: denied", r.now)
    assert [e.reason for e in again.events] == ["AnalysisFailed"]  # WriteFailed is said once, then counted
    assert again.status.write_failures == 2


def test_an_invalid_spec_never_erases_a_finished_phase() -> None:
    r = Rollout()
    r.at_stage(3)
    r.tick(timedelta(seconds=30), verdict=P)
    assert r.status.phase == api.Phase.PROMOTED
    d = engine.invalid_spec(r.status, ["spec.stages: the last stage must have weight 100"], r.now, 2)
    assert d.status.phase == api.Phase.PROMOTED
    assert d.write is None
    by_type = {c.type: c.status for c in d.status.conditions}
    assert (by_type["InvalidSpec"], by_type["Stalled"], by_type["Ready"]) == ("True", "True", "False")
    r.status = d.status
    d = r.tick(timedelta(minutes=5), verdict=P)  # fixed: it stays promoted and is not analysed again
    assert (d.status.phase, d.canary_weight) == (api.Phase.PROMOTED, None)
    assert r.reasons() == ["Recovered"]
    assert {c.type: c.status for c in d.status.conditions}["InvalidSpec"] == "False"


def test_a_check_asked_for_within_the_spacing_is_kept_and_made_when_the_spacing_allows() -> None:
    r = Rollout()
    r.tick()
    r.tick(timedelta(seconds=1), verdict=P)
    checked_at = r.now
    soon = r.now + timedelta(milliseconds=300)
    obs = Observation(
        now=soon,
        generation=1,
        operator_started_at=r.started,
        routing=RoutingView(canary_weight=r.live, last_writer=engine.FIELD_MANAGER),
        check_requested=True,  # an alert 0.3 s after a check: not made now
    )
    plan = engine.decide(r.spec, r.status, obs)
    assert plan.keep_check_request
    assert plan.look_after == checked_at + timedelta(seconds=1) - soon  # 0.7 s, not the 10 s interval
    assert engine.analysis_due(
        r.spec, plan.status, checked_at + timedelta(seconds=1), r.started, requested=True
    )
    unasked = engine.decide(r.spec, r.status, replace(obs, check_requested=False))
    assert not unasked.keep_check_request
    assert unasked.look_after == checked_at + timedelta(seconds=10) - soon
    made = engine.decide(
        r.spec, r.status, replace(obs, now=checked_at + timedelta(seconds=1), check=check(P, soon))
    )
    assert not made.keep_check_request  # served
