"""The timeline of a rollout for its report: the canary's share of traffic over time, stage by stage, with
where it ended (a rollback or an abort in red, a promotion in green), drawn as inline SVG (no script, no
external asset). Pure: from the status' stage history and the stage still running."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from modelrollout import api
from modelrollout.durations import format_duration

WIDTH, HEIGHT = 720, 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 16, 16, 36
_ENDED_BADLY = ("RolledBack", "Aborted")


@dataclass(frozen=True)
class Step:
    """One stage on the timeline: seconds since the first stage began."""

    start: float
    end: float
    weight: int
    shadow: int
    outcome: str  # how it ended; "" while it runs


def steps(status: api.ModelRolloutStatus, now: datetime) -> tuple[Step, ...]:
    spans = [
        (r.started_at, r.ended_at, r.weight, r.shadow, r.outcome)
        for r in status.stage_history
        if r.started_at is not None and r.ended_at is not None
    ]
    started = status.stage_started_at
    if status.phase in (api.Phase.PROGRESSING, api.Phase.PAUSED) and started is not None:
        spans.append((started, now, status.canary_weight, status.shadow, ""))
    if not spans:
        return ()
    origin = min(span[0] for span in spans)

    def seconds(at: datetime) -> float:
        return max(0.0, (at - origin).total_seconds())

    return tuple(
        Step(seconds(start), seconds(end), weight, shadow, how) for start, end, weight, shadow, how in spans
    )


def _x(seconds: float, span: float) -> float:
    return _LEFT + (WIDTH - _LEFT - _RIGHT) * (seconds / span if span else 0.0)


def _y(percent: float) -> float:
    return _TOP + (HEIGHT - _TOP - _BOTTOM) * (1 - percent / 100)


def svg(timeline: Sequence[Step]) -> str:
    """The canary's weight (solid) and mirrored share (dashed) over time, one step per stage."""
    if not timeline:
        return ""
    span = max(step.end for step in timeline) or 1.0
    parts = [
        f'<svg id="timeline" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="canary traffic over time">',
    ]
    for percent in (0, 25, 50, 75, 100):  # the grid and the axis labels
        y = _y(percent)
        parts.append(
            f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{WIDTH - _RIGHT}" y2="{y:.1f}" stroke="#e5e5ea"/>'
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{percent}%</text>'
        )
    parts.append(
        f'<text x="{WIDTH - _RIGHT}" y="{HEIGHT - 8}" font-size="11" text-anchor="end">'
        f"{html.escape(format_duration(timedelta(seconds=round(span))))}</text>"
        f'<text x="{_LEFT}" y="{HEIGHT - 8}" font-size="11">0s</text>'
    )
    points: list[str] = []
    for step in timeline:
        share = step.weight or 0
        points += [f"{_x(step.start, span):.1f},{_y(share):.1f}", f"{_x(step.end, span):.1f},{_y(share):.1f}"]
        if step.shadow and not step.weight:
            parts.append(
                f'<line class="shadow" x1="{_x(step.start, span):.1f}" y1="{_y(step.shadow):.1f}" '
                f'x2="{_x(step.end, span):.1f}" y2="{_y(step.shadow):.1f}" stroke="#8e8e93" '
                'stroke-dasharray="4 3"/>'
            )
    parts.append(f'<polyline fill="none" stroke="#0a84ff" stroke-width="2" points="{" ".join(points)}"/>')
    for step in timeline:
        if step.outcome in _ENDED_BADLY or step.outcome == "Promoted":
            colour = "#cf222e" if step.outcome in _ENDED_BADLY else "#1a7f37"
            x, y = _x(step.end, span), _y(step.weight or step.shadow)
            parts.append(
                f'<circle class="ending" cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{colour}"/>'
                f'<text x="{x - 6:.1f}" y="{max(y - 9, 12):.1f}" font-size="11" text-anchor="end" '
                f'fill="{colour}">{html.escape(step.outcome)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)
