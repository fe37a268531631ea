"""Turns at the Prometheus worker threads, fair between rollouts. Pure asyncio: no I/O, no threads.

`slots` turns exist (one per worker thread). A turn is asked for by an owner (a rollout) and held until the
query it runs has really finished. Owners are served first come, first served by the moment their current
check asked for its first turn, so under load every rollout gets its check through in turn instead of all
checks advancing a little and none finishing; within an owner, requests are served in order; and no owner
holds more than `per_owner` turns at once, so one rollout with many gates or a slow query cannot take every
thread.

A request that could not get a turn by its `not_after` (loop time) raises Deferred: the wait was the
operator's own, not the metrics backend's. The owner keeps its place in line for its next request (within
`keep_place` seconds), so a deferred check is served first the next time rather than sent to the back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field


class Deferred(Exception):
    """No turn came before the deadline."""


@dataclass
class _Owner:
    place: int
    waiting: deque[asyncio.Future[None]] = field(default_factory=deque)
    running: int = 0
    keep_until: float | None = None  # a deferred owner's place is kept until then


@dataclass(frozen=True)
class SchedulerStats:
    free: int
    running: int
    waiting: int
    owners: int


class FairScheduler:
    def __init__(self, slots: int, per_owner: int, *, keep_place: float = 60.0) -> None:
        if slots < 1 or per_owner < 1:
            raise ValueError(f"slots and per_owner must be at least 1, got {slots} and {per_owner}")
        self.slots = slots
        self.per_owner = per_owner
        self.keep_place = keep_place
        self._free = slots
        self._owners: dict[Hashable, _Owner] = {}
        self._places = itertools.count()
        self._next_sweep = 0.0

    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            free=self._free,
            running=sum(o.running for o in self._owners.values()),
            waiting=sum(len(o.waiting) for o in self._owners.values()),
            owners=len(self._owners),
        )

    async def acquire(self, owner: Hashable, not_after: float | None = None) -> None:
        """Wait for a turn; the caller must `release(owner)` once the work it started has finished."""
        loop = asyncio.get_running_loop()
        state = self._owners.get(owner)
        if state is None:
            state = self._owners[owner] = _Owner(place=next(self._places))
        elif state.keep_until is not None and state.keep_until < loop.time():
            state.place = next(self._places)  # its kept place lapsed: back of the line
        state.keep_until = None
        turn: asyncio.Future[None] = loop.create_future()
        state.waiting.append(turn)
        self._dispatch()
        timer = None
        if not turn.done() and not_after is not None:
            timer = loop.call_at(not_after, self._expire, owner, turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self.release(owner)  # granted just as the caller gave up: hand the turn on
            else:
                self._withdraw(owner, turn)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def release(self, owner: Hashable) -> None:
        state = self._owners[owner]
        state.running -= 1
        self._free += 1
        self._forget_if_idle(owner, state)
        self._dispatch()

    def _dispatch(self) -> None:
        while self._free > 0:
            ready = [
                (state.place, owner)
                for owner, state in self._owners.items()
                if state.waiting and state.running < self.per_owner
            ]
            if not ready:
                return
            _, owner = min(ready, key=lambda item: item[0])
            state = self._owners[owner]
            turn = state.waiting.popleft()
            if turn.done():  # cancelled or expired meanwhile
                continue
            turn.set_result(None)
            state.running += 1
            self._free -= 1

    def _expire(self, owner: Hashable, turn: asyncio.Future[None]) -> None:
        if turn.done():
            return
        state = self._owners.get(owner)
        turn.set_exception(Deferred())
        if state is not None:
            state.keep_until = asyncio.get_running_loop().time() + self.keep_place
            self._withdraw(owner, turn)

    def _withdraw(self, owner: Hashable, turn: asyncio.Future[None]) -> None:
        state = self._owners.get(owner)
        if state is None:
            return
        with contextlib.suppress(ValueError):  # already handed out or withdrawn
            state.waiting.remove(turn)
        self._forget_if_idle(owner, state)

    def _forget_if_idle(self, owner: Hashable, state: _Owner) -> None:
        if not state.waiting and state.running == 0 and state.keep_until is None:
            del self._owners[owner]

    def sweep(self) -> None:
        """Forget the kept places that have lapsed (owners that never came back, e.g. deleted rollouts).
        Asked before every check, it looks at the owners at most once per `keep_place`: no kept place lapses
        sooner, and a pass over thousands of owners is not repeated for each of them."""
        now = asyncio.get_running_loop().time()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.keep_place
        for owner, state in list(self._owners.items()):
            lapsed = state.keep_until is not None and state.keep_until < now
            if lapsed and not state.waiting and not state.running:
                del self._owners[owner]
