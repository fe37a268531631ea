"""The decision report of one rollout, from its object (spec and status) alone: per stage, where traffic was,
which users and how many requests each variant got, how the stage ended, and each gate's control against
treatment with the decision. Pure; `kubectl modelrollout report` prints it as a table, Markdown, JSON or one
self-contained HTML page.

The stage history is the operator's (status.stageHistory, a record per finished stage); the stage still
running is shown from the latest check.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from modelrollout import api
from modelrollout.engine.history import gate_summary, stage_requests
from modelrollout.plugin_view import MISSING, number, table, target_text
from modelrollout.report_timeline import Step, steps, svg

_HEADERS = ("Stage", "Traffic", "Users", "Requests (canary/stable)", "Ran", "Last check", "Outcome")
_GATE_HEADERS = ("Gate", "Control (stable)", "Treatment (canary)", "Delta", "Required", "Decision")


@dataclass(frozen=True)
class GateRow:
    gate: str
    control: str
    treatment: str
    delta: str
    required: str
    decision: str


@dataclass(frozen=True)
class StageRow:
    stage: str
    traffic: str
    users: str
    requests: str
    ran: str
    last_check: str
    outcome: str
    gates: tuple[GateRow, ...]


@dataclass(frozen=True)
class SampleRow:
    """A judged pair as the judge service kept it (redacted and shortened there)."""

    outcome: str  # the canary's: win, loss or tie
    source: str
    prompt: str
    stable_answer: str
    canary_answer: str
    scores: str  # per criterion: stable against canary
    reasoning: str
    judge: str  # the judge model and rubric version


@dataclass(frozen=True)
class Report:
    rollout: str
    stable: str
    canary: str
    experiment_id: str
    phase: str
    message: str
    stages: tuple[StageRow, ...]
    timeline: tuple[Step, ...] = ()
    samples: tuple[SampleRow, ...] = ()
    cost: str = MISSING  # per request, from the latest llm-cost-per-request gate


def _users(spec: Mapping[str, Any], weight: int, shadow: int) -> str:
    """Which users the canary answered: with sticky buckets, the buckets below the weight; else a random
    share of requests (users are not kept apart)."""
    if shadow and not weight:
        return "none (mirrored only)"
    sticky = (spec.get("experiment") or {}).get("stickiness")
    if sticky and weight:
        return f"buckets 0-{weight - 1} ({weight}%)" if weight < 100 else "all buckets"
    return f"{weight}% of requests, any user" if weight else "none"


def _duration(started: datetime | None, ended: datetime | None) -> str:
    if started is None or ended is None:
        return MISSING
    seconds = max(0, int((ended - started).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 2 * 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def _delta(value: float | None, control: float | None) -> str:
    if value is None or control is None:
        return MISSING
    delta = value - control
    if abs(delta) <= 1e-9 * max(abs(value), abs(control), 1.0):
        delta = 0.0  # floating-point noise of two equal rates, not a difference
    text = ("+" if delta >= 0 else "") + number(delta)
    if control:
        relative = delta / control
        text += f" ({'+' if relative >= 0 else ''}{relative * 100:.3g}%)"
    return text


def decision_word(gate: api.GateSummary) -> str:
    """The gate's verdict in the report's words."""
    if gate.verdict == api.Verdict.FAIL:
        return "worse" if gate.control is not None or gate.p_value is not None else "breached"
    if gate.verdict == api.Verdict.INCONCLUSIVE:
        return "not enough data"
    if gate.verdict == api.Verdict.ERROR:
        return "no answer (error)"
    if gate.p_value is not None:
        return "no worse (evidence)" if gate.no_worse else "no worse so far"
    return "no worse" if gate.control is not None else "within bounds"


def _gate_names(spec: Mapping[str, Any], template: api.GateTemplate) -> frozenset[str]:
    """The names of the spec's gates on `template`."""
    gates = (spec.get("analysis") or {}).get("gates") or []
    return frozenset(str(g.get("name")) for g in gates if str(g.get("template", "")) == template)


def _judged_gates(spec: Mapping[str, Any]) -> frozenset[str]:
    """The names of the gates that count the judge's wins and losses."""
    return _gate_names(spec, api.GateTemplate.JUDGE_WIN_RATE)


def _counts(gate: api.GateSummary, judged: bool) -> tuple[str, str]:
    """A sequential gate's control and treatment cells: the events each variant had in the stage; for the
    judge, the pairs each variant won (the canary's losses are the stable's wins)."""
    if gate.canary_events is None or gate.stable_events is None:
        return MISSING, MISSING
    if judged:
        return f"won {number(gate.canary_events)}", f"won {number(gate.stable_events)}"
    return f"{number(gate.stable_events)} events", f"{number(gate.canary_events)} events"


def _interval(gate: api.GateSummary) -> str:
    if gate.ratio_low is None:
        return ""
    high = number(gate.ratio_high) if gate.ratio_high is not None else "+Inf"
    return f" ratio in [{number(gate.ratio_low)}, {high}]"


def _gate_row(gate: api.GateSummary, judged: frozenset[str] = frozenset()) -> GateRow:
    control, treatment = number(gate.control), number(gate.value)
    delta = _delta(gate.value, gate.control)
    if gate.p_value is not None:
        control, treatment = _counts(gate, gate.name in judged)
        delta = f"p={number(gate.p_value)}{_interval(gate)}"
    return GateRow(
        gate=gate.name,
        control=control,
        treatment=treatment,
        delta=delta,
        required=gate.bound or MISSING,
        decision=f"{gate.verdict.value}: {decision_word(gate)}{' (advisory)' if gate.advisory else ''}",
    )


def _requests(canary: float | None, stable: float | None) -> str:
    if canary is None or stable is None:
        return MISSING
    total = canary + stable
    share = f" ({canary / total * 100:.1f}% canary)" if total else ""
    return f"{canary:,.0f} / {stable:,.0f}{share}"


def _stage_label(stage: int, count: int) -> str:
    return f"{stage + 1}/{count}" if count else str(stage + 1)


def _gate_rows(spec: Mapping[str, Any], gates: Sequence[api.GateSummary]) -> tuple[GateRow, ...]:
    judged = _judged_gates(spec)
    return tuple(_gate_row(g, judged) for g in gates)


def _finished(spec: Mapping[str, Any], record: api.StageRecord, count: int) -> StageRow:
    return StageRow(
        stage=_stage_label(record.stage, count),
        traffic=api.exposure(record.weight, record.shadow),
        users=_users(spec, record.weight, record.shadow),
        requests=_requests(record.canary_requests, record.stable_requests),
        ran=_duration(record.started_at, record.ended_at),
        last_check=record.verdict.value if record.verdict else MISSING,
        outcome=record.outcome,
        gates=_gate_rows(spec, record.gates),
    )


def _running(spec: Mapping[str, Any], status: api.ModelRolloutStatus, count: int, now: datetime) -> StageRow:
    last = status.last_analysis
    check = last if last is not None and last.stage == status.stage else None
    counted = stage_requests(status, status.stage)
    gates = [gate_summary(g) for g in (check.gates if check else [])]
    return StageRow(
        stage=_stage_label(status.stage, count),
        traffic=api.exposure(status.canary_weight, status.shadow),
        users=_users(spec, status.canary_weight, status.shadow),
        requests=_requests(
            counted.canary_events if counted else None, counted.stable_events if counted else None
        ),
        ran=_duration(status.stage_started_at, now),
        last_check=check.verdict.value if check else MISSING,
        outcome=f"running ({status.phase.value})",
        gates=_gate_rows(spec, gates),
    )


def _stage_count(spec: Mapping[str, Any], status: api.ModelRolloutStatus) -> int:
    return len(spec.get("stages") or []) or (status.stage_count or 0)


def finished_stages(spec: Mapping[str, Any], status: api.ModelRolloutStatus) -> tuple[StageRow, ...]:
    """The rows of the stages the operator recorded as finished (what notifications carry)."""
    count = _stage_count(spec, status)
    return tuple(_finished(spec, record, count) for record in status.stage_history)


def _line(text: str) -> str:
    return text if len(text) <= api.REPORT_LINE else text[: api.REPORT_LINE - 3] + "..."


def summary(spec: Mapping[str, Any], status: api.ModelRolloutStatus) -> api.ReportSummary:
    """status.report: the decision, the latest stages and the gates of the latest check, a line each. It
    depends on the status alone (no clock), so a tick that changes nothing else leaves it as it is."""
    count = _stage_count(spec, status)
    stages = [
        f"{row.stage} at {row.traffic} for {row.ran}: {row.outcome}, last check {row.last_check}"
        for row in finished_stages(spec, status)
    ]
    if status.phase in (api.Phase.PROGRESSING, api.Phase.PAUSED) and status.pair_hash is not None:
        stages.append(
            f"{_stage_label(status.stage, count)} at {api.exposure(status.canary_weight, status.shadow)}: "
            f"running ({status.phase.value})"
        )
    check = status.last_analysis
    gates = [
        f"{row.gate}: control {row.control}, treatment {row.treatment}, delta {row.delta}, "
        f"required {row.required}: {row.decision}"
        for row in _gate_rows(spec, [gate_summary(result) for result in (check.gates if check else [])])
    ]
    decision = f"{status.phase.value}: {status.message}" if status.message else status.phase.value
    return api.ReportSummary(
        decision=_line(decision),
        stages=[_line(line) for line in stages[-api.REPORT_STAGES :]],
        gates=[_line(line) for line in gates[: api.MAX_GATES]],
    )


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text(value: Any, limit: int = 2_000) -> str:
    """A field of a sample as text, bounded (the judge service's answer is data, not trusted layout)."""
    return _cut(value if isinstance(value, str) else "" if value is None else str(value), limit)


def _scores(sample: Mapping[str, Any]) -> str:
    stable, canary = sample.get("stable_scores") or {}, sample.get("canary_scores") or {}
    if not isinstance(stable, Mapping) or not isinstance(canary, Mapping):
        return MISSING
    return ", ".join(
        f"{_text(name, 40)} {number(_float(stable.get(name)))} vs {number(_float(canary.get(name)))}"
        for name in list(stable)[:8]
    )


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def sample_rows(samples: Sequence[Mapping[str, Any]]) -> tuple[SampleRow, ...]:
    """The judge service's samples (`GET /v1/samples/...`) as report rows; at most ten."""
    return tuple(
        SampleRow(
            outcome=_text(sample.get("outcome"), 8),
            source=_text(sample.get("source"), 16),
            prompt=_text(sample.get("prompt")),
            stable_answer=_text(sample.get("stable_answer")),
            canary_answer=_text(sample.get("canary_answer")),
            scores=_scores(sample),
            reasoning=_text(sample.get("reasoning")),
            judge=f"{_text(sample.get('judge_model'), 100)} ({_text(sample.get('rubric'), 40)})",
        )
        for sample in samples[:10]
        if isinstance(sample, Mapping)
    )


def _cost(spec: Mapping[str, Any], status: api.ModelRolloutStatus) -> str:
    """The canary's cost per request (and the stable's, when the gate compares), from the latest check."""
    priced = _gate_names(spec, api.GateTemplate.LLM_COST_PER_REQUEST)
    check = status.last_analysis
    for result in check.gates if check else []:
        if result.name in priced and result.value is not None:
            text = f"canary ${result.value:.4g}"
            return text + (f", stable ${result.control:.4g}" if result.control is not None else "")
    return MISSING


def decision_report(
    obj: Mapping[str, Any], now: datetime, samples: Sequence[Mapping[str, Any]] = ()
) -> Report:
    spec = obj.get("spec") or {}
    metadata = obj.get("metadata") or {}
    status = api.ModelRolloutStatus.model_validate(obj.get("status") or {})
    rows = list(finished_stages(spec, status))
    if status.phase in (api.Phase.PROGRESSING, api.Phase.PAUSED) and status.pair_hash is not None:
        rows.append(_running(spec, status, _stage_count(spec, status), now))
    stable = (
        status.stable.model_dump(by_alias=True, exclude_none=True) if status.stable else spec.get("stable")
    )
    canary = (
        status.canary.model_dump(by_alias=True, exclude_none=True) if status.canary else spec.get("canary")
    )
    return Report(
        rollout=f"{metadata.get('namespace', MISSING)}/{metadata.get('name', MISSING)}",
        stable=target_text(stable or {}),
        canary=target_text(canary or {}),
        experiment_id=status.experiment_id or MISSING,
        phase=f"{status.phase.value} ({status.reason})"
        if status.reason and status.reason != status.phase.value
        else status.phase.value,
        message=status.message or MISSING,
        stages=tuple(rows),
        timeline=steps(status, now),
        samples=sample_rows(samples),
        cost=_cost(spec, status),
    )


def _stage_cells(row: StageRow) -> list[str]:
    return [row.stage, row.traffic, row.users, row.requests, row.ran, row.last_check, row.outcome]


def _gate_cells(row: GateRow) -> list[str]:
    return [row.gate, row.control, row.treatment, row.delta, row.required, row.decision]


def render_table(report: Report) -> str:
    lines = [
        f"Rollout:      {report.rollout}",
        f"Stable:       {report.stable}",
        f"Canary:       {report.canary}",
        f"Experiment:   {report.experiment_id}",
        f"Cost/request: {report.cost}",
        f"Decision:     {report.phase}: {report.message}",
        "",
    ]
    if not report.stages:
        lines.append("No stage has run yet.")
        return "\n".join(lines) + "\n"
    lines += table(_HEADERS, [_stage_cells(row) for row in report.stages])
    for row in report.stages:
        if row.gates:
            lines += ["", f"Stage {row.stage} at {row.traffic}, last check {row.last_check}:"]
            lines += table(_GATE_HEADERS, [_gate_cells(g) for g in row.gates], indent="  ")
    if report.samples:
        lines += ["", "Sample pairs (redacted by the judge service):"]
        for sample in report.samples:
            lines += [
                f"- canary {sample.outcome} ({sample.source}); {sample.scores}",
                f"  prompt:  {_one_line(sample.prompt)}",
                f"  stable:  {_one_line(sample.stable_answer)}",
                f"  canary:  {_one_line(sample.canary_answer)}",
                f"  judge:   {_one_line(sample.reasoning)}",
            ]
    return "\n".join(lines) + "\n"


def _one_line(text: str, limit: int = 160) -> str:
    return _cut(" ".join(text.split()), limit)


_SAMPLE_HEADERS = (
    "Canary",
    "Prompt",
    "Stable's answer",
    "Canary's answer",
    "Scores (stable vs canary)",
    "Judge",
)


def _sample_cells(sample: SampleRow) -> list[str]:
    return [
        f"{sample.outcome} ({sample.source})",
        sample.prompt,
        sample.stable_answer,
        sample.canary_answer,
        sample.scores,
        f"{sample.reasoning} ({sample.judge})",
    ]


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def cell(text: str) -> str:
        # Markdown renderers pass raw HTML through: a prompt or an answer must not become markup.
        return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")

    return [
        "| " + " | ".join(cell(h) for h in headers) + " |",
        "|" + "---|" * len(headers),
        *("| " + " | ".join(cell(c) for c in row) + " |" for row in rows),
    ]


def render_markdown(report: Report) -> str:
    lines = [
        f"## Rollout `{report.rollout}`",
        "",
        f"- **Stable:** {report.stable}",
        f"- **Canary:** {report.canary}",
        f"- **Experiment:** `{report.experiment_id}`",
        f"- **Cost per request:** {report.cost}",
        f"- **Decision:** {report.phase}: {report.message}",
        "",
    ]
    if not report.stages:
        return "\n".join([*lines, "No stage has run yet."]) + "\n"
    lines += _markdown_table(_HEADERS, [_stage_cells(row) for row in report.stages])
    for row in report.stages:
        if row.gates:
            lines += ["", f"### Stage {row.stage} at {row.traffic}: {row.outcome}", ""]
            lines += _markdown_table(_GATE_HEADERS, [_gate_cells(g) for g in row.gates])
    if report.samples:
        lines += ["", "### Sample pairs (redacted)", ""]
        lines += _markdown_table(_SAMPLE_HEADERS, [_sample_cells(s) for s in report.samples])
    return "\n".join(lines) + "\n"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1d1d1f; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
dl { display: grid; grid-template-columns: max-content auto; gap: .25rem 1rem; }
dt { font-weight: 600; } dd { margin: 0; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { border: 1px solid #d2d2d7; padding: .3rem .6rem; text-align: left; }
th { background: #f5f5f7; }
.Pass { color: #1a7f37; } .Fail { color: #cf222e; font-weight: 600; }
.Inconclusive, .Error { color: #9a6700; }
"""


def _html_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], css_id: str, decision_column: int
) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for index, cell in enumerate(row):
            css = f' class="{html.escape(cell.split(":")[0])}"' if index == decision_column else ""
            cells.append(f"<td{css}>{html.escape(cell)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table id="{css_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def render_html(report: Report) -> str:
    """One self-contained page (inline style, no script, nothing fetched)."""
    facts = (
        ("Stable", report.stable),
        ("Canary", report.canary),
        ("Experiment", report.experiment_id),
        ("Cost per request", report.cost),
        ("Decision", f"{report.phase}: {report.message}"),
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Rollout {html.escape(report.rollout)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Rollout {html.escape(report.rollout)}</h1>",
        "<dl>" + "".join(f"<dt>{k}</dt><dd>{html.escape(v)}</dd>" for k, v in facts) + "</dl>",
    ]
    if not report.stages:
        parts.append("<p>No stage has run yet.</p>")
    else:
        if report.timeline:
            parts.append(
                f"<figure>{svg(report.timeline)}<figcaption>Canary traffic over time</figcaption></figure>"
            )
        parts.append(_html_table(_HEADERS, [_stage_cells(row) for row in report.stages], "stages", 5))
        for number_, row in enumerate(report.stages, start=1):
            if row.gates:
                title = f"Stage {row.stage} at {row.traffic}: {row.outcome}"
                parts.append(f"<h2>{html.escape(title)}</h2>")
                gates = [_gate_cells(g) for g in row.gates]
                parts.append(_html_table(_GATE_HEADERS, gates, f"gates-{number_}", 5))
    if report.samples:
        parts.append("<h2>Sample pairs (redacted by the judge service)</h2>")
        cells = [_sample_cells(sample) for sample in report.samples]
        parts.append(_html_table(_SAMPLE_HEADERS, cells, "samples", -1))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_json(report: Report) -> str:
    return json.dumps(asdict(report), indent=2) + "\n"


RENDERERS = {"table": render_table, "markdown": render_markdown, "json": render_json, "html": render_html}


def render(
    obj: Mapping[str, Any], now: datetime, output: str = "table", samples: Sequence[Mapping[str, Any]] = ()
) -> str:
    return RENDERERS[output](decision_report(obj, now, samples))
