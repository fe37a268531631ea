"""Sticky assignment: the bucket definition (pinned), its range and spread, and the monotone variant."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelrollout.assign import BUCKETS, bucket, variant

# Computed outside Python (`printf '%s' "$EXP:$USER" | md5sum`, the hex digest mod 100 with bc). Other
# implementations (apps, the Envoy Lua filter) rely on these staying put.
PINNED = [
    ("exp-claude-migration-v1", "alice", 76),
    ("exp-claude-migration-v1", "bob", 10),
    ("llm/chat/3f2a", "user:42", 5),  # a ':' inside the user id is just another byte
    ("e", "ü", 80),  # UTF-8, not Latin-1
    ("", "", 59),  # md5(":")
]


@pytest.mark.parametrize(("experiment_id", "user_id", "expected"), PINNED)
def test_pinned_buckets(experiment_id: str, user_id: str, expected: int) -> None:
    assert bucket(experiment_id, user_id) == expected


@given(st.text(max_size=40), st.text(max_size=80))
def test_bucket_is_the_documented_formula(experiment_id: str, user_id: str) -> None:
    try:
        data = (experiment_id + ":" + user_id).encode("utf-8")
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            bucket(experiment_id, user_id)
        return
    expected = int(hashlib.md5(data, usedforsecurity=False).hexdigest(), 16) % 100
    assert bucket(experiment_id, user_id) == expected
    assert 0 <= expected < BUCKETS


def test_the_separator_matters() -> None:
    # "a:b" + ":" + "c" and "a" + ":" + "b:c" are the same bytes: by definition the same bucket...
    assert bucket("a:b", "c") == bucket("a", "b:c")
    # ... but the separator is not optional.
    data = b"exp" + b"user"
    assert bucket("exp", "user") != int(hashlib.md5(data, usedforsecurity=False).hexdigest(), 16) % 100


def test_buckets_spread_evenly() -> None:
    counts = Counter(bucket("exp-spread", f"user-{i}") for i in range(20_000))
    assert set(counts) == set(range(BUCKETS))
    # 200 expected per bucket; a 5-sigma band (sd ~ 14) around it.
    assert min(counts.values()) > 130
    assert max(counts.values()) < 270


@given(st.text(max_size=40), st.integers(0, BUCKETS))
def test_variant_is_bucket_below_weight(user_id: str, weight: int) -> None:
    expected = "canary" if bucket("exp", user_id) < weight else "stable"
    assert variant("exp", user_id, weight) == expected


def test_variant_is_monotone_in_the_weight() -> None:
    for i in range(500):
        user = f"u{i}"
        seen = [variant("exp-mono", user, w) for w in range(BUCKETS + 1)]
        assert seen[0] == "stable"
        assert seen[BUCKETS] == "canary"
        # One switch at most, and only stable -> canary.
        first_canary = seen.index("canary")
        assert all(v == "stable" for v in seen[:first_canary])
        assert all(v == "canary" for v in seen[first_canary:])
        assert first_canary == bucket("exp-mono", user) + 1


@pytest.mark.parametrize("weight", [-1, 101, True])
def test_variant_rejects_weights_outside_0_to_100(weight: int) -> None:
    with pytest.raises(ValueError, match="canary weight"):
        variant("exp", "u", weight)
