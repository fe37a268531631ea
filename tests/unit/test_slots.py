"""Reconciliation slots: never more at once than the limit, urgent waiters first, a cancelled waiter neither
keeps nor loses a slot."""

from __future__ import annotations

import asyncio

import pytest

from modelrollout.slots import ReconcileSlots


async def _hold(slots: ReconcileSlots, name: str, urgent: bool, log: list[str], gate: asyncio.Event) -> None:
    async with slots.slot(urgent=urgent):
        log.append(name)
        await gate.wait()


def test_no_more_reconcile_at_once_than_the_limit() -> None:
    async def scenario() -> tuple[int, int]:
        slots = ReconcileSlots(3)
        running, most = 0, 0

        async def work() -> None:
            nonlocal running, most
            async with slots.slot(urgent=False):
                running += 1
                most = max(most, running)
                await asyncio.sleep(0.001)
                running -= 1

        await asyncio.gather(*(work() for _ in range(50)))
        return most, slots.busy

    most, busy_after = asyncio.run(scenario())
    assert most == 3
    assert busy_after == 0


def test_urgent_waiters_go_ahead_of_routine_ones_in_arrival_order_within_each() -> None:
    async def scenario() -> list[str]:
        slots = ReconcileSlots(1)
        log: list[str] = []
        gate = asyncio.Event()
        first = asyncio.create_task(_hold(slots, "first", False, log, gate))
        await asyncio.sleep(0)
        waiters = [
            asyncio.create_task(_hold(slots, name, urgent, log, gate))
            for name, urgent in [("timer-a", False), ("alert-a", True), ("timer-b", False), ("alert-b", True)]
        ]
        await asyncio.sleep(0)
        assert slots.waiting == 4
        gate.set()
        await asyncio.gather(first, *waiters)
        return log

    assert asyncio.run(scenario()) == ["first", "alert-a", "alert-b", "timer-a", "timer-b"]


def test_a_cancelled_waiter_passes_its_turn_and_the_slot_count_stays_true() -> None:
    async def scenario() -> tuple[list[str], int, int]:
        slots = ReconcileSlots(1)
        log: list[str] = []
        gate = asyncio.Event()
        first = asyncio.create_task(_hold(slots, "first", False, log, gate))
        await asyncio.sleep(0)
        gone = asyncio.create_task(_hold(slots, "gone", True, log, gate))
        after = asyncio.create_task(_hold(slots, "after", False, log, gate))
        await asyncio.sleep(0)
        gone.cancel()
        gate.set()
        await asyncio.gather(first, after)
        with pytest.raises(asyncio.CancelledError):
            await gone
        return log, slots.busy, slots.waiting

    assert asyncio.run(scenario()) == (["first", "after"], 0, 0)


def test_a_waiter_cancelled_as_its_slot_is_granted_hands_the_slot_on() -> None:
    async def scenario() -> tuple[list[str], int]:
        slots = ReconcileSlots(1)
        log: list[str] = []
        gate = asyncio.Event()
        holder = slots.slot(urgent=False)
        await holder.__aenter__()
        granted_then_cancelled = asyncio.create_task(_hold(slots, "never", False, log, gate))
        later = asyncio.create_task(_hold(slots, "later", False, log, gate))
        await asyncio.sleep(0)
        # The holder's release grants the slot to the first waiter, which is cancelled before it runs.
        await holder.__aexit__(None, None, None)
        granted_then_cancelled.cancel()
        gate.set()
        await later
        with pytest.raises(asyncio.CancelledError):
            await granted_then_cancelled
        return log, slots.busy

    assert asyncio.run(scenario()) == (["later"], 0)


def test_a_free_slot_is_taken_at_once_and_a_limit_below_one_is_refused() -> None:
    async def scenario() -> int:
        slots = ReconcileSlots(2)
        async with slots.slot(urgent=False):
            return slots.busy

    assert asyncio.run(scenario()) == 1
    with pytest.raises(ValueError, match="at least one"):
        ReconcileSlots(0)
