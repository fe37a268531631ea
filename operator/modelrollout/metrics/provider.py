"""What the analysis needs from a metrics backend: one instant query, answered as samples or MetricsError."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Sample:
    """One series of an instant query's answer. `value` may be NaN or +/-Inf, exactly as Prometheus says.
    Slots: a fleet's grouped answers keep a sample per target for their age (5,000 rollouts: tens of
    thousands), each half the size it is with an instance dict."""

    labels: Mapping[str, str]
    value: float


# The labels of every row of a grouped answer that carries only the group labels: one shared, read-only
# mapping rather than an empty dict per row (a fleet's answer has thousands of rows).
NO_LABELS: Mapping[str, str] = MappingProxyType({})

RowKey = tuple[str, ...]


class Rows(Mapping[RowKey, list[Sample]]):
    """A grouped query's answer split per target: each target's rows under the values of the group labels it
    carries, without those labels.

    Kept light for the cyclic garbage collector. An answer serves every check for its age, so it lives long
    enough to reach the oldest generation, which every full collection walks while the event loop waits.
    Measured at 5,000 rollouts (the scale benchmark, a probe counting what full collections walked): ~100,000
    objects, each collection 150-280 ms; 30,000 of them Samples and 37,000 lists, of which the answers' rows
    (a list and a Sample each) were about 20,000 apiece (the Samples left, 10,000, once rows were held as
    below). So the usual row, one sample carrying only the group labels, is held as its bare value: a float
    under a tuple of strings, neither of which the collector tracks. Its Sample is made when asked for (and
    dies young); any other row is kept as its list of samples."""

    __slots__ = ("_bare", "_rows")

    def __init__(self) -> None:
        self._bare: dict[RowKey, float] = {}
        self._rows: dict[RowKey, list[Sample]] = {}

    def add(self, key: RowKey, labels: Mapping[str, str], value: float) -> None:
        """One more sample of the target `key`, after those added before."""
        rows = self._rows.get(key)
        if rows is None:
            if not labels and key not in self._bare:
                self._bare[key] = value
                return
            rows = self._rows[key] = [Sample(NO_LABELS, self._bare.pop(key))] if key in self._bare else []
        rows.append(Sample(labels or NO_LABELS, value))

    def __getitem__(self, key: RowKey) -> list[Sample]:
        value = self._bare.get(key)
        if value is not None:
            return [Sample(NO_LABELS, value)]
        return self._rows[key]

    def __iter__(self) -> Iterator[RowKey]:
        yield from self._bare
        yield from self._rows

    def __len__(self) -> int:
        return len(self._bare) + len(self._rows)

    def __repr__(self) -> str:
        return f"Rows({dict(self.items())!r})"


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
