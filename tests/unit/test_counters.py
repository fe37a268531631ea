"""Reset-aware counter accumulation and series fingerprints: plain tables."""

from __future__ import annotations

import math

import pytest

from modelrollout.stats.counters import accumulate, fingerprint

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("previous", "current", "total", "seen"),
    [
        # The first observation is the baseline: nothing counts yet.
        (None, {"a": 10.0, "b": 5.0}, 0.0, {"a": 10.0, "b": 5.0}),
        (None, {}, 0.0, {}),
        # Plain increments, summed over series.
        ({"a": 10.0, "b": 5.0}, {"a": 14.0, "b": 6.5}, 5.5, {"a": 14.0, "b": 6.5}),
        ({"a": 10.0}, {"a": 10.0}, 0.0, {"a": 10.0}),
        # A reset: the process restarted and counted 3 since; the increments before it are lost.
        ({"a": 10.0, "b": 5.0}, {"a": 3.0, "b": 7.0}, 5.0, {"a": 3.0, "b": 7.0}),
        ({"a": 10.0}, {"a": 0.0}, 0.0, {"a": 0.0}),
        # A series new since the previous observation counts fully: it started within the span.
        ({"a": 10.0}, {"a": 12.0, "c": 4.0}, 6.0, {"a": 12.0, "c": 4.0}),
        ({}, {"c": 4.0}, 4.0, {"c": 4.0}),
        # A vanished series is dropped and counts nothing.
        ({"a": 10.0, "b": 5.0}, {"a": 11.0}, 1.0, {"a": 11.0}),
        ({"a": 10.0}, {}, 0.0, {}),
        # NaN, infinite and negative readings are ignored; a known series keeps its last good reading.
        ({"a": 10.0, "b": 5.0}, {"a": NAN, "b": 6.0}, 1.0, {"a": 10.0, "b": 6.0}),
        ({"a": 10.0}, {"a": -1.0}, 0.0, {"a": 10.0}),
        ({"a": 10.0}, {"a": INF}, 0.0, {"a": 10.0}),
        ({"a": 10.0}, {"a": 10.0, "n": NAN}, 0.0, {"a": 10.0}),
        (None, {"a": NAN, "b": 2.0}, 0.0, {"b": 2.0}),
    ],
)
def test_accumulate(
    previous: dict[str, float] | None, current: dict[str, float], total: float, seen: dict[str, float]
) -> None:
    got_total, got_seen = accumulate(previous, current)
    assert got_total == pytest.approx(total)
    assert got_seen == seen


def test_a_bad_reading_neither_loses_nor_double_counts() -> None:
    # 10 -> NaN -> 13: the 3 arrive once, at the next good reading, compared against the last good one.
    total, seen = accumulate({"a": 10.0}, {"a": NAN})
    assert total == 0.0
    total, seen = accumulate(seen, {"a": 13.0})
    assert total == 3.0


def test_accumulating_over_looks_counts_each_increment_once() -> None:
    # A pod serves 5, 12, restarts (3 since), 9; a second pod appears with 4 and goes away; the sum of the
    # deltas is everything counted after the baseline.
    looks = [{"p1": 5.0}, {"p1": 12.0}, {"p1": 3.0, "p2": 4.0}, {"p1": 9.0, "p2": 6.0}, {"p1": 10.0}]
    seen: dict[str, float] | None = None
    totals = []
    for look in looks:
        total, seen = accumulate(seen, look)
        totals.append(total)
    assert totals == [0.0, 7.0, 7.0, 8.0, 1.0]


def test_previous_is_not_modified() -> None:
    previous = {"a": 1.0}
    accumulate(previous, {"a": 2.0, "b": 1.0})
    assert previous == {"a": 1.0}


@pytest.mark.parametrize(
    ("labels", "key"),
    [
        ({}, ""),
        ({"code": "500"}, 'code="500"'),
        ({"pod": "p-1", "code": "503"}, 'code="503",pod="p-1"'),  # sorted by name
        ({"msg": 'a "b", c=d'}, 'msg="a \\"b\\", c=d"'),
        ({"path": "a\\b\nc"}, 'path="a\\\\b\\nc"'),
    ],
)
def test_fingerprint(labels: dict[str, str], key: str) -> None:
    assert fingerprint(labels) == key


def test_fingerprint_is_stable_and_unambiguous() -> None:
    assert fingerprint({"a": "1", "b": "2"}) == fingerprint({"b": "2", "a": "1"})
    # A value that imitates another label set does not collide with it.
    assert fingerprint({"a": '1",b="2'}) != fingerprint({"a": "1", "b": "2"})
