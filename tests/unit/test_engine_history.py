"""The stage history in status: one record per finished stage, with how it ended and its last check, derived
from the status before and after each decision (engine/history.py), driven tick by tick as the operator
drives the engine."""

from __future__ import annotations

from datetime import timedelta

from test_kstatus import T0, P, Ticks, spec

from modelrollout import api


def outcomes(status: api.ModelRolloutStatus) -> list[tuple[int, int, str]]:
    return [(record.stage, record.weight, record.outcome) for record in status.stage_history]


def test_each_finished_stage_is_recorded_once_with_its_last_check() -> None:
    ticks = Ticks()
    started = ticks.tick()
    assert started.stage_history == []
    soaked = ticks.tick(timedelta(minutes=1), verdict=P)  # stage 1 soaked and passed: stage 2
    assert outcomes(soaked) == [(0, 5, "Advanced (Soak)")]
    record = soaked.stage_history[0]
    assert (record.started_at, record.ended_at) == (T0, T0 + timedelta(minutes=1))
    assert record.verdict == api.Verdict.PASS
    assert [(g.name, g.verdict, g.value, g.bound) for g in record.gates] == [
        ("error-rate", api.Verdict.PASS, 0.004, "<= 0.02")
    ]
    # Ticks inside stage 2 add nothing.
    assert outcomes(ticks.tick(timedelta(seconds=10), verdict=P)) == [(0, 5, "Advanced (Soak)")]


def test_promote_then_promotion_end_the_stages_they_end() -> None:
    ticks = Ticks()
    ticks.to_manual_gate()
    ticks.tick(action="promote")
    promoted = ticks.tick(timedelta(seconds=10), verdict=P)
    assert promoted.phase == api.Phase.PROMOTED
    assert outcomes(promoted) == [
        (0, 5, "Advanced (Soak)"),
        (1, 20, "Advanced (Promote)"),
        (2, 100, "Promoted"),
    ]
    assert promoted.stage_history[-1].verdict == api.Verdict.PASS


def test_a_rollback_and_an_abort_end_the_stage_they_happen_in() -> None:
    ticks = Ticks(spec=spec(failureLimit=0))
    ticks.tick()
    ticks.tick(timedelta(minutes=1), verdict=P)
    rolled_back = ticks.tick(timedelta(seconds=10), verdict=api.Verdict.FAIL)
    assert outcomes(rolled_back) == [(0, 5, "Advanced (Soak)"), (1, 20, "RolledBack")]
    assert rolled_back.stage_history[-1].verdict == api.Verdict.FAIL

    aborting = Ticks()
    aborting.tick()
    assert outcomes(aborting.tick(action="abort")) == [(0, 5, "Aborted")]
    # No check was made in that stage: nothing to show for it.
    assert aborting.status.stage_history[0].gates == []


def test_a_retry_starts_a_history_of_its_own() -> None:
    ticks = Ticks()
    ticks.tick()
    ticks.tick(action="abort")
    retried = ticks.tick(timedelta(seconds=1), action="retry")
    assert retried.phase == api.Phase.PROGRESSING
    assert retried.stage_history == []


def test_a_decision_that_is_not_recorded_is_made_again_and_recorded_once() -> None:
    # A VirtualService write that fails leaves the status as it was read; the same decision at the next tick
    # then records the stage, once.
    ticks = Ticks()
    ticks.tick()
    before = ticks.status
    first = ticks.tick(timedelta(minutes=1), verdict=P)
    assert outcomes(first) == [(0, 5, "Advanced (Soak)")]
    ticks.status, ticks.live = before, 5  # the write failed: nothing was recorded, nothing moved
    again = ticks.tick(timedelta(seconds=5), verdict=P)
    assert outcomes(again) == [(0, 5, "Advanced (Soak)")]
    # Had the write gone through with the status lost (a restart between the two), the stage is still
    # recorded once, as ended by the operator's recovery of its own write.
    ticks.status, ticks.live = before, 20
    assert outcomes(ticks.tick(timedelta(seconds=5), verdict=P)) == [(0, 5, "Advanced (Recovery)")]
