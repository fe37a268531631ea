"""Teardown ends every process the environment started, by pid: on `dev down`, on Ctrl-C, and when the owner
is killed outright (a crashed test session)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelrollout_dev.devenv.processes import ProcessRecord, ProcessSet, is_alive

pytestmark = pytest.mark.integration

COMPONENTS = {"etcd", "kube-apiserver", "prometheus"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelrollout.cli", *args]


def _records(run_dir: Path) -> list[ProcessRecord]:
    return ProcessSet(run_dir).records()


def _port_is_closed(url: str) -> bool:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) != 0


def _wait_all_dead(records: list[ProcessRecord], timeout: float = 15) -> list[ProcessRecord]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [r for r in records if is_alive(r)]
        if not alive:
            return []
        time.sleep(0.1)
    return [r for r in records if is_alive(r)]


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "runs" / "env"
    yield directory
    ProcessSet(directory).stop_all(grace_seconds=2)  # never leak, even when an assertion failed


def _start_foreground(run_dir: Path) -> tuple[subprocess.Popen[str], list[ProcessRecord], dict[str, str]]:
    proc = subprocess.Popen(
        _cli("dev", "--run-dir", str(run_dir), "up", "--foreground"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    exports: dict[str, str] = {}
    for line in proc.stdout:
        if line.startswith("export ") and "=" in line:
            key, value = line.removeprefix("export ").strip().split("=", 1)
            exports[key] = value
        if "Ctrl-C tears it down" in line:
            break
    else:
        assert proc.stderr is not None
        pytest.fail(f"foreground environment did not come up: {proc.stderr.read()}")
    records = _records(run_dir)
    assert {r.name for r in records} == COMPONENTS
    assert all(is_alive(r) for r in records)
    return proc, records, exports


def test_dev_up_and_down_leave_no_process(run_dir: Path) -> None:
    started = time.monotonic()
    up = subprocess.run(
        _cli("dev", "--run-dir", str(run_dir), "up"), capture_output=True, text=True, timeout=180, check=False
    )
    print(f"detached `dev up`: {time.monotonic() - started:.1f}s")
    assert up.returncode == 0, up.stderr
    records = _records(run_dir)
    assert {r.name for r in records} == COMPONENTS
    assert all(is_alive(r) for r in records)  # they outlive the `dev up` command: it is detached
    state = json.loads((run_dir / "state.json").read_text())

    env = subprocess.run(
        _cli("dev", "--run-dir", str(run_dir), "env"), capture_output=True, text=True, check=False
    )
    assert env.returncode == 0, env.stderr
    assert f"export KUBECONFIG={state['kubeconfig']}" in env.stdout

    down = subprocess.run(
        _cli("dev", "--run-dir", str(run_dir), "down"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert down.returncode == 0, down.stderr
    assert _wait_all_dead(records, timeout=1) == []
    assert _port_is_closed(state["api_url"])
    assert _port_is_closed(state["prometheus_url"])
    gone = subprocess.run(
        _cli("dev", "--run-dir", str(run_dir), "env"), capture_output=True, text=True, check=False
    )
    assert gone.returncode == 1
    assert "no running environment" in gone.stderr


def test_ctrl_c_on_a_foreground_environment_tears_it_down(run_dir: Path) -> None:
    proc, records, exports = _start_foreground(run_dir)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    assert _wait_all_dead(records, timeout=1) == []
    assert _port_is_closed(exports["MODELROLLOUT_PROMETHEUS_URL"])
    assert not run_dir.exists()


def test_a_killed_owner_takes_its_processes_with_it(run_dir: Path) -> None:
    """SIGKILL gives the owner no chance to clean up: the kernel (PDEATHSIG) must end the children."""
    proc, records, _ = _start_foreground(run_dir)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert _wait_all_dead(records, timeout=15) == []
