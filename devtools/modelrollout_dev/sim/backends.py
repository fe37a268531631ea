"""Fake LLM backends: one per Service (host and namespace), each answering with a configured error rate, a
log-normal latency and token counts, and with the LLM behaviour a vLLM engine reports (the model's name, time
to first token, inter-token latency, truncation), all of which can change while traffic flows.

Latency is log-normal because model latency is: most requests near the median, a long right tail. The
distribution is fitted to the two numbers an SRE states, the median and the p99: median = e^mu and
p99 = e^(mu + z99 * sigma). Latency is only drawn and reported, never slept: a 30 s completion costs the
simulator nothing.

An error costs the same time as a success (a timeout or an overloaded model is not fast) and produces no
output tokens; its input tokens were still sent. To vLLM it is a request the engine took in and aborted:
finished_reason "abort", no first token.

The LLM settings are independent of the end-to-end latency, on purpose: a test can move the time to first
token (fitted like the latency, to `ttft_median_ms` and `ttft_p99_ms`) or the inter-token latency (`itl_ms`,
every gap of every request) without touching the latency the Istio gates read, and nothing enforces
ttft + itl * (tokens - 1) <= latency. A share `truncation_rate` of the successful requests ends because they
hit their token limit (finished_reason "length", otherwise "stop"); their token count is drawn like any other.
`tokens_out_jitter` spreads a success's output tokens uniformly over tokens_out * (1 +- jitter), rounded; at
0 (the default) every success produces exactly `tokens_out`.

The draws of one request, in order, from the generator the caller passes: the latency; whether it fails (only
if error_rate > 0); for a success, the time to first token, whether it is truncated (only if
truncation_rate > 0) and its output tokens (only if tokens_out_jitter > 0). The same generator state gives the
same answer.
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import asdict, dataclass, replace
from statistics import NormalDist
from typing import Any

_Z99 = NormalDist().inv_cdf(0.99)
MAX_MODEL_NAME = 253  # a DNS name's length: model names are often host or repository names

# vLLM's finished_reason values of a request (its FinishReason): stopped by itself, at its token limit, or
# aborted (here: every error).
STOP, LENGTH, ABORT = "stop", "length", "abort"


@dataclass(frozen=True)
class BackendSettings:
    error_rate: float = 0.0
    latency_median_ms: float = 200.0
    latency_p99_ms: float = 800.0
    tokens_in: int = 400
    tokens_out: int = 200
    error_code: int = 503
    model_name: str = ""  # vLLM's model_name label; "" is the Service's host name (resolved where recorded)
    ttft_median_ms: float = 150.0
    ttft_p99_ms: float = 600.0
    itl_ms: float = 20.0
    truncation_rate: float = 0.0
    tokens_out_jitter: float = 0.0

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
        if not isinstance(self.model_name, str) or len(self.model_name) > MAX_MODEL_NAME:
            problems.append(
                f"model_name must be a string of at most {MAX_MODEL_NAME} characters, got {self.model_name!r}"
            )
        if not (math.isfinite(self.ttft_median_ms) and self.ttft_median_ms > 0):
            problems.append(f"ttft_median_ms must be > 0 and finite, got {self.ttft_median_ms}")
        if not (math.isfinite(self.ttft_p99_ms) and self.ttft_p99_ms >= self.ttft_median_ms):
            problems.append(
                f"ttft_p99_ms ({self.ttft_p99_ms}) must be finite and >= ttft_median_ms "
                f"({self.ttft_median_ms})"
            )
        if not (math.isfinite(self.itl_ms) and self.itl_ms >= 0):
            problems.append(f"itl_ms must be >= 0 and finite, got {self.itl_ms}")
        if not 0.0 <= self.truncation_rate <= 1.0:
            problems.append(f"truncation_rate must be in [0, 1], got {self.truncation_rate}")
        if not 0.0 <= self.tokens_out_jitter <= 1.0:
            problems.append(f"tokens_out_jitter must be in [0, 1], got {self.tokens_out_jitter}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def mu(self) -> float:
        return math.log(self.latency_median_ms)

    @property
    def sigma(self) -> float:
        return math.log(self.latency_p99_ms / self.latency_median_ms) / _Z99

    @property
    def ttft_mu(self) -> float:
        return math.log(self.ttft_median_ms)

    @property
    def ttft_sigma(self) -> float:
        return math.log(self.ttft_p99_ms / self.ttft_median_ms) / _Z99

    def changed(self, changes: dict[str, Any]) -> BackendSettings:
        """A copy with `changes` applied; unknown names and bad values are a ValueError naming them.

        Numbers for the numeric settings (never strings or booleans), a non-empty string for `model_name`, or
        None for it to go back to the Service's host name."""
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown backend setting(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
        typed: dict[str, Any] = {}
        for name, value in changes.items():
            kind = FIELDS[name]
            if kind is str:
                if value is None:
                    typed[name] = ""
                    continue
                if not isinstance(value, str) or not value:
                    raise ValueError(
                        f"{name} must be a non-empty string (or null for the default), got {value!r}"
                    )
                typed[name] = value
                continue
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
    "model_name": str,
    "ttft_median_ms": float,
    "ttft_p99_ms": float,
    "itl_ms": float,
    "truncation_rate": float,
    "tokens_out_jitter": float,
}


@dataclass(frozen=True)
class Served:
    """A backend's answer to one request, with what its metrics need. `ttft_ms` is None when no token came
    (an error, or a success with 0 output tokens); `model_name` is the setting, "" for the host's name;
    `itl_ms` is the gap between each two of its output tokens."""

    status: int
    latency_ms: float
    tokens_in: int
    tokens_out: int
    ttft_ms: float | None
    finished_reason: str
    model_name: str = ""
    itl_ms: float = 0.0


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

    def serve(self, rng: random.Random) -> Served:
        """One request's answer, drawn from `rng` (the order of the draws is in the module's docstring)."""
        settings = self.settings
        latency = rng.lognormvariate(settings.mu, settings.sigma)
        if settings.error_rate > 0.0 and rng.random() < settings.error_rate:
            return Served(
                settings.error_code,
                latency,
                settings.tokens_in,
                0,
                None,
                ABORT,
                settings.model_name,
                settings.itl_ms,
            )
        ttft = rng.lognormvariate(settings.ttft_mu, settings.ttft_sigma)
        truncated = settings.truncation_rate > 0.0 and rng.random() < settings.truncation_rate
        tokens_out = settings.tokens_out
        if settings.tokens_out_jitter > 0.0:
            spread = settings.tokens_out_jitter * rng.uniform(-1.0, 1.0)
            tokens_out = max(0, round(settings.tokens_out * (1.0 + spread)))
        return Served(
            200,
            latency,
            settings.tokens_in,
            tokens_out,
            ttft if tokens_out else None,
            LENGTH if truncated else STOP,
            settings.model_name,
            settings.itl_ms,
        )


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

    def serve(self, host: str, namespace: str, rng: random.Random) -> Served:
        return self.get(host, namespace).serve(rng)

    def snapshot(self) -> dict[str, BackendSettings]:
        """Settings by `namespace/host`."""
        with self._lock:
            backends = dict(self._backends)
        described = {
            f"{namespace}/{host}": backend.settings for (host, namespace), backend in backends.items()
        }
        return dict(sorted(described.items()))
