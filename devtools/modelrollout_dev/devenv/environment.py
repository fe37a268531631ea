"""The whole local environment: control plane, Istio CRDs and Prometheus, in one run directory.

Used by the pytest fixtures (one per test session, dying with the session) and by `modelrollout dev up`
(detached, described by `<run dir>/state.json` so that `dev env` and `dev down` find it later).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from modelrollout_dev.devenv.binaries import Binaries, resolve_binaries
from modelrollout_dev.devenv.controlplane import ControlPlane
from modelrollout_dev.devenv.istio import install_istio_crds
from modelrollout_dev.devenv.processes import ProcessSet, is_alive, sweep_stale_runs
from modelrollout_dev.devenv.prometheus import PrometheusServer

STATE_FILE = "state.json"


def runs_root() -> Path:
    """Where run directories live: short-lived data, so under the temporary directory."""
    explicit = os.environ.get("MODELROLLOUT_RUNS_DIR")
    return Path(explicit) if explicit else Path(tempfile.gettempdir()) / "modelrollout-runs"


@dataclass(frozen=True)
class EnvironmentState:
    run_dir: str
    kubeconfig: str
    api_url: str
    prometheus_url: str
    prometheus_targets_dir: str
    kubectl: str
    binaries_source: str
    started_seconds: dict[str, float]

    def exports(self) -> str:
        kubectl_dir = str(Path(self.kubectl).parent)
        return "\n".join(
            [
                f"export KUBECONFIG={self.kubeconfig}",
                f"export MODELROLLOUT_PROMETHEUS_URL={self.prometheus_url}",
                f'export PATH="{kubectl_dir}:$PATH"',
            ]
        )


class DevEnvironment:
    def __init__(self, run_dir: Path, *, detached: bool) -> None:
        self.run_dir = run_dir
        self.detached = detached
        self.processes = ProcessSet(run_dir)
        self.control_plane: ControlPlane | None = None
        self.prometheus: PrometheusServer | None = None
        self.state: EnvironmentState | None = None

    def start(self, log: Callable[[str], None] = print, binaries: Binaries | None = None) -> EnvironmentState:
        sweep_stale_runs(self.run_dir.parent)
        self.processes.claim(detached=self.detached)
        die_with_parent = not self.detached
        binaries = binaries or resolve_binaries(log)
        timings: dict[str, float] = {}
        try:
            started = time.monotonic()
            self.control_plane = ControlPlane(
                self.run_dir, binaries, self.processes, die_with_parent=die_with_parent
            )
            info = self.control_plane.start()
            timings["control_plane"] = time.monotonic() - started

            step = time.monotonic()
            install_istio_crds(info.kubectl, info.kubeconfig)
            timings["istio_crds"] = time.monotonic() - step

            step = time.monotonic()
            self.prometheus = PrometheusServer(self.run_dir, self.processes, die_with_parent=die_with_parent)
            prometheus_url = self.prometheus.start()
            timings["prometheus"] = time.monotonic() - step
            timings["total"] = time.monotonic() - started
        except BaseException:
            self.stop()
            raise
        self.state = EnvironmentState(
            run_dir=str(self.run_dir),
            kubeconfig=str(info.kubeconfig),
            api_url=info.api_url,
            prometheus_url=prometheus_url,
            prometheus_targets_dir=str(self.prometheus.targets_dir),
            kubectl=str(info.kubectl),
            binaries_source=binaries.source,
            started_seconds={k: round(v, 2) for k, v in timings.items()},
        )
        (self.run_dir / STATE_FILE).write_text(json.dumps(asdict(self.state), indent=2))
        return self.state

    def stop(self) -> None:
        """End every process this run started, by pid, whether or not this object started them."""
        self.processes.stop_all()
        (self.run_dir / STATE_FILE).unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)


def load_state(run_dir: Path) -> EnvironmentState | None:
    path = run_dir / STATE_FILE
    if not path.exists():
        return None
    return EnvironmentState(**json.loads(path.read_text()))


def running_state(run_dir: Path) -> EnvironmentState | None:
    """The recorded state, if every process of that run is still alive."""
    state = load_state(run_dir)
    records = ProcessSet(run_dir).records()
    if state is None or not records or not all(is_alive(r) for r in records):
        return None
    return state
