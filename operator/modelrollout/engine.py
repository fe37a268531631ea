"""The rollout state machine: `decide(spec, status, observation) -> Decision`. Pure.

Everything the operator needs to continue lives in the status it returns (and on the VirtualService), so a
restarted operator resumes exactly where it stopped. The caller writes (and reads back) the VirtualService
before the status, so the status never claims traffic the VirtualService does not show. A restart between the
two is recognised here as the operator's own unfinished write: a return to stable recorded as pending is
completed, an advance to exactly the next stage's weight is adopted, anything else is put back.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal, get_args

from modelrollout import api
from modelrollout.analysis import CheckResult, bounds_text
from modelrollout.conditions import set_condition, summary_conditions
from modelrollout.durations import format_duration
from modelrollout.routing.router import RoutingProblemReason

FIELD_MANAGER = "modelrollout-operator"
DRIFT_WINDOW = timedelta(minutes=10)
DRIFT_LIMIT = 5  # corrections per window before the rollout holds instead of fighting a person or a tool
TERMINAL = (api.Phase.PROMOTED, api.Phase.ROLLED_BACK, api.Phase.ABORTED)
# Degraded for one of these reasons: the VirtualService cannot be used, so nothing is written or acted on.
UNUSABLE_ROUTING_REASONS = frozenset({"Conflict", *get_args(RoutingProblemReason)})
WRITE_FAILED = "WriteFailed"  # Degraded reason set by whoever writes the VirtualService


class Action(StrEnum):
    PROMOTE = "promote"
    PROMOTE_FULL = "promote-full"
    ABORT = "abort"
    RETRY = "retry"
    RESUME = "resume"


@dataclass(frozen=True)
class RoutingView:
    """What the VirtualService looks like now, or why it cannot be used."""

    canary_weight: int | None = None
    consistent: bool = True
    last_writer: str | None = None  # the field manager of the latest change to the spec
    problem_reason: str | None = None  # VirtualServiceNotFound, RouteNotFound, HostNotInRoute, ...
    problem: str | None = None
    conflict_owner: str | None = None


@dataclass(frozen=True)
class Observation:
    now: datetime
    generation: int | None
    operator_started_at: datetime
    routing: RoutingView
    check: CheckResult | None = None
    action: str | None = None


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    status: api.ModelRolloutStatus
    canary_weight: int | None = None  # to write to the VirtualService; None leaves it alone
    events: tuple[Event, ...] = ()
    rolled_back: bool = False


def pair_hash(spec: api.ModelRolloutSpec) -> str:
    """Identity of a rollout: a change of stable or canary (host, subset, port, model, prompt) starts anew."""
    pair = [t.model_dump(mode="json", by_alias=True) for t in (spec.stable, spec.canary)]
    return hashlib.sha256(json.dumps(pair, sort_keys=True).encode()).hexdigest()[:16]


def _stage_weight(spec: api.ModelRolloutSpec, stage: int) -> int:
    return spec.stages[min(stage, len(spec.stages) - 1)].weight


def _progress(spec: api.ModelRolloutSpec, stage: int) -> str:
    return f"{min(stage, len(spec.stages) - 1) + 1}/{len(spec.stages)}"


def analysis_due(
    spec: api.ModelRolloutSpec, status: api.ModelRolloutStatus, now: datetime, operator_started_at: datetime
) -> bool:
    """Whether the caller should query the gates on this tick."""
    if status.pair_hash != pair_hash(spec) or status.phase in TERMINAL or status.phase == api.Phase.PENDING:
        return False
    last = status.last_analysis
    if last is None or last.stage != status.stage or last.at < operator_started_at:
        return True
    if status.stage_started_at and last.at < status.stage_started_at:
        return True
    return now - last.at >= spec.analysis.interval


@dataclass
class _Draft:
    """The decision being built: a mutable status plus what to do with the VirtualService."""

    status: api.ModelRolloutStatus
    now: datetime
    generation: int | None
    events: list[Event] = field(default_factory=list)
    weight: int | None = None
    rolled_back: bool = False

    def update(self, **changes: object) -> None:
        self.status = self.status.model_copy(update=changes)

    def event(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    def condition(self, type_: str, status: Literal["True", "False"], reason: str, message: str = "") -> None:
        self.update(
            conditions=set_condition(
                self.status.conditions,
                type_,
                status,
                reason=reason,
                message=message,
                now=self.now,
                generation=self.generation,
            )
        )

    def summarize(self, phase: api.Phase, reason: str, message: str) -> None:
        """Set phase, reason and message, and the kstatus conditions that follow from them."""
        message = message[:1024]
        # Every condition was evaluated against this generation, also the ones that did not change.
        current = [
            c.model_copy(update={"observed_generation": self.generation}) for c in self.status.conditions
        ]
        conditions = summary_conditions(
            current,
            phase,
            reason=reason,
            message=message,
            now=self.now,
            generation=self.generation,
        )
        self.update(phase=phase, reason=reason, message=message, conditions=conditions)

    def condition_flip(self, type_: str, active: bool, reason: str, message: str) -> bool:
        """Set a trouble condition; True when it became active on this tick (worth an Event)."""
        was = any(c.type == type_ and c.status == "True" for c in self.status.conditions)
        self.condition(
            type_, "True" if active else "False", reason if active else "Resolved", message if active else ""
        )
        return active and not was


def _start(draft: _Draft, spec: api.ModelRolloutSpec, reason: str) -> None:
    weight = _stage_weight(spec, 0)
    draft.update(
        phase=api.Phase.PROGRESSING,
        reason=reason,
        stage=0,
        stage_count=len(spec.stages),
        progress=_progress(spec, 0),
        canary_weight=weight,
        stage_started_at=draft.now,
        pair_hash=pair_hash(spec),
        stable=spec.stable,
        canary=spec.canary,
        rollout_started_at=draft.now,
        failed_checks=0,
        consecutive_errors=0,
        consecutive_inconclusive=0,
        hold=None,
        rollback=None,
        last_analysis=None,
        drift_corrections=[],
    )
    draft.weight = weight


def _describe(target: api.Target) -> str:
    label = target.model or target.host
    return f"{label} ({target.host}{'/' + target.subset if target.subset else ''})"


def _serving(status: api.ModelRolloutStatus) -> api.Target | None:
    """What took 100% of the traffic at the end of the previous rollout."""
    return status.canary if status.phase == api.Phase.PROMOTED else status.stable


def _rollback(
    draft: _Draft, spec: api.ModelRolloutSpec, reason: str, check: CheckResult | None, message: str
) -> None:
    failing = check.failing() if check else None
    rollback = api.Rollback(
        at=draft.now,
        reason=reason,
        message=message,
        gate=failing.name if failing else None,
        value=failing.value if failing else None,
        threshold=bounds_text(failing.min, failing.max) if failing else None,
        window=failing.window if failing else None,
    )
    draft.update(phase=api.Phase.ROLLED_BACK, reason=reason, canary_weight=0, rollback=rollback, hold=None)
    draft.weight, draft.rolled_back = 0, True
    draft.event(
        "Warning",
        "RolledBack",
        f"traffic returned to stable at stage {_progress(spec, draft.status.stage)}: {message}",
    )


def _advance(draft: _Draft, spec: api.ModelRolloutSpec, to_stage: int, why: str) -> None:
    last = len(spec.stages) - 1
    to_stage = min(to_stage, last)
    weight = _stage_weight(spec, to_stage)
    draft.update(
        stage=to_stage,
        progress=_progress(spec, to_stage),
        canary_weight=weight,
        stage_started_at=draft.now,
        phase=api.Phase.PROGRESSING,
        reason="StageAdvanced",
        consecutive_inconclusive=0,
    )
    draft.weight = weight
    draft.event("Normal", "StageAdvanced", f"stage {_progress(spec, to_stage)} at {weight}%: {why}")


def _promote_done(draft: _Draft, spec: api.ModelRolloutSpec, why: str) -> None:
    draft.update(phase=api.Phase.PROMOTED, reason="Promoted", canary_weight=100, hold=None)
    draft.weight = 100
    draft.event("Normal", "Promoted", f"{_describe(spec.canary)} serves 100%: {why}")


def _ignore_action(draft: _Draft, raw: str, why: str) -> None:
    result = f"ignored: {why}"
    draft.update(last_action=api.ActionRecord(action=raw, at=draft.now, result=result))
    draft.event("Warning", "ActionIgnored", f"{raw}: {result}")


def _apply_action(draft: _Draft, spec: api.ModelRolloutSpec, raw: str) -> None:
    status = draft.status
    last = len(spec.stages) - 1
    result: str
    try:
        action = Action(raw.strip())
    except ValueError:
        result = f"ignored: unknown action {raw!r} (promote, promote-full, abort, retry, resume)"
        action = None
    if action is None:
        pass
    elif action in (Action.PROMOTE, Action.PROMOTE_FULL):
        if status.phase in TERMINAL:
            result = f"ignored: the rollout is {status.phase.value}"
        elif action == Action.PROMOTE_FULL:
            _advance(draft, spec, last, "promote-full by a human; the last stage is still analysed")
            result = f"went to stage {_progress(spec, last)}"
        elif status.stage >= last:
            _promote_done(draft, spec, "promoted by a human")
            result = "promoted"
        else:
            _advance(draft, spec, status.stage + 1, "promoted by a human")
            result = f"advanced to stage {_progress(spec, status.stage + 1)}"
    elif action == Action.ABORT:
        if status.phase in (api.Phase.ABORTED, api.Phase.ROLLED_BACK):
            result = f"ignored: traffic is already on stable ({status.phase.value})"
        elif status.phase == api.Phase.PROMOTED:
            # The promoted model serves 100% and is the baseline now; going back is a new rollout from Git.
            result = "ignored: the rollout is Promoted; to go back, roll out the previous model as the canary"
        else:
            aborted = api.Rollback(at=draft.now, reason="Aborted", message="aborted by a human")
            draft.update(
                phase=api.Phase.ABORTED, reason="Aborted", canary_weight=0, hold=None, rollback=aborted
            )
            draft.weight = 0
            draft.event("Warning", "Aborted", "aborted by a human: traffic returned to stable")
            result = "aborted: traffic on stable"
    elif action == Action.RETRY:
        if status.phase in (api.Phase.ABORTED, api.Phase.ROLLED_BACK):
            _start(draft, spec, "Retried")
            draft.event("Normal", "Retried", f"rollout restarted from stage {_progress(spec, 0)}")
            result = "restarted from stage 1"
        else:
            result = (
                f"ignored: retry restarts an aborted or rolled-back rollout, this one is {status.phase.value}"
            )
    elif status.hold is None:  # resume, with nothing to resume
        result = "ignored: nothing is on hold" + (" (spec.paused is set in Git)" if spec.paused else "")
    else:
        draft.update(hold=None, consecutive_errors=0, consecutive_inconclusive=0, drift_corrections=[])
        draft.event("Normal", "Resumed", f"hold {status.hold.value} lifted by a human")
        result = f"lifted the {status.hold.value} hold"
    draft.update(last_action=api.ActionRecord(action=raw, at=draft.now, result=result))
    if result.startswith("ignored"):
        draft.event("Warning", "ActionIgnored", f"{raw}: {result}")


def _record_check(draft: _Draft, spec: api.ModelRolloutSpec, check: CheckResult) -> None:
    """Count the check; roll back or hold when a limit is passed."""
    analysis = spec.analysis
    status = draft.status
    draft.update(
        last_analysis=api.AnalysisResult(
            at=check.at, stage=status.stage, verdict=check.verdict, gates=list(check.gates)
        )
    )
    if check.verdict != api.Verdict.ERROR:
        draft.condition_flip("MetricsUnavailable", False, "", "")
    if check.verdict == api.Verdict.FAIL:
        failed = status.failed_checks + 1
        draft.update(failed_checks=failed, consecutive_errors=0, consecutive_inconclusive=0)
        draft.event(
            "Warning",
            "AnalysisFailed",
            f"check failed ({failed}/{analysis.failure_limit + 1}): {check.summary}",
        )
        if failed > analysis.failure_limit:
            _rollback(draft, spec, "AnalysisFailed", check, check.summary)
    elif check.verdict == api.Verdict.ERROR:
        errors = status.consecutive_errors + 1
        draft.update(consecutive_errors=errors)
        if draft.condition_flip("MetricsUnavailable", True, "QueryFailed", check.summary):
            draft.event("Warning", "MetricsUnavailable", check.summary)
        if errors > analysis.error_limit and status.hold != api.Hold.METRICS_UNAVAILABLE:
            why = f"{errors} checks in a row could not run: {check.summary}"
            if analysis.on_error == api.OnError.ROLLBACK:
                _rollback(draft, spec, "MetricsUnavailable", None, why)
            else:
                draft.update(hold=api.Hold.METRICS_UNAVAILABLE)
                draft.event("Warning", "Held", f"holding (onError: Hold): {why}")
    elif check.verdict == api.Verdict.INCONCLUSIVE:
        count = status.consecutive_inconclusive + 1
        draft.update(consecutive_inconclusive=count, consecutive_errors=0)
        if count > analysis.inconclusive_limit and status.hold != api.Hold.INCONCLUSIVE:
            why = f"{count} inconclusive checks in a row: {check.summary}"
            if analysis.on_inconclusive == api.OnInconclusive.ROLLBACK:
                _rollback(draft, spec, "Inconclusive", None, why)
            else:
                draft.update(hold=api.Hold.INCONCLUSIVE)
                draft.event("Warning", "Held", f"holding (onInconclusive: Hold): {why}")
    else:
        draft.update(consecutive_errors=0, consecutive_inconclusive=0)


def _correct_drift(draft: _Draft, spec: api.ModelRolloutSpec, routing: RoutingView) -> None:
    """Put back a weight someone else changed; past DRIFT_LIMIT corrections per window, hold instead."""
    status = draft.status
    if routing.canary_weight == status.canary_weight and routing.consistent:
        return
    if routing.last_writer in (None, FIELD_MANAGER):
        # Our own write that the status does not show: the operator stopped (or the status write failed)
        # between the VirtualService write and the status write. An advance to the next stage is adopted as
        # it stands, so no stage is repeated; anything else is put back to what the status says.
        following = status.stage + 1
        if (
            routing.consistent
            and status.phase not in TERMINAL
            and following < len(spec.stages)
            and routing.canary_weight == spec.stages[following].weight
        ):
            _advance(draft, spec, following, "completing an advance whose status was not recorded")
            draft.weight = None  # already live
            return
        draft.weight = status.canary_weight
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
    draft.weight = status.canary_weight
    draft.event(
        "Warning",
        "DriftCorrected",
        f"canary weight {routing.canary_weight}% set by "
        f"{routing.last_writer} put back to {status.canary_weight}%",
    )


def _soak_left(spec: api.ModelRolloutSpec, status: api.ModelRolloutStatus, now: datetime) -> timedelta:
    duration = spec.stages[status.stage].duration or timedelta(0)
    started = status.stage_started_at or now
    return max(timedelta(0), started + duration - now)


def _countdown(left: timedelta) -> str:
    """Whole minutes while more than two remain: the message (and so the status) then changes once a minute,
    not at every tick, sparing every watcher of the object (Argo CD included) a stream of updates."""
    seconds = left.total_seconds()
    if seconds > 120:
        return format_duration(timedelta(minutes=math.ceil(seconds / 60)))
    return format_duration(timedelta(seconds=math.ceil(seconds)))


def _passed_here(status: api.ModelRolloutStatus, operator_started_at: datetime) -> bool:
    last = status.last_analysis
    return bool(
        last
        and last.verdict == api.Verdict.PASS
        and last.stage == status.stage
        and status.stage_started_at is not None
        and last.at >= status.stage_started_at
        and last.at >= operator_started_at
    )


def _maybe_advance(draft: _Draft, spec: api.ModelRolloutSpec, obs: Observation) -> None:
    status = draft.status
    if status.phase in TERMINAL or status.hold is not None or spec.paused:
        return
    if _soak_left(spec, status, obs.now) > timedelta(0) or not _passed_here(status, obs.operator_started_at):
        return
    if draft.weight is not None or obs.routing.canary_weight != status.canary_weight:
        # The stage's weight is not live yet (a write is pending or keeps failing): its checks measured
        # other traffic than the status says, and the next stage must not be claimed on top of it.
        return
    stage = spec.stages[status.stage]
    if status.stage == len(spec.stages) - 1:
        _promote_done(
            draft, spec, f"the last stage passed: {obs.check.summary if obs.check else 'all gates pass'}"
        )
    elif stage.approval == api.Approval.MANUAL:
        if status.reason != "AwaitingApproval":
            draft.event(
                "Normal",
                "AwaitingApproval",
                f"stage {_progress(spec, status.stage)} soaked and passes; waiting for `promote`",
            )
        draft.update(phase=api.Phase.PAUSED, reason="AwaitingApproval")
    else:
        _advance(draft, spec, status.stage + 1, "soaked and all gates pass")


def _settle_phase(draft: _Draft, spec: api.ModelRolloutSpec, obs: Observation) -> None:
    """Phase, reason, message and summary conditions from where the rollout now stands."""
    status = draft.status
    phase, reason = status.phase, status.reason or ""
    where = f"stage {_progress(spec, status.stage)} at {status.canary_weight}%"
    last = status.last_analysis
    gates = f": {'; '.join(f'{g.name} {g.message}' for g in last.gates)}" if last and last.gates else ""
    if phase == api.Phase.PROMOTED:
        message = f"promoted: {_describe(spec.canary)} serves 100%"
    elif phase == api.Phase.ROLLED_BACK and status.rollback:
        message = f"rolled back at stage {_progress(spec, status.stage)}: {status.rollback.message}"
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
    elif reason == "AwaitingApproval":
        phase = api.Phase.PAUSED
        message = f"{where}: awaiting approval (kubectl modelrollout promote){gates}"
    else:
        phase = api.Phase.PROGRESSING
        reason = reason if reason in ("StageAdvanced", "RolloutStarted", "Retried") else "Analysing"
        left = _soak_left(spec, status, obs.now)
        soak = f"soaking, {_countdown(left)} left" if left else ""
        verdict = (
            f"last check {last.verdict.value}"
            if last and last.stage == status.stage
            else "first check pending"
        )
        message = f"{where}: {', '.join(p for p in (soak, verdict) if p)}{gates}"
    drift_hold = status.hold == api.Hold.DRIFT_LIMIT
    write_failed = any(
        c.type == "Degraded" and c.status == "True" and c.reason == WRITE_FAILED for c in status.conditions
    )
    if drift_hold or not write_failed:  # a failed write is the caller's to report and to clear
        draft.condition(
            "Degraded",
            "True" if drift_hold else "False",
            "DriftLimit" if drift_hold else "Resolved",
            message if drift_hold else "",
        )
    if phase in TERMINAL:
        draft.condition_flip("MetricsUnavailable", False, "", "")  # no analysis runs any more
    draft.summarize(phase, reason, message)


def decide(spec: api.ModelRolloutSpec, status: api.ModelRolloutStatus, obs: Observation) -> Decision:
    draft = _Draft(
        status=status.model_copy(update={"observed_generation": obs.generation}),
        now=obs.now,
        generation=obs.generation,
    )
    routing = obs.routing

    # A second rollout on the same VirtualService, or missing pieces: say which, write nothing, retry later.
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
    if routing.conflict_owner is not None or routing.problem is not None:
        text = (
            f"the VirtualService is managed by {routing.conflict_owner}"
            if routing.conflict_owner
            else routing.problem or ""
        )
        if obs.action:
            _ignore_action(draft, obs.action, f"the VirtualService cannot be used: {text}")
        if status.phase in TERMINAL:
            # The phase stands (traffic is where it was left); the conditions still speak for this generation.
            draft.summarize(status.phase, status.reason or status.phase.value, status.message)
        else:
            why = "Conflict" if routing.conflict_owner else routing.problem_reason or "Degraded"
            draft.summarize(api.Phase.DEGRADED, why, text)
        return Decision(status=draft.status, events=tuple(draft.events))
    if status.phase == api.Phase.DEGRADED and status.reason in UNUSABLE_ROUTING_REASONS:
        draft.event("Normal", "Recovered", "the VirtualService is usable again")
        draft.update(reason="Recovered")

    draft.condition_flip("InvalidSpec", False, "", "")
    new_pair = status.pair_hash != pair_hash(spec)
    if new_pair:
        serving = _serving(status) if status.pair_hash else None
        if serving is not None and (serving.host, serving.subset) != (spec.stable.host, spec.stable.subset):
            draft.event(
                "Warning",
                "StableChanged",
                f"the new stable {_describe(spec.stable)} is not what served "
                f"100% before ({_describe(serving)})",
            )
        _start(draft, spec, "RolloutStarted")
        if obs.action:
            _ignore_action(draft, obs.action, "a new rollout (a new stable/canary pair) started instead")
        draft.event(
            "Normal",
            "RolloutStarted",
            f"rolling out {_describe(spec.canary)} over "
            f"{_describe(spec.stable)}: stage {_progress(spec, 0)} at {draft.weight}%",
        )
    elif status.rollback is not None and status.phase not in (api.Phase.ROLLED_BACK, api.Phase.ABORTED):
        # A return to stable was decided but its VirtualService write was never confirmed (the operator
        # stopped, or the write failed): finish it before anything else.
        pending = status.rollback
        phase = api.Phase.ABORTED if pending.reason == "Aborted" else api.Phase.ROLLED_BACK
        draft.update(phase=phase, reason=pending.reason, canary_weight=0, hold=None)
        draft.weight, draft.rolled_back = 0, True
        draft.event(
            "Warning",
            "RolledBack" if phase == api.Phase.ROLLED_BACK else "Aborted",
            f"completing the return to stable: {pending.message}",
        )
    elif obs.action:
        _apply_action(draft, spec, obs.action)

    if draft.weight is None:
        _correct_drift(draft, spec, routing)
    if (
        obs.check is not None
        and not new_pair
        and draft.status.phase not in TERMINAL
        and not draft.rolled_back
    ):
        _record_check(draft, spec, obs.check)
    if draft.status.phase not in TERMINAL and not draft.rolled_back and draft.status.stage == status.stage:
        _maybe_advance(draft, spec, obs)
    _settle_phase(draft, spec, obs)
    return Decision(
        status=draft.status,
        canary_weight=draft.weight,
        events=tuple(draft.events),
        rolled_back=draft.rolled_back,
    )


def pending_return(status: api.ModelRolloutStatus, decided: api.ModelRolloutStatus) -> api.ModelRolloutStatus:
    """What to record before writing a return to stable: the old status plus the decided rollback record.
    It does not claim the rollback (the phase is unchanged), but a restarted operator finishes it."""
    return status.model_copy(
        update={
            "rollback": decided.rollback,
            "message": f"returning traffic to stable: {decided.rollback.message if decided.rollback else ''}",
        }
    )


def invalid_spec(
    status: api.ModelRolloutStatus, errors: list[str], now: datetime, generation: int | None
) -> Decision:
    """A spec the models refuse (it slipped past an older CRD): report it, touch nothing."""
    message = "; ".join(errors)[:1024]
    draft = _Draft(
        status=status.model_copy(update={"observed_generation": generation}), now=now, generation=generation
    )
    if draft.condition_flip("InvalidSpec", True, "InvalidSpec", message):
        draft.event("Warning", "InvalidSpec", message)
    draft.summarize(api.Phase.DEGRADED, "InvalidSpec", f"invalid spec: {message}")
    return Decision(status=draft.status, events=tuple(draft.events))
