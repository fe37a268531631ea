"""The operator as a process on this machine, for the demo, the tests and the benchmarks."""

from __future__ import annotations

import sys


def local_command(
    prometheus_url: str, *, tick: float, metrics_port: int = 0, python: str = sys.executable
) -> list[str]:
    """`modelrollout run` with this interpreter (or `python`, e.g. one with the operator's runtime
    dependencies only, as the image has): no liveness endpoint, the given tick and metrics port. Flags
    appended later override these."""
    return [
        python,
        "-m",
        "modelrollout.cli",
        "run",
        "--liveness",
        "off",
        "--tick",
        f"{tick:g}",
        "--prometheus-url",
        prometheus_url,
        "--metrics-port",
        str(metrics_port),
    ]
