"""The fake models' pure parts: answers carry their quality, and the fake judge grades by it with noise and a
position bias (so a judging pipeline has to balance the order to be fair)."""

from __future__ import annotations

import random

import pytest

from modelrollout_dev.sim.openai_server import CRITERIA, FakeModel, answer_text, judge_verdict, qualities


def draws(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311  (repeatable test data, not secrets)


def pairwise(first: float, second: float) -> str:
    return (
        "Compare the two answers.\n"
        f"Answer A:\n{answer_text('a', first, 'why is the sky blue?')}\n"
        f"Answer B:\n{answer_text('b', second, 'why is the sky blue?')}\n"
    )


def test_an_answer_is_the_same_for_the_same_model_and_prompt_and_carries_its_quality() -> None:
    one = answer_text("claude", 0.8, "hello")
    assert one == answer_text("claude", 0.8, "hello")
    assert one != answer_text("claude", 0.8, "goodbye")
    assert one != answer_text("gpt", 0.8, "hello")
    assert qualities(one) == [0.8]


def test_a_noiseless_judge_scores_ten_times_the_quality_and_names_the_better() -> None:
    verdict = judge_verdict(pairwise(0.9, 0.4), FakeModel(judge=True, noise=0.0), draws(1))
    assert {c: verdict[c] for c in CRITERIA} == {c: {"A": 9.0, "B": 4.0} for c in CRITERIA}
    assert verdict["winner"] == "A"
    assert judge_verdict(pairwise(0.4, 0.9), FakeModel(judge=True, noise=0.0), draws(1))["winner"] == "B"
    assert judge_verdict(pairwise(0.7, 0.7), FakeModel(judge=True, noise=0.0), draws(1))["winner"] == "tie"


def test_position_bias_favours_the_first_answer_until_the_order_is_balanced() -> None:
    judge = FakeModel(judge=True, noise=1.0, position_bias=1.0)
    rng = draws(7)
    first_wins = sum(judge_verdict(pairwise(0.7, 0.7), judge, rng)["winner"] == "A" for _ in range(2000))
    second_wins = sum(judge_verdict(pairwise(0.7, 0.7), judge, rng)["winner"] == "B" for _ in range(2000))
    # Equal answers: the one shown first wins far more often than the one shown second ...
    assert first_wins > 3 * second_wins
    # ... and a pipeline that shows each variant first half the time sees no difference between them.
    canary_wins = stable_wins = 0
    for turn in range(4000):
        canary_first = turn % 2 == 0
        winner = judge_verdict(pairwise(0.7, 0.7), judge, rng)["winner"]
        if winner != "tie":
            canary_wins += (winner == "A") == canary_first
            stable_wins += (winner == "A") != canary_first
    assert abs(canary_wins - stable_wins) < 0.1 * (canary_wins + stable_wins)


def test_a_judge_needs_two_graded_answers() -> None:
    with pytest.raises(ValueError, match="two graded answers"):
        judge_verdict("just one [q=0.5]", FakeModel(judge=True), draws(0))


@pytest.mark.parametrize("field", ["quality", "garbage_rate", "error_rate"])
def test_rates_are_shares(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        FakeModel(**{field: 1.5})
