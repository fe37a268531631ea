"""Phase, reason, message and conditions, from where the rollout stands after a decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from modelrollout import api
from modelrollout.durations import format_duration
from modelrollout.engine.checks import ANALYSIS_DELAYED
from modelrollout.engine.draft import Draft, describe
from modelrollout.engine.model import TERMINAL, Observation
from modelrollout.engine.stages import (
    check_window,
    progress,
    soak_left,
    window_wait,
)

ACTIVE_REASONS = ("StageAdvanced", "RolloutStarted", "Retried", "StagesChanged")


def settle(draft: Draft, spec: api.ModelRolloutSpec, obs: Observation) -> None:
    status = draft.status
    phase, reason = status.phase, status.reason or ""
    where = f"stage {progress(spec, status.stage)} at {api.exposure(status.canary_weight, status.shadow)}"
    last = status.last_analysis
    gates = f": {'; '.join(f'{g.name} {g.message}' for g in last.gates)}" if last and last.gates else ""
    if phase == api.Phase.PROMOTED:
        message = f"promoted: {describe(spec.canary)} serves 100%"
    elif phase == api.Phase.ROLLED_BACK and status.rollback:
        message = f"rolled back at stage {progress(spec, status.stage)}: {status.rollback.message}"
    elif phase == api.Phase.ABORTED:
        message = "aborted: traffic on stable"
    elif status.hold == api.Hold.DRIFT_LIMIT:
        phase, reason = api.Phase.DEGRADED, "DriftLimit"
        message = f"{where}: weights keep being changed by someone else; holding until resume"
    elif status.hold is not None:
        phase, reason = api.Phase.PAUSED, status.hold.value
        message = f"{where}: on hold ({status.hold.value}) until resume{gates}"
    elif spec.paused:
        phase, reason = api.Phase.PAUSED, "Paused"
        message = f"{where}: paused by spec.paused{gates}"
    elif status.awaiting_approval:
        phase, reason = api.Phase.PAUSED, "AwaitingApproval"
        message = f"{where}: awaiting approval (kubectl modelrollout promote){gates}"
    else:
        phase = api.Phase.PROGRESSING
        reason = reason if reason in ACTIVE_REASONS else "Analysing"
        left = soak_left(spec, status, obs.now)
        waiting = window_wait(spec, status, obs.now)
        # Moments, not countdowns: the message stays true between writes and does not change every tick.
        if left > timedelta(0):
            wait = f"soaking until {moment(obs.now + left)}"
        elif waiting > timedelta(0):
            wait = (
                f"waiting until {moment(obs.now + waiting)} for a check over this stage's traffic only "
                f"(window {format_duration(check_window(spec))})"
            )
        else:
            wait = ""
        verdict = (
            f"last check {last.verdict.value}"
            if last and last.stage == status.stage
            else "first check pending"
        )
        message = f"{where}: {', '.join(p for p in (wait, verdict) if p)}{gates}"
    drift_hold = status.hold == api.Hold.DRIFT_LIMIT
    draft.condition(
        "Degraded",
        "True" if drift_hold else "False",
        "DriftLimit" if drift_hold else "Resolved",
        message if drift_hold else "",
    )
    draft.condition_flip("InvalidSpec", False, "", "")
    if phase in TERMINAL:
        # No analysis runs any more.
        draft.condition_flip("MetricsUnavailable", False, "", "")
        draft.condition_flip(ANALYSIS_DELAYED, False, "", "")
    draft.summarize(phase, reason, message)


def moment(at: datetime) -> str:
    """A point in time as Kubernetes shows them (RFC 3339, UTC, whole seconds)."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
