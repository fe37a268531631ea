"""The fleet's budget of status refreshes: a token bucket asked without waiting, spent only on a write."""

from __future__ import annotations

from modelrollout.refresh_budget import RefreshBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def spend_all(budget: RefreshBudget) -> int:
    spent = 0
    while budget.affordable():
        budget.spend()
        spent += 1
    return spent


def test_a_burst_then_the_rate() -> None:
    clock = Clock()
    budget = RefreshBudget(2.0, clock=clock)
    assert spend_all(budget) == 20  # ten seconds' worth after a quiet spell
    clock.now += 0.4
    assert not budget.affordable()
    clock.now += 0.1
    assert spend_all(budget) == 1
    clock.now += 10.0
    assert spend_all(budget) == 20  # never more than the burst, however long the quiet spell
    clock.now += 3600.0
    assert spend_all(budget) == 20


def test_asking_spends_nothing() -> None:
    clock = Clock()
    budget = RefreshBudget(1.0, burst=1.0, clock=clock)
    for _ in range(5):
        assert budget.affordable()
    budget.spend()
    assert not budget.affordable()


def test_writes_let_through_together_are_paid_for_afterwards() -> None:
    clock = Clock()
    budget = RefreshBudget(1.0, burst=1.0, clock=clock)
    assert budget.affordable()
    for _ in range(3):  # three ticks were told "affordable" before any of them wrote
        budget.spend()
    clock.now += 2.9
    assert not budget.affordable()  # 1 - 3 + 2.9 < 1
    clock.now += 0.1
    assert budget.affordable()


def test_a_small_rate_still_affords_one_write() -> None:
    clock = Clock()
    budget = RefreshBudget(0.01, clock=clock)
    assert spend_all(budget) == 1
    clock.now += 99.0
    assert not budget.affordable()
    clock.now += 1.0
    assert budget.affordable()


def test_no_rate_no_limit() -> None:
    budget = RefreshBudget(None, clock=Clock())
    for _ in range(1000):
        assert budget.affordable()
        budget.spend()


def test_a_refund_gives_back_what_was_not_written_and_never_more_than_the_burst() -> None:
    clock = Clock()
    budget = RefreshBudget(1.0, burst=1.0, clock=clock)
    budget.spend()
    assert not budget.affordable()
    budget.refund()  # the write did not happen
    assert budget.affordable()
    budget.refund()
    assert spend_all(budget) == 1
