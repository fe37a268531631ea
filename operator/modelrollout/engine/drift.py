"""Weights that are not what the status says: our own unfinished write, or someone else's edit."""

from __future__ import annotations

from modelrollout import api
from modelrollout.durations import format_duration
from modelrollout.engine.draft import Draft
from modelrollout.engine.model import DRIFT_LIMIT, DRIFT_WINDOW, FIELD_MANAGER, TERMINAL, RoutingView
from modelrollout.engine.stages import advance, next_position, stage_mirror


def correct_drift(draft: Draft, spec: api.ModelRolloutSpec, routing: RoutingView) -> None:
    """Put back a weight or mirror someone else changed; past DRIFT_LIMIT corrections per window, hold
    instead. Experiment routes and headers that differ from what the spec says are rewritten: after an edit of
    spec.experiment that is the edit taking effect, not someone fighting the operator."""
    status = draft.status
    if (routing.canary_weight, routing.mirror) == (
        status.canary_weight,
        status.shadow,
    ) and routing.consistent:
        if not routing.experiment_in_place:
            draft.keep_traffic()
            draft.event(
                "Normal",
                "ExperimentRoutesUpdated",
                "the experiment's routes and headers on the VirtualService are set to what the spec says",
            )
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
            and routing.mirror == stage_mirror(spec, following[0])
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
        draft.keep_traffic()
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
    draft.keep_traffic()
    draft.event(
        "Warning",
        "DriftCorrected",
        f"canary at {api.exposure(routing.canary_weight or 0, routing.mirror)} set by "
        f"{routing.last_writer} put back to {api.exposure(status.canary_weight, status.shadow)}",
    )
