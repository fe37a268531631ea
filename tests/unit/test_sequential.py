"""The anytime-valid tests: the closed form against numerical integration, type-I error and coverage under
continuous monitoring (seeded, vectorized simulations), power, and the edge cases of the interface."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import integrate, special, stats

from modelrollout.stats.sequential import (
    RateRatioResult,
    Running,
    SampleRatioResult,
    Untestable,
    event_share,
    one_sided_log_bf,
    prior_strength,
    rate_ratio_interval,
    rate_ratio_log_bf,
    rate_ratio_test,
    sample_ratio_log_bf,
    sample_ratio_test,
    two_sided_log_bf,
)

ALPHA = 0.01
RUNS = 10_000
LOOKS = 100
# Monte-Carlo tolerance for a rejection rate whose true value is at most ALPHA: three binomial standard
# errors at ALPHA over RUNS runs (sqrt(0.01 * 0.99 / 10_000) ~ 0.001). Were the true rate exactly ALPHA, a
# seed would exceed the bound with probability ~0.1%; the seeds are fixed, so the tests are deterministic.
TOLERANCE = 3 * math.sqrt(ALPHA * (1 - ALPHA) / RUNS)


def rate_result(*args: float, **kwargs: object) -> RateRatioResult:
    result = rate_ratio_test(*args, **kwargs)  # type: ignore[arg-type]
    assert isinstance(result, RateRatioResult)
    return result


def numerical_log_bf(x: float, y: float, p0: float, a: float, b: float, one_sided: bool) -> float:
    """log of the integral of L(p)/L(p0) against the (truncated) Beta(a, b) prior, by quadrature, with the
    integrand scaled by its maximum so that nothing overflows."""

    def log_integrand(p: float) -> float:
        return float(
            special.xlogy(x + a - 1, p)
            + special.xlog1py(y + b - 1, -p)
            - special.xlogy(x, p0)
            - special.xlog1py(y, -p0)
            - special.betaln(a, b)
        )

    lower = p0 if one_sided else 0.0
    mode = min(max((x + a - 1) / (x + y + a + b - 2), lower + 1e-9), 1 - 1e-9)
    peak = log_integrand(mode)
    value, _ = integrate.quad(
        lambda p: math.exp(log_integrand(p) - peak),
        lower,
        1.0,
        points=[mode],
        epsabs=0,
        epsrel=1e-11,
        limit=500,
    )
    norm = special.betaincc(a, b, p0) if one_sided else 1.0
    return math.log(value) + peak - math.log(norm)


# (canary events, stable events, canary share, margin)
CLOSED_FORM_CASES = [
    (0, 0, 0.5, 0.1),
    (0, 7, 0.5, 0.1),
    (7, 0, 0.5, 0.1),
    (3, 28, 0.05, 0.1),
    (15, 22, 0.25, 0.1),
    (45, 30, 0.5, 0.1),
    (120, 80, 0.5, 0.0),
    (2, 150, 0.01, 0.1),
    (9, 40, 0.01, 0.5),
    (400, 5, 0.9, 0.1),
    (30, 1, 0.99, 0.2),
    (12.5, 37.25, 0.3, 0.1),  # Prometheus' increase() gives non-integer counts
]


@pytest.mark.parametrize(("x", "y", "rho", "margin"), CLOSED_FORM_CASES)
def test_one_sided_closed_form_equals_integration(x: float, y: float, rho: float, margin: float) -> None:
    p0 = float(event_share(1 + margin, rho))
    k = float(prior_strength(p0, event_share(2.0, rho)))
    a, b = k * p0, k * (1 - p0)
    closed = float(rate_ratio_log_bf(x, y, rho, margin=margin))
    assert closed == pytest.approx(float(one_sided_log_bf(x, y, p0, a, b)), rel=1e-12)
    numeric = numerical_log_bf(x, y, p0, a, b, one_sided=True)
    assert math.exp(closed) == pytest.approx(math.exp(numeric), rel=1e-6)


@pytest.mark.parametrize(("x", "y", "rho", "_margin"), CLOSED_FORM_CASES)
def test_two_sided_closed_form_equals_integration(x: float, y: float, rho: float, _margin: float) -> None:
    a, b = 3.0 * rho, 3.0 * (1 - rho)
    closed = float(two_sided_log_bf(x, y, rho, a, b))
    assert math.exp(closed) == pytest.approx(math.exp(numerical_log_bf(x, y, rho, a, b, False)), rel=1e-6)


def test_large_counts_stay_finite() -> None:
    # Counts up to 1e9 and shares near the edges: no overflow, no NaN.
    for x, y, rho in [(1e9, 1e9, 0.5), (1e9, 0, 0.5), (0, 1e9, 0.999999), (1, 1e9, 1e-6), (5e8, 1e9, 0.3)]:
        result = rate_result(x, y, rho)
        assert not math.isnan(result.log_bayes_factor)
        assert not math.isnan(result.ratio_low)
        assert not math.isnan(result.ratio_high)
        assert result.ratio_low <= result.ratio_high
    # 1e9 against 1e9 at 50%: r = 1 to within a few 1e-4, and no regression.
    even = rate_result(1e9, 1e9, 0.5)
    assert 0.999 < even.ratio_low < 1 < even.ratio_high < 1.001
    assert even.no_worse
    assert not even.rejected
    assert rate_result(1e9, 0, 0.5).rejected


def simulate_counts(
    rng: np.random.Generator, rho: float, ratio: float, per_look: float, runs: int = RUNS, looks: int = LOOKS
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative canary and stable event counts at each look: `per_look` expected events per look at the
    stable's rate with all traffic, split by rho and scaled by the ratio on the canary."""
    canary = rng.poisson(per_look * rho * ratio, (runs, looks)).cumsum(axis=1)
    stable = rng.poisson(per_look * (1 - rho), (runs, looks)).cumsum(axis=1)
    return canary.astype(float), stable.astype(float)


# 5 requests/s with 1% errors and one look per minute: 3 error events per look across both arms.
@pytest.mark.parametrize(
    ("rho", "ratio", "per_look", "seed"),
    [
        (0.5, 1.1, 3.0, 1),  # the null's boundary: the hardest case for the type-I error
        (0.5, 1.0, 3.0, 2),  # a healthy canary
        (0.05, 1.1, 3.0, 3),
        (0.25, 1.1, 30.0, 4),  # 10x the traffic
    ],
)
def test_type_one_error_under_continuous_monitoring(
    rho: float, ratio: float, per_look: float, seed: int
) -> None:
    canary, stable = simulate_counts(np.random.default_rng(seed), rho, ratio, per_look)
    log_bf = rate_ratio_log_bf(canary, stable, rho, margin=0.1)
    rejected = (log_bf >= -math.log(ALPHA)).any(axis=1).mean()
    assert rejected <= ALPHA + TOLERANCE


def test_the_simulation_can_see_inflated_type_one_error() -> None:
    # The harness above is able to fail: a fixed-horizon exact binomial test at level ALPHA, applied at every
    # one of the looks (what peeking does), rejects far more than ALPHA of the same null runs.
    rho, p0 = 0.5, float(event_share(1.1, 0.5))
    canary, stable = simulate_counts(np.random.default_rng(1), rho, 1.1, 3.0)
    n = canary + stable
    naive_p = stats.binom.sf(canary - 1, n, p0)  # P(X >= x) under p0
    naive = (naive_p <= ALPHA).any(axis=1).mean()
    assert naive > ALPHA + TOLERANCE
    # ... while at the last look alone it keeps its level (it is a valid fixed-horizon test).
    assert (naive_p[:, -1] <= ALPHA).mean() <= ALPHA + TOLERANCE


def test_power_against_a_two_fold_regression() -> None:
    # A 2x regression at 50% canary, 3 error events per look: rejected in nearly every run within 100 looks,
    # and typically within a few dozen.
    canary, stable = simulate_counts(np.random.default_rng(5), 0.5, 2.0, 3.0, runs=2000)
    log_bf = rate_ratio_log_bf(canary, stable, 0.5, margin=0.1)
    crossed = log_bf >= -math.log(ALPHA)
    assert crossed.any(axis=1).mean() >= 0.95
    first = np.where(crossed.any(axis=1), crossed.argmax(axis=1) + 1, LOOKS + 1)
    assert np.median(first) <= 40


def test_no_power_without_a_regression_beyond_the_margin() -> None:
    # A 1.05x canary is inside the 10% margin: rejecting it is a type-I error, and the margin is respected
    # even with 30x more events (90 per look).
    canary, stable = simulate_counts(np.random.default_rng(6), 0.5, 1.05, 90.0, runs=2000)
    log_bf = rate_ratio_log_bf(canary, stable, 0.5, margin=0.1)
    assert (log_bf >= -math.log(ALPHA)).any(axis=1).mean() <= ALPHA


@pytest.mark.parametrize(("rho", "seed"), [(0.5, 7), (0.05, 8), (0.01, 9)])
def test_sample_ratio_null_rejection_within_alpha(rho: float, seed: int) -> None:
    # 5 requests/s, a look per minute: 300 requests per look.
    rng = np.random.default_rng(seed)
    canary, stable = simulate_counts(rng, rho, 1.0, 300.0)
    log_bf = sample_ratio_log_bf(canary, stable, rho)
    assert (log_bf >= -math.log(ALPHA)).any(axis=1).mean() <= ALPHA + TOLERANCE


def test_sample_ratio_mismatch_is_detected() -> None:
    result = sample_ratio_test(5500, 4500, 0.5)
    assert isinstance(result, SampleRatioResult)
    assert result.rejected
    assert result.p_value < 1e-6
    assert result.observed_share == 0.55
    # ... in either direction, and at a small canary share too (6% routed where 5% was asked for).
    assert isinstance(low := sample_ratio_test(4500, 5500, 0.5), SampleRatioResult)
    assert low.rejected
    assert isinstance(small := sample_ratio_test(1200, 18800, 0.05), SampleRatioResult)
    assert small.rejected
    # A 50.5/49.5 split over 10,000 requests is within chance.
    assert isinstance(fine := sample_ratio_test(5050, 4950, 0.5), SampleRatioResult)
    assert not fine.rejected
    assert fine.p_value == 1.0


def test_sample_ratio_running_p_value() -> None:
    first = sample_ratio_test(5500, 4500, 0.5)
    assert isinstance(first, SampleRatioResult)
    # A later look that looks fine keeps the earlier evidence: the p-value is a running minimum.
    later = sample_ratio_test(5000, 5000, 0.5, previous_p_value=first.p_value)
    assert isinstance(later, SampleRatioResult)
    assert later.p_value == first.p_value
    assert later.rejected
    assert later.bayes_factor < 1


def test_confidence_sequence_covers_the_truth_at_all_looks() -> None:
    # Null runs at several true ratios; the running intersection must contain the truth at every look in at
    # least 1 - ALPHA of the runs (minus the Monte-Carlo tolerance for 2,000 runs).
    runs = 2000
    tolerance = 3 * math.sqrt(ALPHA * (1 - ALPHA) / runs)
    rng = np.random.default_rng(10)
    for rho, ratio, per_look in [(0.5, 1.0, 3.0), (0.25, 2.0, 3.0), (0.05, 0.5, 30.0)]:
        canary, stable = simulate_counts(rng, rho, ratio, per_look, runs=runs)
        low, high = rate_ratio_interval(canary, stable, rho, alpha=ALPHA)
        running_low = np.maximum.accumulate(low, axis=1)
        running_high = np.minimum.accumulate(high, axis=1)
        covered = ((running_low <= ratio) & (ratio <= running_high)).all(axis=1).mean()
        assert covered >= 1 - ALPHA - tolerance, (rho, ratio)
        # Not trivially so: the intervals become informative.
        assert np.median(running_high[:, -1] / running_low[:, -1]) < 4


def test_confidence_sequence_shrinks_around_the_truth() -> None:
    widths = []
    for scale in (10, 100, 1000, 10_000, 100_000):
        # a 1.5x canary at 20%: expected events 0.2 * 1.5 : 0.8 = 0.3 : 0.8
        result = rate_result(3 * scale, 8 * scale, 0.2)
        assert result.ratio_low < 1.5 < result.ratio_high
        widths.append(result.ratio_high - result.ratio_low)
    assert all(later < earlier / 2 for earlier, later in itertools.pairwise(widths))
    assert widths[-1] < 0.05


def test_interval_ends_are_where_the_bayes_factor_crosses() -> None:
    x, y, rho = 20.0, 35.0, 0.3
    centre = float(event_share(1.0, rho))
    k = float(prior_strength(centre, event_share(2.0, rho)))
    low, high = rate_ratio_interval(x, y, rho, alpha=ALPHA)
    for ratio in (float(low), float(high)):
        p = float(event_share(ratio, rho))
        log_bf = float(two_sided_log_bf(x, y, p, k * centre, k * (1 - centre)))
        assert log_bf == pytest.approx(-math.log(ALPHA), abs=1e-8)
    assert float(low) < x / y * (1 - rho) / rho < float(high)  # the estimate lies inside


def test_running_values_are_carried() -> None:
    first = rate_result(40, 5, 0.5)
    assert first.rejected
    # A later look with less evidence keeps the minimum p-value and the intersection of the intervals.
    later = rate_result(40, 40, 0.5, previous=first.running)
    assert later.bayes_factor < first.bayes_factor
    assert later.p_value == first.p_value
    assert later.rejected
    fresh = rate_result(40, 40, 0.5)
    assert later.ratio_low == max(first.ratio_low, fresh.ratio_low)
    assert later.ratio_high == min(first.ratio_high, fresh.ratio_high)
    assert not fresh.rejected
    assert fresh.p_value == min(1.0, 1 / fresh.bayes_factor)


def test_no_worse_is_a_pass_with_evidence() -> None:
    assert rate_result(1000, 1500, 0.5).no_worse  # r ~ 0.67, tightly
    assert not rate_result(10, 15, 0.5).no_worse  # r ~ 0.67, but too few events to tell
    assert not rate_result(1000, 1000, 0.5, margin=0.0).no_worse  # r ~ 1 is no evidence of r < 1


def test_no_events_is_no_evidence() -> None:
    result = rate_result(0, 0, 0.3)
    assert result.bayes_factor == 1.0
    assert result.p_value == 1.0
    assert (result.ratio_low, result.ratio_high) == (0.0, math.inf)
    assert not result.rejected
    assert not result.no_worse
    assert result.running == Running()


def test_one_sided_edges() -> None:
    no_canary = rate_result(0, 50, 0.5)
    assert no_canary.ratio_low == 0.0
    assert 0 < no_canary.ratio_high < 0.5
    assert no_canary.no_worse
    no_stable = rate_result(50, 0, 0.5)
    assert no_stable.ratio_high == math.inf
    assert no_stable.ratio_low > 2
    assert no_stable.rejected


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_untestable_without_traffic_on_one_arm(share: float) -> None:
    result = rate_ratio_test(3, 4, share)
    assert isinstance(result, Untestable)
    assert ("no control" if share == 1.0 else "no traffic") in result.reason
    assert isinstance(sample_ratio_test(3, 4, share), Untestable)


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((-1, 3, 0.5), "canary_events"),
        ((1, -3, 0.5), "stable_events"),
        ((math.nan, 3, 0.5), "canary_events"),
        ((1, math.nan, 0.5), "stable_events"),
        ((1, math.inf, 0.5), "stable_events"),
        ((1, 3, math.nan), "canary_share"),
        ((1, 3, 1.5), "canary_share"),
        ((1, 3, -0.1), "canary_share"),
    ],
)
def test_invalid_arguments_name_themselves(args: tuple[float, float, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        rate_ratio_test(*args)
    srm_name = name.replace("events", "requests")
    with pytest.raises(ValueError, match=srm_name):
        sample_ratio_test(*args)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"margin": -0.1}, "margin"),
        ({"margin": math.nan}, "margin"),
        ({"prior_ratio": 1.05}, "prior_ratio"),
        ({"previous": Running(p_value=math.nan)}, "p_value"),
        ({"previous": Running(ratio_low=math.nan)}, "interval"),
    ],
)
def test_invalid_options_name_themselves(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        rate_ratio_test(1, 3, 0.5, **kwargs)  # type: ignore[arg-type]


def test_srm_invalid_previous_p_value() -> None:
    with pytest.raises(ValueError, match="previous_p_value"):
        sample_ratio_test(1, 3, 0.5, previous_p_value=1.5)
