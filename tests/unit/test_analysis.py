"""Gate values to verdicts, and gate verdicts to a check verdict: plain tables."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from modelrollout import api
from modelrollout.analysis import (
    CheckContext,
    CheckMeasurement,
    CheckResult,
    GateMeasurement,
    combine,
    evaluate_check,
    evaluate_gate,
)

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
NAN, INF = math.nan, math.inf
MAX_GATE = api.Gate(name="error-rate", template=api.GateTemplate.ISTIO_ERROR_RATE, max=0.02)
MIN_GATE = api.Gate(name="success", query="x", min=0.98)
BAND_GATE = api.Gate(name="tokens", query="x", min=100, max=400)
P, F, INC, E = api.Verdict.PASS, api.Verdict.FAIL, api.Verdict.INCONCLUSIVE, api.Verdict.ERROR


@pytest.mark.parametrize(
    ("gate", "values", "error", "verdict", "value"),
    [
        (MAX_GATE, (0.004,), None, P, 0.004),
        (MAX_GATE, (0.02,), None, P, 0.02),  # the bound itself passes
        (MAX_GATE, (0.0200001,), None, F, 0.0200001),
        (MAX_GATE, (), None, INC, None),  # no series: never a pass
        (MAX_GATE, (NAN,), None, INC, None),
        (MAX_GATE, (INF,), None, F, INF),  # +Inf is beyond any max: conclusive
        (MAX_GATE, (-INF,), None, INC, -INF),  # -Inf is no measurement
        (MAX_GATE, (0.001, 0.05, 0.01), None, F, 0.05),  # several series: the worst decides
        (MAX_GATE, (0.001, 0.015, 0.01), None, P, 0.015),
        (MAX_GATE, (0.001, NAN), None, INC, 0.001),  # a NaN series withholds the pass
        (MAX_GATE, (0.5, NAN), None, F, 0.5),  # ... but not a failure
        (MAX_GATE, (), "connection refused", E, None),
        (MIN_GATE, (0.99, 0.97), None, F, 0.97),
        (MIN_GATE, (0.99, 0.985), None, P, 0.985),
        (MIN_GATE, (INF,), None, INC, INF),
        (BAND_GATE, (50.0, 500.0), None, F, 500.0),
        (BAND_GATE, (50.0, 200.0), None, F, 50.0),
        (BAND_GATE, (150.0, 200.0), None, P, 200.0),
    ],
)
def test_gate_verdicts(
    gate: api.Gate, values: tuple[float, ...], error: str | None, verdict: api.Verdict, value: float | None
) -> None:
    result = evaluate_gate(GateMeasurement(gate=gate, window="2m", values=values, error=error))
    assert result.verdict == verdict
    assert result.value == value or (value is not None and result.value is not None and math.isnan(value))
    assert (result.name, result.max, result.min, result.window) == (gate.name, gate.max, gate.min, "2m")
    if error:
        assert error in (result.message or "")


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        ([], P),
        ([P, P], P),
        ([P, INC], INC),
        ([INC, E, P], E),
        ([E, F, INC], F),
        ([F], F),
    ],
)
def test_check_verdict_order(verdicts: list[api.Verdict], expected: api.Verdict) -> None:
    assert combine(verdicts) == expected


def _check(
    requests: float | None,
    *gates: tuple[api.Gate, tuple[float, ...], str | None],
    minimum: int = 100,
    requests_error: str | None = None,
) -> tuple[api.Verdict, list[api.Verdict], str]:
    measurement = CheckMeasurement(
        at=NOW,
        gates=tuple(GateMeasurement(gate=g, window="2m", values=v, error=e) for g, v, e in gates),
        canary_requests=requests,
        requests_error=requests_error,
    )
    result = evaluate_check(measurement, minimum)
    return result.verdict, [g.verdict for g in result.gates], result.summary


def test_enough_requests_and_passing_gates_pass() -> None:
    assert _check(1532, (MAX_GATE, (0.004,), None), (MIN_GATE, (0.99,), None))[:2] == (P, [P, P])


def test_below_min_requests_withholds_only_passes() -> None:
    verdict, gates, summary = _check(42, (MAX_GATE, (0.004,), None), (MIN_GATE, (0.5,), None))
    assert (verdict, gates) == (F, [INC, F])
    assert "42 canary requests < minRequests 100" in summary


def test_below_min_requests_with_passing_gates_is_inconclusive() -> None:
    assert _check(99, (MAX_GATE, (0.0,), None))[:2] == (INC, [INC])
    assert _check(100, (MAX_GATE, (0.0,), None))[:2] == (P, [P])


def test_nan_request_count_is_inconclusive() -> None:
    assert _check(NAN, (MAX_GATE, (0.0,), None))[:2] == (INC, [INC])


def test_a_failed_request_count_is_an_error() -> None:
    verdict, gates, summary = _check(None, (MAX_GATE, (0.0,), None), requests_error="timeout after 10s")
    assert (verdict, gates) == (E, [E])
    assert "request count failed: timeout after 10s" in summary


def test_no_gates_depends_on_requests_only() -> None:
    assert _check(500)[0] == P
    assert _check(5)[0] == INC
    assert _check(None, requests_error="refused")[0] == E


def test_query_error_beats_inconclusive_but_not_fail() -> None:
    assert _check(500, (MAX_GATE, (), "refused"), (MIN_GATE, (), None))[0] == E
    assert _check(500, (MAX_GATE, (), "refused"), (MIN_GATE, (0.1,), None))[0] == F


def test_requests_are_reported_on_every_gate() -> None:
    result = evaluate_check(
        CheckMeasurement(at=NOW, gates=(GateMeasurement(MAX_GATE, "2m", (0.01,)),), canary_requests=1532.4),
        100,
    )
    assert result.gates[0].requests == 1532


# ---- comparing gates: canary against the stable, same query, same window

INCREASE = api.Gate(name="tokens", query="x", compare=api.Compare(max_increase=0.2))
DECREASE = api.Gate(name="tps", query="x", compare=api.Compare(max_decrease=0.1))
DELTA = api.Gate(name="errors", query="x", compare=api.Compare(max_delta=0.005))
BOTH = api.Gate(name="p99", query="x", max=5.0, compare=api.Compare(max_increase=0.5))


@pytest.mark.parametrize(
    ("gate", "canary", "control", "control_error", "verdict", "delta", "relative"),
    [
        (INCREASE, (240.0,), (200.0,), None, P, 40.0, 0.2),  # +20%: the bound itself passes
        (INCREASE, (280.0,), (200.0,), None, F, 80.0, 0.4),  # +40% output tokens: a prompt change that spiked
        (INCREASE, (100.0,), (200.0,), None, P, -100.0, -0.5),  # fewer tokens is no increase
        (INCREASE, (150.0, 280.0), (200.0, 210.0), None, F, 70.0, 70.0 / 210.0),  # worst series each side
        (DECREASE, (95.0,), (100.0,), None, P, -5.0, -0.05),
        (DECREASE, (80.0,), (100.0,), None, F, -20.0, -0.2),
        (DELTA, (0.012,), (0.01,), None, P, 0.002, 0.2),  # +20% relative, but within the absolute delta
        (DELTA, (0.016,), (0.01,), None, F, 0.006, 0.6),
        (DELTA, (0.004,), (0.0,), None, P, 0.004, None),  # a delta needs no relative change
        (INCREASE, (3.0,), (0.0,), None, INC, 3.0, None),  # from 0 a relative change is undefined
        (INCREASE, (0.0,), (0.0,), None, P, 0.0, None),
        (INCREASE, (240.0,), (), None, INC, None, None),  # no control value: never a pass
        (INCREASE, (240.0,), (NAN,), None, INC, None, None),
        (INCREASE, (240.0,), None, "timeout", E, None, None),
        (BOTH, (6.0,), (5.0,), None, F, None, None),  # the threshold fails first
        (BOTH, (4.0,), (2.0,), None, F, 2.0, 1.0),  # within max, but doubled
        (BOTH, (4.0,), (3.0,), None, P, 1.0, 1 / 3),
    ],
)
def test_comparing_gates(
    gate: api.Gate,
    canary: tuple[float, ...],
    control: tuple[float, ...] | None,
    control_error: str | None,
    verdict: api.Verdict,
    delta: float | None,
    relative: float | None,
) -> None:
    measured = GateMeasurement(gate, "2m", values=canary, control_values=control, control_error=control_error)
    result = evaluate_gate(measured)
    assert result.verdict == verdict, result.message
    assert result.delta == pytest.approx(delta)
    assert result.relative_delta == pytest.approx(relative)
    if delta is not None:
        assert result.control is not None
        assert result.value == pytest.approx(result.control + delta)


def _weighted_check(
    *gates: GateMeasurement, control_requests: float | None = 5000.0, weight: int = 10
) -> CheckResult:
    measurement = CheckMeasurement(NOW, gates, 500.0, control_requests=control_requests)
    return evaluate_check(measurement, 100, CheckContext(100, canary_weight=weight))


def test_a_comparing_gate_needs_enough_control_traffic() -> None:
    passing = GateMeasurement(INCREASE, "2m", values=(200.0,), control_values=(200.0,))
    assert _weighted_check(passing).verdict == P
    few = _weighted_check(passing, control_requests=40.0)
    assert few.verdict == INC
    assert few.gates[0].control_requests == 40
    assert "40 control requests < minRequests 100" in few.summary
    assert _weighted_check(passing, control_requests=None).verdict == E


def test_advisory_gates_are_reported_but_never_decide() -> None:
    cost = api.Gate(name="cost", query="x", max=0.01, advisory=True)
    over_budget = GateMeasurement(cost, "2m", values=(0.05,))
    healthy = GateMeasurement(MAX_GATE, "2m", values=(0.001,))
    result = _weighted_check(over_budget, healthy)
    assert result.verdict == P
    assert [(g.name, g.verdict, g.advisory) for g in result.gates] == [
        ("cost", F, True),
        ("error-rate", P, False),
    ]
    assert "cost (advisory) 0.05 violates <= 0.01" in result.summary
    assert _weighted_check(over_budget, GateMeasurement(MAX_GATE, "2m", values=(0.5,))).verdict == F


def test_at_100_percent_there_is_no_control_to_compare_with() -> None:
    doubled = GateMeasurement(INCREASE, "2m", values=(400.0,), control_values=(200.0,))
    assert _weighted_check(doubled).verdict == F
    at_full = _weighted_check(doubled, control_requests=0.0, weight=100)
    assert at_full.verdict == P  # decided by the other gates (none here), not by a comparison without control
    assert at_full.gates[0].advisory
    assert "not counted: no control at 100%" in at_full.summary
