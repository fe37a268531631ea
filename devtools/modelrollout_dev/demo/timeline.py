"""The demo's picture: per rollout, the canary weight over time and each gate's value against its threshold,
with the rollback marked."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Series:
    """What one rollout looked like over time (seconds since the demo started)."""

    name: str
    times: list[float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    gate_values: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    canary_share: list[tuple[float, float]] = field(default_factory=list)
    rolled_back_at: float | None = None
    last_check_at: str | None = None
    promoted_at: float | None = None


def draw(series: list[Series], path: Path) -> Path:
    import matplotlib  # noqa: PLC0415 - slow to import, and only the picture at the end needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(len(series), 1, figsize=(11, 4 * len(series)), squeeze=False)
    for row, one in zip(axes, series, strict=True):
        weight_axis = row[0]
        weight_axis.step(one.times, one.weights, where="post", color="tab:blue", label="canary weight (%)")
        if one.canary_share:
            weight_axis.plot(
                [t for t, _ in one.canary_share],
                [100 * s for _, s in one.canary_share],
                ".",
                color="tab:cyan",
                markersize=3,
                label="requests to canary (%)",
            )
        weight_axis.set_ylim(-5, 105)
        weight_axis.set_ylabel("canary %")
        weight_axis.set_xlabel("seconds")
        weight_axis.set_title(one.name)
        gate_axis = weight_axis.twinx()
        error_gate = one.gate_values.get("error-rate", [])
        if error_gate:
            gate_axis.plot(
                [t for t, _ in error_gate], [v for _, v in error_gate], color="tab:red", label="error-rate"
            )
        if "error-rate" in one.thresholds:
            gate_axis.axhline(
                one.thresholds["error-rate"], color="tab:red", linestyle="--", label="error-rate max"
            )
        gate_axis.set_ylabel("error rate")
        gate_axis.set_ylim(0, max([0.1, *[v for _, v in error_gate]]))
        if one.rolled_back_at is not None:
            weight_axis.axvline(one.rolled_back_at, color="black", linewidth=2)
            weight_axis.annotate(
                "rolled back", (one.rolled_back_at, 90), xytext=(5, 0), textcoords="offset points"
            )
        if one.promoted_at is not None:
            weight_axis.axvline(one.promoted_at, color="tab:green", linewidth=2)
            weight_axis.annotate("promoted", (one.promoted_at, 90), xytext=(5, 0), textcoords="offset points")
        lines = weight_axis.get_legend_handles_labels()
        more = gate_axis.get_legend_handles_labels()
        weight_axis.legend(lines[0] + more[0], lines[1] + more[1], loc="center left", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
