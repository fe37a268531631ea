"""The scale benchmark's own arithmetic: how a breach's time to its write is split by the audit log, and the
bound on PromQL queries per interval that N does not enter."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import scale
from scale import Audited

T0 = datetime(2026, 12, 5, 7, 0, 0, tzinfo=UTC)


def at(ms: float) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def request(verb: str, resource: str, received: float, answered: float, code: int = 200) -> Audited:
    return Audited(verb=verb, resource=resource, received=at(received), answered=at(answered), code=code)


@pytest.mark.parametrize(
    ("requests", "parts"),
    [
        # A read of the rollout, then the write: four parts, summing to check start -> write answered.
        (
            [request("get", "modelrollouts", 40, 45), request("update", "virtualservices", 60, 70)],
            (0.040, 0.005, 0.015, 0.010),
        ),
        # A read from before the check does not count; with none since, the operator part starts at the check.
        (
            [request("get", "modelrollouts", -500, -490), request("patch", "virtualservices", 30, 50)],
            (0.0, 0.0, 0.030, 0.020),
        ),
        # A refused write (a conflict) wrote nothing: the next read and write are the ones that count.
        (
            [
                request("get", "modelrollouts", 10, 12),
                request("update", "virtualservices", 20, 25, code=409),
                request("get", "modelrollouts", 100, 110),
                request("update", "virtualservices", 150, 160),
            ],
            (0.100, 0.010, 0.040, 0.010),
        ),
        # No write that went through: nothing to split.
        ([request("update", "virtualservices", 20, 25, code=409)], None),
        ([], None),
    ],
)
def test_write_time_parts(requests: list[Audited], parts: tuple[float, ...] | None) -> None:
    got = scale.write_time_parts(T0, requests)
    if parts is None:
        assert got is None
    else:
        assert got == pytest.approx(parts)


def figures(n: int, per_interval: float, texts: int, most_asked: int) -> dict[str, object]:
    return {
        "n": n,
        "queries_per_s": per_interval / scale.INTERVAL_SECONDS,
        "query_texts": texts,
        "most_asked": most_asked,
        "quiet_wall_s": 62.0,
        "batch_max_age": 5.0,
    }


def test_the_promql_bound_does_not_depend_on_n() -> None:
    # 3 queries, each at most once per 2.5 s and once more at the edge: 13 per 30 s each.
    assert scale.per_interval_bound(figures(100, 6, 3, 4)) == 39
    assert scale.per_interval_bound(figures(5000, 22, 3, 15)) == 39


@pytest.mark.parametrize(
    ("sizes", "met"),
    [
        # Fewer queries at a small N is within the bound: met, although not flat by the totals.
        ([figures(100, 6, 3, 4), figures(1000, 19, 3, 13), figures(5000, 22, 3, 15)], True),
        # Over the bound at one size.
        ([figures(100, 6, 3, 4), figures(5000, 40, 3, 15)], False),
        # One query asked more often than the batcher allows.
        ([figures(100, 6, 3, 4), figures(5000, 22, 3, 26)], False),
        # Different queries at different N: a query per rollout would show as more texts.
        ([figures(100, 6, 3, 4), figures(5000, 22, 4, 15)], False),
    ],
)
def test_queries_within_bounds(sizes: list[dict[str, object]], met: bool) -> None:
    verdict = scale.queries_within_bounds(sizes)
    assert verdict is not None
    assert verdict[1] is met


def test_no_batching_is_not_judged_by_the_bound() -> None:
    assert scale.queries_within_bounds([{**figures(100, 6, 3, 4), "batch_max_age": None}]) is None
