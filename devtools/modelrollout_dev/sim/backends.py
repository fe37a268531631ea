"""Fake LLM backends: one per Service (host and namespace), each answering with a configured error rate, a
log-normal latency and fixed token counts, all of which can change while traffic flows.

Latency is log-normal because model latency is: most requests near the median, a long right tail. The
distribution is fitted to the two numbers an SRE states, the median and the p99: median = e^mu and
p99 = e^(mu + z99 * sigma). Latency is only drawn and reported, never slept: a 30 s completion costs the
simulator nothing.

An error costs the same time as a success (a timeout or an overloaded model is not fast) and produces no
output tokens; its input tokens were still sent.
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import asdict, dataclass, replace
from statistics import NormalDist
from typing import Any

_Z99 = NormalDist().inv_cdf(0.99)


@dataclass(frozen=True)
class BackendSettings:
    error_rate: float = 0.0
    latency_median_ms: float = 200.0
    latency_p99_ms: float = 800.0
    tokens_in: int = 400
    tokens_out: int = 200
    error_code: int = 503

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.error_rate <= 1.0:
            problems.append(f"error_rate must be in [0, 1], got {self.error_rate}")
        if not self.latency_median_ms > 0:
            problems.append(f"latency_median_ms must be > 0, got {self.latency_median_ms}")
        if not self.latency_p99_ms >= self.latency_median_ms:
            problems.append(
                f"latency_p99_ms ({self.latency_p99_ms}) must be >= latency_median_ms "
                f"({self.latency_median_ms})"
            )
        if self.tokens_in < 0 or self.tokens_out < 0:
            problems.append(f"token counts must be >= 0, got {self.tokens_in} in, {self.tokens_out} out")
        # 429 (rate limited) is a realistic failure too, but only 5xx count in the error-rate gate.
        if not 400 <= self.error_code <= 599:
            problems.append(f"error_code must be a 4xx or 5xx status, got {self.error_code}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def mu(self) -> float:
        return math.log(self.latency_median_ms)

    @property
    def sigma(self) -> float:
        return math.log(self.latency_p99_ms / self.latency_median_ms) / _Z99

    def changed(self, changes: dict[str, Any]) -> BackendSettings:
        """A copy with `changes` applied; unknown names and bad values are a ValueError naming them."""
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown backend setting(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
        typed: dict[str, Any] = {}
        for name, value in changes.items():
            kind = FIELDS[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if kind is int and value != int(value):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            typed[name] = kind(value)
        return replace(self, **typed)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FIELDS: dict[str, type] = {
    "error_rate": float,
    "latency_median_ms": float,
    "latency_p99_ms": float,
    "tokens_in": int,
    "tokens_out": int,
    "error_code": int,
}


class Backend:
    """One model service. Settings are an immutable value swapped under a lock, so a request always sees one
    consistent set (never a new median with an old p99)."""

    def __init__(self, settings: BackendSettings | None = None) -> None:
        self._lock = threading.Lock()
        self._settings = settings or BackendSettings()

    @property
    def settings(self) -> BackendSettings:
        with self._lock:
            return self._settings

    def update(self, **changes: Any) -> BackendSettings:
        with self._lock:
            self._settings = self._settings.changed(changes)
            return self._settings

    def serve(self, rng: random.Random) -> tuple[int, float, int, int]:
        """(status code, latency in ms, input tokens, output tokens) of one request."""
        settings = self.settings
        latency = rng.lognormvariate(settings.mu, settings.sigma)
        if settings.error_rate > 0.0 and rng.random() < settings.error_rate:
            return settings.error_code, latency, settings.tokens_in, 0
        return 200, latency, settings.tokens_in, settings.tokens_out


class Backends:
    """The backends by (host, namespace). A Service nobody configured is healthy with the default settings
    (200 ms median), created on first use so that later changes apply to it."""

    def __init__(self, default: BackendSettings | None = None) -> None:
        self._lock = threading.Lock()
        self._default = default or BackendSettings()
        self._backends: dict[tuple[str, str], Backend] = {}

    def get(self, host: str, namespace: str) -> Backend:
        with self._lock:
            backend = self._backends.get((host, namespace))
            if backend is None:
                backend = self._backends[(host, namespace)] = Backend(self._default)
            return backend

    def update(self, host: str, namespace: str, **changes: Any) -> BackendSettings:
        return self.get(host, namespace).update(**changes)

    def serve(self, host: str, namespace: str, rng: random.Random) -> tuple[int, float, int, int]:
        return self.get(host, namespace).serve(rng)

    def snapshot(self) -> dict[str, BackendSettings]:
        """Settings by `namespace/host`."""
        with self._lock:
            backends = dict(self._backends)
        described = {
            f"{namespace}/{host}": backend.settings for (host, namespace), backend in backends.items()
        }
        return dict(sorted(described.items()))
