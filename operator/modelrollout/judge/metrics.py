"""The judge's Prometheus metrics, per rollout: verdicts (the canary's win, loss or tie against the stable),
scores per variant and criterion, judge errors by reason, judge model calls, their tokens and estimated cost,
and pairs by source. Gates read them like any metric. Labels are bounded: the rollout (`rollout_namespace`,
`rollout`; not `namespace`, which Prometheus' Kubernetes discovery sets to the judge Pod's own) and closed
sets."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

SCORE_BUCKETS = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0)
ERROR_REASONS = ("malformed", "judge-unreachable", "variant-unreachable", "budget")


class JudgeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.verdicts = Counter(
            "modelrollout_judge_verdicts",
            "Judged pairs by the canary's result against the stable, and by who judged with which rubric.",
            ["rollout_namespace", "rollout", "outcome", "judge_model", "rubric"],
            registry=self.registry,
        )
        self.scores = Histogram(
            "modelrollout_judge_score",
            "Judge scores (0-10) by variant and criterion.",
            ["rollout_namespace", "rollout", "variant", "criterion"],
            buckets=SCORE_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "modelrollout_judge_errors",
            "Pairs not judged, by reason: a malformed verdict after a retry, a model unreachable, no budget.",
            ["rollout_namespace", "rollout", "reason"],
            registry=self.registry,
        )
        self.calls = Counter(
            "modelrollout_judge_calls",
            "Calls to the judge model.",
            ["rollout_namespace", "rollout"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "modelrollout_judge_tokens",
            "Tokens the judge model read (input) and wrote (output), as its answers report them.",
            ["rollout_namespace", "rollout", "kind"],
            registry=self.registry,
        )
        self.cost = Counter(
            "modelrollout_judge_cost_usd",
            "Estimated cost of judging in USD: tokens priced by spec.analysis.judge.model.pricing.",
            ["rollout_namespace", "rollout"],
            registry=self.registry,
        )
        self.pairs = Counter(
            "modelrollout_judge_pairs",
            "Pairs taken in, by source: replay of the evaluation set, or live pairs posted by apps.",
            ["rollout_namespace", "rollout", "source"],
            registry=self.registry,
        )
