"""The rubric a judge model answers, and the strict reading of its answer.

The judge sees a prompt and two answers, "A" and "B", never the models behind them, and must answer one JSON
object: each criterion scored for A and for B on the rubric's scale, and a winner ("A", "B" or "tie"), with an
optional short reasoning. Anything else is a malformed answer: the caller retries once and then counts a
judge error, never a win. Strict means: one JSON object (a Markdown code fence around it is tolerated, since
models add one), no missing or extra criteria, scores that are finite numbers on the scale (not strings, not
booleans, not NaN), a known winner, bounded size.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

DEFAULT_CRITERIA = ("accuracy", "clarity", "completeness")
MAX_ANSWER_CHARS = 20_000  # a verdict is a few hundred characters; more is not a verdict
MAX_REASONING_CHARS = 2_000
WINNERS = ("A", "B", "tie")
_FENCE = re.compile(r"^```(?:json)?\s*\n(?P<body>.*)\n```$", re.DOTALL)


@dataclass(frozen=True)
class Rubric:
    criteria: tuple[str, ...] = DEFAULT_CRITERIA
    scale_max: float = 10.0
    version: str = "pairwise-v1"

    def __post_init__(self) -> None:
        if not self.criteria or len(set(self.criteria)) != len(self.criteria):
            raise ValueError("a rubric needs distinct criteria")
        if any(name in ("winner", "reasoning") for name in self.criteria):
            raise ValueError("'winner' and 'reasoning' are not criteria")


@dataclass(frozen=True)
class Verdict:
    """A judge's answer about the answers as shown: scores of A and of B per criterion, and the winner."""

    scores_a: dict[str, float]
    scores_b: dict[str, float]
    winner: str
    reasoning: str = ""


class MalformedVerdict(ValueError):
    """The judge's answer is not the rubric's JSON; the message says why (never the answer itself)."""


def judge_messages(rubric: Rubric, prompt: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    """The chat messages sent to the judge model."""
    shape = ", ".join(
        f'"{c}": {{"A": <0-{rubric.scale_max:g}>, "B": <0-{rubric.scale_max:g}>}}' for c in rubric.criteria
    )
    system = (
        "You compare two answers to the same prompt. Score each answer on every criterion from 0 to "
        f"{rubric.scale_max:g} and name the better answer, or a tie. Judge only the content; the order of "
        "the answers means nothing. Reply with one JSON object and nothing else: "
        f'{{{shape}, "winner": "A" | "B" | "tie", "reasoning": "<one or two sentences>"}}'
    )
    user = f"Prompt:\n{prompt}\n\nAnswer A:\n{answer_a}\n\nAnswer B:\n{answer_b}\n"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _score(value: Any, where: str, rubric: Rubric) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedVerdict(f"{where} is not a number")
    number = float(value)
    if not math.isfinite(number) or not 0.0 <= number <= rubric.scale_max:
        raise MalformedVerdict(f"{where} is outside 0..{rubric.scale_max:g}")
    return number


def _reject_constant(name: str) -> None:
    raise MalformedVerdict(f"{name} is not a number a verdict may hold")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise MalformedVerdict("a key appears twice")
    return dict(pairs)


def parse_verdict(text: str, rubric: Rubric) -> Verdict:
    """The verdict in a judge's answer, or MalformedVerdict."""
    if len(text) > MAX_ANSWER_CHARS:
        raise MalformedVerdict(f"the answer is longer than {MAX_ANSWER_CHARS} characters")
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group("body").strip()
    try:
        answer = json.loads(body, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as error:
        raise MalformedVerdict(f"not JSON ({error.msg})") from None
    if not isinstance(answer, dict):
        raise MalformedVerdict("not a JSON object")
    unknown = set(answer) - {*rubric.criteria, "winner", "reasoning"}
    if unknown:
        raise MalformedVerdict(f"unknown keys {sorted(unknown)}")
    scores_a, scores_b = {}, {}
    for criterion in rubric.criteria:
        scored = answer.get(criterion)
        if not isinstance(scored, dict) or set(scored) != {"A", "B"}:
            raise MalformedVerdict(f"{criterion} must hold exactly A and B")
        scores_a[criterion] = _score(scored["A"], f"{criterion}.A", rubric)
        scores_b[criterion] = _score(scored["B"], f"{criterion}.B", rubric)
    winner = answer.get("winner")
    if winner not in WINNERS:
        raise MalformedVerdict('winner must be "A", "B" or "tie"')
    reasoning = answer.get("reasoning", "")
    if not isinstance(reasoning, str):
        raise MalformedVerdict("reasoning is not a string")
    return Verdict(scores_a, scores_b, str(winner), reasoning[:MAX_REASONING_CHARS])
