"""The fleet's budget of status refreshes: writes that only bring a rollout's check numbers up to date.

A rollout whose checks change nothing essential writes them to status once per refresh period
(engine.quiet). Across a fleet that is rollouts / period writes per second (5,000 rollouts, 300 s: 17 writes
per second, each a wake-up for every watcher of the objects) while nothing a person or a GitOps tool acts on
changes. The budget caps that rate for the whole operator: a token bucket, `rate` writes per second with a
burst of `burst`. A refresh it cannot afford is not lost, it waits for a later check; what is essential is
written at once and never spends from it.

A bucket of our own (ten lines) rather than a rate-limiting library: the decision needs to ask "is there a
token now?" without waiting for one, and to give back a token spent on a write that did not happen; the
async limiters wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RefreshBudget:
    def __init__(
        self, rate: float | None, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """`rate` refresh writes per second for the whole operator (None: unbounded); `burst` (default ten
        seconds' worth, at least one) may go at once after a quiet spell."""
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else (rate or 0.0) * 10)
        self._clock = clock
        self._tokens = self.burst
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        if self.rate is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def affordable(self) -> bool:
        """Whether a refresh may be written now (it is spent only by `spend`)."""
        if self.rate is None:
            return True
        self._refill()
        return self._tokens >= 1.0

    def spend(self) -> None:
        """A refresh is being written: spent as it is decided, before the write's round trip, so that ticks
        deciding meanwhile see what is left (spent after the write, every tick deciding during it was told
        "affordable"). Ticks told it was affordable that spend anyway take the bucket below zero and the
        writes after them wait the longer, so the rate holds on average."""
        if self.rate is None:
            return
        self._refill()
        self._tokens -= 1.0

    def refund(self) -> None:
        """A refresh spent for was not written after all (nothing to write, or a conflict)."""
        if self.rate is None:
            return
        self._refill()
        self._tokens = min(self.burst, self._tokens + 1.0)
