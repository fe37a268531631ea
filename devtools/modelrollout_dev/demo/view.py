"""The live terminal view and the summary: pure text from rollout objects."""

from __future__ import annotations

from typing import Any

from modelrollout import api


def _gate_line(gate: dict[str, Any]) -> str:
    value = gate.get("value")
    shown = "-" if value is None else f"{value:.4g}"
    bounds = " and ".join(
        f"{sign} {gate[key]:g}" for key, sign in (("min", ">="), ("max", "<=")) if gate.get(key) is not None
    )
    return f"    {gate['name']:<16} {shown:>10}  {bounds:<12} {gate.get('verdict', '')}"


def _stage_label(stage: dict[str, Any]) -> str:
    return api.exposure(int(stage.get("weight") or 0), int(stage.get("shadow") or 0))


def rollout_panel(
    rollout: dict[str, Any], canary_share: float | None, extra: list[str] | None = None
) -> list[str]:
    """`extra`: lines about the experiment (mirrored traffic, users per variant), when there is one."""
    meta, spec, status = rollout["metadata"], rollout["spec"], rollout.get("status") or {}
    stages = spec["stages"]
    current = status.get("stage", 0)
    marks = " ".join(
        f"[{_stage_label(s)}]" if i == current else f" {_stage_label(s)} " for i, s in enumerate(stages)
    )
    share = "" if canary_share is None else f"   traffic to canary {canary_share:5.1%}"
    lines = [
        f"{meta['name']}: {spec['stable'].get('model')} -> {spec['canary'].get('model')}",
        f"  {status.get('phase', 'Pending'):<11} stage {status.get('progress', '-'):<5} weight "
        f"{status.get('canaryWeight', 0):>3}%{share}",
        f"  stages {marks}",
        *(extra or []),
    ]
    gates = (status.get("lastAnalysis") or {}).get("gates") or []
    lines += [_gate_line(g) for g in gates] or ["    (no check yet)"]
    if status.get("message"):
        lines.append(f"  {status['message'][:150]}")
    return lines


def experiment_lines(mirrored: float | None, users_on_canary: float | None, users: int) -> list[str]:
    """What an experiment adds to the panel: the shadow traffic, and the share of users per variant."""
    shadow = "-" if mirrored is None else f"{mirrored:5.1%} of stable's requests"
    on_canary = (
        "-"
        if users_on_canary is None
        else f"{users_on_canary:5.1%} canary, {1 - users_on_canary:5.1%} stable"
    )
    return [
        f"  last 5s: shadow copies to canary {shadow}",
        f"  last 5s: users (sticky buckets)  {on_canary} of {users} seen",
    ]


def screen(
    rollouts: list[dict[str, Any]],
    shares: dict[str, float | None],
    elapsed: float,
    extras: dict[str, list[str]] | None = None,
) -> str:
    lines = [f"modelrollout demo  {elapsed:5.0f}s   (Ctrl-C stops and tears everything down)", ""]
    for rollout in rollouts:
        name = rollout["metadata"]["name"]
        lines += rollout_panel(rollout, shares.get(name), (extras or {}).get(name))
        lines.append("")
    return "\n".join(lines)


def summary(rollouts: list[dict[str, Any]], expected: dict[str, str]) -> tuple[str, bool]:
    lines, ok = ["", "summary:"], True
    for rollout in rollouts:
        name = rollout["metadata"]["name"]
        status = rollout.get("status") or {}
        phase = status.get("phase", "Pending")
        good = phase == expected[name]
        ok = ok and good
        line = f"  {name:<10} {phase:<11} (expected {expected[name]}) {'ok' if good else 'UNEXPECTED'}"
        rollback = status.get("rollback")
        if phase == "RolledBack" and rollback:
            value = rollback.get("value")
            # A sequential gate may have no single value (a judge gate whose canary never won a pair).
            measured = f" = {value:.4g}" if value is not None else ""
            line += (
                f": gate {rollback.get('gate')}{measured} against "
                f"{rollback.get('threshold')} over {rollback.get('window')}"
            )
        lines.append(line)
    return "\n".join(lines), ok
