"""The operator's metrics and notification payloads, from plain inputs."""

from __future__ import annotations

import base64
import math
from datetime import UTC, datetime

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from modelrollout import api
from modelrollout.analysis import CheckResult
from modelrollout.notify import Notification, NotifyTargets
from modelrollout.telemetry import Telemetry

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def _check(value: float | None, verdict: api.Verdict) -> CheckResult:
    gate = api.GateResult(name="error-rate", verdict=verdict, value=value, max=0.02, window="2m")
    return CheckResult(at=NOW, verdict=verdict, gates=(gate,), canary_requests=500, summary="")


def test_a_shadow_stage_is_exported_as_its_mirrored_percent() -> None:
    telemetry = Telemetry()
    status = api.ModelRolloutStatus(phase=api.Phase.PROGRESSING, stage=0, canary_weight=0, shadow=50)
    telemetry.rollouts.record("llm", "chat", status, None, rollback_reason=None)
    sample = telemetry.registry.get_sample_value
    assert sample("modelrollout_shadow_percent", {"namespace": "llm", "name": "chat"}) == 50
    assert sample("modelrollout_canary_weight_percent", {"namespace": "llm", "name": "chat"}) == 0
    telemetry.rollouts.forget("llm", "chat")
    assert sample("modelrollout_shadow_percent", {"namespace": "llm", "name": "chat"}) is None


def test_record_sets_phase_weight_gates_and_counts() -> None:
    telemetry = Telemetry()
    status = api.ModelRolloutStatus(phase=api.Phase.PROGRESSING, stage=2, canary_weight=25)
    telemetry.rollouts.record("llm", "chat", status, _check(0.004, api.Verdict.PASS), rollback_reason=None)
    sample = telemetry.registry.get_sample_value
    assert sample("modelrollout_canary_weight_percent", {"namespace": "llm", "name": "chat"}) == 25
    assert sample("modelrollout_stage", {"namespace": "llm", "name": "chat"}) == 2
    assert sample("modelrollout_phase", {"namespace": "llm", "name": "chat", "phase": "Progressing"}) == 1
    assert sample("modelrollout_phase", {"namespace": "llm", "name": "chat", "phase": "Promoted"}) == 0
    assert (
        sample("modelrollout_gate_value", {"namespace": "llm", "name": "chat", "gate": "error-rate"}) == 0.004
    )
    assert (
        sample(
            "modelrollout_gate_threshold",
            {"namespace": "llm", "name": "chat", "gate": "error-rate", "bound": "max"},
        )
        == 0.02
    )
    assert sample("modelrollout_checks_total", {"namespace": "llm", "name": "chat", "verdict": "Pass"}) == 1


def test_comparing_and_sequential_gates_export_the_control_and_the_p_value() -> None:
    telemetry = Telemetry()
    compared = api.GateResult(name="tokens", verdict=api.Verdict.PASS, value=210.0, control=200.0)
    evidence = api.Evidence(canary_events=9, stable_events=80, canary_share=0.1, p_value=0.42)
    tested = api.GateResult(name="errors", verdict=api.Verdict.PASS, value=1.0, evidence=evidence)
    check = CheckResult(
        at=NOW, verdict=api.Verdict.PASS, gates=(compared, tested), canary_requests=500, summary=""
    )
    telemetry.rollouts.record("llm", "chat", api.ModelRolloutStatus(), check, rollback_reason=None)
    sample = telemetry.registry.get_sample_value
    where = {"namespace": "llm", "name": "chat"}
    assert sample("modelrollout_gate_control_value", {**where, "gate": "tokens"}) == 200.0
    assert sample("modelrollout_gate_control_value", {**where, "gate": "errors"}) is None
    assert sample("modelrollout_gate_p_value", {**where, "gate": "errors"}) == 0.42


def test_a_gate_without_a_reading_is_nan_not_stale() -> None:
    telemetry = Telemetry()
    status = api.ModelRolloutStatus(phase=api.Phase.PROGRESSING)
    telemetry.rollouts.record("llm", "chat", status, _check(0.004, api.Verdict.PASS), rollback_reason=None)
    telemetry.rollouts.record("llm", "chat", status, _check(None, api.Verdict.ERROR), rollback_reason=None)
    value = telemetry.registry.get_sample_value(
        "modelrollout_gate_value", {"namespace": "llm", "name": "chat", "gate": "error-rate"}
    )
    assert value is not None
    assert math.isnan(value)


def test_rollbacks_are_counted_by_reason_and_forgotten_on_delete() -> None:
    telemetry = Telemetry()
    status = api.ModelRolloutStatus(
        phase=api.Phase.ROLLED_BACK, rollback=api.Rollback(at=NOW, reason="AnalysisFailed")
    )
    telemetry.rollouts.record("llm", "chat", status, None, rollback_reason="AnalysisFailed")
    labels = {"namespace": "llm", "name": "chat", "reason": "AnalysisFailed"}
    assert telemetry.registry.get_sample_value("modelrollout_rollbacks_total", labels) == 1
    telemetry.rollouts.forget("llm", "chat")
    assert telemetry.registry.get_sample_value("modelrollout_rollbacks_total", labels) is None
    assert (
        telemetry.registry.get_sample_value(
            "modelrollout_canary_weight_percent", {"namespace": "llm", "name": "chat"}
        )
        is None
    )


def test_payloads_carry_gate_value_and_threshold() -> None:
    note = Notification(
        event="RolledBack",
        namespace="llm",
        name="chat",
        message="error-rate 0.05 > 0.02",
        stage="2/6",
        canary="claude",
        stable="gpt-4o",
        gate="error-rate",
        value=0.05,
        threshold="<= 0.02",
        window="2m",
        at="2026-11-23T10:00:00+00:00",
        stages=(
            {
                "stage": "1/6",
                "traffic": "5%",
                "ran": "10m00s",
                "outcome": "Advanced (Soak)",
                "last_check": "Pass",
            },
            {
                "stage": "2/6",
                "traffic": "20%",
                "ran": "3m10s",
                "outcome": "RolledBack",
                "last_check": "Fail",
                "gates": [
                    {
                        "gate": "quality",
                        "control": "won 18",
                        "treatment": "won 2",
                        "delta": "p=0.003 ratio in [1.2, +Inf]",
                        "decision": "Fail: worse",
                    }
                ],
            },
        ),
    )
    payload = note.payload()
    assert (payload["source"], payload["event"], payload["gate"], payload["value"], payload["threshold"]) == (
        "modelrollout",
        "RolledBack",
        "error-rate",
        0.05,
        "<= 0.02",
    )
    text = note.slack_payload()["text"]
    assert "*RolledBack* `llm/chat`" in text
    assert "gate `error-rate` = 0.05 (threshold <= 0.02, window 2m)" in text
    assert payload["stages"][1]["outcome"] == "RolledBack"
    assert text.endswith(
        "\n• stage 1/6 at 5% for 10m00s: Advanced (Soak), last check Pass"
        "\n• stage 2/6 at 20% for 3m10s: RolledBack, last check Fail"
        "\n    ◦ `quality` control won 18, treatment won 2 (p=0.003 ratio in [1.2, +Inf]): Fail: worse"
    )


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_targets_come_from_the_secret() -> None:
    targets = NotifyTargets.from_secret_data({"webhook-url": _b64("http://127.0.0.1:1/hook\n")})
    assert (targets.webhook_url, targets.slack_url) == ("http://127.0.0.1:1/hook", None)
    with pytest.raises(ValueError, match="neither 'webhook-url' nor 'slack-webhook-url'"):
        NotifyTargets.from_secret_data({"url": _b64("x")})


def test_per_rollout_series_are_exposed_as_labelled_metrics_were() -> None:
    """The text Prometheus scrapes: every family with its type and help, counters with `_total` and
    `_created`, a rollout counted before it was recorded shows only its counters, a forgotten one nothing."""
    telemetry = Telemetry()
    status = api.ModelRolloutStatus(phase=api.Phase.PROGRESSING, stage=1, canary_weight=10)
    telemetry.rollouts.record(
        "llm", "chat", status, _check(0.03, api.Verdict.FAIL), rollback_reason="AnalysisFailed"
    )
    telemetry.rollouts.count_write_failure("llm", "chat")
    telemetry.rollouts.count_deferred("llm", "other")
    text = generate_latest(telemetry.registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in (
        ("modelrollout_phase", "gauge"),
        ("modelrollout_canary_weight_percent", "gauge"),
        ("modelrollout_shadow_percent", "gauge"),
        ("modelrollout_stage", "gauge"),
        ("modelrollout_gate_value", "gauge"),
        ("modelrollout_gate_control_value", "gauge"),
        ("modelrollout_gate_p_value", "gauge"),
        ("modelrollout_gate_threshold", "gauge"),
        ("modelrollout_checks", "counter"),
        ("modelrollout_rollbacks", "counter"),
        ("modelrollout_write_failures", "counter"),
        ("modelrollout_checks_deferred", "counter"),
    ):
        assert families[name].type == kind, name
        assert families[name].documentation, name
    assert 'modelrollout_checks_total{name="chat",namespace="llm",verdict="Fail"} 1.0' in text
    assert 'modelrollout_checks_created{name="chat",namespace="llm",verdict="Fail"}' in text
    assert 'modelrollout_rollbacks_total{name="chat",namespace="llm",reason="AnalysisFailed"} 1.0' in text
    assert 'modelrollout_write_failures_total{name="chat",namespace="llm"} 1.0' in text
    assert 'modelrollout_checks_deferred_total{name="other",namespace="llm"} 1.0' in text
    assert 'modelrollout_phase{name="chat",namespace="llm",phase="Progressing"} 1.0' in text
    assert sum(1 for line in text.splitlines() if line.startswith("modelrollout_phase{")) == len(api.Phase)
    assert 'name="other"' not in text.replace('modelrollout_checks_deferred_total{name="other"', "").replace(
        'modelrollout_checks_deferred_created{name="other"', ""
    )  # counted only: no phase, weight or stage for it
    telemetry.rollouts.forget("llm", "chat")
    telemetry.rollouts.forget("llm", "other")
    assert 'namespace="llm"' not in generate_latest(telemetry.registry).decode()


def test_an_unchanged_gate_bound_or_control_keeps_its_last_value_and_a_new_gate_is_added() -> None:
    telemetry = Telemetry()
    where = {"namespace": "llm", "name": "chat"}
    compared = api.GateResult(name="tokens", verdict=api.Verdict.PASS, value=210.0, control=200.0, max=1.1)
    first = CheckResult(at=NOW, verdict=api.Verdict.PASS, gates=(compared,), canary_requests=5, summary="")
    telemetry.rollouts.record("llm", "chat", api.ModelRolloutStatus(), first, rollback_reason=None)
    bare = api.GateResult(name="tokens", verdict=api.Verdict.ERROR, value=None)
    other = api.GateResult(name="errors", verdict=api.Verdict.PASS, value=0.01, min=0.0)
    second = CheckResult(
        at=NOW, verdict=api.Verdict.ERROR, gates=(bare, other), canary_requests=5, summary=""
    )
    telemetry.rollouts.record("llm", "chat", api.ModelRolloutStatus(), second, rollback_reason=None)
    sample = telemetry.registry.get_sample_value
    assert math.isnan(sample("modelrollout_gate_value", {**where, "gate": "tokens"}) or 0.0)
    assert sample("modelrollout_gate_control_value", {**where, "gate": "tokens"}) == 200.0
    assert sample("modelrollout_gate_threshold", {**where, "gate": "tokens", "bound": "max"}) == 1.1
    assert sample("modelrollout_gate_threshold", {**where, "gate": "errors", "bound": "min"}) == 0.0
    assert sample("modelrollout_gate_value", {**where, "gate": "errors"}) == 0.01
    assert sample("modelrollout_checks_total", {**where, "verdict": "Pass"}) == 1
    assert sample("modelrollout_checks_total", {**where, "verdict": "Error"}) == 1
