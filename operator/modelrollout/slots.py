"""How many rollouts reconcile at once: a bounded number of slots, urgent work served first.

Why a bound: when every rollout wakes together (the operator's start, a re-list after the API server was
away), each reconciliation holds its body, parsed spec, status model and answers while it waits for the API
server and Prometheus, and unbounded, all of them are held at once. Python's allocator keeps most of such a
peak for good (an arena is given back only when nothing in it is alive), so the settled memory follows it.
Measured at 1,000 new rollouts, 60 s after every one was checked: 245 MB unbounded, 201 MB with 32 slots
(176 -> 137 allocator arenas); most of the rest of the start's peak was kopf's own (see
`handlers.configure`). The default, 128, is above what a steady fleet needs at once (5,000 rollouts checked
every 30 s at ~0.2 s a reconciliation: ~35) so that it binds during bursts only, and a slow Prometheus still
shows as deferred checks (AnalysisDelayed) rather than as rollouts silently waiting here. A reconciliation
that cannot start yet holds nothing; `modelrollout_reconcile_slots_waiting` says how many wait.

Urgent work goes first: a rollout woken by an alert, an action, a spec edit or a change to its VirtualService
takes the next free slot ahead of rollouts whose timer came round. Waiting for a slot happens before the
reconciliation starts, so it is never counted against Prometheus or the API server (no deadline runs yet).

Our own rather than `asyncio.Semaphore`: the semaphore has one queue; priority needs two. Pure asyncio, used
on the event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator


class ReconcileSlots:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"at least one reconciliation slot is needed, got {limit}")
        self.limit = limit
        self._free = limit
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._routine: deque[asyncio.Future[None]] = deque()

    @property
    def busy(self) -> int:
        return self.limit - self._free

    @property
    def waiting(self) -> int:
        return len(self._urgent) + len(self._routine)

    @contextlib.asynccontextmanager
    async def slot(self, *, urgent: bool) -> AsyncIterator[None]:
        await self._acquire(urgent)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, urgent: bool) -> None:
        if self._free > 0:  # a free slot means no one waits: a release hands its slot to a waiter first
            self._free -= 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._urgent if urgent else self._routine
        queue.append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                # Granted in the same loop iteration as the cancellation: the slot is ours, hand it on.
                self._release()
            else:
                queue.remove(granted)  # the queues hold live waiters only
            raise

    def _release(self) -> None:
        # A granted waiter leaves its queue here: every future in a queue is still waiting.
        for queue in (self._urgent, self._routine):
            if queue:
                queue.popleft().set_result(None)
                return
        self._free += 1
