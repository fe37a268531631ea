"""Decision-quality benchmark of canary deciders on simulated rollouts, printing figures (no pass/fail).
Run: `make bench-decisions` (under a minute).

Model and assumptions: 5 requests/s in total, split by the stage weight (1/5/25/50/100% canary). Two stage
lengths: 10 minutes each (the 100% stage too), and 60 minutes each with no soak at 100% (the sample's shape,
hour-long stages). Each minute, each arm's requests are a Poisson draw at its share of the rate and its errors
a binomial draw at its error rate for that minute (baseline 1%), independently per arm and minute; no retries,
no latency, no Prometheus scrape delays or extrapolation. The deciders see exact counts per minute and look
once per minute (the analysis interval), the first look of a stage a minute into it. 1,000 rollouts per
scenario and stage length, seeded.

Deciders:
- threshold, the operator's gate as it is: each minute the canary's error rate over the last 2 minutes is
  checked against <= 2%. A rate above it fails whatever the request count (the operator withholds only a
  pass); with fewer than 100 canary requests in the window (minRequests) a check that would pass is
  Inconclusive. The second failed check of the rollout rolls back (failureLimit 1); the 11th inconclusive
  check in a row holds it (inconclusiveLimit 10, onInconclusive Hold). A stage advances once it has soaked and
  its latest check passed on a window inside the stage, as the operator's does, so stages can last longer than
  planned. A held rollout is counted as held at that moment; the operator would keep checking it and a later
  failure could still roll it back. It also checks at 100%, since its gate needs no control. A rollout neither
  finished nor held at twice the planned duration counts as held too (it never promoted).
- mann-whitney, Kayenta-style at a fixed horizon: at the end of each stage but the last, the per-minute error
  rates of the canary against the stable's (minutes without canary requests dropped), one-sided
  scipy.stats.mannwhitneyu at alpha 0.01; a significant difference rolls back.
- sequential, the operator's rule: modelrollout.stats' rate-ratio test (alpha 0.01, margin 10%, prior tuned to
  2x) every minute, with the evidence carried across stages. Counts restart at each stage (the split changes),
  but the stage's Bayes factor is multiplied by the product of the earlier stages' final ones, and the rollout
  rolls back when that product reaches 1/alpha. Anytime-valid over the whole rollout: each stage's mixture is
  a test supermartingale given everything before it, so the concatenation, stopped at each stage's end, is one
  too, and Ville's inequality bounds the rollout's false rollbacks by alpha. At 100% there is no control: the
  rollout finishes.
- seq (restart per stage), an ablation: the same test starting from 1 at each stage (no carry).

The bound: how much a valid comparative test could detect on the same data. The exact conditional test of
the canary against its control: conditioned on each stage's error total, the canary's errors of the stage
are Binomial(total, p(1 + margin)) at the null's edge, their sum over the stages is a sum of binomials, and
the test rejects at level alpha when the observed sum is in its upper alpha tail. It is the uniformly most
powerful unbiased test of a common rate ratio when each stage's baseline rate is unknown (a bad hour may move
it), and it is run once, on all of a run's errors up to the end of the 50% stage, paying no price for
repeated looks. So no unbiased rule valid under a moving baseline that rolls back before 100% at level alpha,
sequential or fixed-horizon, detects more often on average. Tests that know the baseline rate, or assume it
constant, could (the former need no control), but a bad hour hitting both variants fools them.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

from modelrollout.stats.sequential import event_share, rate_ratio_log_bf

STAGES = (1, 5, 25, 50, 100)
WINDOW_MINUTES = 2
BASELINE = 0.01
THRESHOLD, MIN_REQUESTS, FAILURE_LIMIT, INCONCLUSIVE_LIMIT = 0.02, 100, 1, 10
ALPHA, MARGIN = 0.01, 0.1
NEVER = -1


@dataclass(frozen=True)
class Schedule:
    name: str
    minutes: tuple[int, ...]  # per stage; 0 = no soak

    def spans(self) -> list[slice]:
        """The minutes of each stage but the last (the ones with a control), from the rollout's start."""
        ends = np.cumsum(self.minutes[:-1])
        return [slice(int(end - length), int(end)) for end, length in zip(ends, self.minutes, strict=False)]

    @property
    def controlled_minutes(self) -> int:
        return sum(self.minutes[:-1])


SCHEDULES = (
    Schedule("10-minute stages", (10, 10, 10, 10, 10)),
    Schedule("60-minute stages", (60, 60, 60, 60, 0)),
)


@dataclass(frozen=True)
class Scenario:
    name: str
    canary_rate: Callable[[np.ndarray], np.ndarray]  # error rate per minute from the rollout's start
    stable_rate: Callable[[np.ndarray], np.ndarray]
    regression: bool  # should the decider roll back?


def flat(rate: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda minute: np.full(np.shape(minute), rate)


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
class Case:
    scenario: Scenario
    schedule: Schedule
    rng: np.random.Generator
    runs: int
    rps: float
    # Both arms per (run, minute) over the stages with a control, on the planned schedule.
    canary: np.ndarray
    stable: np.ndarray
    canary_errors: np.ndarray
    stable_errors: np.ndarray


def simulate(rng: np.random.Generator, scenario: Scenario, schedule: Schedule, runs: int, rps: float) -> Case:
    minutes = schedule.controlled_minutes
    minute = np.arange(minutes)
    weight = np.repeat(np.array(STAGES[:-1], dtype=float) / 100, schedule.minutes[:-1])
    per_minute = rps * 60
    canary = rng.poisson(per_minute * weight, (runs, minutes))
    stable = rng.poisson(per_minute * (1 - weight), (runs, minutes))
    return Case(
        scenario,
        schedule,
        rng,
        runs,
        rps,
        canary,
        stable,
        rng.binomial(canary, scenario.canary_rate(minute)),
        rng.binomial(stable, scenario.stable_rate(minute)),
    )


@dataclass(frozen=True)
class Outcome:
    rollback: float  # rolled back before 100%
    late: float | None  # rolled back at 100% (None: the decider does not look there)
    held: float | None  # None: the decider never holds
    promoted: float
    requests: np.ndarray  # canary requests until each rollback
    minutes: np.ndarray  # minutes from the start until each rollback

    @property
    def missed(self) -> float:
        """Reached 100% without a rollback: a regression let through to all traffic."""
        return self.promoted + (self.late or 0.0)

    @property
    def any_rollback(self) -> float:
        return self.rollback + (self.late or 0.0)


def first_true(hits: np.ndarray) -> np.ndarray:
    """The minute index of the first True per run, or NEVER."""
    return np.where(hits.any(axis=1), hits.argmax(axis=1), NEVER)


def fixed_outcome(case: Case, decided: np.ndarray) -> Outcome:
    rolled = decided != NEVER
    served = case.canary.cumsum(axis=1)
    return Outcome(
        rollback=float(rolled.mean()),
        late=None,
        held=None,
        promoted=float(1 - rolled.mean()),
        requests=served[rolled, decided[rolled]],
        minutes=decided[rolled] + 1.0,  # a decision at minute index m is made at the end of minute m
    )


ACTIVE, ROLLED_BACK, HELD, PROMOTED = range(4)


def threshold(case: Case) -> Outcome:
    """The operator's threshold gate as a state machine per run, minute by minute (its schedule depends on
    the checks, so it draws its own canary traffic; the stable's does not matter to it)."""
    runs, last = case.runs, len(STAGES) - 1
    weights = np.array(STAGES, dtype=float) / 100
    soak = np.array(case.schedule.minutes)
    horizon = 2 * sum(case.schedule.minutes) + WINDOW_MINUTES
    stage, in_stage = np.zeros(runs, dtype=int), np.zeros(runs, dtype=int)
    failed, in_a_row = np.zeros(runs, dtype=int), np.zeros(runs, dtype=int)
    state = np.full(runs, ACTIVE)
    decided, rolled_stage = np.full(runs, NEVER), np.full(runs, NEVER)
    served, served_at = np.zeros(runs, dtype=int), np.zeros(runs, dtype=int)
    window: list[tuple[np.ndarray, np.ndarray]] = []
    for minute in range(horizon):
        active = state == ACTIVE
        if not active.any():
            break
        requests = case.rng.poisson(case.rps * 60 * weights[stage])
        errors = case.rng.binomial(requests, case.scenario.canary_rate(np.full(runs, minute)))
        served += requests
        in_stage += 1
        window = [*window[-(WINDOW_MINUTES - 1) :], (requests, errors)]
        total = sum(r for r, _ in window)
        bad = sum(e for _, e in window)
        fail = bad > THRESHOLD * total  # no requests: NaN, which neither fails nor passes
        passed = ~fail & (total >= MIN_REQUESTS)
        failed += fail
        in_a_row = np.where(fail | passed, 0, in_a_row + 1)
        rolled = active & fail & (failed > FAILURE_LIMIT)
        held = active & ~rolled & (in_a_row > INCONCLUSIVE_LIMIT)
        ready = active & passed & (in_stage >= soak[stage]) & (in_stage >= WINDOW_MINUTES)
        state[rolled], decided[rolled], rolled_stage[rolled] = ROLLED_BACK, minute, stage[rolled]
        served_at[rolled] = served[rolled]
        state[held] = HELD
        state[ready & (stage == last)] = PROMOTED
        advance = ready & (stage < last)
        stage[advance] += 1
        in_stage[advance], in_a_row[advance] = 0, 0
    rolled = state == ROLLED_BACK
    return Outcome(
        rollback=float((rolled & (rolled_stage < last)).mean()),
        late=float((rolled & (rolled_stage == last)).mean()),
        held=float(((state == HELD) | (state == ACTIVE)).mean()),
        promoted=float((state == PROMOTED).mean()),
        requests=served_at[rolled],
        minutes=decided[rolled] + 1.0,
    )


def mann_whitney(case: Case) -> Outcome:
    decided = np.full(case.runs, NEVER)
    with np.errstate(invalid="ignore", divide="ignore"):
        canary_rate = case.canary_errors / case.canary
        stable_rate = case.stable_errors / case.stable
    for span in case.schedule.spans():
        result = stats.mannwhitneyu(
            canary_rate[:, span], stable_rate[:, span], alternative="greater", axis=1, nan_policy="omit"
        )
        # A stage where every canary minute had no requests gives NaN: no decision.
        fail = np.nan_to_num(np.asarray(result.pvalue), nan=1.0) < ALPHA
        decided = np.where((decided == NEVER) & fail, span.stop - 1, decided)
    return fixed_outcome(case, decided)


def sequential(case: Case, *, carry: bool = True) -> Outcome:
    decided = np.full(case.runs, NEVER)
    carried = np.zeros(case.runs)  # log of the product of the earlier stages' final Bayes factors
    for span, weight in zip(case.schedule.spans(), STAGES, strict=False):
        canary = case.canary_errors[:, span].cumsum(axis=1)
        stable = case.stable_errors[:, span].cumsum(axis=1)
        log_bf = rate_ratio_log_bf(canary, stable, weight / 100, margin=MARGIN) + carried[:, None]
        hit = first_true(log_bf >= -math.log(ALPHA))
        decided = np.where((decided == NEVER) & (hit != NEVER), span.start + hit, decided)
        if carry:
            carried = log_bf[:, -1]
    return fixed_outcome(case, decided)


def best_single_test(case: Case, *, margin: float = MARGIN) -> float:
    """The share of runs the exact conditional test (see the module's docstring) rejects at level ALPHA,
    once, on each run's errors over all the stages with a control."""
    rejected = 0
    for run in range(case.runs):
        null = np.ones(1)  # the distribution of the canary's error sum so far, at the null's edge
        observed = 0
        for span, weight in zip(case.schedule.spans(), STAGES, strict=False):
            canary = int(case.canary_errors[run, span].sum())
            total = canary + int(case.stable_errors[run, span].sum())
            observed += canary
            share_at_edge = float(event_share(1 + margin, weight / 100))
            null = np.convolve(null, stats.binom.pmf(np.arange(total + 1), total, share_at_edge))
        rejected += bool(null[observed:].sum() <= ALPHA)
    return rejected / case.runs


DECIDERS: dict[str, Callable[[Case], Outcome]] = {
    "threshold": threshold,
    "mann-whitney": mann_whitney,
    "sequential": sequential,
    "seq (restart per stage)": lambda case: sequential(case, carry=False),
}


def share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def quantiles(values: np.ndarray) -> str:
    if values.size == 0:
        return "-"
    return f"{np.median(values):,.0f} / {np.percentile(values, 90):,.0f}"


def median(values: np.ndarray) -> str:
    return "-" if values.size == 0 else f"{np.median(values):,.0f}"


Results = dict[tuple[str, str], Outcome]
BOUND = "best single test (bound)"
Bounds = dict[str, float]  # per regression scenario: the share of runs the best single test detects


def table(schedule: Schedule, rng: np.random.Generator, runs: int, rps: float) -> tuple[Results, Bounds]:
    stages = " ".join(f"{w}%x{m}m" if m else f"{w}%" for w, m in zip(STAGES, schedule.minutes, strict=True))
    print(f"== {schedule.name}: {stages} ==\n")
    header = (
        f"{'scenario':<27}{'decider':<24}{'rollback':>9}{'at 100%':>9}{'held':>8}{'promoted':>9}{'missed':>8}"
        f"  {'canary requests':>17}  {'minutes':>9}"
    )
    print(header)
    print("-" * len(header))
    results: Results = {}
    bounds: Bounds = {}
    for scenario in SCENARIOS:
        case = simulate(rng, scenario, schedule, runs, rps)
        for name, decide in DECIDERS.items():
            result = decide(case)
            results[scenario.name, name] = result
            missed = share(result.missed) if scenario.regression else ""
            print(
                f"{scenario.name:<27}{name:<24}{share(result.rollback):>9}{share(result.late):>9}"
                f"{share(result.held):>8}{share(result.promoted):>9}{missed:>8}"
                f"  {quantiles(result.requests):>17}  {quantiles(result.minutes):>9}"
            )
        if scenario.regression:
            bounds[scenario.name] = best_single_test(case)
            print(f"{scenario.name:<27}{BOUND:<24}{share(bounds[scenario.name]):>9}")
        print()
    return results, bounds


def targets(schedule: Schedule, results: Results, bounds: Bounds) -> None:
    print(f"targets, {schedule.name}:")
    calm = [s.name for s in SCENARIOS if not s.regression]
    for name in DECIDERS:
        healthy = results["healthy (same rate)", name].any_rollback
        worst = max(results[s, name].any_rollback for s in calm)
        print(
            f"  false rollback < 1% at alpha 0.01, {name}: {healthy:.1%} of healthy canaries "
            f"(worst no-regression scenario {worst:.1%}) -> {'met' if healthy < 0.01 else 'NOT met'}"
        )
    sequential_2x, fixed_2x = results["2x regression", "sequential"], results["2x regression", "mann-whitney"]
    detected = sequential_2x.rollback >= 0.95
    fewer = (
        sequential_2x.requests.size > 0
        and fixed_2x.requests.size > 0
        and np.median(sequential_2x.requests) < np.median(fixed_2x.requests)
    )
    print(
        "  >= 95% detection of a 2x regression before 100%, with fewer canary requests than the "
        "fixed-horizon test needs:\n"
        f"    sequential detects {sequential_2x.rollback:.1%} (median {median(sequential_2x.requests)} "
        f"canary requests to detection), mann-whitney {fixed_2x.rollback:.1%} "
        f"(median {median(fixed_2x.requests)})\n"
        f"    -> {'met' if detected and fewer else 'NOT met'}: detection {'met' if detected else 'NOT met'}, "
        f"fewer requests {'yes' if fewer else 'no'} (medians over the runs each detected)\n"
        f"    bound: the exact conditional test, once on all of each run's errors, detects "
        f"{bounds['2x regression']:.1%}"
        f"{'' if bounds['2x regression'] >= 0.95 else ': 95% is out of reach here (bench/decisions.py)'}\n"
    )


SWEEP_MINUTES = (10, 15, 20, 30, 40, 60)
# Minutes per stage x requests/s x baseline error rate: the 40-minute stages at 5 req/s and 1%.
SIZING_EVENTS = 2.0
SIZING_RPS = (2.0, 5.0, 20.0, 50.0)


def stage_lengths(rng: np.random.Generator, runs: int, rps: float) -> None:
    """How long the stages 1/5/25/50 must be for each rule to catch a 2x regression: detection, false
    rollbacks of healthy canaries, and the bound, per stage length (no soak at 100%)."""
    print("== stage length needed to detect a 2x regression (stages 1/5/25/50 of the same length) ==\n")
    header = (
        f"{'minutes per stage':<19}{'sequential: 2x':>16}{'healthy':>9}{'mann-whitney: 2x':>18}{'healthy':>9}"
        f"{BOUND + ': 2x':>30}"
    )
    print(header)
    print("-" * len(header))
    enough: int | None = None
    for minutes in SWEEP_MINUTES:
        schedule = Schedule(f"{minutes}-minute stages", (minutes,) * (len(STAGES) - 1) + (0,))
        regressed = simulate(rng, SCENARIOS[2], schedule, runs, rps)
        healthy = simulate(rng, SCENARIOS[0], schedule, runs, rps)
        detected, false_rollbacks = sequential(regressed).rollback, sequential(healthy).rollback
        print(
            f"{minutes:<19}{detected:>16.1%}{false_rollbacks:>9.1%}{mann_whitney(regressed).rollback:>18.1%}"
            f"{mann_whitney(healthy).rollback:>9.1%}{best_single_test(regressed):>30.1%}"
        )
        if enough is None and detected >= 0.95 and false_rollbacks < 0.01:
            enough = minutes
    shortest = f"{enough} minutes" if enough else f"more than {SWEEP_MINUTES[-1]} minutes"
    print(
        f"\nshortest stage length here at which the sequential gate detects >= 95% of 2x regressions with "
        f"< 1% false rollbacks: {shortest}\n"
    )
    # What decides is the number of bad events per stage, so the length should scale as 1 / (rate x baseline).
    print(f"the same rule at other rates, {SIZING_EVENTS:g} / (requests/s x baseline) minutes per stage:")
    for other_rps in SIZING_RPS:
        minutes = max(1, round(SIZING_EVENTS / (other_rps * BASELINE)))
        schedule = Schedule(f"{minutes}-minute stages", (minutes,) * (len(STAGES) - 1) + (0,))
        detected = sequential(simulate(rng, SCENARIOS[2], schedule, runs, other_rps)).rollback
        print(f"  {other_rps:g} req/s, {minutes}-minute stages: the sequential gate detects {detected:.1%}")
    print()


# ---- sticky assignment: the weight splits users, their requests split unevenly ----

STICKY_WEIGHT, STICKY_MINUTES = 0.10, 60


def sticky_shares(rng: np.random.Generator, runs: int) -> np.ndarray:
    """The canary's share of the requests per (run, minute) at 10% of the users: each run's canary users are
    lighter or heavier than average (a share between 6% and 18% for the run) and their traffic varies from
    minute to minute (x0.7 to x1.3), as a few heavy users coming and going make it."""
    per_run = rng.uniform(0.06, 0.18, (runs, 1))
    return np.clip(per_run * rng.uniform(0.7, 1.3, (runs, STICKY_MINUTES)), 0.01, 0.99)


def sticky(rng: np.random.Generator, runs: int, rps: float) -> None:
    """One hour at 10% of the users; errors per request at the baseline, or twice it on the canary. The
    sequential test with the weight as its share against the same test with the run's measured share of
    requests (what the operator does with sticky assignment)."""
    print(
        f"== sticky assignment: {STICKY_WEIGHT:.0%} of the users for {STICKY_MINUTES} minutes, the canary's "
        "share of requests 6-18% by run, x0.7-1.3 by minute ==\n"
    )
    header = f"{'scenario':<24}{'share the test uses':<32}{'rollback':>9}{'minutes (median)':>18}"
    print(header)
    print("-" * len(header))
    figures: dict[tuple[str, str], float] = {}
    for name, factor in (("same rate per request", 1.0), ("2x per request", 2.0)):
        share = sticky_shares(rng, runs)
        per_minute = rps * 60
        canary = rng.poisson(per_minute * share)
        stable = rng.poisson(per_minute * (1 - share))
        canary_errors = rng.binomial(canary, BASELINE * factor).cumsum(axis=1)
        stable_errors = rng.binomial(stable, BASELINE).cumsum(axis=1)
        seen = canary.cumsum(axis=1) / np.maximum(1, (canary + stable).cumsum(axis=1))
        measured = np.clip(np.where(seen > 0, seen, STICKY_WEIGHT), 1e-3, 1 - 1e-3)
        for label, rho in (
            ("the weight (10%)", np.full_like(measured, STICKY_WEIGHT)),
            ("measured", measured),
        ):
            log_bf = rate_ratio_log_bf(canary_errors, stable_errors, rho, margin=MARGIN)
            hit = first_true(log_bf >= -math.log(ALPHA))
            rolled = hit != NEVER
            figures[name, label] = float(rolled.mean())
            minutes = median(hit[rolled] + 1.0)
            print(f"{name:<24}{label:<32}{rolled.mean():>9.1%}{minutes:>18}")
    print()
    false_alarm = figures["same rate per request", "measured"]
    print(
        f"target: false rollback <= alpha {ALPHA:.0%} with sticky assignment: measured share "
        f"{false_alarm:.1%} (the weight: {figures['same rate per request', 'the weight (10%)']:.1%}) -> "
        f"{'met' if false_alarm <= ALPHA else 'NOT met'}; a 2x regression per request detected in "
        f"{figures['2x per request', 'measured']:.1%} of runs within the hour\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="rollouts per scenario and stage length")
    parser.add_argument("--rps", type=float, default=5.0, help="requests per second, both arms together")
    parser.add_argument("--seed", type=int, default=20221128)
    args = parser.parse_args()
    started = time.perf_counter()
    print(
        f"{args.runs:,} rollouts per scenario, {args.rps:g} req/s, looks every minute, baseline error rate "
        f"{BASELINE:.0%}, seed {args.seed}\n"
        "rollback: before 100% (a detection or a false rollback); at 100%: rolled back only there "
        "(threshold only; the\nothers have no control at 100%); held: on hold (inconclusiveLimit), never "
        "promoted; missed (regressions): reached\n100% undetected. canary requests and minutes until a "
        "rollback: median / p90 over the runs that rolled back.\n"
    )
    first = args.rps * 60 * WINDOW_MINUTES * STAGES[0] / 100
    if first < MIN_REQUESTS / 2:
        print(
            f"note: at {args.rps:g} req/s a {WINDOW_MINUTES}-minute window at {STAGES[0]}% holds about "
            f"{first:.0f} canary requests, under minRequests {MIN_REQUESTS}: the threshold gate's checks "
            "there can fail\nor be Inconclusive but never pass, so it never leaves stage 1: a rollout it "
            f"does not roll back is held there after {INCONCLUSIVE_LIMIT + 1}\n"
            "inconclusive checks in a row.\n"
        )
    rng = np.random.default_rng(args.seed)
    results = {schedule.name: table(schedule, rng, args.runs, args.rps) for schedule in SCHEDULES}
    for schedule in SCHEDULES:
        targets(schedule, *results[schedule.name])
    sticky(rng, args.runs, args.rps)
    stage_lengths(rng, args.runs, args.rps)
    print(f"({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
