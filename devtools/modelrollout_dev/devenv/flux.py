"""Flux's own controllers for the gitops tier: source-controller (clones a git repository into an artifact)
and kustomize-controller (applies it server-side, waits on health with kstatus), built from their Go modules
with the machine's Go and cached like the control plane's binaries, and run as processes against the local
API server.

The wrapper modules `gomod/flux-source-controller` and `gomod/flux-kustomize-controller` carry upstream's
go.mod and go.sum (module renamed, the `./api` replace dropped for the api module's release of the same
version). The CRDs are the ones in each controller's module (`config/crd/bases`), copied beside the binary
when it is built.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modelrollout_dev.devenv.binaries import (
    GOMOD_DIR,
    BinariesError,
    GoBuild,
    _file_lock,
    cache_root,
    downloaded_module,
    pinned_version,
    run_build,
)
from modelrollout_dev.devenv.controlplane import StartError
from modelrollout_dev.devenv.netutil import free_port, http_ok, wait_until
from modelrollout_dev.devenv.processes import ProcessRecord, ProcessSet

CONTROLLERS = ("source-controller", "kustomize-controller")


def controller_module(name: str) -> str:
    return f"github.com/fluxcd/{name}"


def flux_builds(root: Path | None = None) -> list[GoBuild]:
    root = root or cache_root()
    builds = []
    for name in CONTROLLERS:
        module_dir = GOMOD_DIR / f"flux-{name}"
        version = pinned_version(module_dir, controller_module(name))
        builds.append(
            GoBuild(
                module_dir=module_dir,
                packages=(controller_module(name),),
                outputs=(name,),
                target_dir=root / "bin" / f"flux-{name}-{version}",
                tags="",
                ldflags="-s -w",
            )
        )
    return builds


@dataclass(frozen=True)
class FluxBinaries:
    source_controller: Path
    kustomize_controller: Path
    crds: tuple[Path, ...]


def _copy_crds(build: GoBuild, log: Callable[[str], None]) -> None:
    """The controller's CRDs from its module source (the Go module cache), into `<target>/crds`."""
    module = build.packages[0]
    version = pinned_version(build.module_dir, module)
    source = downloaded_module(module, build.module_dir) / "config" / "crd" / "bases"
    found = sorted(source.glob("*.yaml"))
    if not found:
        raise BinariesError(f"{module}@{version} has no CRDs in {source}")
    staging = build.target_dir / ".crds"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path in found:
        shutil.copyfile(path, staging / path.name)
    staging.rename(build.target_dir / "crds")
    log(f"copied {len(found)} CRDs of {module}@{version}")


def ensure_flux(log: Callable[[str], None] = print, root: Path | None = None) -> FluxBinaries:
    """The controllers' paths and CRDs; built first if they are not cached (about 9 minutes on 2 cores)."""
    root = root or cache_root()
    builds = flux_builds(root)
    if shutil.which("go") is None:
        raise BinariesError("Go is needed to build Flux's controllers from their modules")
    with _file_lock(root / "bin" / ".lock"):
        for build in builds:
            if not build.is_cached():
                run_build(build, log)
            if not (build.target_dir / "crds").is_dir():
                _copy_crds(build, log)
    source, kustomize = builds
    return FluxBinaries(
        source_controller=source.target_dir / "source-controller",
        kustomize_controller=kustomize.target_dir / "kustomize-controller",
        crds=tuple(sorted((source.target_dir / "crds").glob("*.yaml")))
        + tuple(sorted((kustomize.target_dir / "crds").glob("*.yaml"))),
    )


class FluxControllers:
    """source-controller and kustomize-controller as processes against one API server, each with its metrics
    and health endpoints on loopback; the artifact server that kustomize-controller downloads from is
    source-controller's own, advertised on 127.0.0.1."""

    def __init__(
        self,
        binaries: FluxBinaries,
        kubeconfig: str,
        run_dir: Path,
        processes: ProcessSet,
        *,
        die_with_parent: bool = True,
    ) -> None:
        self.binaries = binaries
        self.kubeconfig = kubeconfig
        self.dir = run_dir / "flux"
        self.processes = processes
        self.die_with_parent = die_with_parent
        self.records: dict[str, ProcessRecord] = {}

    def start(self, timeout: float = 60.0) -> None:
        storage_port = free_port()
        storage = self.dir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        self._start(
            "source-controller",
            self.binaries.source_controller,
            f"--storage-path={storage}",
            f"--storage-addr=127.0.0.1:{storage_port}",
            f"--storage-adv-addr=127.0.0.1:{storage_port}",
            timeout=timeout,
        )
        self._start("kustomize-controller", self.binaries.kustomize_controller, timeout=timeout)

    def _start(self, name: str, binary: Path, *flags: str, timeout: float) -> None:
        metrics, health = free_port(), free_port()
        argv = [
            str(binary),
            f"--metrics-addr=127.0.0.1:{metrics}",
            f"--health-addr=127.0.0.1:{health}",
            "--enable-leader-election=false",
            "--log-encoding=console",
            *flags,
        ]
        # RUNTIME_NAMESPACE: where a controller looks for its own objects (SOPS keys ...); none are used here.
        env = {**os.environ, "KUBECONFIG": self.kubeconfig, "RUNTIME_NAMESPACE": "flux-system"}
        proc, record = self.processes.spawn(name, argv, die_with_parent=self.die_with_parent, env=env)
        self.records[name] = record

        def ready() -> bool:
            if proc.poll() is not None:
                return True  # decided below
            return http_ok(f"http://127.0.0.1:{health}/readyz")

        wait_until(ready, timeout, interval=0.2)
        if proc.poll() is not None or not ready():
            tail = self.processes.log_tail(record)
            raise StartError(f"Flux's {name} did not become ready in {timeout:.0f}s; its log ends:\n{tail}")

    def log_text(self, name: str) -> str:
        return Path(self.records[name].log).read_text(errors="replace")

    def stop(self) -> None:
        for record in reversed(list(self.records.values())):
            self.processes.stop(record)
        self.records.clear()
