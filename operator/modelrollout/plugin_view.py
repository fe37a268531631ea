"""What `kubectl modelrollout` prints, rendered from the plain dicts the API server returns. Pure: no I/O, no
Kubernetes client, so every screen can be tested from sample dicts.

The plugin also decides here whether an action fits the rollout's state, with the operator's own rules
(engine.action_refusal), so a human is told at once instead of finding `ignored: ...` in
status.lastAction later.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from modelrollout import api, engine
from modelrollout.analysis.gates import bound_text
from modelrollout.durations import parse_duration
from modelrollout.engine.actions import NEW_PAIR

# The annotation values, keyed by what the command line calls them.
ACTIONS = {
    "promote": engine.Action.PROMOTE.value,
    "promote-full": engine.Action.PROMOTE_FULL.value,
    "abort": engine.Action.ABORT.value,
    "retry": engine.Action.RETRY.value,
    "resume": engine.Action.RESUME.value,
}
TERMINAL_PHASES = frozenset(phase.value for phase in engine.TERMINAL)
MISSING = "-"
LIST_MESSAGE_WIDTH = 90
EVENTS_SHOWN = 10


@dataclass(frozen=True)
class EventRow:
    """One Event of the rollout, as the plugin read it."""

    type: str
    reason: str
    message: str
    at: datetime | None
    count: int = 1


@dataclass(frozen=True)
class LiveTraffic:
    """The canary weight read from the VirtualService now, or why it could not be read."""

    virtual_service: str
    canary_weight: int | None = None
    consistent: bool = True
    problem: str | None = None
    mirror: int = 0


# ---- small helpers ----


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _text(value: Any) -> str:
    return MISSING if value is None or value == "" else str(value)


def number(value: Any) -> str:
    """A gate value or threshold, short: 0.004, 1900, 1.235e+04, NaN."""
    if value is None:
        return MISSING
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.4g}"


def bounds(minimum: Any, maximum: Any) -> str:
    parts = []
    if minimum is not None:
        parts.append(f">= {number(minimum)}")
    if maximum is not None:
        parts.append(f"<= {number(maximum)}")
    return " and ".join(parts) or MISSING


def parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def elapsed(then: Any, now: datetime) -> timedelta | None:
    """Time since a status timestamp (None: not one); a timestamp without a zone is taken as `now`'s."""
    moment = parse_time(then)
    if moment is None:
        return None
    if moment.tzinfo is None or now.tzinfo is None:
        moment, now = moment.replace(tzinfo=None), now.replace(tzinfo=None)
    return now - moment


def age(then: Any, now: datetime) -> str:
    """Like kubectl's AGE column: 45s, 12m, 5h, 3d."""
    since = elapsed(then, now)
    if since is None:
        return MISSING
    seconds = max(0, int(since.total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 2 * 3600:
        return f"{seconds // 60}m"
    if seconds < 48 * 3600:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Left-aligned columns two spaces apart, like kubectl get; the last column is not padded."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = []
    for row in (headers, *rows):
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def target_text(target: Mapping[str, Any]) -> str:
    if not target:
        return MISSING
    host = str(target.get("host") or "?")
    if target.get("subset"):
        host += f" subset {target['subset']}"
    if target.get("port"):
        host += f" port {target['port']}"
    label = str(target.get("model") or "")
    if target.get("promptVersion"):
        label += f" (prompt {target['promptVersion']})"
    return f"{label.strip()} -> {host}" if label.strip() else host


def _condition_types(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(c.get("type")): c for c in map(_map, _list(status.get("conditions"))) if c.get("type")}


def _stage_count(obj: Mapping[str, Any]) -> int:
    stages = _list(_map(obj.get("spec")).get("stages"))
    return len(stages) or int(_map(obj.get("status")).get("stageCount") or 0)


def progress(obj: Mapping[str, Any]) -> str:
    status = _map(obj.get("status"))
    if status.get("progress"):
        return str(status["progress"])
    if "stage" in status and _stage_count(obj):
        return f"{int(status['stage']) + 1}/{_stage_count(obj)}"
    return MISSING


def generation_lag(obj: Mapping[str, Any]) -> str | None:
    """Why the status may not describe the spec yet, or None when it does."""
    status = _map(obj.get("status"))
    generation = _map(obj.get("metadata")).get("generation")
    observed = status.get("observedGeneration")
    if not api.status_recorded(status):
        return "waiting for the operator: no status yet"
    if generation is not None and (observed is None or observed < generation):
        return (
            f"waiting for the operator: status is for generation {_text(observed)}, spec is at {generation}"
        )
    return None


# ---- whether an action fits ----


def action_refusal(action: str, obj: Mapping[str, Any]) -> str | None:
    """Why `action` (an annotation value) does not fit the rollout now, or None when the operator would act.

    The rules are the operator's own, as the recorded status shows them (engine.recorded_action_refusal:
    Degraded for a missing piece, a conflict or an invalid spec ignores actions). One refusal comes first,
    where the operator would wait: no status yet."""
    status = _map(obj.get("status"))
    if action not in ACTIONS.values():
        return f"unknown action {action!r} (one of {', '.join(ACTIONS.values())})"
    if not api.status_recorded(status) or not status.get("phase"):
        return "the operator has not started this rollout yet (no status); wait for its first status"
    checked = api.checked_spec(dict(_map(obj.get("spec"))))
    try:
        parsed = api.ModelRolloutStatus.model_validate(dict(status))
    except ValueError:
        return "the status cannot be read; wait for the operator to write it again"
    refusal = engine.recorded_action_refusal(action, None if isinstance(checked, list) else checked, parsed)
    if refusal == NEW_PAIR:
        return (
            "the spec names a stable/canary pair the operator has not started yet; it would take no action "
            "now, wait for the new rollout to start"
        )
    return refusal


def fitting_actions(obj: Mapping[str, Any]) -> list[str]:
    """Command lines of the actions that fit now, for the status screen."""
    commands = {
        "promote": "promote",
        "promote-full": "promote --full",
        "abort": "abort",
        "retry": "retry",
        "resume": "resume",
    }
    return [command for action, command in commands.items() if action_refusal(action, obj) is None]


# ---- list ----


def render_list(rollouts: Sequence[Mapping[str, Any]], now: datetime, *, all_namespaces: bool) -> str:
    headers = ["NAME", "PHASE", "STAGE", "WEIGHT", "VERDICT", "AGE", "MESSAGE"]
    if all_namespaces:
        headers.insert(0, "NAMESPACE")
    rows = []
    ordered = sorted(
        rollouts,
        key=lambda o: (
            str(_map(o.get("metadata")).get("namespace")),
            str(_map(o.get("metadata")).get("name")),
        ),
    )
    for obj in ordered:
        meta = _map(obj.get("metadata"))
        status = _map(obj.get("status"))
        weight = status.get("canaryWeight")
        shadow = status.get("shadow")
        verdict = _map(status.get("lastAnalysis")).get("verdict")
        message = generation_lag(obj) or str(status.get("message") or "")
        row = [
            _text(meta.get("name")),
            _text(status.get("phase")),
            progress(obj),
            api.exposure(int(weight), int(shadow or 0)) if weight is not None else MISSING,
            _text(verdict),
            age(meta.get("creationTimestamp"), now),
            _shorten(message, LIST_MESSAGE_WIDTH) or MISSING,
        ]
        if all_namespaces:
            row.insert(0, _text(meta.get("namespace")))
        rows.append(row)
    return "\n".join(table(headers, rows)) + "\n"


# ---- status ----


def _stage_state(index: int, current: int | None, status: Mapping[str, Any], now: datetime) -> str:
    phase = status.get("phase")
    if current is None:
        return ""
    if phase == api.Phase.PROMOTED:
        return "done" if index <= current else ""
    if index < current:
        return "done"
    if index > current:
        return ""
    since = age(status.get("stageStartedAt"), now)
    if phase == api.Phase.ROLLED_BACK:
        return "rolled back here"
    if phase == api.Phase.ABORTED:
        return "aborted here"
    if phase == api.Phase.PAUSED and status.get("reason") == "AwaitingApproval":
        return f"awaiting approval, {since} in stage"
    if status.get("hold"):
        return f"on hold ({status['hold']}), {since} in stage"
    if phase == api.Phase.PAUSED:
        return f"paused, {since} in stage"
    if phase == api.Phase.DEGRADED:
        return f"degraded, {since} in stage"
    return f"current, {since} in stage"


def _stages(obj: Mapping[str, Any], now: datetime) -> list[str]:
    status = _map(obj.get("status"))
    stages = [_map(s) for s in _list(_map(obj.get("spec")).get("stages"))]
    if not stages:
        return ["Stages:       none in the spec"]
    current = int(status["stage"]) if isinstance(status.get("stage"), int) and status.get("phase") else None
    rows = []
    for index, stage in enumerate(stages):
        rows.append(
            [
                ">" if index == current else "",
                str(index + 1),
                api.exposure(int(stage.get("weight") or 0), int(stage.get("shadow") or 0))
                if stage.get("weight") is not None or stage.get("shadow") is not None
                else MISSING,
                _text(stage.get("duration")),
                str(stage.get("approval") or api.Approval.AUTO.value),
                _stage_state(index, current, status, now),
            ]
        )
    return ["Stages:", *table(["", "#", "WEIGHT", "DURATION", "APPROVAL", "STATE"], rows, indent="  ")]


def _traffic(obj: Mapping[str, Any], live: LiveTraffic | None) -> str:
    status = _map(obj.get("status"))
    weight = status.get("canaryWeight")
    shadow = status.get("shadow")
    mirrored = f", {shadow}% mirrored to the canary" if shadow else ""
    decided = (
        f"canary {weight}%, stable {100 - int(weight)}%{mirrored} (status)"
        if weight is not None
        else "no status"
    )
    if live is None:
        return decided
    if live.problem:
        return f"{decided}; VirtualService {live.virtual_service}: {live.problem}"
    note = " (routes disagree or do not sum to 100)" if not live.consistent else ""
    live_mirror = f", {live.mirror}% mirrored" if live.mirror else ""
    return (
        f"{decided}; VirtualService {live.virtual_service}: canary {live.canary_weight}%{live_mirror} "
        f"live{note}"
    )


def _comparison(result: Mapping[str, Any]) -> tuple[str, str, str]:
    """Canary and stable (control) values and how they differ; for a sequential gate, the event counts of
    the stage and the evidence: the rate ratio's confidence interval and the anytime-valid p-value."""
    evidence = _map(result.get("evidence"))
    if evidence:
        low, high = evidence.get("ratioLow"), evidence.get("ratioHigh")
        interval = f"[{number(low)}, {number(high) if high is not None else '+Inf'}]"
        change = f"ratio {number(result.get('value'))} in {interval} p={number(evidence.get('pValue'))}"
        if evidence.get("noWorse"):
            change += " no worse"
        return number(evidence.get("canaryEvents")), number(evidence.get("stableEvents")), change
    value = number(result.get("value")) if result else MISSING
    if result.get("control") is None:
        return value, MISSING, MISSING
    delta, relative = result.get("delta"), result.get("relativeDelta")
    change = ("+" if isinstance(delta, int | float) and delta >= 0 else "") + number(delta)
    if isinstance(relative, int | float):
        change += f" ({'+' if relative >= 0 else ''}{relative * 100:.3g}%)"
    return value, number(result.get("control")), change


def _requirement(gate: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    if result.get("bound"):
        return str(result["bound"])
    try:
        return bound_text(api.Gate.model_validate(gate)) or MISSING
    except ValueError:  # a gate the operator reports as InvalidSpec: show what it says
        return bounds(gate.get("min"), gate.get("max"))


def _unwritten_checks_note(
    status: Mapping[str, Any], last: Mapping[str, Any], interval: Any, now: datetime
) -> list[str]:
    """Why a running rollout's last check in status can be older than its interval: passing checks that
    change nothing essential are written only now and then (engine.quiet), so an old check here alone does
    not mean the checks stopped."""
    since = elapsed(last.get("at"), now)
    if since is None or status.get("phase") not in (api.Phase.PROGRESSING, api.Phase.PAUSED):
        return []
    try:
        every = parse_duration(str(interval))
    except ValueError:
        return []
    if since <= 2 * every:
        return []
    return [
        " " * len("Analysis:     ") + "(as written: checks that change nothing essential reach status only "
        "every few minutes, less often in a large fleet; the operator's /metrics carry every check)"
    ]


def _analysis(obj: Mapping[str, Any], now: datetime) -> list[str]:
    spec_analysis = _map(_map(obj.get("spec")).get("analysis"))
    status = _map(obj.get("status"))
    last = _map(status.get("lastAnalysis"))
    defaults = api.Analysis()
    interval = spec_analysis.get("interval") or "1m"
    window = spec_analysis.get("window") or "2m"
    min_requests = spec_analysis.get("minRequests", defaults.min_requests)
    setup = f"every {interval}, window {window}, at least {min_requests} canary requests"
    if last:
        stage = last.get("stage")
        where = f" at stage {int(stage) + 1}" if isinstance(stage, int) else ""
        head = f"last check {_text(last.get('verdict'))}{where}, {age(last.get('at'), now)} ago ({setup})"
    else:
        head = f"no check yet ({setup})"
    results = {str(g.get("name")): g for g in map(_map, _list(last.get("gates")))}
    gates = [_map(g) for g in _list(spec_analysis.get("gates"))]
    names = [str(g.get("name")) for g in gates] + [
        n for n in results if n not in {g.get("name") for g in gates}
    ]
    by_name = {str(g.get("name")): g for g in gates}
    rows = []
    for name in names:
        gate, result = by_name.get(name, {}), results.get(name, {})
        verdict = result.get("verdict")
        note = "" if verdict in (None, api.Verdict.PASS) else str(result.get("message") or "")
        shown = _text(verdict) if result else "not checked yet"
        if result.get("advisory") or (not result and gate.get("advisory")):
            shown += " (advisory)"
        canary, stable, change = _comparison(result)
        rows.append(
            [
                name,
                canary,
                stable,
                change,
                _requirement(gate, result),
                shown,
                _text(result.get("requests")),
                _text(result.get("window") or gate.get("window") or window),
                _shorten(note, 60),
            ]
        )
    lines = [f"Analysis:     {head}", *_unwritten_checks_note(status, last, interval, now)]
    if rows:
        headers = ["GATE", "CANARY", "STABLE", "CHANGE", "REQUIRES", "VERDICT", "REQUESTS", "WINDOW", "NOTE"]
        lines += table(headers, rows, indent="  ")
    else:
        lines.append("  no gates: nothing can pass, so no stage advances")
    failure_limit = spec_analysis.get("failureLimit", defaults.failure_limit)
    error_limit = spec_analysis.get("errorLimit", defaults.error_limit)
    inconclusive_limit = spec_analysis.get("inconclusiveLimit", defaults.inconclusive_limit)
    on_error = spec_analysis.get("onError", defaults.on_error.value)
    on_inconclusive = spec_analysis.get("onInconclusive", defaults.on_inconclusive.value)
    failed = status.get("failedChecks", 0)
    errors = status.get("consecutiveErrors", 0)
    inconclusive = status.get("consecutiveInconclusive", 0)
    pad = " " * len("Counters:     ")
    lines += [
        f"Counters:     failed checks {failed} ({failure_limit} tolerated, then Rollback)",
        f"{pad}errors in a row {errors} ({error_limit} tolerated, then {on_error})",
        f"{pad}inconclusive in a row {inconclusive} ({inconclusive_limit} tolerated, then {on_inconclusive})",
    ]
    return lines


def _conditions(status: Mapping[str, Any], now: datetime) -> list[str]:
    # kstatus' own first (what Flux and Argo CD read), then troubles that are on, then the rest.
    order = {"Ready": 0, "Reconciling": 1, "Stalled": 2, "Progressing": 3}
    conditions = sorted(
        _condition_types(status).values(),
        key=lambda c: (
            order.get(str(c.get("type")), 4 if c.get("status") == "True" else 5),
            str(c.get("type")),
        ),
    )
    if not conditions:
        return ["Conditions:   none"]
    rows = [
        [
            str(c.get("type")),
            _text(c.get("status")),
            _text(c.get("reason")),
            age(c.get("lastTransitionTime"), now),
            _shorten(str(c.get("message") or ""), 70),
        ]
        for c in conditions
    ]
    return ["Conditions:", *table(["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"], rows, indent="  ")]


# Conditions that say something is wrong when True, in the order a person should read them.
TROUBLES = ("InvalidSpec", "Conflict", "Degraded", "MetricsUnavailable", "AnalysisDelayed")


def _problems(status: Mapping[str, Any]) -> list[str]:
    """The trouble conditions that are on, one line each, right under the message."""
    by_type = _condition_types(status)
    lines = []
    for type_ in TROUBLES:
        condition = by_type.get(type_)
        if condition is None or condition.get("status") != "True":
            continue
        reason = str(condition.get("reason") or "")
        label = type_ if reason in ("", type_) else f"{type_} ({reason})"
        lines.append(f"{label}: {_shorten(str(condition.get('message') or ''), 100)}")
    if not lines:
        return []
    return [f"Problems:     {lines[0]}", *(f"              {line}" for line in lines[1:])]


def _pending(status: Mapping[str, Any], now: datetime) -> list[str]:
    pending = _map(status.get("pendingAction"))
    failures = int(status.get("writeFailures") or 0)
    lines = []
    if pending:
        accepted = age(pending.get("acceptedAt"), now)
        lines.append(
            f"Pending:      {_text(pending.get('action'))}, accepted {accepted} ago; "
            "applied once the VirtualService write goes through"
        )
    if failures:
        lines.append(f"Writes:       the last {failures} VirtualService write(s) failed; retried every tick")
    return lines


def _rollback(status: Mapping[str, Any], now: datetime) -> list[str]:
    rollback = _map(status.get("rollback"))
    if not rollback:
        return []
    lines = [f"Rollback:     {_text(rollback.get('reason'))}, {age(rollback.get('at'), now)} ago"]
    if rollback.get("gate"):
        lines.append(
            f"  gate {rollback['gate']} = {number(rollback.get('value'))}, threshold "
            f"{_text(rollback.get('threshold'))}, window {_text(rollback.get('window'))}"
        )
    if rollback.get("message"):
        lines.append(f"  {rollback['message']}")
    return lines


def _events(events: Sequence[EventRow] | None, now: datetime) -> list[str]:
    if events is None:
        return []
    if not events:
        return ["Events:       none"]
    recent = list(events)[-EVENTS_SHOWN:]
    rows = [
        [
            age(e.at, now),
            e.type,
            e.reason,
            _shorten(e.message, 90) + (f" (x{e.count})" if e.count > 1 else ""),
        ]
        for e in recent
    ]
    title = f"Events (last {len(recent)} of {len(events)}, oldest first):"
    return [title, *table(["AGE", "TYPE", "REASON", "MESSAGE"], rows, indent="  ")]


def render_status(
    obj: Mapping[str, Any],
    now: datetime,
    *,
    events: Sequence[EventRow] | None = None,
    live: LiveTraffic | None = None,
    events_problem: str | None = None,
) -> str:
    """The `status` screen: where the rollout stands, why, and what a human can do about it."""
    meta = _map(obj.get("metadata"))
    spec = _map(obj.get("spec"))
    status = _map(obj.get("status"))
    phase = _text(status.get("phase"))
    if status.get("reason"):
        phase += f" ({status['reason']})"
    lines = [
        f"Name:         {_text(meta.get('name'))}",
        f"Namespace:    {_text(meta.get('namespace'))}",
        f"Phase:        {phase}",
        f"Stage:        {progress(obj)}",
        f"Message:      {_text(status.get('message'))}",
    ]
    lines += _problems(status)
    lag = generation_lag(obj)
    if lag:
        lines.append(f"Generation:   {lag}")
    if spec.get("paused"):
        lines.append("Paused:       spec.paused is set: weights stay, nothing advances")
    lines += [
        f"Stable:       {target_text(_map(spec.get('stable')))}",
        f"Canary:       {target_text(_map(spec.get('canary')))}",
        f"Traffic:      {_traffic(obj, live)}",
        "",
        *_stages(obj, now),
        "",
        *_analysis(obj, now),
        f"Hold:         {_text(status.get('hold')) if status.get('hold') else 'none'}",
        *_pending(status, now),
        "",
        *_conditions(status, now),
        "",
    ]
    last_action = _map(status.get("lastAction"))
    if last_action:
        lines.append(
            f"Last action:  {_text(last_action.get('action'))}, {age(last_action.get('at'), now)} ago: "
            f"{_text(last_action.get('result'))}"
        )
    else:
        lines.append("Last action:  none")
    lines += _rollback(status, now)
    actions = fitting_actions(obj)
    name = _text(meta.get("name"))
    lines.append(
        f"Actions:      {', '.join(actions)} (kubectl modelrollout ACTION {name})"
        if actions
        else "Actions:      none fit now"
    )
    if events_problem:
        lines += ["", f"Events:       unavailable ({events_problem})"]
    elif events is not None:
        lines += ["", *_events(events, now)]
    return "\n".join(lines) + "\n"
