"""The judge's call budget: at most `limit` calls in any hour, counted over a sliding window (pure)."""

from __future__ import annotations

from collections import deque

HOUR = 3600.0


class HourlyBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._spent: deque[float] = deque()

    def take(self, now: float) -> bool:
        """Spend one call at `now` (seconds) if the last hour leaves room; False when it does not."""
        while self._spent and self._spent[0] <= now - HOUR:
            self._spent.popleft()
        if len(self._spent) >= self.limit:
            return False
        self._spent.append(now)
        return True
