"""Weights that are not what the status says: our own unfinished write, or someone else's edit."""

from __future__ import annotations

from modelrollout import api
from modelrollout.durations import format_duration
from modelrollout.engine.draft import Draft
from modelrollout.engine.model import DRIFT_LIMIT, DRIFT_WINDOW, FIELD_MANAGER, TERMINAL, RoutingView
from modelrollout.engine.stages import advance, next_position


def correct_drift(draft: Draft, spec: api.ModelRolloutSpec, routing: RoutingView) -> None:
    """Put back a weight someone else changed; past DRIFT_LIMIT corrections per window, hold instead."""
    status = draft.status
    if routing.canary_weight == status.canary_weight and routing.consistent:
        return
    if routing.last_writer in (None, FIELD_MANAGER):
        # Our own write that the status does not show: the operator stopped (or the status write failed)
        # between the VirtualService write and the status write. An advance to the next position is adopted
        # as it stands, so no stage is repeated; anything else is put back to what the status says.
        following = next_position(spec, status)
        if (
            routing.consistent
            and status.phase not in TERMINAL
            and following is not None
            and routing.canary_weight == following[1]
        ):
            advance(
                draft,
                spec,
                following[0],
                "completing an advance whose status was not recorded",
                by="Recovery",
            )
            draft.write = None  # already live
            return
        draft.set_weight(status.canary_weight)
        return
    recent = [t for t in status.drift_corrections if draft.now - t < DRIFT_WINDOW]
    if len(recent) >= DRIFT_LIMIT:
        if status.hold != api.Hold.DRIFT_LIMIT:
            draft.update(hold=api.Hold.DRIFT_LIMIT)
            draft.event(
                "Warning",
                "DriftLimit",
                f"{routing.last_writer} keeps changing the weights "
                f"({len(recent)} corrections in {format_duration(DRIFT_WINDOW)}); holding until resume",
            )
        return
    draft.update(drift_corrections=[*recent, draft.now])
    draft.set_weight(status.canary_weight)
    draft.event(
        "Warning",
        "DriftCorrected",
        f"canary weight {routing.canary_weight}% set by "
        f"{routing.last_writer} put back to {status.canary_weight}%",
    )
