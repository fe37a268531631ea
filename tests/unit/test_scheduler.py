"""The turns at Prometheus' worker threads: first come, first served by check, a cap per rollout, deferral
when no turn comes in time (with the place in line kept), and no turn ever lost to a cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from modelrollout.metrics.scheduler import Deferred, FairScheduler, SchedulerStats


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(test())


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


class Recorder:
    """Tasks that take a turn, note when they got it, and hold it until told to finish."""

    def __init__(self, scheduler: FairScheduler) -> None:
        self.scheduler = scheduler
        self.granted: list[str] = []
        self.done: dict[str, asyncio.Event] = {}

    def ask(self, owner: str, label: str, not_after: float | None = None) -> asyncio.Task[None]:
        self.done[label] = asyncio.Event()

        async def work() -> None:
            await self.scheduler.acquire(owner, not_after)
            self.granted.append(label)
            try:
                await self.done[label].wait()
            finally:
                self.scheduler.release(owner)

        return asyncio.ensure_future(work())

    async def finish(self, *labels: str) -> None:
        for label in labels:
            self.done[label].set()
        await settle()


def test_checks_are_served_in_the_order_they_came_and_each_completes() -> None:
    """Two threads, three rollouts of two queries each: a's check gets both turns, then b's, then c's, so a
    check finishes instead of every check advancing a little."""

    async def scenario() -> None:
        rec = Recorder(FairScheduler(slots=2, per_owner=4))
        for owner in "abc":
            rec.ask(owner, f"{owner}1")
            rec.ask(owner, f"{owner}2")
        await settle()
        assert rec.granted == ["a1", "a2"]
        await rec.finish("a1")
        assert rec.granted == ["a1", "a2", "b1"]
        await rec.finish("a2", "b1")
        assert rec.granted == ["a1", "a2", "b1", "b2", "c1"]
        await rec.finish("b2", "c1", "c2")
        assert rec.granted == ["a1", "a2", "b1", "b2", "c1", "c2"]

    run(scenario)


def test_no_rollout_holds_more_than_its_share() -> None:
    """One rollout with many queries takes at most per_owner threads; the others serve the next rollout."""

    async def scenario() -> None:
        scheduler = FairScheduler(slots=4, per_owner=2)
        rec = Recorder(scheduler)
        for i in range(6):
            rec.ask("greedy", f"g{i}")
        rec.ask("small", "s0")
        await settle()
        assert rec.granted == ["g0", "g1", "s0"]
        assert scheduler.stats().free == 1  # idle rather than a third turn for `greedy`
        await rec.finish("g0")
        assert rec.granted[-1] == "g2"

    run(scenario)


def test_a_turn_that_does_not_come_in_time_is_deferred_and_the_place_is_kept() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        scheduler = FairScheduler(slots=1, per_owner=1)
        rec = Recorder(scheduler)
        rec.ask("a", "a1")
        await settle()
        late = rec.ask("b", "b1", not_after=loop.time() + 0.05)
        rec.ask("c", "c1")  # asked after b, without a deadline
        with pytest.raises(Deferred):
            await late
        assert scheduler.stats().waiting == 1  # b's request is gone, c's waits
        # b comes back (its next tick) after c asked: it is still ahead of c.
        rec.ask("b", "b2")
        await rec.finish("a1")
        assert rec.granted == ["a1", "b2"]
        await rec.finish("b2", "c1")
        assert rec.granted == ["a1", "b2", "c1"]
        assert scheduler.stats() == SchedulerStats(free=1, running=0, waiting=0, owners=0)

    run(scenario)


def test_a_kept_place_lapses() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        scheduler = FairScheduler(slots=1, per_owner=1, keep_place=0.01)
        rec = Recorder(scheduler)
        rec.ask("a", "a1")
        await settle()
        with pytest.raises(Deferred):
            await rec.ask("b", "b1", not_after=loop.time() + 0.01)
        rec.ask("c", "c1")
        await asyncio.sleep(0.05)
        rec.ask("b", "b2")  # too late to keep its place: behind c
        await rec.finish("a1")
        assert rec.granted == ["a1", "c1"]
        await rec.finish("c1", "b2")
        scheduler.sweep()
        assert scheduler.stats().owners == 0

    run(scenario)


def test_cancelled_waiters_give_up_their_place_and_lose_no_turn() -> None:
    async def scenario() -> None:
        scheduler = FairScheduler(slots=1, per_owner=1)
        rec = Recorder(scheduler)
        rec.ask("a", "a1")
        await settle()
        waiting = rec.ask("b", "b1")
        rec.ask("c", "c1")
        await settle()
        waiting.cancel()
        await settle()
        await rec.finish("a1")
        assert rec.granted == ["a1", "c1"]
        await rec.finish("c1")
        assert scheduler.stats().free == 1

    run(scenario)


def test_a_turn_granted_to_a_caller_that_gave_up_is_handed_on() -> None:
    """The turn is set the moment a thread frees, the caller may be cancelled before it runs again: the turn
    goes back, it does not leak."""

    async def scenario() -> None:
        scheduler = FairScheduler(slots=1, per_owner=1)
        await scheduler.acquire("a", None)
        waiter = asyncio.ensure_future(scheduler.acquire("b", None))
        await settle()
        scheduler.release("a")  # b's turn is granted now...
        waiter.cancel()  # ... and b gives up before it could use it
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert scheduler.stats().free == 1
        await asyncio.wait_for(scheduler.acquire("c", None), 1)

    run(scenario)


def test_bounds() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        FairScheduler(slots=0, per_owner=1)
    with pytest.raises(ValueError, match="at least 1"):
        FairScheduler(slots=1, per_owner=0)
