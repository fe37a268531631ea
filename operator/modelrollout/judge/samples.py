"""The few judged pairs kept for a rollout's decision report: redacted first, cut short, bounded in number.

Losses are what explain a rollback on quality, so the latest few are kept apart from the latest wins and
ties. Everything kept passes through `redact.sample` (the built-in patterns and the service's own): prompts
and answers cut to `MAX_TEXT` characters, the judge's reasoning to `MAX_REASONING`. Nothing here is written
anywhere: the samples live in the judge service's memory and are served to the report on request.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from modelrollout.judge.blind import LOSS, Outcome, Pair
from modelrollout.judge.redact import sample
from modelrollout.judge.rubric import Verdict

MAX_TEXT = 600
MAX_REASONING = 400
LOSSES_KEPT = 3
OTHERS_KEPT = 2


@dataclass(frozen=True)
class Sample:
    request_id: str
    source: str  # replay or live
    at: str  # ISO 8601
    outcome: str  # the canary's: win, loss or tie
    prompt: str
    stable_answer: str
    canary_answer: str
    stable_scores: dict[str, float]
    canary_scores: dict[str, float]
    reasoning: str
    judge_model: str
    rubric: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Judged:
    """One judgement to keep a sample of: the pair, what the judge said, and about what."""

    pair: Pair
    outcome: Outcome
    verdict: Verdict
    source: str
    at: str
    judge_model: str
    rubric: str


@dataclass
class _Kept:
    losses: deque[Sample] = field(default_factory=lambda: deque(maxlen=LOSSES_KEPT))
    others: deque[Sample] = field(default_factory=lambda: deque(maxlen=OTHERS_KEPT))


class SampleStore:
    """The latest samples per rollout (namespace, name)."""

    def __init__(self, patterns: Iterable[re.Pattern[str]] = ()) -> None:
        self.patterns = tuple(patterns)
        self._kept: dict[tuple[str, str], _Kept] = {}

    def _clean(self, text: str, limit: int) -> str:
        return sample(text, self.patterns, limit)

    def keep(self, key: tuple[str, str], judged: Judged) -> None:
        self.add(key, self.sample_of(judged))

    def add(self, key: tuple[str, str], entry: Sample) -> None:
        kept = self._kept.setdefault(key, _Kept())
        (kept.losses if entry.outcome == LOSS else kept.others).append(entry)

    def sample_of(self, judged: Judged) -> Sample:
        """The sample to keep of `judged`: redacted and cut (regular expressions over texts of up to 100,000
        characters: callers on an event loop run it in a thread)."""
        pair, outcome = judged.pair, judged.outcome
        return Sample(
            request_id=self._clean(pair.request_id, 64),
            source=judged.source,
            at=judged.at,
            outcome=outcome.canary,
            prompt=self._clean(pair.prompt, MAX_TEXT),
            stable_answer=self._clean(pair.stable_answer, MAX_TEXT),
            canary_answer=self._clean(pair.canary_answer, MAX_TEXT),
            stable_scores=dict(outcome.stable_scores),
            canary_scores=dict(outcome.canary_scores),
            reasoning=self._clean(judged.verdict.reasoning, MAX_REASONING),
            judge_model=judged.judge_model,
            rubric=judged.rubric,
        )

    def samples(self, key: tuple[str, str]) -> list[Sample]:
        """Losses first, the latest of each kind first."""
        kept = self._kept.get(key)
        if kept is None:
            return []
        return [*reversed(kept.losses), *reversed(kept.others)]

    def forget(self, key: tuple[str, str]) -> None:
        self._kept.pop(key, None)

    def retain(self, keys: set[tuple[str, str]]) -> None:
        """Forget every rollout but `keys` (those that still exist)."""
        for key in set(self._kept) - keys:
            del self._kept[key]
