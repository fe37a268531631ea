"""What the benchmarks that run the operator share: a VirtualService with its ModelRollout, and the figures of
an operator process read from /proc."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from modelrollout import api
from modelrollout_dev.devenv.established import wait_established

CRDS = Path(__file__).resolve().parents[1] / "crds"


def rollout_pair(
    index: int, namespace: str, stages: list[dict[str, Any]], analysis: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """VirtualService `svc-<index>` routing to `svc-<index>-v1`, and a ModelRollout moving it to `-v2`."""
    host, stable, canary = f"svc-{index}", f"svc-{index}-v1", f"svc-{index}-v2"
    vs = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": host, "namespace": namespace},
        "spec": {
            "hosts": [host],
            "http": [{"name": "primary", "route": [{"destination": {"host": stable}, "weight": 100}]}],
        },
    }
    mro = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": host, "namespace": namespace},
        "spec": {
            "stable": {"host": stable},
            "canary": {"host": canary},
            "trafficRouting": {"istio": {"virtualService": {"name": host}}},
            "stages": stages,
            "analysis": analysis,
        },
    }
    return vs, mro


def process_cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory in MB: now (VmRSS), or the most it ever held (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def install_crd_and_namespace(kubectl: list[str], namespace: str) -> None:
    """The ModelRollout CRD applied and served, and the benchmark's namespace created."""
    subprocess.run([*kubectl, "apply", "--server-side", "-f", str(CRDS)], check=True, capture_output=True)
    wait_established(kubectl, CRDS).check_returncode()
    subprocess.run([*kubectl, "create", "namespace", namespace], check=True, capture_output=True)
