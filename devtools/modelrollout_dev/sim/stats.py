"""Request counts of the simulator, since it started and since the last reset: what a test compares with the
VirtualService weights (Prometheus sees the same traffic, but only at its scrape resolution)."""

from __future__ import annotations

import threading
import time
from collections import Counter
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

    def add(self, destination: str | None, status: int, route: str | None, mirrors: tuple[str, ...]) -> None:
        self.requests += 1
        self.statuses[str(status)] += 1
        if destination is not None:
            self.destinations[destination] += 1
        if route is not None:
            self.routes[route] += 1
        for mirror in mirrors:
            self.mirrored[mirror] += 1

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "seconds": round(now - self.started, 3),
            "requests": self.requests,
            "destinations": dict(sorted(self.destinations.items())),
            "statuses": dict(sorted(self.statuses.items())),
            "routes": dict(sorted(self.routes.items())),
            "mirrored": dict(sorted(self.mirrored.items())),
        }


class Stats:
    """Counts by destination (`namespace/service[/subset][:port]`), final status, route (`ns/vs#route`) and
    mirror destination. Requests the mesh answered itself count under their status, with no destination."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since_start = _Window()
        self._since_reset = _Window()

    def count(
        self, destination: str | None, status: int, route: str | None, mirrors: tuple[str, ...] = ()
    ) -> None:
        with self._lock:
            self._since_start.add(destination, status, route, mirrors)
            self._since_reset.add(destination, status, route, mirrors)

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
