"""Bucket regexes: per weight exactly the intended decimal strings; complementary, monotone, RE2-safe."""

from __future__ import annotations

import re

import pytest

from modelrollout.routing.buckets import bucket_regex, stable_bucket_regex

WEIGHTS = range(101)
BUCKET_STRINGS = [str(b) for b in range(100)]
# Strings that are no bucket: signs, out of range, leading zeros, whitespace, other numbers and scripts.
NOT_BUCKETS = [
    "-1", "-0", "+1", "100", "101", "999", "007", "05", "00", "", " ", " 5", "5 ", "5\n", "\n5", "a", "1.0",
    "1e1", "0x1", "\u0663", "\uff15", "1|2", "[0-9]", "10 ", "9 9",
]  # fmt: skip
NOT_BUCKETS += (
    [f"0{b}" for b in range(100)] + [f"-{b}" for b in range(100)] + [str(n) for n in range(100, 1000)]
)
ALL_STRINGS = BUCKET_STRINGS + NOT_BUCKETS


def matched(pattern: str | None) -> set[str]:
    if pattern is None:
        return set()
    compiled = re.compile(pattern)
    return {s for s in ALL_STRINGS if compiled.fullmatch(s)}


@pytest.mark.parametrize("weight", WEIGHTS)
def test_canary_regex_matches_exactly_buckets_below_the_weight(weight: int) -> None:
    assert matched(bucket_regex(weight)) == {str(b) for b in range(weight)}


@pytest.mark.parametrize("weight", WEIGHTS)
def test_stable_regex_matches_exactly_the_other_buckets(weight: int) -> None:
    assert matched(stable_bucket_regex(weight)) == {str(b) for b in range(weight, 100)}


@pytest.mark.parametrize("weight", WEIGHTS)
def test_canary_and_stable_partition_the_buckets(weight: int) -> None:
    canary, stable = matched(bucket_regex(weight)), matched(stable_bucket_regex(weight))
    assert not canary & stable
    assert canary | stable == set(BUCKET_STRINGS)


def test_no_route_at_the_ends() -> None:
    assert bucket_regex(0) is None
    assert stable_bucket_regex(100) is None
    assert stable_bucket_regex(0) is not None
    assert bucket_regex(100) is not None


@pytest.mark.parametrize("weight", range(100))
def test_raising_the_weight_only_adds_canary_buckets(weight: int) -> None:
    assert matched(bucket_regex(weight)) <= matched(bucket_regex(weight + 1))
    assert matched(stable_bucket_regex(weight + 1)) <= matched(stable_bucket_regex(weight))


@pytest.mark.parametrize(
    ("weight", "canary", "stable"),
    [
        (1, "0", "[1-9]|[1-9][0-9]"),
        (5, "[0-4]", "[5-9]|[1-9][0-9]"),
        (10, "[0-9]", "[1-9][0-9]"),
        (11, "[0-9]|10", "1[1-9]|[2-9][0-9]"),
        (25, "1?[0-9]|2[0-4]", "2[5-9]|[3-9][0-9]"),
        (50, "[1-4]?[0-9]", "[5-9][0-9]"),
        (99, "[1-8]?[0-9]|9[0-8]", "99"),
        (100, "[1-9]?[0-9]", None),
    ],
)
def test_patterns_are_compact(weight: int, canary: str, stable: str | None) -> None:
    assert bucket_regex(weight) == canary
    assert stable_bucket_regex(weight) == stable


@pytest.mark.parametrize("weight", WEIGHTS)
def test_patterns_use_only_syntax_that_re2_and_python_read_alike(weight: int) -> None:
    # Digits, digit ranges in brackets, '?' and '|': no \d (Unicode digits in Python), no anchors, no groups.
    for pattern in (bucket_regex(weight), stable_bucket_regex(weight)):
        if pattern is not None:
            assert re.fullmatch(r"[0-9\[\]\-?|]+", pattern), pattern
            assert len(pattern) <= 24


@pytest.mark.parametrize("weight", [-1, 101, True])
def test_weights_outside_0_to_100_are_refused(weight: int) -> None:
    with pytest.raises(ValueError, match="weight"):
        bucket_regex(weight)
    with pytest.raises(ValueError, match="weight"):
        stable_bucket_regex(weight)
