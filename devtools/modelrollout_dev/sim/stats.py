"""Request counts of the simulator, since it started and since the last reset: what a test compares with the
VirtualService weights (Prometheus sees the same traffic, but only at its scrape resolution).

Per user (the user id a request carried), the answers each destination gave: what a test of sticky
assignment reads, e.g. that a user pinned by a header route was only ever answered by one destination. Only
the answering destination counts (a mirror copy's answer is discarded), and only requests that reached one
(the mesh's own 404/503 answer nobody's question about a destination). There can be thousands of users, so
they are read apart from the other counts (`users`).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Window:
    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    destinations: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    routes: Counter[str] = field(default_factory=Counter)
    mirrored: Counter[str] = field(default_factory=Counter)
    users: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def add(
        self,
        destination: str | None,
        status: int,
        route: str | None,
        mirrors: tuple[str, ...],
        user: str | None,
    ) -> None:
        self.requests += 1
        self.statuses[str(status)] += 1
        if destination is not None:
            self.destinations[destination] += 1
        if route is not None:
            self.routes[route] += 1
        for mirror in mirrors:
            self.mirrored[mirror] += 1
        if destination is not None and user is not None:
            self.users[user][destination] += 1

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "seconds": round(now - self.started, 3),
            "requests": self.requests,
            "destinations": dict(sorted(self.destinations.items())),
            "statuses": dict(sorted(self.statuses.items())),
            "routes": dict(sorted(self.routes.items())),
            "mirrored": dict(sorted(self.mirrored.items())),
        }

    def users_dict(self) -> dict[str, dict[str, int]]:
        return {user: dict(sorted(answers.items())) for user, answers in sorted(self.users.items())}


class Stats:
    """Counts by destination (`namespace/service[/subset][:port]`), final status, route (`ns/vs#route`) and
    mirror destination. Requests the mesh answered itself count under their status, with no destination.
    Answers per user and destination are kept too, read with `users`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since_start = _Window()
        self._since_reset = _Window()

    def count(
        self,
        destination: str | None,
        status: int,
        route: str | None,
        mirrors: tuple[str, ...] = (),
        user: str | None = None,
    ) -> None:
        """One request: `destination` answered it (None: the mesh did), from `user` if it carried one."""
        with self._lock:
            self._since_start.add(destination, status, route, mirrors, user)
            self._since_reset.add(destination, status, route, mirrors, user)

    def reset(self) -> None:
        with self._lock:
            self._since_reset = _Window()

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            return {
                "since_start": self._since_start.as_dict(now),
                "since_reset": self._since_reset.as_dict(now),
            }

    def users(self) -> dict[str, dict[str, dict[str, int]]]:
        """Per window (`since_start`, `since_reset`): {user id: {destination: answers}}."""
        with self._lock:
            return {
                "since_start": self._since_start.users_dict(),
                "since_reset": self._since_reset.users_dict(),
            }
