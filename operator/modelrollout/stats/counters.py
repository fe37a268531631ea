"""Reset-aware accumulation of Prometheus counters between looks of a sequential test. Pure.

A sequential test needs counts since its run started, but the operator sees raw counter values, one per series
(one pod, one response code, ...), at each look. Pods restart and their counters count again from 0, pods come
and go. `accumulate` turns two successive observations into the count of the span between them, per series:

- a series seen both times: cur - prev if cur >= prev; if cur < prev the counter was reset (the process
  restarted and counted from 0), so everything it shows, cur, is new. (Increments between the last look and
  the restart are lost, as in PromQL's increase(); they are undercounted, never double counted.)
- a series new since a previous observation: it started within the span, so its whole value counts;
- the first observation (previous is None) is the baseline: nothing counts yet, every series is remembered;
- a series that is gone is forgotten (if it comes back it is new: its whole value counts then).

NaN, infinite and negative values are no counter readings (a broken exporter or a rate() where a counter was
meant): they are ignored, not counted. Such a series keeps its last good reading, so one bad sample is as if
that look had missed the series, and its next good reading is compared against the last good one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def fingerprint(labels: Mapping[str, str]) -> str:
    """A stable key for a series: its labels as sorted `name="value"` pairs joined by commas, the values
    escaped as in Prometheus' text format (backslash, double quote, newline), so distinct label sets never
    share a key whatever their values contain."""

    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return ",".join(f'{name}="{escape(value)}"' for name, value in sorted(labels.items()))


def _reading(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) and value >= 0 else None


def accumulate(
    previous: Mapping[str, float] | None, current: Mapping[str, float]
) -> tuple[float, dict[str, float]]:
    """The sum over series of the counts between the `previous` observation and `current` (both keyed by
    `fingerprint`), and the new last-seen map to pass as `previous` next time. See the module docstring."""
    seen: dict[str, float] = {}
    total = 0.0
    for key, raw in current.items():
        value = _reading(raw)
        before = None if previous is None else previous.get(key)
        if value is None:
            if before is not None:
                seen[key] = before
            continue
        seen[key] = value
        if previous is None:
            continue
        if before is None or value < before:
            total += value  # new within the span, or reset: all it counted is new
        else:
            total += value - before
    return total, seen
