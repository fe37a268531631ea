"""Where a rollout stands in its stages: start, soak, advance, promote, and what a stage-list edit means."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime, timedelta

from modelrollout import api
from modelrollout.durations import format_duration
from modelrollout.engine.draft import Draft, describe
from modelrollout.engine.model import TERMINAL, Observation, pair_hash
from modelrollout.routing.router import backend_of


def stage_weight(spec: api.ModelRolloutSpec, stage: int) -> int:
    return spec.stages[min(stage, len(spec.stages) - 1)].canary_weight


def stage_mirror(spec: api.ModelRolloutSpec, stage: int) -> int:
    return spec.stages[min(stage, len(spec.stages) - 1)].mirror


def progress(spec: api.ModelRolloutSpec, stage: int) -> str:
    return f"{min(stage, len(spec.stages) - 1) + 1}/{len(spec.stages)}"


def check_window(spec: api.ModelRolloutSpec) -> timedelta:
    """The longest range a check reads: a check made this long after a stage began measures that stage
    only."""
    windows = [spec.analysis.window, *(g.window for g in spec.analysis.gates if g.window is not None)]
    return max(windows)


def next_position(spec: api.ModelRolloutSpec, status: api.ModelRolloutStatus) -> tuple[int, int] | None:
    """(stage, weight) a promote goes to, or None at the last stage. Below its stage's weight (after a
    stage-list edit) the rollout first enters that stage."""
    stage = min(status.stage, len(spec.stages) - 1)
    if status.canary_weight < spec.stages[stage].canary_weight:
        return stage, spec.stages[stage].canary_weight
    if stage + 1 < len(spec.stages):
        return stage + 1, spec.stages[stage + 1].canary_weight
    return None


def start(draft: Draft, spec: api.ModelRolloutSpec, reason: str, obs: Observation) -> None:
    """Stage 1 of the spec's pair. Destinations of a previous pair that are not part of this one leave the
    route: its canary is dropped, its stable stays at weight 0 (the user's own destination)."""
    previous = draft.status
    weight, mirror = stage_weight(spec, 0), stage_mirror(spec, 0)
    draft.update(
        phase=api.Phase.PROGRESSING,
        reason=reason,
        stage=0,
        stage_count=len(spec.stages),
        progress=progress(spec, 0),
        canary_weight=weight,
        shadow=mirror,
        stage_started_at=draft.now,
        pair_hash=pair_hash(spec),
        stable=spec.stable,
        canary=spec.canary,
        rollout_started_at=draft.now,
        routing=obs.target or previous.routing,
        failed_checks=0,
        consecutive_errors=0,
        consecutive_inconclusive=0,
        hold=None,
        awaiting_approval=False,
        rollback=None,
        last_analysis=None,
        advanced_by=None,
        accumulations=[],
        drift_corrections=[],
    )
    draft.set_traffic(weight, mirror)
    same_route = obs.target is None or previous.routing in (None, obs.target)
    if draft.write is not None and same_route and previous.stable and previous.canary:
        pair = {backend_of(spec.stable), backend_of(spec.canary)}
        old_canary, old_stable = backend_of(previous.canary), backend_of(previous.stable)
        draft.write = replace(
            draft.write,
            drop=(old_canary,) if old_canary not in pair else (),
            retire=(old_stable,) if old_stable not in pair else (),
        )


def advance(draft: Draft, spec: api.ModelRolloutSpec, to_stage: int, why: str, by: str = "Soak") -> None:
    to_stage = min(to_stage, len(spec.stages) - 1)
    weight, mirror = stage_weight(spec, to_stage), stage_mirror(spec, to_stage)
    draft.update(
        stage=to_stage,
        progress=progress(spec, to_stage),
        canary_weight=weight,
        shadow=mirror,
        stage_started_at=draft.now,
        phase=api.Phase.PROGRESSING,
        reason="StageAdvanced",
        consecutive_inconclusive=0,
        awaiting_approval=False,
        advanced_by=by,
    )
    draft.set_traffic(weight, mirror)
    draft.event(
        "Normal",
        "StageAdvanced",
        f"stage {progress(spec, to_stage)} at {api.exposure(weight, mirror)}: {why}",
    )


def promote_done(draft: Draft, spec: api.ModelRolloutSpec, why: str) -> None:
    draft.update(
        phase=api.Phase.PROMOTED,
        reason="Promoted",
        canary_weight=100,
        shadow=0,
        hold=None,
        awaiting_approval=False,
    )
    draft.set_traffic(100)
    draft.event("Normal", "Promoted", f"{describe(spec.canary)} serves 100%: {why}")


def realign(draft: Draft, spec: api.ModelRolloutSpec) -> None:
    """Keep the position valid after an edit of spec.stages.

    The position is valid while its stage exists and carries the live weight (or, at stage 1 only, a weight
    below it, after an earlier edit). Otherwise the rollout continues at the stage with the largest weight not
    above the live one, so an edit never raises traffic: at most it lowers it to that stage's weight. With
    every stage above the live weight it stays where it is, before stage 1, and enters stage 1 by the usual
    rule (a passing check)."""
    status = draft.status
    stages = spec.stages
    draft.update(stage_count=len(stages), progress=progress(spec, status.stage))
    if status.phase in TERMINAL or status.pair_hash is None:
        return
    live, mirror = status.canary_weight, status.shadow
    stage = status.stage
    if stage < len(stages) and (
        (stages[stage].canary_weight, stages[stage].mirror) == (live, mirror)
        or (stage == 0 and not mirror and live < stages[0].canary_weight)
    ):
        return
    # A shadow stage sends no user to the canary: it is "below" any weighted position.
    below = [index for index, s in enumerate(stages) if s.canary_weight <= live]
    new_stage = max(below) if below else 0
    new_weight, new_mirror = (
        (stages[new_stage].canary_weight, stages[new_stage].mirror) if below else (live, 0)
    )
    moved = (new_weight, new_mirror) != (live, mirror)
    was = f"stage {stage + 1} at {api.exposure(live, mirror)}"
    draft.update(
        stage=new_stage,
        progress=progress(spec, new_stage),
        canary_weight=new_weight,
        shadow=new_mirror,
        stage_started_at=draft.now if moved else status.stage_started_at,
        awaiting_approval=False,
        reason="StagesChanged",
    )
    if moved:
        draft.set_traffic(new_weight, new_mirror)
    where = (
        f"stage {progress(spec, new_stage)} at {api.exposure(new_weight, new_mirror)}"
        if below
        else f"{live}%, below stage {progress(spec, 0)} ({stages[0].canary_weight}%), entered once a check "
        "passes"
    )
    draft.event(
        "Warning",
        "StagesChanged",
        f"spec.stages changed under {was}: continuing at {where}; the soak of the stage starts again"
        if moved
        else f"spec.stages changed under {was}: continuing at {where}",
    )


def soak_left(spec: api.ModelRolloutSpec, status: api.ModelRolloutStatus, now: datetime) -> timedelta:
    stage = spec.stages[min(status.stage, len(spec.stages) - 1)]
    if status.canary_weight < stage.canary_weight:
        return timedelta(0)  # before the stage (after a stage-list edit): no soak of its own
    duration = stage.duration or timedelta(0)
    started = status.stage_started_at or now
    return max(timedelta(0), started + duration - now)


def window_wait(spec: api.ModelRolloutSpec, status: api.ModelRolloutStatus, now: datetime) -> timedelta:
    """How long until a check can measure this stage's traffic only."""
    started = status.stage_started_at or now
    return max(timedelta(0), started + check_window(spec) - now)


def countdown(left: timedelta) -> str:
    """Whole minutes while more than two remain, whole seconds below: a duration as a person reads it."""
    seconds = left.total_seconds()
    if seconds > 120:
        return format_duration(timedelta(minutes=math.ceil(seconds / 60)))
    return format_duration(timedelta(seconds=math.ceil(seconds)))


def passed_here(
    spec: api.ModelRolloutSpec, status: api.ModelRolloutStatus, operator_started_at: datetime
) -> bool:
    """The latest check passed, was made in this stage after the operator (re)started, and its window began
    after the stage did: it measured this stage's traffic and nothing before it."""
    last = status.last_analysis
    return bool(
        last
        and last.verdict == api.Verdict.PASS
        and last.stage == status.stage
        and status.stage_started_at is not None
        and last.at - check_window(spec) >= status.stage_started_at
        and last.at >= operator_started_at
    )


def evidence_allows(spec: api.ModelRolloutSpec, status: api.ModelRolloutStatus, now: datetime) -> bool:
    """A stage may end before its soak when it has a minDuration that has passed and every sequential gate
    that decides (not advisory) has evidence that the canary is no worse: its confidence sequence for the
    event-rate ratio lies below 1 + margin."""
    stage = spec.stages[min(status.stage, len(spec.stages) - 1)]
    started = status.stage_started_at
    if stage.min_duration is None or started is None or now - started < stage.min_duration:
        return False
    sequential = [g.name for g in spec.analysis.gates if g.test is not None and not g.advisory]
    last = status.last_analysis
    if not sequential or last is None:
        return False
    evidence = {g.name: g.evidence for g in last.gates if not g.advisory}
    return all((found := evidence.get(name)) is not None and found.no_worse for name in sequential)


def maybe_advance(draft: Draft, spec: api.ModelRolloutSpec, obs: Observation) -> None:
    status = draft.status
    if status.phase in TERMINAL or status.hold is not None or spec.paused:
        return
    if draft.write is not None or (obs.routing.canary_weight, obs.routing.mirror) != (
        status.canary_weight,
        status.shadow,
    ):
        # The stage's weight is not live yet (a write is pending or keeps failing): its checks measured
        # other traffic than the status says, and the next stage must not be claimed on top of it.
        return
    left = soak_left(spec, status, obs.now)
    if not passed_here(spec, status, obs.operator_started_at):
        return
    early = left > timedelta(0)
    if early and not evidence_allows(spec, status, obs.now):
        return
    position = next_position(spec, status)
    stage = spec.stages[min(status.stage, len(spec.stages) - 1)]
    summary = obs.check.summary if obs.check else "all gates pass"
    if early:
        summary = f"passed with evidence, {countdown(left)} before the end of its soak: {summary}"
    if position is not None and position[0] == status.stage:
        advance(draft, spec, status.stage, f"a check passed at {status.canary_weight}%", by="Recovery")
    elif stage.approval == api.Approval.MANUAL or (position is None and stage.shadow is not None):
        # A shadow-only rollout ends in its last shadow stage: sending users to the canary is a human's call.
        if not status.awaiting_approval:
            done = "passes with evidence" if early else "soaked and passes"
            draft.event(
                "Normal",
                "AwaitingApproval",
                f"stage {progress(spec, status.stage)} {done}; waiting for `promote`",
            )
        draft.update(awaiting_approval=True)
    elif position is None:
        promote_done(draft, spec, f"the last stage passed: {summary}")
    elif early:
        advance(draft, spec, position[0], summary, by="Evidence")
    else:
        advance(draft, spec, position[0], "soaked and all gates pass")
