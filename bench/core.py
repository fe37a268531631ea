"""Benchmark of the operator's pure hot paths, printing figures (no pass/fail): how many decisions, gate
evaluations and VirtualService transforms one core does per second. Run: `make bench`."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from modelrollout import api, engine
from modelrollout.analysis import CheckMeasurement, GateMeasurement, evaluate_check
from modelrollout.routing.istio import managed_route_indexes, with_split
from modelrollout.routing.router import Backend, RouteWrite

SPEC = api.parse_spec(
    {
        "stable": {"host": "llm-gpt4o", "model": "gpt-4o"},
        "canary": {"host": "llm-claude", "model": "claude-opus-4-8"},
        "trafficRouting": {"istio": {"virtualService": {"name": "llm"}, "routes": ["primary"]}},
        "stages": [{"weight": w, "duration": "1m"} for w in (1, 5, 10, 25, 50)] + [{"weight": 100}],
        "analysis": {
            "gates": [
                {"name": "error-rate", "template": "istio-error-rate", "max": 0.02},
                {"name": "p99-latency-ms", "template": "istio-latency-p99", "max": 5000},
                {"name": "refusals", "query": "x", "max": 0.05},
            ]
        },
    }
)
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def measure(name: str, one: Callable[[], object], seconds: float = 1.5) -> None:
    rounds: list[float] = []
    for _ in range(5):
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 5:
            one()
            count += 1
        rounds.append(count / (time.perf_counter() - started))
    median = statistics.median(rounds)
    print(
        f"{name:<44} {median:>10,.0f}/s   {1e6 / median:8.1f} us each   (5 rounds, spread "
        f"{min(rounds):,.0f}..{max(rounds):,.0f})"
    )


def main() -> None:
    status = engine.decide(
        SPEC,
        api.ModelRolloutStatus(),
        engine.Observation(
            now=NOW,
            generation=1,
            operator_started_at=NOW - timedelta(hours=1),
            routing=engine.RoutingView(canary_weight=0, last_writer=engine.FIELD_MANAGER),
        ),
    ).status
    gates = tuple(GateMeasurement(g, "2m", (0.004, 0.01)) for g in SPEC.analysis.gates)
    check = evaluate_check(CheckMeasurement(NOW, gates, 1500.0), 100)
    observation = engine.Observation(
        now=NOW + timedelta(minutes=2),
        generation=1,
        operator_started_at=NOW - timedelta(hours=1),
        routing=engine.RoutingView(canary_weight=1, last_writer=engine.FIELD_MANAGER),
        check=check,
    )
    vs = {
        "metadata": {"name": "llm", "namespace": "llm"},
        "spec": {
            "hosts": ["llm"],
            "http": [
                {
                    "name": "eval",
                    "match": [{"headers": {"x": {"exact": "1"}}}],
                    "route": [{"destination": {"host": "a"}}],
                },
                {
                    "name": "primary",
                    "timeout": "120s",
                    "retries": {"attempts": 2},
                    "route": [
                        {"destination": {"host": "llm-gpt4o"}, "weight": 90},
                        {"destination": {"host": "llm-claude"}, "weight": 10},
                    ],
                },
            ],
        },
    }
    indexes = managed_route_indexes(vs, ["primary"])
    stable, canary = Backend("llm-gpt4o"), Backend("llm-claude")

    print("modelrollout core benchmark (one core, CPython)")
    measure("engine.decide (check passes, stage advances)", lambda: engine.decide(SPEC, status, observation))
    measure(
        "analysis.evaluate_check (3 gates, 2 series)",
        lambda: evaluate_check(CheckMeasurement(NOW, gates, 1500.0), 100),
    )
    measure(
        "routing: VirtualService transform", lambda: with_split(vs, indexes, RouteWrite(stable, canary, 25))
    )
    measure(
        "api.parse_spec (6 stages, 3 gates)",
        lambda: api.parse_spec(SPEC.model_dump(by_alias=True, mode="json", exclude_none=True)),
    )


if __name__ == "__main__":
    main()
