"""What the analysis needs from a metrics backend: one instant query, answered as samples or MetricsError."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Sample:
    """One series of an instant query's answer. `value` may be NaN or +/-Inf, exactly as Prometheus says.
    Slots: a fleet's grouped answers keep a sample per target for their age (5,000 rollouts: tens of
    thousands), each half the size it is with an instance dict."""

    labels: Mapping[str, str]
    value: float


# A grouped query's answer split per target: each target's rows under the values of the group labels it
# carries, without those labels.
Rows = dict[tuple[str, ...], list[Sample]]


class MetricsError(Exception):
    """A query that could not be answered. The message names the query and the reason, so a status message or
    an Event built from it tells the user which gate's PromQL failed and why."""

    def __init__(self, query: str, reason: str) -> None:
        super().__init__(f"query {query!r} failed: {reason}")
        self.query = query
        self.reason = reason

    def __reduce__(self) -> tuple[type[MetricsError], tuple[str, str]]:
        # The default pickling would call __init__ with the formatted message only.
        return (MetricsError, (self.query, self.reason))


def parse_sample_value(text: object) -> float:
    """Prometheus' sample value string ("1.5", "NaN", "+Inf", "-Inf") as a float; ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"sample value {text!r} is not a string")
    # float() also takes "infinity", "1_000" and surrounding spaces; Prometheus never sends those, so anything
    # beyond its own formats means the answer is not what we think it is.
    if text in ("NaN", "+Inf", "-Inf"):
        return float(text)
    if (
        not text
        or text.strip() != text
        or "_" in text
        or text.lower().lstrip("+-") in ("inf", "infinity", "nan")
    ):
        raise ValueError(f"sample value {text!r} is not a number")
    return float(text)


class MetricsProvider(Protocol):
    async def query(self, promql: str) -> list[Sample]:
        """The instant query `promql` evaluated now.

        A vector gives one Sample per series; a scalar gives one Sample with empty labels; an empty vector is
        an empty list (no data is an answer, not an error). Anything that prevents an answer raises
        MetricsError.
        """
        ...
