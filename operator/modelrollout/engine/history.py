"""The stage history of a rollout: each stage, when it ends, is recorded in status with how it ended and the
last check made in it, for the decision report.

It is derived from the status before and after a decision, in one place, rather than at every transition:
whatever ends a stage (an advance, a promote, a promotion, a rollback, an abort, an edit of spec.stages) is
visible as a change of stage, of the stage's start or of the phase. Derived from the decided status, it is
recorded only with it: a decision whose VirtualService write failed records nothing, and the decision made
again at the next tick records the stage once.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from modelrollout import api
from modelrollout.analysis import bounds_text
from modelrollout.analysis.sequential import SAMPLE_RATIO
from modelrollout.engine.model import Plan

_ENDINGS = {
    api.Phase.PROMOTED: "Promoted",
    api.Phase.ROLLED_BACK: "RolledBack",
    api.Phase.ABORTED: "Aborted",
}
_RUNNING = (api.Phase.PROGRESSING, api.Phase.PAUSED)


def _outcome(before: api.ModelRolloutStatus, after: api.ModelRolloutStatus) -> str | None:
    """How the stage `before` stood in ended, or None while it goes on."""
    if before.phase not in _RUNNING or before.stage_started_at is None:
        return None
    if after.rollout_started_at != before.rollout_started_at:
        return None  # a new rollout (a new pair, or a retry) starts its own history
    if after.phase in _ENDINGS:
        return _ENDINGS[after.phase]
    if after.stage != before.stage or after.stage_started_at != before.stage_started_at:
        if after.reason == "StagesChanged":
            return "StagesChanged"
        return f"Advanced ({after.advanced_by})" if after.advanced_by else "Advanced"
    return None


def _last_check(before: api.ModelRolloutStatus, after: api.ModelRolloutStatus) -> api.AnalysisResult | None:
    """The last check made in the stage that ended: this tick's (in `after`) or an earlier one."""
    started = before.stage_started_at
    for result in (after.last_analysis, before.last_analysis):
        if result is not None and result.stage == before.stage and started and result.at >= started:
            return result
    return None


def stage_requests(status: api.ModelRolloutStatus, stage: int) -> api.Accumulation | None:
    """Requests per variant in `stage`, where the sample-ratio check of sequential gates counted them."""
    for accumulation in status.accumulations:
        if accumulation.name == SAMPLE_RATIO and accumulation.stage == stage:
            return accumulation
    return None


def gate_summary(result: api.GateResult) -> api.GateSummary:
    summary = api.GateSummary(
        name=result.name,
        verdict=result.verdict,
        value=result.value,
        control=result.control,
        bound=result.bound or bounds_text(result.min, result.max) or None,
        advisory=result.advisory,
    )
    evidence = result.evidence
    if evidence is None:
        return summary
    return summary.model_copy(
        update={
            "p_value": evidence.p_value,
            "no_worse": evidence.no_worse,
            "canary_events": evidence.canary_events,
            "stable_events": evidence.stable_events,
            "ratio_low": evidence.ratio_low,
            "ratio_high": evidence.ratio_high,
        }
    )


def stage_record(
    before: api.ModelRolloutStatus, after: api.ModelRolloutStatus, outcome: str, now: datetime
) -> api.StageRecord:
    check = _last_check(before, after)
    counted = stage_requests(after, before.stage) or stage_requests(before, before.stage)
    return api.StageRecord(
        stage=before.stage,
        weight=before.canary_weight,
        shadow=before.shadow,
        started_at=before.stage_started_at,
        ended_at=now,
        outcome=outcome,
        verdict=check.verdict if check else None,
        canary_requests=counted.canary_events if counted else None,
        stable_requests=counted.stable_events if counted else None,
        gates=[gate_summary(result) for result in check.gates] if check else [],
    )


def with_history(plan: Plan, before: api.ModelRolloutStatus, now: datetime) -> Plan:
    """The plan whose status carries the stage history: emptied when a new rollout starts, one record more
    when a stage ended."""
    after = plan.status
    history = list(before.stage_history)
    if after.rollout_started_at != before.rollout_started_at:
        history = []
    outcome = _outcome(before, after)
    if outcome is not None:
        history.append(stage_record(before, after, outcome, now))
    history = history[-2 * api.MAX_STAGES :]
    if history == after.stage_history:
        return plan
    return replace(plan, status=after.model_copy(update={"stage_history": history}))
