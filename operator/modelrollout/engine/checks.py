"""When gates are queried, and what a check's verdict does to the rollout."""

from __future__ import annotations

from datetime import datetime, timedelta

from modelrollout import api
from modelrollout.analysis import CheckResult
from modelrollout.durations import format_duration
from modelrollout.engine.draft import Draft
from modelrollout.engine.model import TERMINAL, pair_hash
from modelrollout.engine.returns import roll_back

# The least time between two checks of one rollout when checks are asked for out of turn.
REQUESTED_CHECK_SPACING = timedelta(seconds=1)


def _checkable(spec: api.ModelRolloutSpec, status: api.ModelRolloutStatus) -> bool:
    """Whether the rollout's gates are checked at all: its pair started, and it is neither pending nor
    finished."""
    return (
        status.pair_hash == pair_hash(spec)
        and status.phase not in TERMINAL
        and status.phase != api.Phase.PENDING
    )


def analysis_due(
    spec: api.ModelRolloutSpec,
    status: api.ModelRolloutStatus,
    now: datetime,
    operator_started_at: datetime,
    *,
    requested: bool = False,
) -> bool:
    """Whether the caller should query the gates on this tick. `requested`: a check was asked for out of
    turn (an alert named the rollout); it runs now unless the last one is under REQUESTED_CHECK_SPACING old,
    so a storm of alerts cannot turn into a storm of queries."""
    if not _checkable(spec, status):
        return False
    last = status.last_analysis
    if last is None or last.stage != status.stage or last.at < operator_started_at:
        return True
    if status.stage_started_at and last.at < status.stage_started_at:
        return True
    if requested and now - last.at >= min(REQUESTED_CHECK_SPACING, spec.analysis.interval):
        return True
    return now - last.at >= spec.analysis.interval


def requested_check_waits(
    spec: api.ModelRolloutSpec, status: api.ModelRolloutStatus, now: datetime, operator_started_at: datetime
) -> timedelta | None:
    """For a check asked for out of turn that is not due: how long until the spacing lets it run (the
    request is kept until then, never dropped: an alert just after a check is still answered by a check of
    its own, a second later); None when the spacing is not what holds it (nothing to check, or due now)."""
    last = status.last_analysis
    if last is None or not _checkable(spec, status):
        return None
    if analysis_due(spec, status, now, operator_started_at, requested=True):
        return None
    left = last.at + min(REQUESTED_CHECK_SPACING, spec.analysis.interval) - now
    return left if left > timedelta(0) else None


ANALYSIS_DELAYED = "AnalysisDelayed"


def note_deferred(draft: Draft, spec: api.ModelRolloutSpec) -> None:
    """A due check the operator's own queue put off: the rollout says the operator is behind (a condition,
    an Event when it starts), and nothing else changes. A delay is never a verdict: no limit counts it, it
    neither holds nor rolls back; the stage simply waits for its next check."""
    last = draft.status.last_analysis
    since = f"; last check {format_duration(draft.now - last.at)} ago" if last is not None else ""
    message = (
        f"checks are put off: the operator's queries got no Prometheus worker within the analysis interval "
        f"({format_duration(spec.analysis.interval)}){since}; the delay decides nothing"
    )
    if draft.condition_flip(ANALYSIS_DELAYED, True, "OperatorBehind", message):
        draft.event("Warning", ANALYSIS_DELAYED, message)


def record_check(draft: Draft, spec: api.ModelRolloutSpec, check: CheckResult) -> None:
    """Count the check; roll back or hold when a limit is passed."""
    analysis = spec.analysis
    status = draft.status
    draft.update(
        last_analysis=api.AnalysisResult(
            at=check.at, stage=status.stage, verdict=check.verdict, gates=list(check.gates)
        )
    )
    if check.accumulations is not None:
        draft.update(accumulations=list(check.accumulations))
    if check.sample_ratio is not None:
        ratio = check.sample_ratio
        if draft.condition_flip("SampleRatioMismatch", ratio.mismatch, "SampleRatioMismatch", ratio.message):
            draft.event(
                "Warning",
                "SampleRatioMismatch",
                f"{ratio.message}: routing does not follow the weights; sequential gates decide nothing "
                "until it does",
            )
    draft.condition_flip(ANALYSIS_DELAYED, False, "", "")
    if check.verdict != api.Verdict.ERROR:
        draft.condition_flip("MetricsUnavailable", False, "", "")
    if check.verdict == api.Verdict.FAIL:
        failed = status.failed_checks + 1
        draft.update(failed_checks=failed, consecutive_errors=0, consecutive_inconclusive=0)
        rejected = check.rejected_by_test()
        if rejected is not None:
            # An anytime-valid test holds its false-alarm rate at alpha over every look it makes: its
            # rejection is conclusive at once, failureLimit does not apply on top of it.
            draft.event("Warning", "AnalysisFailed", f"sequential test rejected: {check.summary}")
            roll_back(draft, spec, "AnalysisFailed", check, f"{rejected.name} {rejected.message}")
            return
        draft.event(
            "Warning",
            "AnalysisFailed",
            f"check failed ({failed}/{analysis.failure_limit + 1}): {check.summary}",
        )
        if failed > analysis.failure_limit:
            roll_back(draft, spec, "AnalysisFailed", check, check.summary)
    elif check.verdict == api.Verdict.ERROR:
        errors = status.consecutive_errors + 1
        draft.update(consecutive_errors=errors)
        if draft.condition_flip("MetricsUnavailable", True, "QueryFailed", check.summary):
            draft.event("Warning", "MetricsUnavailable", check.summary)
        if errors > analysis.error_limit:
            why = f"{errors} checks in a row could not run: {check.summary}"
            rollback = analysis.on_error == api.OnError.ROLLBACK
            _past_limit(
                draft, spec, api.Hold.METRICS_UNAVAILABLE, rollback=rollback, policy="onError", why=why
            )
    elif check.verdict == api.Verdict.INCONCLUSIVE:
        count = status.consecutive_inconclusive + 1
        draft.update(consecutive_inconclusive=count, consecutive_errors=0)
        if count > analysis.inconclusive_limit:
            why = f"{count} inconclusive checks in a row: {check.summary}"
            rollback = analysis.on_inconclusive == api.OnInconclusive.ROLLBACK
            _past_limit(
                draft, spec, api.Hold.INCONCLUSIVE, rollback=rollback, policy="onInconclusive", why=why
            )
    else:
        draft.update(consecutive_errors=0, consecutive_inconclusive=0)


def _past_limit(
    draft: Draft, spec: api.ModelRolloutSpec, hold: api.Hold, *, rollback: bool, policy: str, why: str
) -> None:
    """Too many checks in a row could not decide: roll back (the hold's name is the reason) or hold, once."""
    if draft.status.hold == hold:
        return
    if rollback:
        roll_back(draft, spec, hold.value, None, why)
    else:
        draft.update(hold=hold)
        draft.event("Warning", "Held", f"holding ({policy}: Hold): {why}")
