"""The screens of `kubectl modelrollout`, rendered from sample dicts as the API server returns them: the list,
the status screen in every phase, gates with min and/or max, missing fields; and which actions fit when."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelrollout import api, engine
from modelrollout.plugin_view import (
    EVENTS_SHOWN,
    EventRow,
    LiveTraffic,
    action_refusal,
    age,
    bounds,
    fitting_actions,
    number,
    render_list,
    render_status,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SPEC: dict[str, Any] = {
    "stable": {"host": "llm-gpt4o", "model": "gpt-4o", "promptVersion": "v12"},
    "canary": {"host": "llm-claude", "model": "claude-opus-4-8", "promptVersion": "v13"},
    "trafficRouting": {"istio": {"virtualService": {"name": "llm"}, "routes": ["primary"]}},
    "stages": [
        {"weight": 5, "duration": "1h"},
        {"weight": 20, "duration": "2h", "approval": "Manual"},
        {"weight": 100},
    ],
    "analysis": {
        "interval": "1m",
        "window": "5m",
        "minRequests": 100,
        "failureLimit": 1,
        "gates": [
            {"name": "error-rate", "template": "istio-error-rate", "max": 0.02},
            {"name": "tokens-per-s", "query": "sum(rate(tokens[5m]))", "min": 50},
            {"name": "quality", "query": "avg(eval_score)", "min": 0.9, "max": 1.0, "window": "10m"},
        ],
    },
}
PAIR = engine.pair_hash(api.parse_spec(SPEC))


def iso(delta: timedelta) -> str:
    return (NOW - delta).isoformat().replace("+00:00", "Z")


def gate_results(verdict: str = "Pass") -> list[dict[str, Any]]:
    return [
        {
            "name": "error-rate",
            "verdict": verdict,
            "value": 0.004,
            "max": 0.02,
            "requests": 1532,
            "window": "5m",
        },
        {
            "name": "tokens-per-s",
            "verdict": "Pass",
            "value": 81.25,
            "min": 50,
            "requests": 1532,
            "window": "5m",
        },
        {
            "name": "quality",
            "verdict": "Inconclusive",
            "value": None,
            "min": 0.9,
            "max": 1.0,
            "requests": 1532,
            "window": "10m",
            "message": "no data",
        },
    ]


def rollout(phase: str, reason: str, stage: int = 1, **status: Any) -> dict[str, Any]:
    weight = [5, 20, 100][stage]
    body: dict[str, Any] = {
        "apiVersion": "modelrollout.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {
            "name": "chat",
            "namespace": "llm",
            "generation": 4,
            "creationTimestamp": iso(timedelta(hours=5)),
            "uid": "0000",
        },
        "spec": copy.deepcopy(SPEC),
        "status": {
            "observedGeneration": 4,
            "phase": phase,
            "reason": reason,
            "stage": stage,
            "stageCount": 3,
            "progress": f"{stage + 1}/3",
            "canaryWeight": weight,
            "stageStartedAt": iso(timedelta(minutes=90)),
            "pairHash": PAIR,
            "failedChecks": 0,
            "consecutiveErrors": 0,
            "consecutiveInconclusive": 2,
            "lastAnalysis": {
                "at": iso(timedelta(seconds=30)),
                "stage": stage,
                "verdict": "Pass",
                "gates": gate_results(),
            },
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if phase == "Promoted" else "False",
                    "reason": reason,
                    "message": "m",
                    "lastTransitionTime": iso(timedelta(minutes=3)),
                    "observedGeneration": 4,
                },
                {
                    "type": "Stalled",
                    "status": "True" if phase in ("RolledBack", "Aborted", "Degraded") else "False",
                    "reason": reason,
                    "message": "m",
                    "lastTransitionTime": iso(timedelta(minutes=3)),
                    "observedGeneration": 4,
                },
            ],
            "message": f"stage {stage + 1}/3 at {weight}%: {reason}",
        },
    }
    body["status"].update(status)
    return body


def stage_lines(screen: str) -> list[str]:
    lines = screen.splitlines()
    start = lines.index("Stages:") + 2  # the title and the header
    return lines[start : start + 3]


# ---- formatting helpers ----


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.004, "0.004"),
        (1900, "1900"),
        (12345.6, "1.235e+04"),
        (float("nan"), "NaN"),
        (float("inf"), "+Inf"),
        (None, "-"),
    ],
)
def test_numbers_are_short(value: float | None, text: str) -> None:
    assert number(value) == text


def test_bounds_name_min_max_or_both() -> None:
    assert (bounds(None, 0.02), bounds(50, None), bounds(0.9, 1.0), bounds(None, None)) == (
        "<= 0.02",
        ">= 50",
        ">= 0.9 and <= 1",
        "-",
    )


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(seconds=5), "5s"),
        (timedelta(minutes=10), "10m"),
        (timedelta(hours=5), "5h"),
        (timedelta(days=3), "3d"),
    ],
)
def test_ages_read_like_kubectl(delta: timedelta, text: str) -> None:
    assert age(iso(delta), NOW) == text


def test_ages_of_nothing_or_garbage_are_a_dash() -> None:
    assert (age(None, NOW), age("yesterday", NOW), age("", NOW)) == ("-", "-", "-")


# ---- list ----


def test_list_shows_phase_stage_weight_verdict_and_message() -> None:
    out = render_list([rollout("Paused", "AwaitingApproval")], NOW, all_namespaces=False)
    header, row = out.splitlines()
    assert header.split() == ["NAME", "PHASE", "STAGE", "WEIGHT", "VERDICT", "AGE", "MESSAGE"]
    assert row.split()[:6] == ["chat", "Paused", "2/3", "20%", "Pass", "5h"]
    assert row.endswith("stage 2/3 at 20%: AwaitingApproval")


def test_list_all_namespaces_adds_the_namespace_and_sorts() -> None:
    other = rollout("Promoted", "Promoted", stage=2)
    other["metadata"] |= {"name": "search", "namespace": "alpha"}
    out = render_list([rollout("Progressing", "Analysing"), other], NOW, all_namespaces=True)
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["alpha", "search", "Promoted"],
        ["llm", "chat", "Progressing"],
    ]


@pytest.mark.parametrize("phase", [p.value for p in api.Phase])
def test_list_every_phase(phase: str) -> None:
    out = render_list([rollout(phase, "Why")], NOW, all_namespaces=False)
    assert out.splitlines()[1].split()[1] == phase


@pytest.mark.parametrize("default", [{}, {"status": {"observedGeneration": 0}}])
def test_list_without_status_says_the_operator_has_not_seen_it(default: dict[str, Any]) -> None:
    # {}: stored before the CRD had a default status; the default (observedGeneration 0) reads the same.
    bare = {"metadata": {"name": "fresh", "namespace": "llm", "generation": 1}, "spec": SPEC, **default}
    row = render_list([bare], NOW, all_namespaces=False).splitlines()[1]
    assert row.split()[:6] == ["fresh", "-", "-", "-", "-", "-"]
    assert row.endswith("waiting for the operator: no status yet")
    assert action_refusal("promote", bare) == (
        "the operator has not started this rollout yet (no status); wait for its first status"
    )


def test_list_shows_a_stale_status_as_waiting_and_shortens_long_messages() -> None:
    stale = rollout("Progressing", "Analysing")
    stale["metadata"]["generation"] = 5
    long = rollout("Progressing", "Analysing", message="x" * 300)
    long["metadata"]["name"] = "long"
    lines = render_list([stale, long], NOW, all_namespaces=False).splitlines()
    assert lines[1].endswith("waiting for the operator: status is for generation 4, spec is at 5")
    assert lines[2].endswith("x...")
    assert len(lines[2]) < 200


# ---- status: stages and phases ----


def test_status_marks_the_current_stage_and_shows_weights_durations_and_approval() -> None:
    screen = render_status(rollout("Paused", "AwaitingApproval"), NOW)
    first, current, last = stage_lines(screen)
    assert first.split() == ["1", "5%", "1h", "Auto", "done"]
    assert current.split()[:5] == [">", "2", "20%", "2h", "Manual"]
    assert current.endswith("awaiting approval, 90m in stage")
    assert last.split() == ["3", "100%", "-", "Auto"]
    assert ">" not in first + last


@pytest.mark.parametrize(
    ("phase", "reason", "extra", "state"),
    [
        ("Progressing", "Analysing", {}, "current, 90m in stage"),
        ("Paused", "AwaitingApproval", {}, "awaiting approval, 90m in stage"),
        ("Paused", "Paused", {}, "paused, 90m in stage"),
        ("Paused", "Inconclusive", {"hold": "Inconclusive"}, "on hold (Inconclusive), 90m in stage"),
        (
            "Paused",
            "MetricsUnavailable",
            {"hold": "MetricsUnavailable"},
            "on hold (MetricsUnavailable), 90m in stage",
        ),
        ("Degraded", "DriftLimit", {"hold": "DriftLimit"}, "on hold (DriftLimit), 90m in stage"),
        ("Degraded", "VirtualServiceNotFound", {}, "degraded, 90m in stage"),
        ("RolledBack", "AnalysisFailed", {}, "rolled back here"),
        ("Aborted", "Aborted", {}, "aborted here"),
    ],
)
def test_status_names_the_state_of_the_current_stage(
    phase: str, reason: str, extra: dict[str, Any], state: str
) -> None:
    screen = render_status(rollout(phase, reason, **extra), NOW)
    assert f"Phase:        {phase} ({reason})" in screen
    current = stage_lines(screen)[1]
    assert current.startswith("  >")
    assert current.endswith(state)


def test_status_promoted_marks_the_last_stage_and_all_done() -> None:
    screen = render_status(rollout("Promoted", "Promoted", stage=2), NOW)
    lines = stage_lines(screen)
    assert [line.split()[-1] for line in lines] == ["done", "done", "done"]
    assert lines[2].startswith("  >")
    assert "Actions:      none fit now" in screen  # the promoted model is the baseline now


def test_status_pending_without_a_status_marks_nothing() -> None:
    bare = {"metadata": {"name": "fresh", "namespace": "llm", "generation": 1}, "spec": SPEC}
    screen = render_status(bare, NOW)
    assert "Generation:   waiting for the operator: no status yet" in screen
    assert all(not line.startswith("  >") for line in stage_lines(screen))
    assert "Actions:      none fit now" in screen
    assert "Analysis:     no check yet (every 1m, window 5m, at least 100 canary requests)" in screen


def test_status_shows_models_and_weights_decided_and_live() -> None:
    live = LiveTraffic("llm/llm", canary_weight=20)
    screen = render_status(rollout("Progressing", "Analysing"), NOW, live=live)
    assert "Stable:       gpt-4o (prompt v12) -> llm-gpt4o" in screen
    assert "Canary:       claude-opus-4-8 (prompt v13) -> llm-claude" in screen
    assert "Traffic:      canary 20%, stable 80% (status); VirtualService llm/llm: canary 20% live" in screen


def test_status_says_why_the_live_weight_is_unknown_or_odd() -> None:
    gone = render_status(
        rollout("Degraded", "VirtualServiceNotFound"), NOW, live=LiveTraffic("llm/llm", problem="not found")
    )
    assert "VirtualService llm/llm: not found" in gone
    odd = render_status(
        rollout("Progressing", "Analysing"),
        NOW,
        live=LiveTraffic("llm/llm", canary_weight=60, consistent=False),
    )
    assert "canary 60% live (routes disagree or do not sum to 100)" in odd


# ---- status: gates ----


def test_a_last_check_older_than_its_interval_says_why_while_the_rollout_runs() -> None:
    note = "checks that change nothing essential reach status only every few minutes"
    obj = rollout("Progressing", "Analysing")  # interval 1m
    assert note not in render_status(obj, NOW)  # 30 s old
    obj["status"]["lastAnalysis"]["at"] = iso(timedelta(minutes=2))
    assert note not in render_status(obj, NOW)  # within two intervals
    obj["status"]["lastAnalysis"]["at"] = iso(timedelta(minutes=40))
    lines = render_status(obj, NOW).splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("Analysis:"))
    assert "40m ago" in lines[head]
    assert note in lines[head + 1]
    finished = rollout("Promoted", "Promoted")
    finished["status"]["lastAnalysis"]["at"] = iso(timedelta(minutes=40))
    assert note not in render_status(finished, NOW)  # no checks run any more: nothing to explain


def test_status_shows_each_gate_value_against_its_threshold_with_its_verdict() -> None:
    screen = render_status(rollout("Progressing", "Analysing"), NOW)
    lines = screen.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("Analysis:"))
    assert lines[head] == (
        "Analysis:     last check Pass at stage 2, 30s ago "
        "(every 1m, window 5m, at least 100 canary requests)"
    )
    assert lines[head + 1].split() == [
        "GATE", "CANARY", "STABLE", "CHANGE", "REQUIRES", "VERDICT", "REQUESTS", "WINDOW", "NOTE",
    ]  # fmt: skip
    rows = {line.split()[0]: line for line in lines[head + 2 : head + 5]}
    assert rows["error-rate"].split() == ["error-rate", "0.004", "-", "-", "<=", "0.02", "Pass", "1532", "5m"]
    assert rows["tokens-per-s"].split() == [
        "tokens-per-s",
        "81.25",
        "-",
        "-",
        ">=",
        "50",
        "Pass",
        "1532",
        "5m",
    ]
    assert rows["quality"].split() == [
        "quality", "-", "-", "-", ">=", "0.9", "and", "<=", "1", "Inconclusive", "1532", "10m", "no", "data",
    ]  # fmt: skip


def test_status_shows_control_against_treatment_deltas_and_evidence() -> None:
    obj = rollout("Progressing", "Analysing")
    obj["spec"]["analysis"]["gates"] = [
        {
            "name": "tokens",
            "template": "llm-output-tokens",
            "source": "vllm",
            "compare": {"maxIncrease": "20%"},
        },
        {"name": "errors", "template": "llm-error-events", "source": "vllm", "test": {"kind": "sequential"}},
        {
            "name": "cost",
            "template": "llm-cost-per-request",
            "source": "litellm",
            "max": 0.01,
            "advisory": True,
        },
    ]
    obj["status"]["lastAnalysis"]["gates"] = [
        {"name": "tokens", "verdict": "Fail", "value": 280, "control": 200, "delta": 80, "relativeDelta": 0.4,
         "bound": "<= +20% over the stable", "message": "280 vs stable 200 (+80, +40%)", "requests": 900},
        {"name": "errors", "verdict": "Pass", "value": 0.95, "window": "stage", "requests": 900,
         "bound": "anytime-valid p <= 0.01 (margin 10%)",
         "evidence": {"canaryEvents": 19, "stableEvents": 80, "canaryShare": 0.2, "pValue": 0.8,
                      "ratioLow": 0.52, "ratioHigh": 1.06, "noWorse": True}},
    ]  # fmt: skip
    lines = render_status(obj, NOW).splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["GATE", "CANARY"])
    rows = {line.split()[0]: line for line in lines[header + 1 : header + 4]}
    assert rows["tokens"].split()[:8] == ["tokens", "280", "200", "+80", "(+40%)", "<=", "+20%", "over"]
    assert "Fail" in rows["tokens"]
    assert rows["errors"].split()[:3] == ["errors", "19", "80"]
    assert "ratio 0.95 in [0.52, 1.06] p=0.8 no worse" in rows["errors"]
    assert "anytime-valid p <= 0.01 (margin 10%)" in rows["errors"]
    assert "<= 0.01" in rows["cost"]
    assert "not checked yet (advisory)" in rows["cost"]


def test_status_gates_not_checked_yet_come_from_the_spec() -> None:
    fresh = rollout("Progressing", "RolloutStarted", stage=0)
    del fresh["status"]["lastAnalysis"]
    screen = render_status(fresh, NOW)
    assert "Analysis:     no check yet (every 1m, window 5m, at least 100 canary requests)" in screen
    quality = next(line for line in screen.splitlines() if line.strip().startswith("quality"))
    assert quality.split() == [
        "quality",
        "-",
        "-",
        "-",
        ">=",
        "0.9",
        "and",
        "<=",
        "1",
        "not",
        "checked",
        "yet",
        "-",
        "10m",
    ]


def test_status_failing_and_erroring_gates_carry_their_message() -> None:
    results = gate_results("Fail")
    results[0] |= {"value": 0.31, "message": "0.31 violates <= 0.02"}
    results[1] |= {"verdict": "Error", "value": None, "message": "query failed: connection refused"}
    obj = rollout("Progressing", "Analysing")
    obj["status"]["lastAnalysis"] |= {"verdict": "Fail", "gates": results}
    screen = render_status(obj, NOW)
    row = next(line for line in screen.splitlines() if line.strip().startswith("error-rate"))
    assert row.split()[:6] == ["error-rate", "0.31", "-", "-", "<=", "0.02"]
    assert "0.31 violates <= 0.02" in screen
    assert "query failed: connection refused" in screen


def test_status_shows_a_gate_result_no_longer_in_the_spec() -> None:
    obj = rollout("Progressing", "Analysing")
    obj["spec"]["analysis"]["gates"] = obj["spec"]["analysis"]["gates"][:1]
    screen = render_status(obj, NOW)
    assert "tokens-per-s" in screen
    assert "quality" in screen


def test_status_counters_use_the_operators_defaults_when_the_spec_omits_them() -> None:
    obj = rollout("Progressing", "Analysing", failedChecks=1, consecutiveErrors=3)
    del obj["spec"]["analysis"]["failureLimit"]
    screen = render_status(obj, NOW)
    assert (
        "Counters:     failed checks 1 (1 tolerated, then Rollback)\n"
        "              errors in a row 3 (4 tolerated, then Rollback)\n"
        "              inconclusive in a row 2 (10 tolerated, then Hold)\n"
    ) in screen


# ---- status: holds, conditions, actions, rollback, events ----


def test_status_shows_hold_conditions_and_last_action() -> None:
    obj = rollout(
        "Paused",
        "Inconclusive",
        hold="Inconclusive",
        lastAction={"action": "promote", "at": iso(timedelta(minutes=30)), "result": "advanced to stage 2/3"},
    )
    screen = render_status(obj, NOW)
    assert "Hold:         Inconclusive" in screen
    assert "Last action:  promote, 30m ago: advanced to stage 2/3" in screen
    conditions = screen.splitlines()[screen.splitlines().index("Conditions:") + 1 :][:3]
    assert conditions[0].split() == ["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]
    assert conditions[1].split() == ["Ready", "False", "Inconclusive", "3m", "m"]
    assert conditions[2].split() == ["Stalled", "False", "Inconclusive", "3m", "m"]
    assert "Actions:      promote, promote --full, abort, resume (kubectl modelrollout ACTION chat)" in screen


def test_status_shows_rollback_details() -> None:
    rollback = {
        "at": iso(timedelta(minutes=2)),
        "reason": "AnalysisFailed",
        "gate": "error-rate",
        "value": 0.31,
        "threshold": "<= 0.02",
        "window": "5m",
        "message": "error-rate 0.31 violates <= 0.02",
    }
    screen = render_status(rollout("RolledBack", "AnalysisFailed", rollback=rollback, canaryWeight=0), NOW)
    assert "Rollback:     AnalysisFailed, 2m ago" in screen
    assert "  gate error-rate = 0.31, threshold <= 0.02, window 5m" in screen
    assert "  error-rate 0.31 violates <= 0.02" in screen
    assert "canary 0%, stable 100% (status)" in screen
    assert "Actions:      retry (kubectl modelrollout ACTION chat)" in screen


def test_status_events_are_the_most_recent_oldest_first() -> None:
    events = [
        EventRow("Normal", f"Reason{i}", f"message {i}", NOW - timedelta(minutes=30 - i), count=1 + (i == 29))
        for i in range(30)
    ]
    screen = render_status(rollout("Progressing", "Analysing"), NOW, events=events)
    lines = screen.splitlines()
    title = lines.index(f"Events (last {EVENTS_SHOWN} of 30, oldest first):")
    rows = lines[title + 2 :]
    assert [row.split()[2] for row in rows] == [f"Reason{i}" for i in range(20, 30)]
    assert rows[-1].endswith("message 29 (x2)")


def test_status_events_none_or_unavailable() -> None:
    assert "Events:       none" in render_status(rollout("Progressing", "Analysing"), NOW, events=[])
    forbidden = render_status(rollout("Progressing", "Analysing"), NOW, events_problem="403 Forbidden")
    assert "Events:       unavailable (403 Forbidden)" in forbidden
    assert "Events" not in render_status(rollout("Progressing", "Analysing"), NOW)


def test_status_of_a_paused_spec_and_a_stale_status() -> None:
    obj = rollout("Progressing", "Analysing")
    obj["spec"]["paused"] = True
    obj["metadata"]["generation"] = 6
    screen = render_status(obj, NOW)
    assert "Paused:       spec.paused is set: weights stay, nothing advances" in screen
    assert "Generation:   waiting for the operator: status is for generation 4, spec is at 6" in screen


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"metadata": {"name": "x"}},
        {"metadata": {"name": "x"}, "spec": {}, "status": {}},
        {
            "metadata": {"name": "x"},
            "spec": {"stages": [{}], "analysis": {"gates": [{}]}},
            "status": {"phase": "Odd"},
        },
        {
            "metadata": {"name": "x"},
            "spec": SPEC,
            "status": {
                "phase": "Progressing",
                "stage": 1,
                "lastAnalysis": {"gates": [{"name": "error-rate"}]},
            },
        },
    ],
)
def test_missing_fields_never_break_the_screens(obj: dict[str, Any]) -> None:
    screen = render_status(obj, NOW, events=[EventRow("Normal", "X", "y", None)])
    assert screen.startswith("Name:")
    assert render_list([obj], NOW, all_namespaces=True).count("\n") == 2


# ---- which actions fit ----


@pytest.mark.parametrize(
    ("action", "phase", "extra", "refused"),
    [
        ("promote", "Progressing", {}, None),
        ("promote", "Paused", {}, None),
        ("promote", "Promoted", {}, "already serves 100%"),
        ("promote", "RolledBack", {}, "`retry` starts it again"),
        ("promote", "Aborted", {}, "`retry` starts it again"),
        ("promote-full", "Paused", {}, None),
        ("promote-full", "Promoted", {}, "already serves 100%"),
        ("abort", "Progressing", {}, None),
        ("abort", "Promoted", {}, "roll out the previous model as the canary"),
        ("abort", "RolledBack", {}, "already on stable (RolledBack)"),
        ("abort", "Aborted", {}, "already on stable (Aborted)"),
        ("retry", "RolledBack", {}, None),
        ("retry", "Aborted", {}, None),
        (
            "retry",
            "Progressing",
            {},
            "retry restarts an aborted or rolled-back rollout, this one is Progressing",
        ),
        ("retry", "Promoted", {}, "this one is Promoted"),
        ("resume", "Paused", {"hold": "Inconclusive"}, None),
        ("resume", "Degraded", {"hold": "DriftLimit"}, None),
        ("resume", "Progressing", {}, "nothing is on hold"),
        ("resume", "Paused", {}, "nothing is on hold"),
        ("promote", "Degraded", {"reason": "VirtualServiceNotFound"}, "Degraded (VirtualServiceNotFound)"),
        ("abort", "Degraded", {"reason": "Conflict"}, "acts on nothing until that is fixed"),
        ("promote", "Degraded", {"reason": "DriftLimit", "hold": "DriftLimit"}, None),
    ],
)
def test_action_refusals_follow_the_operators_rules(
    action: str, phase: str, extra: dict[str, Any], refused: str | None
) -> None:
    obj = rollout(phase, extra.pop("reason", "Why"), stage=2 if phase == "Promoted" else 1, **extra)
    got = action_refusal(action, obj)
    if refused is None:
        assert got is None
    else:
        assert got is not None
        assert refused in got


def test_resume_refusal_points_at_spec_paused() -> None:
    obj = rollout("Paused", "Paused")
    obj["spec"]["paused"] = True
    assert action_refusal("resume", obj) == "nothing is on hold (spec.paused is set in Git)"


def test_promote_full_at_the_last_stage_is_refused() -> None:
    refusal = action_refusal("promote-full", rollout("Progressing", "StageAdvanced", stage=2))
    assert refusal == "the rollout is already at its last stage (100%); `promote` finishes it"


def test_no_action_before_the_operator_started_the_rollout_or_its_new_pair() -> None:
    bare = {"metadata": {"name": "fresh"}, "spec": SPEC}
    assert "has not started this rollout yet" in (action_refusal("promote", bare) or "")
    new_pair = rollout("Progressing", "Analysing")
    new_pair["spec"]["canary"]["promptVersion"] = "v14"
    assert "has not started yet" in (action_refusal("abort", new_pair) or "")


def test_no_action_on_an_invalid_spec_or_an_unknown_action() -> None:
    broken = rollout("Progressing", "Analysing")
    broken["spec"]["stages"] = [{"weight": 50}]
    assert (
        action_refusal("promote", broken)
        == "the spec is invalid; the operator acts on nothing until it is fixed"
    )
    assert "unknown action 'skip'" in (action_refusal("skip", rollout("Progressing", "Analysing")) or "")


def test_fitting_actions_in_every_phase() -> None:
    table = {phase.value: fitting_actions(rollout(phase.value, "Why")) for phase in api.Phase}
    assert table == {
        "Pending": ["promote", "promote --full", "abort"],
        "Progressing": ["promote", "promote --full", "abort"],
        "Paused": ["promote", "promote --full", "abort"],
        "Promoted": [],
        "RolledBack": ["retry"],
        "Aborted": ["retry"],
        "Degraded": ["promote", "promote --full", "abort"],
    }


def test_status_puts_problems_under_the_message_and_shows_a_pending_action() -> None:
    conditions = [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Promoted",
            "lastTransitionTime": iso(timedelta(hours=1)),
        },
        {
            "type": "InvalidSpec",
            "status": "True",
            "reason": "InvalidSpec",
            "message": "spec.stages: the last stage must have weight 100",
            "lastTransitionTime": iso(timedelta(minutes=1)),
        },
        {
            "type": "Degraded",
            "status": "True",
            "reason": "WriteFailed",
            "message": "could not set the canary weight to 0% (3 attempts in a row): HTTP 403: denied",
            "lastTransitionTime": iso(timedelta(minutes=1)),
        },
        {
            "type": "Conflict",
            "status": "False",
            "reason": "Resolved",
            "lastTransitionTime": iso(timedelta(hours=1)),
        },
    ]
    obj = rollout(
        "Paused",
        "AwaitingApproval",
        conditions=conditions,
        pendingAction={"action": "promote", "acceptedAt": iso(timedelta(seconds=30))},
        writeFailures=3,
    )
    lines = render_status(obj, NOW).splitlines()
    message = next(i for i, line in enumerate(lines) if line.startswith("Message:"))
    assert lines[message + 1] == "Problems:     InvalidSpec: spec.stages: the last stage must have weight 100"
    assert lines[message + 2].strip() == (
        "Degraded (WriteFailed): could not set the canary weight to 0% (3 attempts in a row): "
        "HTTP 403: denied"
    )
    assert (
        "Pending:      promote, accepted 30s ago; applied once the VirtualService write goes through" in lines
    )
    assert "Writes:       the last 3 VirtualService write(s) failed; retried every tick" in lines


def test_status_without_problems_says_nothing_of_them() -> None:
    screen = render_status(rollout("Progressing", "Analysing"), NOW)
    assert "Problems:" not in screen
    assert "Pending:" not in screen
