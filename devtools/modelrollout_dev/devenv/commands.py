"""`modelrollout dev build|up|down|env|status`: the local environment from a shell."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import FrameType

from modelrollout_dev.devenv.binaries import BinariesError, resolve_binaries
from modelrollout_dev.devenv.controlplane import StartError
from modelrollout_dev.devenv.environment import (
    DevEnvironment,
    EnvironmentState,
    load_state,
    running_state,
    runs_root,
)
from modelrollout_dev.devenv.established import wait_established
from modelrollout_dev.devenv.flux import ensure_flux
from modelrollout_dev.devenv.gitops import gitops_tool
from modelrollout_dev.devenv.istio import istio_crds_path


def _log(message: str) -> None:
    print(f"[modelrollout dev] {message}", file=sys.stderr, flush=True)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev = subparsers.add_parser(
        "dev", help="local control plane, Istio CRDs and Prometheus for tests and demos"
    )
    dev.add_argument(
        "--run-dir", type=Path, default=None, help=f"run directory (default {runs_root() / 'dev'})"
    )
    actions = dev.add_subparsers(dest="dev_command", required=True)
    build = actions.add_parser(
        "build",
        help="build (once) or locate etcd, kube-apiserver, kubectl; fetch the Istio CRDs; build the GitOps "
        "readers (kstatus, Argo CD's Lua runtime)",
    )
    build.add_argument(
        "--flux",
        action="store_true",
        help="also build Flux's source-controller and kustomize-controller (gitops test tier; ~9 min once)",
    )
    up = actions.add_parser("up", help="start the environment and print how to use it")
    up.add_argument(
        "--foreground", action="store_true", help="stay attached and tear everything down on Ctrl-C / SIGTERM"
    )
    up.add_argument(
        "--apply",
        action="append",
        type=Path,
        default=[],
        metavar="PATH",
        help="kubectl apply this file or folder once the environment is up (repeatable, in order)",
    )
    actions.add_parser("down", help="stop every process of the environment, by pid")
    actions.add_parser("env", help="print the shell exports for a running environment")
    actions.add_parser("status", help="print the environment's state as JSON")
    dev.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir or runs_root() / "dev"
    actions: dict[str, Callable[[], int]] = {
        "build": lambda: _build(with_flux=args.flux),
        "up": lambda: _up(run_dir, foreground=args.foreground, apply=args.apply),
        "down": lambda: _down(run_dir),
        "env": lambda: _env(run_dir),
        "status": lambda: _status(run_dir),
    }
    try:
        return actions[args.dev_command]()
    except (BinariesError, StartError, TimeoutError) as error:
        _log(f"error: {error}")
        return 1


def _build(with_flux: bool) -> int:
    binaries = resolve_binaries(_log)
    print(f"etcd:           {binaries.etcd}")
    print(f"kube-apiserver: {binaries.kube_apiserver}")
    print(f"kubectl:        {binaries.kubectl}")
    print(f"istio CRDs:     {istio_crds_path()}")
    print(f"gitops readers: {gitops_tool(_log).path}")
    if with_flux:
        flux = ensure_flux(_log)
        print(f"flux:           {flux.source_controller}, {flux.kustomize_controller}")
    return 0


def _env(run_dir: Path) -> int:
    state = running_state(run_dir)
    if state is None:
        _log(f"no running environment in {run_dir}; start one with `modelrollout dev up`")
        return 1
    print(state.exports())
    return 0


def _status(run_dir: Path) -> int:
    state = load_state(run_dir)
    running = running_state(run_dir) is not None
    print(json.dumps({"running": running, "state": asdict(state) if state else None}, indent=2))
    return 0 if running else 1


def _apply(state: EnvironmentState, paths: list[Path]) -> None:
    for path in paths:
        argv = [state.kubectl, f"--kubeconfig={state.kubeconfig}", "apply", "--server-side", "-f", str(path)]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StartError(f"kubectl apply -f {path} failed:\n{result.stderr}")
        print(result.stdout, end="")
        if "customresourcedefinition" in result.stdout:
            # The next file may hold objects of these kinds: wait until they are served.
            waited = wait_established(argv[:2], path)
            if waited.returncode != 0:
                raise StartError(f"CRDs of {path} not served:\n{waited.stderr}")


def _up(run_dir: Path, *, foreground: bool, apply: list[Path]) -> int:
    if not foreground and (state := running_state(run_dir)) is not None:
        _log(f"already running in {run_dir}")
        print(state.exports())
        return 0
    environment = DevEnvironment(run_dir, detached=not foreground)
    environment.stop()  # whatever a previous `up` left behind in this run directory
    _log(f"starting in {run_dir}")
    state = environment.start(_log)
    try:
        _apply(state, apply)
    except StartError:
        environment.stop()
        raise
    timings = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in state.started_seconds.items())
    _log(f"up ({timings}); binaries {state.binaries_source}")
    print(state.exports())
    print(f"# API server {state.api_url}, Prometheus {state.prometheus_url}, logs in {run_dir / 'logs'}")
    print("# try: kubectl get crd; kubectl get modelrollouts -A -o wide")
    if not foreground:
        print("# stop with: modelrollout dev down")
        return 0

    stopping = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    print("# Ctrl-C tears it down", flush=True)
    try:
        while not stopping:
            time.sleep(0.2)
    finally:
        _log("tearing down")
        environment.stop()
        environment.remove()
        _log("stopped")
    return 0


def _down(run_dir: Path) -> int:
    environment = DevEnvironment(run_dir, detached=True)
    records = environment.processes.records()
    environment.stop()
    _log(f"stopped {len(records)} process(es) of {run_dir}")
    return 0
