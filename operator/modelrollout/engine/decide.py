"""The rollout state machine: `decide(spec, status, observation) -> Plan`. Pure.

Everything the operator needs to continue lives in the status it returns (and on the VirtualService), so a
restarted operator resumes exactly where it stopped. The plan orders the effects so that the status never
claims traffic the VirtualService does not show: an intent (an accepted action, where the rollout routes) is
recorded before the write, the outcome after it; a return to stable is recorded on the VirtualService by the
write that makes it (so a rollback waits for no status write). A restart between the two is recognised here
as the operator's own unfinished write: a return to stable found on the VirtualService (or recorded as
pending after a failed write) is completed, an accepted action is applied (once: it is applied to the status
it was accepted in), an advance to exactly the next stage's weight is adopted, anything else is put back.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from modelrollout import api
from modelrollout.conditions import is_true, set_condition
from modelrollout.engine.actions import NEW_PAIR, ON_STABLE, apply_action, record_result
from modelrollout.engine.bucket_filter import with_filter
from modelrollout.engine.checks import note_deferred, record_check, requested_check_waits
from modelrollout.engine.draft import Draft, describe
from modelrollout.engine.drift import correct_drift
from modelrollout.engine.experiment import experiment_id, experiment_routes
from modelrollout.engine.history import with_history
from modelrollout.engine.model import (
    INVALID_SPEC,
    TERMINAL,
    UNUSABLE_ROUTING_REASONS,
    WRITE_FAILED,
    WRITE_FAILURE_EVENT_COUNTS,
    Action,
    Event,
    Observation,
    Plan,
    RoutingView,
    pair_hash,
)
from modelrollout.engine.quiet import StatusWrite, status_write
from modelrollout.engine.returns import (
    complete_return,
    pending_return,
    returned_on_route,
    route_return,
    with_pending_return,
)
from modelrollout.engine.settle import settle
from modelrollout.engine.stages import maybe_advance, progress, realign, start
from modelrollout.engine.wake import look_after
from modelrollout.routing.router import RouteWrite, backend_of

# Analysis events stand even when the write that followed them failed: the check was made and counted.
ANALYSIS_EVENTS = ("AnalysisFailed", "MetricsUnavailable")


def _serving(status: api.ModelRolloutStatus) -> api.Target | None:
    """What took 100% of the traffic at the end of the previous rollout."""
    return status.canary if status.phase == api.Phase.PROMOTED else status.stable


def _target_changed(status: api.ModelRolloutStatus, obs: Observation) -> bool:
    return obs.target is not None and status.routing is not None and status.routing != obs.target


def _retirement(spec: api.ModelRolloutSpec, status: api.ModelRolloutStatus, obs: Observation) -> Plan | None:
    """The spec names another pair or another VirtualService while the recorded pair may still carry
    traffic: return it to its stable first (dropping its canary, which the new rollout does not know), and
    give up the claim on a VirtualService the rollout leaves. None when there is nothing to put back."""
    previous = obs.previous
    if status.pair_hash is None or status.stable is None or status.canary is None or previous is None:
        return None
    target_changed = _target_changed(status, obs)
    if not previous.usable and not (target_changed and previous.claimed):
        # Gone, changed beyond recognition, or not ours: nothing of ours to put back there. A claim of ours
        # on a VirtualService the rollout leaves still goes (below), whatever became of its routes: kept, it
        # would outlive the rollout.
        return None
    new_pair = {backend_of(spec.stable), backend_of(spec.canary)}
    drop = target_changed or backend_of(status.canary) not in new_pair
    mid_way = status.phase not in TERMINAL
    write: RouteWrite | None = None
    # A mirror or experiment routes of the old pair count as traffic of it: they leave with it.
    carries_traffic = (
        (previous.canary_weight or 0) > 0
        or previous.mirror > 0
        or not previous.consistent
        or not previous.experiment_in_place
    )
    if previous.usable and mid_way and (carries_traffic or (drop and previous.canary_present)):
        write = RouteWrite(
            stable=backend_of(status.stable),
            canary=backend_of(status.canary),
            canary_weight=0,
            drop=(backend_of(status.canary),) if drop else (),
        )
    release = target_changed and previous.claimed
    if write is None and not release:
        return None
    draft = Draft(status=status, now=obs.now, generation=status.observed_generation)
    what = "a new stable/canary pair" if status.pair_hash != pair_hash(spec) else "another VirtualService"
    message = (
        f"the spec names {what}: traffic of {describe(status.canary)} returned to {describe(status.stable)}"
        if write is not None
        else f"the spec names {what}: the previous VirtualService is released"
    )
    draft.event("Normal" if write is None else "Warning", "Superseded", message)
    if write is not None:
        draft.update(canary_weight=0, shadow=0)
    if status.phase not in TERMINAL:
        draft.summarize(api.Phase.PENDING, "Superseded", f"{message}; the new rollout starts next")
    return Plan(
        status=draft.status,
        write=write,
        write_on="recorded",
        release_recorded=release,
        events=tuple(draft.events),
        again=True,
    )


def _unusable(draft: Draft, status: api.ModelRolloutStatus, obs: Observation, action: str | None) -> None:
    """A second rollout on the route, or missing pieces: say which, write nothing, retry later."""
    routing = obs.routing
    if draft.condition_flip(
        "Conflict",
        routing.conflict_owner is not None,
        "VirtualServiceOwned",
        f"the VirtualService is managed by {routing.conflict_owner}",
    ):
        draft.event(
            "Warning",
            "Conflict",
            f"the VirtualService is already managed by {routing.conflict_owner}; "
            "this rollout changes nothing",
        )
    if routing.problem is not None and draft.condition_flip(
        "Degraded", True, routing.problem_reason or "", routing.problem
    ):
        draft.event("Warning", routing.problem_reason or "Degraded", routing.problem)
    text = (
        f"the VirtualService is managed by {routing.conflict_owner}"
        if routing.conflict_owner
        else routing.problem or ""
    )
    if action is not None:
        record_result(draft, action, f"ignored: the VirtualService cannot be used: {text}")
    if status.phase in TERMINAL:
        # The phase stands (traffic is where it was left); the conditions still speak for this generation.
        draft.summarize(status.phase, status.reason or status.phase.value, status.message)
    else:
        why = "Conflict" if routing.conflict_owner else routing.problem_reason or "Degraded"
        draft.summarize(api.Phase.DEGRADED, why, text)


def _take_action(status: api.ModelRolloutStatus, obs: Observation) -> tuple[str | None, str | None]:
    """(action to apply now, annotation value to consume).

    An accepted action is recorded in status before it takes effect and applied until its result is
    recorded: at least once, and once only, since it is applied to the status it was accepted in. The
    annotation still holding the pending action's value is the same request (the operator stopped between
    recording it and removing the annotation); another value waits until the pending one is done."""
    pending = status.pending_action
    if pending is not None:
        return pending.action, obs.action if obs.action == pending.action else None
    return obs.action, obs.action


def decide(spec: api.ModelRolloutSpec, status: api.ModelRolloutStatus, obs: Observation) -> Plan:
    plan = with_filter(with_history(_decide(spec, status, obs), status, obs.now), spec, status, obs)
    if plan.again or plan.write is not None or plan.intent is not None:
        return plan  # a transition under way: look again at the next tick
    numbers_only = (
        not plan.events
        and not plan.early_events
        and plan.consume_action is None
        and plan.bucket_filter is None
        and not plan.release_recorded
    )
    written = (
        status_write(
            status,
            plan.status,
            now=obs.now,
            recorded_check_at=obs.recorded_check_at,
            refresh=obs.status_refresh,
            requested=obs.check_requested,
            refresh_affordable=obs.refresh_affordable,
        )
        if numbers_only
        else StatusWrite.WRITE
    )
    look = look_after(spec, plan.status, obs.now, obs.operator_started_at)
    held = None
    if obs.check_requested and obs.check is None:
        held = requested_check_waits(spec, plan.status, obs.now, obs.operator_started_at)
    if held is not None:
        look = held if look is None else min(look, held)
    return replace(
        plan,
        look_after=look,
        keep_check_request=held is not None,
        quiet=written is StatusWrite.QUIET,
        refresh=written is StatusWrite.REFRESH,
    )


def _decide(spec: api.ModelRolloutSpec, status: api.ModelRolloutStatus, obs: Observation) -> Plan:
    if status.pair_hash is not None and (status.pair_hash != pair_hash(spec) or _target_changed(status, obs)):
        retirement = _retirement(spec, status, obs)
        if retirement is not None:
            return retirement
    draft = Draft(
        status=status.model_copy(update={"observed_generation": obs.generation}),
        now=obs.now,
        generation=obs.generation,
    )
    draft.experiment = experiment_routes(spec, obs.rollout)
    draft.update(experiment_id=experiment_id(spec, obs.rollout))
    action, consume = _take_action(status, obs)
    routing = obs.routing
    if not routing.usable:
        _unusable(draft, status, obs, action)
        return _plan(draft, status, obs, consume=consume, action=action)
    if status.phase == api.Phase.DEGRADED and status.reason in UNUSABLE_ROUTING_REASONS:
        draft.event("Normal", "Recovered", "the VirtualService is usable again")
        draft.update(reason="Recovered")
    if is_true(status.conditions, INVALID_SPEC):
        draft.event("Normal", "Recovered", "the spec is valid again")
        if status.reason == INVALID_SPEC:
            draft.update(reason="Recovered")

    restart = status.pair_hash != pair_hash(spec) or _target_changed(status, obs)
    if restart:
        _restart(draft, spec, status, obs, action)
    else:
        _continue(draft, spec, obs, action)
    if draft.write is None:
        correct_drift(draft, spec, routing)
    returned = draft.rollback_reason is not None
    if obs.check is not None and not restart and draft.status.phase not in TERMINAL and not returned:
        record_check(draft, spec, obs.check)
    elif obs.check_deferred and not restart and draft.status.phase not in TERMINAL:
        note_deferred(draft, spec)
    if (
        draft.status.phase not in TERMINAL
        and draft.rollback_reason is None
        and draft.status.stage == status.stage
    ):
        maybe_advance(draft, spec, obs)
    if routing.stale_owner is not None and draft.status.stable is not None:
        _take_over(draft, routing.stale_owner)
    settle(draft, spec, obs)
    return _plan(draft, status, obs, consume=consume, action=action)


def _restart(
    draft: Draft,
    spec: api.ModelRolloutSpec,
    status: api.ModelRolloutStatus,
    obs: Observation,
    action: str | None,
) -> None:
    """Stage 1 of the spec's pair (on the spec's VirtualService), warning first when the new stable is not
    what served 100% before."""
    serving = _serving(status) if status.pair_hash else None
    if serving is not None and (serving.host, serving.subset) != (spec.stable.host, spec.stable.subset):
        draft.warn_first(
            "StableChanged",
            f"the new stable {describe(spec.stable)} is not what served 100% before ({describe(serving)})",
        )
    start(draft, spec, "RolloutStarted", obs)
    if action is not None:
        record_result(draft, action, f"ignored: {NEW_PAIR}")
    draft.event(
        "Normal",
        "RolloutStarted",
        f"rolling out {describe(spec.canary)} over {describe(spec.stable)}: "
        f"stage {progress(spec, 0)} at {api.exposure(draft.status.canary_weight, draft.status.shadow)}",
    )


def _continue(draft: Draft, spec: api.ModelRolloutSpec, obs: Observation, action: str | None) -> None:
    """The same pair: keep the position valid, finish a pending return, or apply the action."""
    if draft.status.routing is None and obs.target is not None:
        draft.update(routing=obs.target)  # a rollout started by an operator that did not record it
    on_route = obs.routing.returning
    if on_route is not None and returned_on_route(on_route, draft.status):
        # Our latest write to the VirtualService returned this very status to stable, and the operator
        # stopped (or its status write met a conflict) before recording it: the return stands.
        draft.update(rollback=on_route.rollback)
    realign(draft, spec)
    if pending_return(draft.status):
        # A return to stable was decided but its VirtualService write was never confirmed (the operator
        # stopped, or the write failed): finish it before anything else.
        returning = draft.status.rollback
        complete_return(draft)
        if action is not None:
            if action.strip() == Action.ABORT and returning is not None and returning.reason == "Aborted":
                record_result(draft, action, "aborted: traffic on stable")
            else:
                record_result(draft, action, "ignored: traffic is returning to stable")
    elif action is not None:
        apply_action(draft, spec, action, obs)


def _take_over(draft: Draft, stale_owner: str) -> None:
    """A claim left by a ModelRollout that no longer exists: take the route over, with the weights the
    status says (a write even when they are right, so the claim changes hands)."""
    if draft.write is None:
        draft.keep_traffic()
    if draft.write is not None:
        draft.write = replace(draft.write, take_over_from=stale_owner)
    draft.event(
        "Warning",
        "ClaimTakenOver",
        f"the VirtualService route was claimed by {stale_owner}, which no longer exists; "
        "this rollout takes it over",
    )


def _plan(
    draft: Draft,
    before: api.ModelRolloutStatus,
    obs: Observation,
    *,
    consume: str | None,
    action: str | None,
) -> Plan:
    """The plan for a decided draft: what to record before the write (only what it needs), and the
    outcome, with the write-failure record cleared (a plan that writes nothing found nothing to write)."""
    intent_changes: dict[str, object] = {}
    if action is not None and before.pending_action is None:  # taken from the annotation on this tick
        intent_changes["pending_action"] = api.PendingAction(action=action, accepted_at=obs.now)
    write = draft.write
    decided = draft.status
    returning: api.Rollback | None = None
    if write is not None:
        if (
            decided.phase in ON_STABLE
            and before.phase not in ON_STABLE
            and decided.rollback is not None
            and not pending_return(before)
        ):
            # A new return to stable. It travels on the VirtualService write itself (no status write before
            # it, which would hold back every rollback by one round trip): a restart after that write finds
            # it there and finishes it (`_continue`), a failed write records it (`write_failed`).
            returning = decided.rollback
            write = replace(write, returning=route_return(returning, before))
        if decided.routing is not None and before.routing != decided.routing:
            intent_changes["routing"] = decided.routing
        if not obs.status_recorded:
            intent_changes.setdefault("message", "starting")
    intent = before.model_copy(update=intent_changes) if intent_changes else None
    if intent is not None and returning is not None:
        # A status write goes before the VirtualService write anyway: it records the return too.
        intent = with_pending_return(intent, returning)
    status = decided.model_copy(update={"write_failures": 0})
    return Plan(
        status=status,
        intent=intent,
        consume_action=consume,
        write=write,
        early_events=tuple(draft.early_events),
        events=tuple(draft.events),
        rollback_reason=draft.rollback_reason,
    )


def write_failed(plan: Plan, base: api.ModelRolloutStatus, error: str, now: datetime) -> Plan:
    """The plan's write failed (refused, forbidden, or did not read back): record that, and nothing the write
    would have made true. `base` is the status as recorded (the intent, if one was). The check that was made
    still counts; the write is tried again on the next tick, and a person hears of it once, not every tick."""
    returning = plan.write.returning if plan.write is not None else None
    if returning is not None and not pending_return(base):
        base = with_pending_return(base, returning.rollback)  # the next tick tries the return again
    count = base.write_failures + 1
    decided = plan.status
    weight = plan.canary_weight
    what = (
        f"could not set the canary weight to {weight}%"
        if weight is not None
        else "could not write the VirtualService"
    )
    attempts = f" ({count} attempts in a row)" if count > 1 else ""
    pending = (
        f"; {base.pending_action.action} is accepted and takes effect once the write goes through"
        if base.pending_action is not None
        else ""
    )
    message = f"{what}{attempts}: {error}{pending}"[:1024]
    metrics = next((c for c in decided.conditions if c.type == "MetricsUnavailable"), None)
    conditions = [c for c in base.conditions if c.type != "MetricsUnavailable"]
    if metrics is not None:
        conditions.append(metrics)
    conditions = set_condition(
        conditions,
        "Degraded",
        "True",
        reason=WRITE_FAILED,
        message=message,
        now=now,
        generation=decided.observed_generation,
    )
    status = base.model_copy(
        update={
            "observed_generation": decided.observed_generation,
            "last_analysis": decided.last_analysis,
            "failed_checks": decided.failed_checks,
            "consecutive_errors": decided.consecutive_errors,
            "consecutive_inconclusive": decided.consecutive_inconclusive,
            "write_failures": count,
            "conditions": conditions,
            "message": f"{message}; {base.message}"[:1024] if base.message else message,
        }
    )
    events = [e for e in plan.events if e.reason in ANALYSIS_EVENTS]
    if count in WRITE_FAILURE_EVENT_COUNTS:
        events.append(Event("Warning", WRITE_FAILED, message))
    return Plan(status=status, events=tuple(events))


def invalid_spec(
    status: api.ModelRolloutStatus, errors: list[str], now: datetime, generation: int | None
) -> Plan:
    """A spec the operator cannot act on (it slipped past the CRD, or a query template is wrong): say so
    beside the phase, touch nothing. A finished rollout keeps its phase: fixing the spec never re-runs it."""
    message = "; ".join(errors)[:1024]
    draft = Draft(
        status=status.model_copy(update={"observed_generation": generation}), now=now, generation=generation
    )
    if draft.condition_flip(INVALID_SPEC, True, INVALID_SPEC, message):
        draft.event("Warning", INVALID_SPEC, message)
    text = f"invalid spec: {message}"
    if status.phase in TERMINAL:
        draft.summarize(
            status.phase,
            status.reason or status.phase.value,
            f"{text}; the rollout stays {status.phase.value} and traffic as it was",
        )
    else:
        where = f" (traffic stays at {status.canary_weight}%)" if status.pair_hash else ""
        draft.summarize(api.Phase.DEGRADED, INVALID_SPEC, f"{text}{where}")
    # Whatever the phase, this generation cannot be acted on: GitOps tools must see it failed.
    said = draft.status.message
    draft.condition("Stalled", "True", INVALID_SPEC, said)
    draft.condition("Reconciling", "False", INVALID_SPEC, said)
    draft.condition("Ready", "False", INVALID_SPEC, said)
    return Plan(status=draft.status, events=tuple(draft.events))


def deletion_pair(
    status: api.ModelRolloutStatus, spec: api.ModelRolloutSpec | None
) -> tuple[api.Target, api.Target] | None:
    """The (stable, canary) a deleted rollout answers for: the pair it recorded; or, deleted between a
    start's first write and its record (only where it routes made it into status), the spec's pair, which
    that write was routing. None: nothing of a pair to put back."""
    if status.pair_hash is not None and status.stable is not None and status.canary is not None:
        return status.stable, status.canary
    if status.pair_hash is None and status.routing is not None and spec is not None:
        return spec.stable, spec.canary
    return None


def deletion_write(
    status: api.ModelRolloutStatus, view: RoutingView, pair: tuple[api.Target, api.Target]
) -> RouteWrite | None:
    """What a deleted rollout writes for `pair` (deletion_pair's): traffic back to stable if it was mid-way
    (a promoted canary keeps it)."""
    if not view.usable:
        return None
    stable, canary = backend_of(pair[0]), backend_of(pair[1])
    if status.phase == api.Phase.PROMOTED:
        # The promoted canary keeps its traffic; only experiment leftovers (if any) leave with the rollout.
        if view.experiment_in_place and not view.mirror:
            return None
        return RouteWrite(stable=stable, canary=canary, canary_weight=view.canary_weight or 0)
    if view.canary_weight == 0 and view.consistent and not view.mirror and view.experiment_in_place:
        return None
    return RouteWrite(stable=stable, canary=canary, canary_weight=0)
