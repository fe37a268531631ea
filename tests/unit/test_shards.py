"""Which rollouts an operator drives, by the shard label: each rollout is driven by one shard's operator."""

from __future__ import annotations

import pytest

from modelrollout.shards import (
    MAX_SHARD_NAME,
    SHARD_LABEL,
    in_shard,
    of_shard,
    shard_name_problem,
)


@pytest.mark.parametrize(
    ("labels", "shard", "driven"),
    [
        (None, None, True),
        ({}, None, True),
        ({"app": "chat"}, None, True),
        ({SHARD_LABEL: ""}, None, True),  # an empty label is no shard
        ({SHARD_LABEL: "a"}, None, False),  # the unsharded operator leaves every shard's rollouts alone
        ({SHARD_LABEL: "a"}, "a", True),
        ({SHARD_LABEL: "b"}, "a", False),
        ({}, "a", False),
        ({SHARD_LABEL: ""}, "a", False),
        ({SHARD_LABEL: "A"}, "a", False),  # label values are compared exactly
    ],
)
def test_a_rollout_is_driven_by_the_operator_of_its_shard_alone(
    labels: dict[str, str] | None, shard: str | None, driven: bool
) -> None:
    assert in_shard(labels, shard) is driven


def test_every_rollout_has_exactly_one_shard_among_any_set_of_operators() -> None:
    operators = [None, "a", "b", "team-c"]
    for labels in [{}, {SHARD_LABEL: ""}, {SHARD_LABEL: "a"}, {SHARD_LABEL: "b"}, {SHARD_LABEL: "zz"}]:
        drivers = [shard for shard in operators if in_shard(labels, shard)]
        assert len(drivers) <= 1, (labels, drivers)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("a", None),
        ("team-a", None),
        ("0", None),
        ("a" * MAX_SHARD_NAME, None),
        ("a" * (MAX_SHARD_NAME + 1), "at most 40 characters"),
        ("", "lowercase letters, digits and '-'"),
        ("Team-A", "lowercase letters, digits and '-'"),
        ("-a", "lowercase letters, digits and '-'"),
        ("a-", "lowercase letters, digits and '-'"),
        ("a_b", "lowercase letters, digits and '-'"),
        ("a.b", "lowercase letters, digits and '-'"),
        ('a"}', "lowercase letters, digits and '-'"),
    ],
)
def test_shard_names(name: str, problem: str | None) -> None:
    found = shard_name_problem(name)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found
        assert repr(name) in found


def test_each_shard_elects_on_a_lease_of_its_own() -> None:
    assert of_shard("modelrollout-operator", None) == "modelrollout-operator"
    assert of_shard("modelrollout-operator", "team-a") == "modelrollout-operator-team-a"


def test_each_shard_holds_a_finalizer_of_its_own() -> None:
    base = "modelrollout.io/finalizer"
    assert of_shard(base, None) == base  # what operators put on before shards existed
    longest = of_shard(base, "a" * MAX_SHARD_NAME)
    assert longest == f"{base}-{'a' * MAX_SHARD_NAME}"
    assert len(longest.partition("/")[2]) <= 63  # a qualified name's name part
