"""Sequential gates: event counts per variant, accumulated over the stage, tested at every check.

A sequential gate's query returns raw counters of bad events (5xx, aborted or truncated completions, requests
slower than an SLO) for one variant. At each check the operator takes reset-aware deltas per series since the
previous check (`stats.counters`) and adds them to the stage's totals, kept in status with the running test
results, so a restarted operator continues the same run. A run starts over when the stage, its start or the
live weight changes: the test assumes one traffic split per run. Its first check only records the baseline.
The evidence does not start over: a new stage's Bayes factor is multiplied onto the product of the earlier
stages' final ones in the same rollout (with the same margin). Under the null each stage's Bayes factor is a
nonnegative supermartingale starting at 1, stopped when the stage ends, so the product is one too and the
alpha guarantee holds for the whole rollout, while a regression that a short stage could not prove alone is
proved by the stages together.

The test (`stats.sequential.rate_ratio_test`) asks "is the canary's event rate worse than the stable's by more
than the margin?" anytime-validly: it may be asked at every check without raising the false-alarm rate above
alpha. A rejection fails the gate, and the engine rolls back at once (the test's own error control replaces
failureLimit). Its confidence sequence for the rate ratio, entirely below 1 + margin, is the evidence that
lets a stage advance after its minDuration.

Beside the gates, the same test on the variants' request counts against the weight is the sample-ratio check:
a mismatch means the traffic split the tests assume is not the one served (routing broken or biased), so
while it lasts no sequential gate passes or fails: they are Inconclusive.

`judge-win-rate` runs the same test on the judge's verdicts: the canary's losses are its events, its wins the
control's. The judge sees every pair from both variants, so under equal quality a decided pair is a loss or a
win with even odds: the share is 0.5 whatever the weights, and the sample-ratio check does not concern it.
What does concern it is the judge itself: while more than a tenth of the stage's judgements failed (a
malformed answer twice, or no answer), the verdicts that remain may be biased (a judge that fails on long
answers fails on one variant more), so judge gates neither pass nor fail: they are Inconclusive.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from modelrollout import api
from modelrollout.analysis.gates import bound_text
from modelrollout.analysis.model import GateMeasurement, SampleRatio
from modelrollout.analysis.model import number as _number
from modelrollout.stats.counters import accumulate, fingerprint

# The accumulation of request counts: parentheses keep it apart from every gate name (a DNS label).
SAMPLE_RATIO = "(sample-ratio)"
SAMPLE_RATIO_ALPHA = 0.001  # a routing bug is a bug: alarm only on strong evidence
JUDGE_FAILURES = "(judge-failures)"
JUDGE_SHARE = 0.5
JUDGE_FAILURE_LIMIT = 0.1  # of the stage's judgements
JUDGE_FAILURE_FLOOR = 3  # failures before the share is trusted: one timeout is no broken judge


def series_key(labels: Mapping[str, str]) -> str:
    """A short key for a series in status: a hash of its full fingerprint (labels can be long)."""
    return hashlib.sha256(fingerprint(labels).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Run:
    """Where this check's counts go: the stage run they belong to."""

    stage: int
    canary_weight: int
    since: datetime
    rollout_started_at: datetime | None = None
    mirror: int = 0  # a shadow stage: stable serves everything, this percent of it is copied to the canary
    # The canary's measured share of the run's requests, where the weight does not set it (sticky users).
    observed_share: float | None = None

    @property
    def canary_share(self) -> float:
        """The canary's share of the traffic both variants see: its weight, or in a shadow stage the
        mirrored copies among stable's requests and those copies (mirror / (100 + mirror)), or the share
        of requests measured over the run when users are assigned (`observed_share`)."""
        if self.observed_share is not None:
            return self.observed_share
        if self.mirror and not self.canary_weight:
            return self.mirror / (100 + self.mirror)
        return self.canary_weight / 100

    @property
    def exposure(self) -> str:
        return api.exposure(self.canary_weight, self.mirror)

    def carries(self, previous: api.Accumulation | None, margin: float | None) -> bool:
        """Whether `previous` is an earlier stage of this rollout whose evidence this run continues."""
        return (
            previous is not None
            and previous.stage < self.stage
            and previous.since < self.since
            and (self.rollout_started_at is None or previous.since >= self.rollout_started_at)
            and margin is not None  # a test of one null across stages; the sample-ratio check restarts
            and previous.margin == margin
        )

    def continues(self, previous: api.Accumulation | None) -> bool:
        return previous is not None and (previous.stage, previous.canary_weight, previous.since) == (
            self.stage,
            self.canary_weight,
            self.since,
        )


def _counted(
    name: str,
    run: Run,
    previous: api.Accumulation | None,
    canary: Mapping[str, float],
    stable: Mapping[str, float],
    *,
    margin: float | None = None,
) -> tuple[api.Accumulation, bool]:
    """The run's totals after this check, and whether it is a fresh run (this check is its baseline)."""
    fresh = not run.continues(previous)
    before = None if fresh else previous
    canary_delta, canary_last = accumulate(_last(before, "canary"), canary)
    stable_delta, stable_last = accumulate(_last(before, "stable"), stable)
    if before is None:
        before = api.Accumulation(
            name=name, stage=run.stage, canary_weight=run.canary_weight, since=run.since
        )
        if previous is not None and run.carries(previous, margin):
            # A new stage: the counts and the interval start over, the evidence does not.
            before = before.model_copy(
                update={
                    "p_value": previous.p_value,
                    "carried_log_evidence": previous.carried_log_evidence + previous.log_evidence,
                }
            )
    counted = before.model_copy(
        update={
            "canary_last": _values(canary_last),
            "stable_last": _values(stable_last),
            "canary_events": before.canary_events + canary_delta,
            "stable_events": before.stable_events + stable_delta,
            "margin": margin,
        }
    )
    return counted, fresh


def _last(previous: api.Accumulation | None, role: str) -> dict[str, float] | None:
    if previous is None:
        return None
    return {s.series: s.value for s in (previous.canary_last if role == "canary" else previous.stable_last)}


def _values(last: Mapping[str, float]) -> list[api.SeriesValue]:
    return [api.SeriesValue(series=key, value=value) for key, value in sorted(last.items())]


def evaluate_sequential(
    measurement: GateMeasurement, run: Run, previous: api.Accumulation | None
) -> tuple[api.GateResult, api.Accumulation | None]:
    """The gate's verdict on this check, and its accumulation to keep (the previous one when nothing could
    be counted, so an error does not lose the run)."""
    gate = measurement.gate
    test = gate.test or api.SequentialTest()

    def result(
        verdict: api.Verdict, message: str, value: float | None = None, evidence: api.Evidence | None = None
    ) -> api.GateResult:
        return api.GateResult(
            name=gate.name,
            verdict=verdict,
            value=value,
            window="stage",
            message=message,
            advisory=gate.advisory,
            bound=bound_text(gate),
            evidence=evidence,
        )

    if measurement.error is not None:
        return result(api.Verdict.ERROR, f"query failed: {measurement.error}"), previous
    canary, stable = measurement.canary_counters or {}, measurement.stable_counters or {}
    too_many = max(len(canary), len(stable))
    if too_many > api.MAX_SERIES:
        return result(
            api.Verdict.ERROR,
            f"{too_many} series: a sequential gate follows at most {api.MAX_SERIES} per variant; aggregate "
            "the query (e.g. sum by (pod))",
        ), previous
    accumulation, fresh = _counted(gate.name, run, previous, canary, stable, margin=test.margin)
    if fresh:
        return result(
            api.Verdict.INCONCLUSIVE, "counting starts: this check is the stage's baseline"
        ), accumulation
    share = JUDGE_SHARE if gate.judged else run.canary_share
    # Imported here, not at the top: numpy and scipy (about 40 MB of every operator's memory) load with the
    # first sequential test, so an operator whose gates are all thresholds never carries them.
    from modelrollout.stats.sequential import Running, Untestable, rate_ratio_test  # noqa: PLC0415

    tested = rate_ratio_test(
        accumulation.canary_events,
        accumulation.stable_events,
        share,
        margin=test.margin,
        alpha=test.alpha,
        previous=Running(
            1.0,  # the p-value runs over the whole rollout (below), the interval over this stage
            accumulation.ratio_low if accumulation.ratio_low is not None else 0.0,
            accumulation.ratio_high if accumulation.ratio_high is not None else math.inf,
        ),
    )
    if gate.judged:
        counts = (
            f"the canary lost {_number(accumulation.canary_events)} and won "
            f"{_number(accumulation.stable_events)} judged pairs"
        )
    else:
        counts = (
            f"{_number(accumulation.canary_events)} canary vs {_number(accumulation.stable_events)} stable "
            f"events at {run.exposure}"
        )
    if isinstance(tested, Untestable):
        return result(api.Verdict.INCONCLUSIVE, f"{counts}: {tested.reason}"), accumulation
    high = tested.ratio_high if math.isfinite(tested.ratio_high) else None
    log_evidence = accumulation.carried_log_evidence + tested.log_bayes_factor
    p_value = min(accumulation.p_value, math.exp(-log_evidence) if log_evidence > -700 else 1.0, 1.0)
    accumulation = accumulation.model_copy(
        update={
            "p_value": p_value,
            "ratio_low": tested.ratio_low,
            "ratio_high": high,
            "log_evidence": tested.log_bayes_factor,
        }
    )
    evidence = api.Evidence(
        canary_events=tested.canary_events,
        stable_events=tested.stable_events,
        canary_share=tested.canary_share,
        p_value=p_value,
        ratio_low=tested.ratio_low,
        ratio_high=high,
        no_worse=tested.no_worse,
    )
    interval = f"rate ratio in [{_number(tested.ratio_low)}, {_number(tested.ratio_high)}]"
    text = f"{counts}: p={p_value:.3g}, {interval}"
    observed = _observed_ratio(tested.canary_events, tested.stable_events, tested.canary_share)
    if p_value <= test.alpha:  # the evidence reached 1/alpha: now, or (carried) in an earlier look
        verdict, message = api.Verdict.FAIL, f"{text}: worse than the stable by more than {test.margin:.0%}"
    elif tested.no_worse:
        verdict, message = api.Verdict.PASS, f"{text}: no worse than the stable, with evidence"
    else:
        verdict, message = api.Verdict.PASS, f"{text}: no regression found"
    return result(verdict, message, value=observed, evidence=evidence), accumulation


def _observed_ratio(canary: float, stable: float, share: float) -> float | None:
    """The canary's event rate over the stable's, per unit of traffic; None while the stable has none."""
    if stable <= 0:
        return None
    return (canary / share) / (stable / (1 - share))


def sample_ratio(
    canary: Mapping[str, float],
    stable: Mapping[str, float],
    run: Run,
    previous: api.Accumulation | None,
    *,
    test: bool = True,
) -> tuple[SampleRatio | None, api.Accumulation]:
    """The routing check: request counts per variant since the run began, against the weight. Counted for
    every rollout (the report shows them); tested only when `test` (sequential gates rely on the split)."""
    accumulation, fresh = _counted(SAMPLE_RATIO, run, previous, canary, stable)
    if fresh or not test:
        return None, accumulation
    # numpy and scipy load with the first sequential test (see `evaluate_sequential`).
    from modelrollout.stats.sequential import Untestable, sample_ratio_test  # noqa: PLC0415

    tested = sample_ratio_test(
        accumulation.canary_events,
        accumulation.stable_events,
        run.canary_share,
        alpha=SAMPLE_RATIO_ALPHA,
        previous_p_value=accumulation.p_value,
    )
    if isinstance(tested, Untestable):
        return None, accumulation
    accumulation = accumulation.model_copy(update={"p_value": tested.p_value})
    share = "no requests" if math.isnan(tested.observed_share) else f"{tested.observed_share:.2%}"
    message = (
        f"the canary got {share} of {_number(tested.canary_requests + tested.stable_requests)} requests "
        f"at {run.exposure} (p={tested.p_value:.3g})"
    )
    return SampleRatio(mismatch=tested.rejected, message=message, p_value=tested.p_value), accumulation


@dataclass(frozen=True)
class JudgeReliability:
    """Whether the judge's verdicts this stage can be trusted: how many judgements failed."""

    unreliable: bool
    message: str


def judge_reliability(
    failures: Mapping[str, float],
    verdicts: Mapping[str, float],
    run: Run,
    previous: api.Accumulation | None,
) -> tuple[JudgeReliability | None, api.Accumulation]:
    """The judge's failed and given verdicts since the run began (as an accumulation: failures in the
    canary's column, verdicts in the stable's), and whether the failures are too many to trust the rest."""
    accumulation, fresh = _counted(JUDGE_FAILURES, run, previous, failures, verdicts)
    if fresh:
        return None, accumulation
    failed, given = accumulation.canary_events, accumulation.stable_events
    attempts = failed + given
    if attempts <= 0:
        return None, accumulation
    share = failed / attempts
    unreliable = failed >= JUDGE_FAILURE_FLOOR and share > JUDGE_FAILURE_LIMIT
    message = (
        f"the judge failed {_number(failed)} of {_number(attempts)} judgements this stage ({share:.0%}; "
        f"at most {JUDGE_FAILURE_LIMIT:.0%} are tolerated)"
    )
    return JudgeReliability(unreliable=unreliable, message=message), accumulation


def observed_share(requests: api.Accumulation | None) -> float | None:
    """The canary's share of the run's requests so far, or None before there are any."""
    if requests is None:
        return None
    total = requests.canary_events + requests.stable_events
    return requests.canary_events / total if total > 0 else None
