"""The API models: the sample round-trips, defaults are the documented ones, and every rule holds on both
sides of its edge."""

from __future__ import annotations

from datetime import timedelta

import pytest

from modelrollout import api
from modelrollout.durations import format_duration, parse_duration
from spec_cases import INVALID, OPERATOR_ONLY, VALID, Case, edited, sample_spec, sample_status


def test_sample_round_trips() -> None:
    raw = sample_spec()
    spec = api.parse_spec(raw)
    dumped = spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert api.parse_spec(dumped) == spec
    # Everything the user wrote survives (the operator only adds defaults).
    assert dumped["stages"][2] == {"weight": 10, "duration": "8h", "approval": "Manual"}
    assert dumped["analysis"]["gates"][2]["query"] == raw["analysis"]["gates"][2]["query"]
    assert dumped["canary"] == raw["canary"]


def test_defaults_are_the_documented_ones() -> None:
    raw = sample_spec()
    del raw["analysis"]
    spec = api.parse_spec(raw)
    analysis = spec.analysis
    assert (analysis.interval, analysis.window) == (timedelta(minutes=1), timedelta(minutes=2))
    assert (
        analysis.min_requests,
        analysis.failure_limit,
        analysis.error_limit,
        analysis.inconclusive_limit,
    ) == (
        100,
        1,
        4,
        10,
    )
    assert (analysis.on_error, analysis.on_inconclusive) == (api.OnError.ROLLBACK, api.OnInconclusive.HOLD)
    assert analysis.prometheus is None
    assert spec.paused is False
    assert spec.traffic_routing.istio.api_version == api.IstioApiVersion.V1
    assert spec.stages[0].approval == api.Approval.AUTO


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.id)
def test_valid_specs_are_accepted(case: Case) -> None:
    assert api.spec_errors(edited(case)) == []


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_invalid_specs_are_refused_naming_the_field(case: Case) -> None:
    errors = api.spec_errors(edited(case))
    assert errors, "accepted"
    mine = [e for e in errors if e.startswith(case.field)]
    assert mine, errors
    assert any(case.model_says in e for e in mine), mine


@pytest.mark.parametrize("case", OPERATOR_ONLY, ids=lambda c: c.id)
def test_specs_only_the_operator_can_refuse_are_refused_by_the_models(case: Case) -> None:
    errors = api.spec_errors(edited(case))
    assert [e for e in errors if e.startswith(case.field) and case.model_says in e], errors


def test_unknown_fields_are_refused() -> None:
    raw = sample_spec()
    raw["canary"]["modle"] = "typo"
    assert api.spec_errors(raw) == ["spec.canary.modle: Extra inputs are not permitted"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("2h", 7200), ("1h30m", 5400), ("500ms", 0.5), ("1m1s", 61), ("0s", 0)],
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "1", "1d", "2 hours", "-1s", "1.5h", "h", "1H", "1s "])
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (0.5, "500ms"), (90, "1m30s"), (5400, "1h30m"), (86400, "24h")]
)
def test_durations_format_canonically(seconds: float, text: str) -> None:
    assert format_duration(timedelta(seconds=seconds)) == text
    assert parse_duration(text) == timedelta(seconds=seconds)


def test_status_round_trips_with_every_field() -> None:
    status = sample_status()
    wire = status.model_dump(by_alias=True, mode="json")
    assert api.ModelRolloutStatus.model_validate(wire) == status
    assert wire["lastAnalysis"]["gates"][0]["requests"] == 1532
