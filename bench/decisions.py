"""Decision-quality benchmark of three canary deciders on simulated rollouts, printing figures (no pass/fail).
Run: `make bench-decisions` (about half a minute).

Model and assumptions: 5 requests/s in total, split by the stage weight (1/5/25/50/100% canary, 10 minutes
each, 50 minutes per rollout). Each minute, each arm's requests are a Poisson draw at its share of the rate
and its errors a binomial draw at its error rate for that minute (baseline 1%), independently per arm and
minute; no retries, no latency, no Prometheus scrape delays or extrapolation. The deciders see exact counts
per minute, look once per minute (the analysis interval) and the first look of a stage is a minute into it.
1,000 rollouts per scenario, seeded.

Deciders:
- threshold, as the operator does today: each minute, the canary's error rate over the last 2 minutes must
  be <= 2%; with fewer than 100 canary requests in the window the check is inconclusive and decides nothing
  (the operator's inconclusiveLimit is left out); the second failed check of the rollout rolls back
  (failureLimit 1). It also checks at the 100% stage, since its gate needs no control.
- mann-whitney, Kayenta-style at a fixed horizon: at the end of each stage but the last, the per-minute
  error rates of the canary against the stable's (minutes without canary requests dropped), one-sided
  scipy.stats.mannwhitneyu at alpha 0.01; a significant difference rolls back.
- sequential: modelrollout.stats' rate-ratio test (alpha 0.01, margin 10%, prior tuned to 2x) on the error
  counts accumulated since the stage started, every minute; a rejection rolls back. At 100% there is no
  control: the rollout finishes.
- seq+carry (not one of the three compared; shown for what it suggests): the sequential test with the
  evidence carried over, each stage's Bayes factor starting where the previous stage's ended instead of
  at 1. Still anytime-valid: a stage's mixture is a fresh test supermartingale given everything before it,
  so the product of the stopped one and the fresh one is a supermartingale too, and Ville's inequality
  bounds the whole rollout by alpha.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

from modelrollout.stats import rate_ratio_log_bf

STAGES = (1, 5, 25, 50, 100)
STAGE_MINUTES = 10
WINDOW_MINUTES = 2
BASELINE = 0.01
THRESHOLD, MIN_REQUESTS, FAILURE_LIMIT = 0.02, 100, 1
ALPHA, MARGIN = 0.01, 0.1
MINUTES = STAGE_MINUTES * len(STAGES)
MINUTE = np.arange(MINUTES)
WEIGHT = np.repeat(np.array(STAGES, dtype=float) / 100, STAGE_MINUTES)
NEVER = -1


@dataclass(frozen=True)
class Scenario:
    name: str
    canary_rate: Callable[[np.ndarray], np.ndarray]  # error rate per minute
    stable_rate: Callable[[np.ndarray], np.ndarray]
    regression: bool  # should the decider roll back?


def flat(rate: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda minute: np.full(minute.shape, rate)


SCENARIOS = [
    Scenario("healthy (same rate)", flat(BASELINE), flat(BASELINE), regression=False),
    Scenario("1.5x regression", flat(1.5 * BASELINE), flat(BASELINE), regression=True),
    Scenario("2x regression", flat(2 * BASELINE), flat(BASELINE), regression=True),
    Scenario("5x regression", flat(5 * BASELINE), flat(BASELINE), regression=True),
    Scenario(
        "bad hour, both at 3%",
        lambda m: np.where(m < 60, 0.03, BASELINE),
        lambda m: np.where(m < 60, 0.03, BASELINE),
        regression=False,
    ),
    Scenario(
        "variance only (0.2%/1.8%)",
        lambda m: np.where(m % 2 == 0, 0.002, 0.018),
        flat(BASELINE),
        regression=False,
    ),
]


@dataclass(frozen=True)
class Traffic:
    canary: np.ndarray  # requests per (run, minute)
    stable: np.ndarray
    canary_errors: np.ndarray
    stable_errors: np.ndarray


def simulate(rng: np.random.Generator, scenario: Scenario, runs: int, rps: float) -> Traffic:
    per_minute = rps * 60
    canary = rng.poisson(per_minute * WEIGHT, (runs, MINUTES))
    stable = rng.poisson(per_minute * (1 - WEIGHT), (runs, MINUTES))
    return Traffic(
        canary,
        stable,
        rng.binomial(canary, scenario.canary_rate(MINUTE)),
        rng.binomial(stable, scenario.stable_rate(MINUTE)),
    )


def first_true(hits: np.ndarray) -> np.ndarray:
    """The minute index of the first True per run, or NEVER."""
    return np.where(hits.any(axis=1), hits.argmax(axis=1), NEVER)


def window_sum(counts: np.ndarray) -> np.ndarray:
    total = counts.cumsum(axis=1)
    shifted = np.zeros_like(total)
    shifted[:, WINDOW_MINUTES:] = total[:, :-WINDOW_MINUTES]
    return np.asarray(total - shifted)


def threshold(traffic: Traffic) -> np.ndarray:
    requests, errors = window_sum(traffic.canary), window_sum(traffic.canary_errors)
    failed = (requests >= MIN_REQUESTS) & (errors > THRESHOLD * requests)
    return first_true(failed.cumsum(axis=1) > FAILURE_LIMIT)


def mann_whitney(traffic: Traffic) -> np.ndarray:
    decided = np.full(traffic.canary.shape[0], NEVER)
    with np.errstate(invalid="ignore", divide="ignore"):
        canary_rate = traffic.canary_errors / traffic.canary
        stable_rate = traffic.stable_errors / traffic.stable
    for stage in range(len(STAGES) - 1):
        span = slice(stage * STAGE_MINUTES, (stage + 1) * STAGE_MINUTES)
        result = stats.mannwhitneyu(
            canary_rate[:, span], stable_rate[:, span], alternative="greater", axis=1, nan_policy="omit"
        )
        # A stage where every canary minute had no requests gives NaN: no decision.
        fail = np.nan_to_num(np.asarray(result.pvalue), nan=1.0) < ALPHA
        decided = np.where((decided == NEVER) & fail, span.stop - 1, decided)
    return decided


def sequential(traffic: Traffic, *, carry: bool = False) -> np.ndarray:
    decided = np.full(traffic.canary.shape[0], NEVER)
    carried = np.zeros(traffic.canary.shape[0])  # log BF at the end of the previous stages (with carry)
    for stage, weight in enumerate(STAGES[:-1]):
        span = slice(stage * STAGE_MINUTES, (stage + 1) * STAGE_MINUTES)
        canary = traffic.canary_errors[:, span].cumsum(axis=1)
        stable = traffic.stable_errors[:, span].cumsum(axis=1)
        log_bf = rate_ratio_log_bf(canary, stable, weight / 100, margin=MARGIN) + carried[:, None]
        hit = first_true(log_bf >= -math.log(ALPHA))
        decided = np.where((decided == NEVER) & (hit != NEVER), span.start + hit, decided)
        if carry:
            carried = log_bf[:, -1]
    return decided


DECIDERS: dict[str, Callable[[Traffic], np.ndarray]] = {
    "threshold": threshold,
    "mann-whitney": mann_whitney,
    "sequential": sequential,
    "seq+carry": lambda traffic: sequential(traffic, carry=True),
}


@dataclass(frozen=True)
class Outcome:
    rollbacks: float
    requests: np.ndarray  # canary requests until each rollback
    minutes: np.ndarray  # minutes from the start until each rollback


def outcome(traffic: Traffic, decided: np.ndarray) -> Outcome:
    rolled = decided != NEVER
    served = traffic.canary.cumsum(axis=1)
    return Outcome(
        rollbacks=float(rolled.mean()),
        requests=served[rolled, decided[rolled]],
        minutes=decided[rolled] + 1.0,  # a decision at minute index m is made at the end of minute m
    )


def quantiles(values: np.ndarray) -> str:
    if values.size == 0:
        return "-"
    return f"{np.median(values):,.0f} / {np.percentile(values, 90):,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="rollouts per scenario")
    parser.add_argument("--rps", type=float, default=5.0, help="requests per second, both arms together")
    parser.add_argument("--seed", type=int, default=20221128)
    args = parser.parse_args()
    started = time.perf_counter()
    print(
        f"{args.runs:,} rollouts per scenario, {args.rps:g} req/s, stages {'/'.join(map(str, STAGES))}% x "
        f"{STAGE_MINUTES} min, looks every minute, baseline error rate {BASELINE:.0%}, seed {args.seed}"
    )
    print("canary requests and minutes until a rollback: median / p90 over the runs that rolled back\n")
    header = f"{'scenario':<28}{'decider':<14}{'rollbacks':>10}  {'canary requests':>17}  {'minutes':>9}"
    print(header)
    print("-" * len(header))
    results: dict[tuple[str, str], Outcome] = {}
    rng = np.random.default_rng(args.seed)
    for scenario in SCENARIOS:
        traffic = simulate(rng, scenario, args.runs, args.rps)
        for name, decide in DECIDERS.items():
            result = outcome(traffic, decide(traffic))
            results[scenario.name, name] = result
            kind = "detected" if scenario.regression else "false"
            print(
                f"{scenario.name:<28}{name:<14}{result.rollbacks:>9.1%}{kind[0]}  "
                f"{quantiles(result.requests):>17}  {quantiles(result.minutes):>9}"
            )
        print()
    print("rollbacks: d = detected regressions, f = false rollbacks\n")

    print("targets:")
    for name in ("threshold", "mann-whitney", "sequential"):
        healthy = results["healthy (same rate)", name].rollbacks
        print(
            f"  false rollback < 1% at alpha 0.01 (healthy canary), {name}: {healthy:.1%} "
            f"-> {'met' if healthy < 0.01 else 'NOT met'}"
        )
    sequential_2x, fixed_2x = results["2x regression", "sequential"], results["2x regression", "mann-whitney"]
    fewer = (
        sequential_2x.requests.size > 0
        and fixed_2x.requests.size > 0
        and np.median(sequential_2x.requests) < np.median(fixed_2x.requests)
    )
    detected = sequential_2x.rollbacks >= 0.95
    print(
        "  >= 95% detection of a 2x regression, with fewer canary requests than the fixed-horizon test "
        "needs:\n"
        f"    sequential detects {sequential_2x.rollbacks:.1%} (median "
        f"{quantiles(sequential_2x.requests).split(' / ')[0]} canary requests), mann-whitney "
        f"{fixed_2x.rollbacks:.1%} (median {quantiles(fixed_2x.requests).split(' / ')[0]})\n"
        f"    -> {'met' if detected and fewer else 'NOT met'}: detection {'met' if detected else 'not met'}, "
        f"fewer requests {'yes' if fewer else 'no'} (medians over the runs each detected)"
    )
    print(f"\n({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
