"""Child processes of a local environment, recorded by pid so that they can always be ended.

Every process is started in its own session with its output in `<run dir>/logs/<name>.log` and recorded in
`<run dir>/processes.json` together with its kernel start time, so a recycled pid is never mistaken for ours.
Three layers make sure nothing outlives its owner:
- `stop()` ends each process by pid (SIGTERM to its process group, SIGKILL after a grace period);
- processes started with `die_with_parent` get PR_SET_PDEATHSIG, so the kernel kills them when the owner dies
  (a test session that is SIGKILLed included);
- `sweep_stale_runs()` ends what is recorded in run directories whose non-detached owner is gone.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_REGISTRY = "processes.json"
_OWNER = "owner.json"


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    start_ticks: int
    log: str


def process_start_ticks(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses; fields after the last ')' are fixed.
    fields_after_name = stat.rsplit(")", 1)[1].split()
    state = fields_after_name[0]
    if state in ("Z", "X"):
        return None  # a zombie has exited; only its parent's wait() is missing
    return int(fields_after_name[19])


def is_alive(record: ProcessRecord) -> bool:
    return process_start_ticks(record.pid) == record.start_ticks


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork and prctl; then nobody would ever signal us.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


class ProcessSet:
    """The processes of one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.logs_dir = run_dir / "logs"
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def claim(self, *, detached: bool) -> None:
        """Record who owns this run directory; a non-detached run whose owner died is swept later."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        owner = {"pid": os.getpid(), "start_ticks": process_start_ticks(os.getpid()), "detached": detached}
        (self.run_dir / _OWNER).write_text(json.dumps(owner))

    def records(self) -> list[ProcessRecord]:
        path = self.run_dir / _REGISTRY
        if not path.exists():
            return []
        return [ProcessRecord(**item) for item in json.loads(path.read_text())]

    def _save(self, records: Sequence[ProcessRecord]) -> None:
        tmp = self.run_dir / (_REGISTRY + ".tmp")
        tmp.write_text(json.dumps([asdict(r) for r in records], indent=2))
        tmp.replace(self.run_dir / _REGISTRY)

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        die_with_parent: bool,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> tuple[subprocess.Popen[bytes], ProcessRecord]:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.logs_dir / f"{name}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()) if die_with_parent else None,  # noqa: PLW1509
                env=dict(env) if env is not None else None,
                cwd=cwd,
            )
        ticks = process_start_ticks(proc.pid)
        record = ProcessRecord(name=name, pid=proc.pid, start_ticks=ticks or -1, log=str(log_path))
        self._children[proc.pid] = proc
        self._save([*self.records(), record])
        return proc, record

    def stop(self, record: ProcessRecord, grace_seconds: float = 10.0) -> None:
        """End one process (and its process group) by pid; forget it."""
        _terminate(record, grace_seconds, self._children.pop(record.pid, None))
        self._save([r for r in self.records() if r.pid != record.pid])

    def stop_all(self, grace_seconds: float = 10.0) -> None:
        # Reverse start order: the API server goes before the etcd it talks to.
        for record in reversed(self.records()):
            self.stop(record, grace_seconds)

    def log_tail(self, record: ProcessRecord, lines: int = 25) -> str:
        try:
            text = Path(record.log).read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _terminate(record: ProcessRecord, grace_seconds: float, child: subprocess.Popen[bytes] | None) -> None:
    if not is_alive(record):
        if child is not None:
            child.wait()
        return
    _signal_group(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        if child is not None and child.poll() is not None:
            break
        if child is None and not is_alive(record):
            break
        time.sleep(0.05)
    else:
        _signal_group(record.pid, signal.SIGKILL)
    if child is not None:
        child.wait()
    else:
        while is_alive(record):
            time.sleep(0.05)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # each child leads its own session, so its pid is its group id
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def owner_is_gone(run_dir: Path) -> bool:
    path = run_dir / _OWNER
    if not path.exists():
        return False
    owner = json.loads(path.read_text())
    if owner.get("detached"):
        return False
    recorded: int | None = owner.get("start_ticks")
    return process_start_ticks(int(owner["pid"])) != recorded


def sweep_stale_runs(base_dir: Path) -> list[ProcessRecord]:
    """End the processes of run directories whose (non-detached) owner has died, remove those directories,
    and return what was ended."""
    ended: list[ProcessRecord] = []
    if not base_dir.is_dir():
        return ended
    for run_dir in sorted(p for p in base_dir.iterdir() if p.is_dir()):
        if not owner_is_gone(run_dir):
            continue
        processes = ProcessSet(run_dir)
        for record in processes.records():
            if is_alive(record):
                ended.append(record)
        processes.stop_all(grace_seconds=2.0)
        # Nothing of a dead owner's run is reused; its data would only fill the disk.
        shutil.rmtree(run_dir, ignore_errors=True)
    return ended
