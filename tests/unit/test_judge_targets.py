"""Which rollouts the judge works for (read from the object alone) and its hourly call budget."""

from __future__ import annotations

from typing import Any

import pytest

from modelrollout.judge.budget import HourlyBudget
from modelrollout.judge.targets import judge_target

JUDGE = {"model": {"url": "http://judge.llm:8000/v1", "name": "judge-model"}, "ratePerMinute": 60}


def rollout(
    phase: str | None = "Progressing", judge: dict[str, Any] | None = JUDGE, **spec: Any
) -> dict[str, Any]:
    analysis: dict[str, Any] = {"gates": []}
    if judge is not None:
        analysis["judge"] = judge
    obj: dict[str, Any] = {
        "metadata": {"name": "chat", "namespace": "llm"},
        "spec": {
            "stable": {"host": "llm-gpt4o", "model": "gpt-4o"},
            "canary": {"host": "llm-claude.models.svc.cluster.local", "port": 8000, "model": "claude"},
            "trafficRouting": {"istio": {"virtualService": {"name": "llm"}}},
            "stages": [{"weight": 100}],
            "analysis": analysis,
            **spec,
        },
    }
    if phase is not None:
        obj["status"] = {"phase": phase, "pairHash": "abc"}
    return obj


def test_a_rollout_under_way_with_a_judge_is_a_target() -> None:
    target = judge_target(rollout())
    assert target is not None
    assert (target.namespace, target.name, target.pair_hash) == ("llm", "chat", "abc")
    assert target.stable_url == "http://llm-gpt4o.llm.svc.cluster.local/v1"
    assert target.canary_url == "http://llm-claude.models.svc.cluster.local:8000/v1"
    assert (target.stable_model, target.canary_model) == ("gpt-4o", "claude")
    assert target.interval.total_seconds() == 1.0
    explicit = judge_target(
        rollout(
            judge={
                **JUDGE,
                "endpoints": {"stable": "http://127.0.0.1:1/v1", "canary": "http://127.0.0.1:2/v1"},
            }
        )
    )
    assert explicit is not None
    assert (explicit.stable_url, explicit.canary_url) == ("http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1")


@pytest.mark.parametrize(
    "obj",
    [
        rollout(judge=None),
        rollout(phase=None),
        rollout(phase="Promoted"),
        rollout(phase="RolledBack"),
        rollout(phase="Pending"),
        rollout(judge={"model": {"url": "ftp://judge/v1", "name": "j"}}),  # invalid: not judged
    ],
)
def test_nothing_else_is(obj: dict[str, Any]) -> None:
    assert judge_target(obj) is None


def test_the_budget_is_a_sliding_hour() -> None:
    budget = HourlyBudget(3)
    assert [budget.take(t) for t in (0.0, 10.0, 20.0, 30.0)] == [True, True, True, False]
    assert budget.take(3599.0) is False
    assert budget.take(3600.0) is True  # the call at 0 s has left the window
    assert budget.take(3600.5) is False
