"""When a rollout's driver should look again if nothing wakes it first (a spec edit, an action, a change to
its VirtualService, an alert): the next moment at which time alone can change the decision. A rollout parked
in a long soak then costs nothing between its checks, and a finished one nothing at all."""

from __future__ import annotations

from datetime import datetime, timedelta

from modelrollout import api
from modelrollout.engine.checks import analysis_due
from modelrollout.engine.model import TERMINAL, pair_hash
from modelrollout.engine.stages import check_window

# Nothing timed is left: only an event can change anything.
ONLY_EVENTS = timedelta.max


def look_after(
    spec: api.ModelRolloutSpec, status: api.ModelRolloutStatus, now: datetime, operator_started_at: datetime
) -> timedelta | None:
    """How long the driver may wait; None: at the next tick (something is unsettled: a write to finish or
    retry, an action to apply, a problem that clears by itself, a rollout about to start);
    ONLY_EVENTS: a finished rollout with nothing pending."""
    if status.pending_action is not None or status.write_failures or status.pair_hash != pair_hash(spec):
        return None
    if status.phase in TERMINAL:
        return ONLY_EVENTS
    if status.phase in (api.Phase.PENDING, api.Phase.DEGRADED) or status.rollback is not None:
        return None
    if analysis_due(spec, status, now, operator_started_at):
        return timedelta(0)  # due and not made (deferred, or the routing was not usable): the tick retries
    moments = []
    last = status.last_analysis
    if last is not None:
        moments.append(last.at + spec.analysis.interval)
    started = status.stage_started_at
    if started is not None and status.stage < len(spec.stages):
        stage = spec.stages[status.stage]
        moments += [started + d for d in (stage.duration, stage.min_duration) if d is not None]
        moments.append(started + check_window(spec))
    later = [m for m in moments if m > now]
    return min(later) - now if later else None
