"""The decision report (report.py) from rollouts the engine drove, tick by tick: a stage per row with its
traffic, users, requests, duration and outcome, and each gate's control against treatment."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from test_kstatus import T0, P, Ticks, spec

from modelrollout import api, engine, report, report_timeline
from modelrollout.analysis import CheckResult
from modelrollout.engine import Observation, RoutingView


def as_object(status: api.ModelRolloutStatus, **spec_extra: Any) -> dict[str, Any]:
    raw_spec = {
        "stable": {"host": "llm-gpt4o", "model": "gpt-4o"},
        "canary": {"host": "llm-claude", "model": "claude-opus-4-8"},
        "stages": [{"weight": 5}, {"weight": 20}, {"weight": 100}],
        **spec_extra,
    }
    return {
        "metadata": {"name": "chat", "namespace": "llm"},
        "spec": raw_spec,
        "status": status.model_dump(by_alias=True, mode="json", exclude_none=True),
    }


def decide_on(ticks: Ticks, check: CheckResult) -> None:
    """One tick of the engine on `check`, at the live weight."""
    obs = Observation(
        now=ticks.now,
        generation=7,
        operator_started_at=T0 - timedelta(hours=1),
        routing=RoutingView(canary_weight=ticks.live, last_writer=engine.FIELD_MANAGER),
        check=check,
    )
    ticks.status = engine.decide(ticks.spec, ticks.status, obs).status


def promoted() -> api.ModelRolloutStatus:
    ticks = Ticks()
    ticks.to_manual_gate()
    ticks.tick(action="promote")
    return ticks.tick(timedelta(seconds=10), verdict=P)


def test_a_promoted_rollout_reads_stage_by_stage() -> None:
    built = report.decision_report(as_object(promoted()), T0 + timedelta(hours=1))
    assert built.rollout == "llm/chat"
    assert built.stable == "gpt-4o -> llm-gpt4o"
    assert built.canary == "claude-opus-4-8 -> llm-claude"
    assert built.phase == "Promoted"
    assert [(r.stage, r.traffic, r.ran, r.last_check, r.outcome) for r in built.stages] == [
        ("1/3", "5%", "60s", "Pass", "Advanced (Soak)"),
        ("2/3", "20%", "60s", "Pass", "Advanced (Promote)"),
        ("3/3", "100%", "10s", "Pass", "Promoted"),
    ]
    assert [r.users for r in built.stages] == [
        "5% of requests, any user",
        "20% of requests, any user",
        "100% of requests, any user",
    ]
    gate = built.stages[0].gates[0]
    assert (gate.gate, gate.treatment, gate.control, gate.required, gate.decision) == (
        "error-rate",
        "0.004",
        "-",
        "<= 0.02",
        "Pass: within bounds",
    )


def test_sticky_buckets_name_the_users_of_each_stage() -> None:
    obj = as_object(promoted(), experiment={"stickiness": {"bucketHeader": "x-user-bucket"}})
    built = report.decision_report(obj, T0 + timedelta(hours=1))
    assert [r.users for r in built.stages] == ["buckets 0-4 (5%)", "buckets 0-19 (20%)", "all buckets"]


def test_a_comparing_gate_shows_control_treatment_and_delta() -> None:
    ticks = Ticks(spec=spec(failureLimit=0))
    ticks.tick()
    gate = api.GateResult(
        name="output-tokens",
        verdict=api.Verdict.FAIL,
        value=540.0,
        control=400.0,
        bound="canary at most +20% over stable",
        window="5m",
    )
    ticks.now += timedelta(seconds=30)
    check = CheckResult(
        at=ticks.now, verdict=api.Verdict.FAIL, gates=(gate,), canary_requests=900, summary="output-tokens"
    )
    decide_on(ticks, check)
    built = report.decision_report(as_object(ticks.status), ticks.now)
    (row,) = built.stages
    assert (row.outcome, row.last_check) == ("RolledBack", "Fail")
    (shown,) = row.gates
    assert (shown.control, shown.treatment, shown.delta, shown.decision) == (
        "400",
        "540",
        "+140 (+35%)",
        "Fail: worse",
    )
    text = report.render_table(built)
    assert "output-tokens" in text
    assert "+140 (+35%)" in text
    markdown = report.render_markdown(built)
    assert (
        "| output-tokens | 400 | 540 | +140 (+35%) | canary at most +20% over stable | Fail: worse |"
        in markdown
    )
    assert json.loads(report.render_json(built))["stages"][0]["gates"][0]["delta"] == "+140 (+35%)"


def test_sequential_gates_show_each_variant_s_events_and_the_judge_its_wins() -> None:
    """The judge-win-rate gate's events are the canary's losses (pairs the stable won) and its wins."""
    ticks = Ticks(spec=spec(failureLimit=0))
    ticks.tick()

    def tested(name: str, canary: float, stable: float, high: float | None) -> api.GateResult:
        return api.GateResult(
            name=name,
            verdict=api.Verdict.FAIL,
            value=None,
            bound="anytime-valid p <= 0.01 (margin 10%)",
            window="stage",
            evidence=api.Evidence(
                canary_events=canary,
                stable_events=stable,
                canary_share=0.5,
                p_value=0.003,
                ratio_low=1.2,
                ratio_high=high,
            ),
        )

    ticks.now += timedelta(seconds=30)
    gates = (tested("quality", 18.0, 0.0, None), tested("errors", 40.0, 12.0, 5.5))
    check = CheckResult(at=ticks.now, verdict=api.Verdict.FAIL, gates=gates, canary_requests=900, summary="")
    decide_on(ticks, check)
    judged = {"gates": [{"name": "quality", "template": "judge-win-rate", "test": {}}]}
    built = report.decision_report(as_object(ticks.status, analysis=judged), ticks.now)
    (row,) = built.stages
    quality, errors = row.gates
    assert (quality.control, quality.treatment, quality.delta, quality.decision) == (
        "won 18",
        "won 0",
        "p=0.003 ratio in [1.2, +Inf]",
        "Fail: worse",
    )
    assert (errors.control, errors.treatment, errors.delta) == (
        "12 events",
        "40 events",
        "p=0.003 ratio in [1.2, 5.5]",
    )


def test_the_running_stage_is_shown_from_the_latest_check() -> None:
    ticks = Ticks()
    ticks.tick()
    running = ticks.tick(timedelta(seconds=10), verdict=P)
    built = report.decision_report(as_object(running), T0 + timedelta(seconds=25))
    (row,) = built.stages
    assert (row.stage, row.traffic, row.ran, row.last_check) == ("1/3", "5%", "25s", "Pass")
    assert row.outcome == "running (Progressing)"


def test_nothing_run_yet_says_so() -> None:
    obj = as_object(api.ModelRolloutStatus())
    assert "No stage has run yet." in report.render(obj, T0, "table")
    assert "No stage has run yet." in report.render(obj, T0, "markdown")


def test_the_html_page_escapes_what_it_shows_and_fetches_nothing() -> None:
    status = promoted().model_copy(update={"message": "<script>alert(1)</script> & more"})
    page = report.render(as_object(status), T0 + timedelta(hours=1), "html")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    assert "http" not in page  # self-contained: no stylesheet, script or image from anywhere
    assert page.count('<table id="gates-') == 3
    assert '<td class="Pass">Pass: within bounds</td>' in page


def test_equal_values_differ_by_nothing_not_by_rounding_noise() -> None:
    summary = api.GateSummary(name="g", verdict=api.Verdict.PASS, value=200.00000000000003, control=200.0)
    assert (
        report.decision_report(
            as_object(
                api.ModelRolloutStatus(
                    phase=api.Phase.PROMOTED,
                    stage_history=[
                        api.StageRecord(stage=0, weight=5, ended_at=T0, outcome="Promoted", gates=[summary])
                    ],
                )
            ),
            T0,
        )
        .stages[0]
        .gates[0]
        .delta
        == "+0 (+0%)"
    )


def test_decisions_read_in_words() -> None:
    def word(**fields: Any) -> str:
        return report.decision_word(api.GateSummary(name="g", **fields))

    assert word(verdict=api.Verdict.FAIL) == "breached"
    assert word(verdict=api.Verdict.FAIL, control=1.0) == "worse"
    assert word(verdict=api.Verdict.FAIL, p_value=0.001) == "worse"
    assert word(verdict=api.Verdict.INCONCLUSIVE) == "not enough data"
    assert word(verdict=api.Verdict.ERROR) == "no answer (error)"
    assert word(verdict=api.Verdict.PASS) == "within bounds"
    assert word(verdict=api.Verdict.PASS, control=1.0) == "no worse"
    assert word(verdict=api.Verdict.PASS, p_value=0.4) == "no worse so far"
    assert word(verdict=api.Verdict.PASS, p_value=0.4, no_worse=True) == "no worse (evidence)"


def test_the_running_stage_counts_requests_from_the_sample_ratio_check_not_a_gates_events() -> None:
    since = T0
    status = api.ModelRolloutStatus(
        phase=api.Phase.PROGRESSING,
        pair_hash="p",
        stage=0,
        canary_weight=10,
        stage_started_at=since,
        accumulations=[
            api.Accumulation(name="errors", stage=0, canary_weight=10, since=since, canary_events=3),
            api.Accumulation(
                name="(sample-ratio)",
                stage=0,
                canary_weight=10,
                since=since,
                canary_events=100,
                stable_events=900,
            ),
        ],
    )
    (row,) = report.decision_report(as_object(status), T0 + timedelta(seconds=30)).stages
    assert row.requests == "100 / 900 (10.0% canary)"


def test_the_compact_report_is_bounded() -> None:
    ticks = Ticks()
    ticks.to_manual_gate()
    status = ticks.status.model_copy(update={"message": "x" * 5000})
    summary = report.summary({"stages": [{"weight": 5}, {"weight": 20}, {"weight": 100}]}, status)
    assert len(summary.decision) == api.REPORT_LINE
    assert summary.decision.endswith("...")
    assert all(len(line) <= api.REPORT_LINE for line in [*summary.stages, *summary.gates])
    assert summary.stages == [
        "1/3 at 5% for 60s: Advanced (Soak), last check Pass",
        "2/3 at 20%: running (Paused)",
    ]


def test_the_timeline_steps_through_the_stages_and_marks_how_the_rollout_ended() -> None:
    status = promoted()
    timeline = report_timeline.steps(status, T0 + timedelta(hours=1))
    assert [(s.start, s.end, s.weight, s.outcome) for s in timeline] == [
        (0.0, 60.0, 5, "Advanced (Soak)"),
        (60.0, 120.0, 20, "Advanced (Promote)"),
        (120.0, 130.0, 100, "Promoted"),
    ]
    drawn = report_timeline.svg(timeline)
    assert drawn.startswith('<svg id="timeline"')
    assert drawn.count('<circle class="ending"') == 1
    assert ">Promoted</text>" in drawn
    page = report.render(as_object(status), T0 + timedelta(hours=1), "html")
    assert drawn in page
    assert report_timeline.svg(()) == ""


HOSTILE_SAMPLE = {
    "outcome": "loss",
    "source": "live",
    "prompt": "<img src=x onerror=alert(1)> what is 2+2?",
    "stable_answer": "4",
    "canary_answer": "</td><script>alert(2)</script>",
    "stable_scores": {"accuracy": 9, "clarity": 8.5},
    "canary_scores": {"accuracy": 2, "clarity": "high"},
    "reasoning": "A is correct | B is not",
    "judge_model": "judge",
    "rubric": "pairwise-v1",
}


def test_sample_pairs_are_shown_in_every_format_and_escaped() -> None:
    obj = as_object(promoted())
    now = T0 + timedelta(hours=1)
    page = report.render(obj, now, "html", [HOSTILE_SAMPLE, "not a sample"])  # type: ignore[list-item]
    assert "<script>" not in page
    assert "<img" not in page
    assert "&lt;/td&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in page
    assert page.count('<table id="samples">') == 1
    (row,) = report.decision_report(obj, now, [HOSTILE_SAMPLE]).samples
    assert row.scores == "accuracy 9 vs 2, clarity 8.5 vs -"  # a score that is not a number is not shown
    assert row.judge == "judge (pairwise-v1)"
    markdown = report.render(obj, now, "markdown", [HOSTILE_SAMPLE])
    assert "| loss (live) | &lt;img src=x onerror=alert(1)&gt; what is 2+2? | 4 |" in markdown
    assert "<" not in markdown
    assert "A is correct \\| B is not (judge (pairwise-v1))" in markdown
    text = report.render(obj, now, "table", [HOSTILE_SAMPLE])
    assert "- canary loss (live); accuracy 9 vs 2, clarity 8.5 vs -" in text
    assert json.loads(report.render(obj, now, "json", [HOSTILE_SAMPLE]))["samples"][0]["outcome"] == "loss"
    assert "Sample pairs" not in report.render(obj, now, "table")


def test_an_advisory_gate_says_it_decided_nothing() -> None:
    advisory = api.GateSummary(
        name="accuracy-score", verdict=api.Verdict.FAIL, value=6.0, control=8.0, bound="x", advisory=True
    )
    assert report._gate_row(advisory).decision == "Fail: worse (advisory)"


def test_the_cost_per_request_comes_from_the_latest_cost_gate() -> None:
    cost = api.GateResult(name="cost", verdict=api.Verdict.PASS, value=0.0071, control=0.0032, window="2m")
    status = promoted().model_copy(
        update={"last_analysis": api.AnalysisResult(at=T0, stage=2, verdict=api.Verdict.PASS, gates=[cost])}
    )
    gates = {"gates": [{"name": "cost", "template": "llm-cost-per-request", "source": "vllm", "max": 1}]}
    built = report.decision_report(as_object(status, analysis=gates), T0)
    assert built.cost == "canary $0.0071, stable $0.0032"
    assert "Cost/request: canary $0.0071, stable $0.0032" in report.render_table(built)
    assert report.decision_report(as_object(status), T0).cost == "-"  # no cost gate: not known
