"""Process bookkeeping on real (tiny) processes: start, end by pid, and sweep runs whose owner died."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from modelrollout_dev.devenv.processes import (
    ProcessSet,
    is_alive,
    owner_is_gone,
    process_start_ticks,
    sweep_stale_runs,
)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_start_ticks_identify_a_living_process() -> None:
    assert process_start_ticks(os.getpid()) is not None
    assert process_start_ticks(_dead_pid()) is None


def test_spawn_records_and_stop_ends_the_process(tmp_path: Path) -> None:
    processes = ProcessSet(tmp_path)
    processes.claim(detached=False)
    _, record = processes.spawn("sleeper", ["sleep", "60"], die_with_parent=True)
    assert is_alive(record)
    assert [r.pid for r in processes.records()] == [record.pid]
    processes.stop(record)
    assert not is_alive(record)
    assert processes.records() == []


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    processes = ProcessSet(tmp_path)
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    _, record = processes.spawn("stubborn", [sys.executable, "-c", script], die_with_parent=True)
    deadline = time.monotonic() + 10
    while "ready" not in Path(record.log).read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    processes.stop(record, grace_seconds=0.5)
    assert not is_alive(record)
    assert time.monotonic() - started < 5


def test_a_recycled_pid_is_not_ours(tmp_path: Path) -> None:
    processes = ProcessSet(tmp_path)
    _, record = processes.spawn("sleeper", ["sleep", "60"], die_with_parent=True)
    impostor = record.__class__(
        name=record.name, pid=record.pid, start_ticks=record.start_ticks + 1, log=record.log
    )
    assert not is_alive(impostor)
    processes.stop(record)


def test_sweep_ends_processes_of_a_run_whose_owner_died(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "crashed"
    processes = ProcessSet(run_dir)
    # A run "owned" by a process that no longer exists; its child was not tied to it by PDEATHSIG.
    processes.claim(detached=False)
    owner = json.loads((run_dir / "owner.json").read_text())
    owner["pid"] = _dead_pid()
    (run_dir / "owner.json").write_text(json.dumps(owner))
    proc, record = processes.spawn("orphan", ["sleep", "60"], die_with_parent=False)
    assert owner_is_gone(run_dir)

    ended = sweep_stale_runs(tmp_path / "runs")

    proc.wait(timeout=5)
    assert [r.pid for r in ended] == [record.pid]
    assert not is_alive(record)
    assert not run_dir.exists()


def test_sweep_leaves_live_and_detached_runs_alone(tmp_path: Path) -> None:
    live = ProcessSet(tmp_path / "runs" / "live")
    live.claim(detached=False)
    _, live_record = live.spawn("mine", ["sleep", "60"], die_with_parent=True)
    detached = ProcessSet(tmp_path / "runs" / "detached")
    detached.claim(detached=True)
    _, detached_record = detached.spawn("daemon", ["sleep", "60"], die_with_parent=False)

    assert sweep_stale_runs(tmp_path / "runs") == []
    assert is_alive(live_record)
    assert is_alive(detached_record)
    live.stop_all()
    detached.stop_all()
