"""Anytime-valid ("sequential") tests for a canary against its stable control under a known traffic split.

The model (Lindon & Malek, "Anytime-valid inference for multinomial count data", NeurIPS 2022; Lindon, Sanden
and Shirikian, "Rapid regression detection in software deployments through sequential testing", KDD 2022):
the canary receives the share `rho` of the traffic (its weight / 100) and the stable the share `1 - rho`. Bad
events (5xx, refusals, ...) of each arm arrive as Poisson processes with intensities proportional to
`rho * lambda_c(t)` and `(1 - rho) * lambda_s(t)`. When the load varies over time both intensities move
together, so conditioned on an event having happened its arm is a coin flip that does not depend on the load:

    P(canary) = p(r) = rho * r / (rho * r + 1 - rho),     r = lambda_c / lambda_s (the rate ratio).

With x canary events and y stable events (n = x + y) the data is Binomial(n, p(r)), and hypotheses about r
are hypotheses about p, because p(r) is increasing in r.

Tests, each a mixture likelihood ratio (a Bayes factor) against a point of the null:

- `rate_ratio_test`: one-sided, H0: r <= 1 + margin ("the canary is no worse than the control by more than
  the margin"). The alternative mixes L(p) / L(p0), p0 = p(1 + margin), over a Beta prior truncated to
  (p0, 1). Each such ratio with p > p0 is a nonnegative supermartingale under every p' <= p0 (the binomial
  family has a monotone likelihood ratio), so their mixture is too, and Ville's inequality gives
  P(sup_n BF_n >= 1/alpha) <= alpha under H0. Rejecting the first time BF >= 1/alpha therefore keeps the
  type-I error at alpha however often one looks, with no fixed horizon.
- `sample_ratio_test`: the same machinery on request counts against the expected share rho, two-sided (the
  full, untruncated Beta prior): a "sample ratio mismatch" detector for broken or biased routing.
- A confidence sequence for r: the p for which the two-sided mixture BF(p) stays below 1/alpha form an
  interval (the binomial likelihood is log-concave and the prior does not depend on p); with probability at
  least 1 - alpha it contains the true p at every look simultaneously, so the running intersection across
  looks is valid too. Mapped to r = p (1 - rho) / (rho (1 - p)); ends may be 0 or +inf.
- The anytime-valid p-value min(1, 1 / max BF so far): P(it ever drops to alpha or below) <= alpha under H0.

Running quantities: the guarantees are over the sequence of looks, so the p-value is a running minimum and the
confidence sequence a running intersection. The functions take the previous running values (`Running`) and
return the new ones; with none they start fresh. A run must restart (previous=None) when the traffic split
changes, since every look of a run must be of the same rho; counts are then counted from that moment.

What is guaranteed: the type-I error bound holds for the true event counts under the Poisson-with-common-load
model (events of the two arms independent given the load; the rate ratio may vary in time but stays inside
the null). Non-integer counts (Prometheus' increase() extrapolates) are used as they are. Not guaranteed:
independence when one failing client retries against both arms, or a split that differs from `rho`
(`sample_ratio_test` exists to catch the latter).

Everything is in log space (scipy.special.betaln and the regularized incomplete beta), so counts up to 1e9
and p0 anywhere in (0, 1) neither overflow nor lose the answer; Bayes factors below about 1e-308 are reported
as 0, which changes no decision (they are far below 1). Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special

FloatArray = NDArray[np.float64]

DEFAULT_ALPHA: Final = 0.01
DEFAULT_MARGIN: Final = 0.1
# The prior of the rate test is tuned to a 2x regression: the size of regression the task of a canary gate is
# to catch quickly (1% -> 2% errors), see `prior_strength`.
DEFAULT_PRIOR_RATIO: Final = 2.0
# The sample-ratio prior is tuned to an odds ratio of 1.2 between the canary's observed and expected share:
# 50/50 routed as 54.5/45.5, 5% as 5.9%. Routing bugs are usually larger; smaller ones are caught later.
DEFAULT_SRM_PRIOR_RATIO: Final = 1.2

# The confidence-sequence search runs in logit space between these ends: beyond them exp() of the ratio is 0
# or +inf in double precision anyway.
_T_MIN: Final = -1500.0
_T_MAX: Final = 1500.0
_NEWTON_STEPS: Final = 200


@dataclass(frozen=True)
class Untestable:
    """The test cannot run on this look, and why (e.g. no control traffic at a 100% stage)."""

    reason: str


@dataclass(frozen=True)
class Running:
    """The running values one look hands to the next of the same run: persist them, pass them back.
    The defaults are a fresh start: p-value 1 and the confidence sequence (0, +inf)."""

    p_value: float = 1.0
    ratio_low: float = 0.0
    ratio_high: float = math.inf


@dataclass(frozen=True)
class RateRatioResult:
    """One look of `rate_ratio_test`. bayes_factor is of this look; p_value, ratio_low and ratio_high are the
    running values (minimum, intersection) including this look. If the running interval becomes empty
    (ratio_low > ratio_high) the data contradict the model itself at level alpha (e.g. rho changed
    mid-run)."""

    canary_events: float
    stable_events: float
    canary_share: float
    margin: float
    alpha: float
    log_bayes_factor: float
    bayes_factor: float
    p_value: float
    ratio_low: float
    ratio_high: float
    rejected: bool  # a regression beyond the margin, at level alpha: the running p-value <= alpha
    no_worse: bool  # a pass with evidence: the whole running interval lies below 1 + margin

    @property
    def running(self) -> Running:
        return Running(self.p_value, self.ratio_low, self.ratio_high)


@dataclass(frozen=True)
class SampleRatioResult:
    """One look of `sample_ratio_test`; p_value is the running minimum including this look."""

    canary_requests: float
    stable_requests: float
    expected_share: float
    observed_share: float  # NaN with no requests
    alpha: float
    log_bayes_factor: float
    bayes_factor: float
    p_value: float
    rejected: bool  # the split differs from expected_share, at level alpha


def event_share(ratio: ArrayLike, canary_share: ArrayLike) -> FloatArray:
    """p(r): the chance that an event is the canary's, given the rate ratio r and the canary share rho."""
    r = np.asarray(ratio, dtype=np.float64)
    rho = np.asarray(canary_share, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        share = rho * r / (rho * r + 1.0 - rho)
    return np.asarray(np.where(np.isinf(r), 1.0, share), dtype=np.float64)


def prior_strength(null_share: ArrayLike, alternative_share: ArrayLike) -> FloatArray:
    """Effective sample size k of the Beta(k p0, k (1 - p0)) prior centred on the null share p0 whose standard
    deviation, sqrt(p0 (1 - p0) / (k + 1)) ~ sqrt(p0 (1 - p0) / k), equals the distance to the alternative p1.

    Why this size: by Laplace's approximation, log BF ~ n KL(p_hat || p0) + log prior(p_hat) + O(log n); the
    prior's part, 0.5 log k - k (p_hat - p0)^2 / (2 p0 (1 - p0)), is largest at
    k = p0 (1 - p0) / (p_hat - p0)^2.
    So the test reaches 1/alpha soonest for data near the alternative the prior is tuned to, and pays only a
    logarithmic price elsewhere. For a 2x regression and margin 10% that is k ~ 11-12 at 25-50% canary
    (the stages where a 1% baseline at 5 req/s yields enough events to decide in minutes), k ~ 31 at 5%.
    A much wider prior (k ~ 1, near uniform) wastes about 0.5 log(k_opt) nats, some 1.3 at 50%.
    """
    p0 = np.asarray(null_share, dtype=np.float64)
    p1 = np.asarray(alternative_share, dtype=np.float64)
    return np.asarray(p0 * (1.0 - p0) / (p1 - p0) ** 2, dtype=np.float64)


def _log_likelihood_ratio_at(x: FloatArray, y: FloatArray, p0: FloatArray) -> FloatArray:
    """log L(p0) with L(p) = p^x (1 - p)^y (0 log 0 = 0, so p0 at 0 or 1 with no events is fine)."""
    return np.asarray(special.xlogy(x, p0) + special.xlog1py(y, -p0), dtype=np.float64)


def _log_marginal(x: FloatArray, y: FloatArray, a: FloatArray, b: FloatArray) -> FloatArray:
    """log of the prior mean of L(p) under the full Beta(a, b) prior."""
    return np.asarray(special.betaln(x + a, y + b) - special.betaln(a, b), dtype=np.float64)


def one_sided_log_bf(
    canary: ArrayLike, stable: ArrayLike, null_share: ArrayLike, a: ArrayLike, b: ArrayLike
) -> FloatArray:
    """log of the mixture of L(p) / L(p0) over Beta(a, b) truncated to (p0, 1). Vectorized; no validation.

    Closed form: int_{p0}^1 p^(x+a-1) (1-p)^(y+b-1) dp = B(x+a, y+b) * I_{1-p0}-tail, so
    log BF = [betaln(x+a, y+b) + log betaincc(x+a, y+b, p0)] - [betaln(a, b) + log betaincc(a, b, p0)]
             - log L(p0).
    """
    x = np.asarray(canary, dtype=np.float64)
    y = np.asarray(stable, dtype=np.float64)
    p0 = np.asarray(null_share, dtype=np.float64)
    a_ = np.asarray(a, dtype=np.float64)
    b_ = np.asarray(b, dtype=np.float64)
    # The posterior's tail above p0 underflows to 0 only when the data sit far below p0; then BF is far below
    # 1 and log 0 = -inf (BF 0) is the right decision.
    with np.errstate(divide="ignore"):
        log_tail = np.log(special.betaincc(x + a_, y + b_, p0)) - np.log(special.betaincc(a_, b_, p0))
    return np.asarray(
        _log_marginal(x, y, a_, b_) + log_tail - _log_likelihood_ratio_at(x, y, p0), dtype=np.float64
    )


def two_sided_log_bf(
    canary: ArrayLike, stable: ArrayLike, null_share: ArrayLike, a: ArrayLike, b: ArrayLike
) -> FloatArray:
    """log of the mixture of L(p) / L(p0) over the full Beta(a, b). Vectorized; no validation."""
    x = np.asarray(canary, dtype=np.float64)
    y = np.asarray(stable, dtype=np.float64)
    p0 = np.asarray(null_share, dtype=np.float64)
    a_ = np.asarray(a, dtype=np.float64)
    b_ = np.asarray(b, dtype=np.float64)
    return np.asarray(_log_marginal(x, y, a_, b_) - _log_likelihood_ratio_at(x, y, p0), dtype=np.float64)


def rate_ratio_log_bf(
    canary_events: ArrayLike,
    stable_events: ArrayLike,
    canary_share: ArrayLike,
    *,
    margin: float = DEFAULT_MARGIN,
    prior_ratio: float = DEFAULT_PRIOR_RATIO,
) -> FloatArray:
    """The log Bayes factor of `rate_ratio_test`, vectorized over counts and shares (0 < rho < 1; no
    validation): for simulations and benchmarks that evaluate many looks at once."""
    rho = np.asarray(canary_share, dtype=np.float64)
    p0 = event_share(1.0 + margin, rho)
    k = prior_strength(p0, event_share(prior_ratio, rho))
    return one_sided_log_bf(canary_events, stable_events, p0, k * p0, k * (1.0 - p0))


def rate_ratio_interval(
    canary_events: ArrayLike,
    stable_events: ArrayLike,
    canary_share: ArrayLike,
    *,
    alpha: float = DEFAULT_ALPHA,
    prior_ratio: float = DEFAULT_PRIOR_RATIO,
) -> tuple[FloatArray, FloatArray]:
    """The confidence sequence's interval for the rate ratio r at one look (not intersected with earlier
    looks), vectorized; no validation. The prior is fixed (centred on r = 1, the rate test's width), so the
    set {p : BF(p) < 1/alpha} = {p : log L(p) > log m - log(1/alpha)} is an interval around x/n."""
    x = np.asarray(canary_events, dtype=np.float64)
    y = np.asarray(stable_events, dtype=np.float64)
    rho = np.asarray(canary_share, dtype=np.float64)
    x, y, rho = np.broadcast_arrays(x, y, rho)
    shape = x.shape
    # The search works on flat arrays (boolean masks cannot index a 0-d array in place).
    x, y, rho = x.ravel(), y.ravel(), rho.ravel()
    centre = event_share(1.0, rho)
    k = prior_strength(centre, event_share(prior_ratio, rho))
    level = _log_marginal(x, y, k * centre, k * (1.0 - centre)) + math.log(alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_hat = np.log(x) - np.log(y)  # logit(x / n): -inf with x = 0, +inf with y = 0, NaN with n = 0
    t_low = _end(x, y, level, t_hat, start=_T_MIN, bounded=x > 0)
    t_high = _end(x, y, level, t_hat, start=_T_MAX, bounded=y > 0)
    logit_rho = np.log(rho) - np.log1p(-rho)
    with np.errstate(over="ignore"):
        low, high = np.exp(t_low - logit_rho), np.exp(t_high - logit_rho)
    return low.reshape(shape), high.reshape(shape)


def _end(
    x: FloatArray,
    y: FloatArray,
    level: FloatArray,
    t_hat: FloatArray,
    *,
    start: float,
    bounded: NDArray[np.bool_],
) -> FloatArray:
    """The root of f(t) = x log expit(t) + y log expit(-t) - level between `start` and t_hat, or +/-inf where
    there is none (no events on that side, or the root lies beyond `start`).

    f is concave in t with its maximum, above 0, at t_hat. Newton's method started on the outside of the
    root (f < 0) stays there and moves monotonically towards it: a concave function lies below its tangents,
    so each tangent's zero falls between the current point and the root. No bracketing failures at the
    edges (x = 0, y = 0, n = 0) because those are decided before any iteration.
    """
    sign = -1.0 if start < 0 else 1.0
    t = np.full(x.shape, start, dtype=np.float64)
    # Where f(start) >= 0 the end lies beyond the representable ratios: it is reported as 0 or +inf.
    searched = bounded & (_f(t, x, y, level) < 0)
    active = searched.copy()
    for _ in range(_NEWTON_STEPS):
        if not active.any():
            break
        ta, xa, ya = t[active], x[active], y[active]
        fa = _f(ta, xa, ya, level[active])
        slope = xa * special.expit(-ta) - ya * special.expit(ta)
        new = ta - fa / slope
        # Stay on the root's side of t_hat (rounding can overshoot by an ulp at the very end).
        new = np.minimum(new, t_hat[active]) if sign < 0 else np.maximum(new, t_hat[active])
        done = ~(np.abs(new - ta) > 1e-12 * (1.0 + np.abs(ta))) | (fa >= 0)
        t[active] = new
        active[active] = ~done
    return np.where(searched, t, sign * math.inf)


def _f(t: FloatArray, x: FloatArray, y: FloatArray, level: FloatArray) -> FloatArray:
    return np.asarray(x * special.log_expit(t) + y * special.log_expit(-t) - level, dtype=np.float64)


def _check_count(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite count >= 0, got {value!r}")
    return value


def _check_share(value: float) -> float | Untestable:
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also catches NaN
        raise ValueError(f"canary_share must be in [0, 1], got {value!r}")
    if value == 0.0:
        return Untestable("canary_share is 0: the canary gets no traffic, there is nothing to test")
    if value == 1.0:
        return Untestable("canary_share is 1: there is no control traffic to compare against")
    return value


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def _check_p_value(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value


def _exp(log_value: float) -> float:
    return math.inf if log_value > 709.0 else math.exp(log_value)


def rate_ratio_test(
    canary_events: float,
    stable_events: float,
    canary_share: float,
    *,
    margin: float = DEFAULT_MARGIN,
    alpha: float = DEFAULT_ALPHA,
    previous: Running | None = None,
    prior_ratio: float = DEFAULT_PRIOR_RATIO,
) -> RateRatioResult | Untestable:
    """One look of the one-sided regression test H0: r <= 1 + margin, on bad-event counts accumulated since
    the run started (same canary_share throughout). `previous` is the running state of the run's previous
    look (None: the first look). `prior_ratio` is the rate ratio the prior is tuned to detect fastest
    (> 1 + margin). Returns Untestable when canary_share is 0 or 1; ValueError on invalid arguments."""
    x = _check_count("canary_events", canary_events)
    y = _check_count("stable_events", stable_events)
    _check_alpha(alpha)
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    if not prior_ratio > 1.0 + margin:
        raise ValueError(f"prior_ratio must exceed 1 + margin = {1 + margin}, got {prior_ratio!r}")
    rho = _check_share(canary_share)
    if isinstance(rho, Untestable):
        return rho
    before = previous or Running()
    _check_p_value("previous.p_value", before.p_value)
    if math.isnan(before.ratio_low) or math.isnan(before.ratio_high):
        raise ValueError(f"previous interval must not be NaN, got {before}")

    log_bf = float(rate_ratio_log_bf(x, y, rho, margin=margin, prior_ratio=prior_ratio))
    low, high = rate_ratio_interval(x, y, rho, alpha=alpha, prior_ratio=prior_ratio)
    p_value = min(before.p_value, 1.0, _exp(-log_bf))
    ratio_low = max(before.ratio_low, float(low))
    ratio_high = min(before.ratio_high, float(high))
    return RateRatioResult(
        canary_events=x,
        stable_events=y,
        canary_share=rho,
        margin=margin,
        alpha=alpha,
        log_bayes_factor=log_bf,
        bayes_factor=_exp(log_bf),
        p_value=p_value,
        ratio_low=ratio_low,
        ratio_high=ratio_high,
        rejected=p_value <= alpha or log_bf >= -math.log(alpha),
        no_worse=ratio_high < 1.0 + margin,
    )


def sample_ratio_log_bf(
    canary_requests: ArrayLike,
    stable_requests: ArrayLike,
    canary_share: ArrayLike,
    *,
    prior_ratio: float = DEFAULT_SRM_PRIOR_RATIO,
) -> FloatArray:
    """The log Bayes factor of `sample_ratio_test`, vectorized (0 < rho < 1; no validation)."""
    rho = np.asarray(canary_share, dtype=np.float64)
    k = prior_strength(rho, event_share(prior_ratio, rho))
    return two_sided_log_bf(canary_requests, stable_requests, rho, k * rho, k * (1.0 - rho))


def sample_ratio_test(
    canary_requests: float,
    stable_requests: float,
    canary_share: float,
    *,
    alpha: float = DEFAULT_ALPHA,
    previous_p_value: float | None = None,
    prior_ratio: float = DEFAULT_SRM_PRIOR_RATIO,
) -> SampleRatioResult | Untestable:
    """One look of the two-sided sample-ratio-mismatch test H0: the canary's share of requests is
    canary_share, on request counts accumulated since the run started. `previous_p_value` is the running
    p-value of the run's previous look (None: the first look). `prior_ratio` (> 1) is the odds ratio between
    observed and expected share the prior is tuned to. Untestable when canary_share is 0 or 1."""
    x = _check_count("canary_requests", canary_requests)
    y = _check_count("stable_requests", stable_requests)
    _check_alpha(alpha)
    if not prior_ratio > 1.0:
        raise ValueError(f"prior_ratio must exceed 1, got {prior_ratio!r}")
    rho = _check_share(canary_share)
    if isinstance(rho, Untestable):
        return rho
    before = 1.0 if previous_p_value is None else _check_p_value("previous_p_value", previous_p_value)
    log_bf = float(sample_ratio_log_bf(x, y, rho, prior_ratio=prior_ratio))
    p_value = min(before, 1.0, _exp(-log_bf))
    return SampleRatioResult(
        canary_requests=x,
        stable_requests=y,
        expected_share=rho,
        observed_share=x / (x + y) if x + y > 0 else math.nan,
        alpha=alpha,
        log_bayes_factor=log_bf,
        bayes_factor=_exp(log_bf),
        p_value=p_value,
        rejected=p_value <= alpha or log_bf >= -math.log(alpha),
    )
