"""Blind, order-balanced pairs: which variant's answer the judge sees as "A" is drawn at random for each pair
and recorded, and the verdict is mapped back to the variants. Judges prefer a position (the fake judge of the
simulator is given one on purpose); drawn at random, a position bias adds noise to both variants alike
instead of favouring one, and the recorded order lets a report show the bias itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from modelrollout.judge.rubric import Verdict

WIN, LOSS, TIE = "win", "loss", "tie"


@dataclass(frozen=True)
class Pair:
    """The stable's and the canary's answers to one prompt."""

    request_id: str
    prompt: str
    stable_answer: str
    canary_answer: str


@dataclass(frozen=True)
class Shown:
    """A pair as the judge sees it, and which of A and B is the canary."""

    pair: Pair
    canary_is_a: bool

    @property
    def answer_a(self) -> str:
        return self.pair.canary_answer if self.canary_is_a else self.pair.stable_answer

    @property
    def answer_b(self) -> str:
        return self.pair.stable_answer if self.canary_is_a else self.pair.canary_answer


@dataclass(frozen=True)
class Outcome:
    """A verdict about the variants: the canary's result against the stable and both variants' scores."""

    request_id: str
    canary: str  # win, loss or tie
    canary_scores: dict[str, float]
    stable_scores: dict[str, float]
    canary_was_a: bool


def shown(pair: Pair, rng: random.Random) -> Shown:
    return Shown(pair, canary_is_a=rng.random() < 0.5)


def outcome(shown_pair: Shown, verdict: Verdict) -> Outcome:
    canary_is_a = shown_pair.canary_is_a
    canary_won = (verdict.winner == "A") == canary_is_a
    result = TIE if verdict.winner == "tie" else WIN if canary_won else LOSS
    return Outcome(
        request_id=shown_pair.pair.request_id,
        canary=result,
        canary_scores=verdict.scores_a if canary_is_a else verdict.scores_b,
        stable_scores=verdict.scores_b if canary_is_a else verdict.scores_a,
        canary_was_a=canary_is_a,
    )
