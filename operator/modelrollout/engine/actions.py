"""Human actions (the `modelrollout.io/action` annotation): whether one fits, and what it does.

`action_refusal` is the one rule book: the engine applies it, and the kubectl plugin asks it before it sets
the annotation, so a person is told at once rather than finding `ignored: ...` in status.lastAction later.
"""

from __future__ import annotations

from modelrollout import api
from modelrollout.engine.draft import Draft
from modelrollout.engine.model import (
    INVALID_SPEC,
    UNUSABLE_ROUTING_REASONS,
    Action,
    Observation,
    pair_hash,
)
from modelrollout.engine.returns import abort
from modelrollout.engine.stages import advance, next_position, progress, promote_done, start

ON_STABLE = (api.Phase.ROLLED_BACK, api.Phase.ABORTED)
NEW_PAIR = "a new rollout (a new stable/canary pair) started instead"


# Recorded Degraded for one of these, a rollout acts on no action until it is fixed: it records the action
# as ignored, or, with an invalid spec, does not read the annotation (an action sent now is lost or waits
# unseen).
BLOCKING_REASONS = UNUSABLE_ROUTING_REASONS | {INVALID_SPEC}


def recorded_action_refusal(
    action: str, spec: api.ModelRolloutSpec | None, status: api.ModelRolloutStatus
) -> str | None:
    """Why `action` would not take effect, judged from the recorded status alone (what a person's tools see,
    not the live VirtualService): a rollout recorded Degraded because its VirtualService cannot be used or its
    spec is invalid ignores actions until that is fixed; otherwise `action_refusal`."""
    if status.phase == api.Phase.DEGRADED and status.reason in BLOCKING_REASONS:
        return (
            f"the rollout is Degraded ({status.reason}) and the operator acts on nothing until that is "
            f"fixed: {status.message or ''}"
        )
    return action_refusal(action, spec, status)


def action_refusal(
    action: str, spec: api.ModelRolloutSpec | None, status: api.ModelRolloutStatus
) -> str | None:
    """Why `action` does not fit the rollout now, or None when it would take effect."""
    try:
        chosen = Action(action.strip())
    except ValueError:
        return f"unknown action {action!r} ({', '.join(a.value for a in Action)})"
    if spec is None:
        return "the spec is invalid; the operator acts on nothing until it is fixed"
    if status.pair_hash != pair_hash(spec):
        return NEW_PAIR
    phase = status.phase
    if chosen in (Action.PROMOTE, Action.PROMOTE_FULL):
        if phase == api.Phase.PROMOTED:
            return "the rollout is Promoted: the canary already serves 100%"
        if phase in ON_STABLE:
            return f"the rollout is {phase.value}: traffic is on stable; `retry` starts it again from stage 1"
        if spec.paused:
            return "spec.paused is set (in Git): unset it to let the rollout move"
        if chosen == Action.PROMOTE_FULL and next_position(spec, status) is None:
            if spec.stages[-1].shadow is not None:
                return "the rollout is at its last stage, a shadow stage; `promote` sends it to 100%"
            return "the rollout is already at its last stage (100%); `promote` finishes it"
        return None
    if chosen == Action.ABORT:
        if phase in ON_STABLE:
            return f"traffic is already on stable ({phase.value})"
        if phase == api.Phase.PROMOTED:
            # The promoted model serves 100% and is the baseline now; going back is a new rollout from Git.
            return "the rollout is Promoted; to go back, roll out the previous model as the canary"
        return None
    if chosen == Action.RETRY:
        if phase in ON_STABLE:
            return None
        return f"retry restarts an aborted or rolled-back rollout, this one is {phase.value}"
    if status.hold is None:
        return "nothing is on hold" + (" (spec.paused is set in Git)" if spec.paused else "")
    return None


def _lift_hold(draft: Draft) -> None:
    draft.update(hold=None, consecutive_errors=0, consecutive_inconclusive=0, drift_corrections=[])


def record_result(draft: Draft, raw: str, result: str) -> None:
    draft.update(last_action=api.ActionRecord(action=raw, at=draft.now, result=result), pending_action=None)
    if result.startswith("ignored"):
        draft.event("Warning", "ActionIgnored", f"{raw}: {result}")


def apply_action(draft: Draft, spec: api.ModelRolloutSpec, raw: str, obs: Observation) -> None:
    status = draft.status
    refusal = action_refusal(raw, spec, status)
    if refusal is not None:
        record_result(draft, raw, f"ignored: {refusal}")
        return
    action = Action(raw.strip())
    last = len(spec.stages) - 1
    if action == Action.PROMOTE:
        held = status.hold
        _lift_hold(draft)  # a human said go: a hold (inconclusive, metrics, drift) does not outlast it
        position = next_position(spec, status)
        if position is None:
            promote_done(draft, spec, "promoted by a human")
            result = "promoted"
        else:
            advance(draft, spec, position[0], "promoted by a human", by="Promote")
            result = f"advanced to stage {progress(spec, position[0])}"
        if held is not None:
            result += f" (the {held.value} hold is lifted)"
    elif action == Action.PROMOTE_FULL:
        _lift_hold(draft)
        advance(draft, spec, last, "promote-full by a human; the last stage is still analysed", by="Promote")
        result = f"went to stage {progress(spec, last)}"
    elif action == Action.ABORT:
        abort(draft)
        result = "aborted: traffic on stable"
    elif action == Action.RETRY:
        start(draft, spec, "Retried", obs)
        draft.event("Normal", "Retried", f"rollout restarted from stage {progress(spec, 0)}")
        result = "restarted from stage 1"
    else:
        lifted = status.hold.value if status.hold else "no"  # action_refusal said there is one
        _lift_hold(draft)
        draft.event("Normal", "Resumed", f"hold {lifted} lifted by a human")
        result = f"lifted the {lifted} hold"
    record_result(draft, raw, result)
