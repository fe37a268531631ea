"""Returns to stable: a rollback decided by the analysis, an abort by a human."""

from __future__ import annotations

from modelrollout import api
from modelrollout.analysis import CheckResult, bounds_text
from modelrollout.engine.draft import Draft
from modelrollout.engine.model import TERMINAL
from modelrollout.engine.stages import progress


def roll_back(
    draft: Draft, spec: api.ModelRolloutSpec, reason: str, check: CheckResult | None, message: str
) -> None:
    failing = check.failing() if check else None
    shadow = draft.status.shadow and not draft.status.canary_weight
    rollback = api.Rollback(
        at=draft.now,
        reason=reason,
        message=message,
        gate=failing.name if failing else None,
        value=failing.value if failing else None,
        threshold=(failing.bound or bounds_text(failing.min, failing.max)) if failing else None,
        window=failing.window if failing else None,
    )
    draft.update(
        phase=api.Phase.ROLLED_BACK,
        reason=reason,
        canary_weight=0,
        shadow=0,
        rollback=rollback,
        hold=None,
        awaiting_approval=False,
    )
    draft.set_traffic(0)
    draft.rollback_reason = reason
    draft.event(
        "Warning",
        "RolledBack",
        f"{'shadow stopped: the mirror to the canary removed' if shadow else 'traffic returned to stable'} "
        f"at stage {progress(spec, draft.status.stage)}: {message}",
    )


def abort(draft: Draft) -> None:
    aborted = api.Rollback(at=draft.now, reason="Aborted", message="aborted by a human")
    draft.update(
        phase=api.Phase.ABORTED,
        reason="Aborted",
        canary_weight=0,
        shadow=0,
        hold=None,
        awaiting_approval=False,
        rollback=aborted,
    )
    draft.set_traffic(0)
    draft.rollback_reason = "Aborted"
    draft.event("Warning", "Aborted", "aborted by a human: traffic returned to stable")


def pending_return(status: api.ModelRolloutStatus) -> bool:
    """A return to stable was decided (and recorded) but its VirtualService write was never confirmed."""
    return status.rollback is not None and status.phase not in (api.Phase.ROLLED_BACK, api.Phase.ABORTED)


def with_pending_return(status: api.ModelRolloutStatus, rollback: api.Rollback) -> api.ModelRolloutStatus:
    """`status` recording a return to stable about to be written, without claiming it (the phase is
    unchanged): a restart or a failed write finishes it."""
    return status.model_copy(
        update={"rollback": rollback, "message": f"returning traffic to stable: {rollback.message}"}
    )


def route_return(rollback: api.Rollback, decided_from: api.ModelRolloutStatus) -> api.RouteReturn:
    """The record of a return to stable that its VirtualService write carries, bound to the status it was
    decided from."""
    return api.RouteReturn(
        rollback=rollback,
        rollout_started_at=decided_from.rollout_started_at,
        stage=decided_from.stage,
        stage_started_at=decided_from.stage_started_at,
    )


def returned_on_route(record: api.RouteReturn, status: api.ModelRolloutStatus) -> bool:
    """Whether `record` (found on the VirtualService) is a return decided from `status` and not recorded
    in it yet. A record of an earlier run or stage, or one the status already shows, is history."""
    return (
        status.rollback is None
        and status.phase not in TERMINAL
        and (record.rollout_started_at, record.stage, record.stage_started_at)
        == (status.rollout_started_at, status.stage, status.stage_started_at)
    )


def complete_return(draft: Draft) -> None:
    pending = draft.status.rollback or api.Rollback(at=draft.now, reason="RolledBack")
    phase = api.Phase.ABORTED if pending.reason == "Aborted" else api.Phase.ROLLED_BACK
    draft.update(
        phase=phase, reason=pending.reason, canary_weight=0, shadow=0, hold=None, awaiting_approval=False
    )
    draft.set_traffic(0)
    draft.rollback_reason = pending.reason
    draft.event(
        "Warning",
        "RolledBack" if phase == api.Phase.ROLLED_BACK else "Aborted",
        f"completing the return to stable: {pending.message}",
    )
