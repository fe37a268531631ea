"""Giving freed memory back: against this process's real glibc, and the loop with an allocator of our own."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import pytest

from modelrollout import memory


def test_memory_freed_in_the_middle_of_the_heap_is_given_back() -> None:
    allocator = memory.Glibc()
    assert allocator.available, "the test machine runs on glibc"
    held_at_start = allocator.held_free_bytes()
    # 48 MB in 1.5 KB blocks: above Python's small-object allocator (512 bytes), below glibc's mmap threshold,
    # so they come from glibc's heap; the block allocated last stays and pins the heap's top, as a long-lived
    # object does in the operator after a burst.
    burst = [bytes(1536) for _ in range(32_000)]
    pin = bytes(1536)
    del burst
    assert allocator.held_free_bytes() - held_at_start > 40e6
    trimmed = allocator.trim()
    assert trimmed is not None
    assert trimmed.held_before - held_at_start > 40e6
    assert trimmed.returned > 30e6, trimmed
    assert len(pin) == 1536


def test_a_trim_waits_for_enough_free_memory_and_for_growth_since_the_last() -> None:
    assert memory.Glibc(worth_trimming=10**15).trim() is None  # never that much free
    allocator = memory.Glibc(worth_trimming=0)
    assert allocator.trim() is not None  # the first one, with anything free
    settled = memory.Glibc()
    burst = [bytes(1536) for _ in range(32_000)]
    pin = bytes(1536)
    del burst
    assert settled.trim() is not None
    # Nothing grew since: the pages are back with the system already, though glibc still counts them free.
    assert settled.held_free_bytes() > memory.WORTH_TRIMMING_BYTES
    assert settled.trim() is None
    burst = [bytes(1536) for _ in range(32_000)]
    pin2 = bytes(1536)
    del burst
    assert settled.trim() is not None  # grew and freed again
    assert len(pin) == len(pin2) == 1536


def test_without_glibc_nothing_happens() -> None:
    allocator = memory.Glibc(library="libnot-a-c-library.so.0")
    assert not allocator.available
    assert allocator.held_free_bytes() == 0
    assert allocator.trim() is None
    trims: list[memory.Trim] = []
    # Returns at once instead of looping over nothing.
    asyncio.run(asyncio.wait_for(memory.keep_returning_memory(0.01, trims.append, allocator), 1))
    assert trims == []


class CountingAllocator(memory.Glibc):
    def __init__(self, answers: list[memory.Trim | None]) -> None:
        super().__init__()
        self.answers = answers
        self.asked = 0
        self.asked_four_times = threading.Event()  # trims run in worker threads

    def trim(self) -> memory.Trim | None:
        self.asked += 1
        if self.asked == 4:
            self.asked_four_times.set()
        return self.answers.pop(0) if self.answers else None


def test_the_loop_trims_every_period_and_reports_only_real_trims() -> None:
    done = memory.Trim(held_before=100_000_000, rss_before=500_000_000, rss_after=300_000_000)
    allocator = CountingAllocator([None, done, None])
    trims: list[memory.Trim] = []

    async def scenario() -> None:
        task = asyncio.create_task(memory.keep_returning_memory(0.05, trims.append, allocator))
        assert await asyncio.to_thread(allocator.asked_four_times.wait, 5)
        task.cancel()

    asyncio.run(scenario())
    assert trims == [done]
    assert done.returned == 200_000_000


def test_what_a_trim_returned() -> None:
    for before, after, returned in ((500, 300, 200), (300, 500, 0), (None, 300, 0), (500, None, 0)):
        assert memory.Trim(held_before=0, rss_before=before, rss_after=after).returned == returned


def test_the_operator_loads_numpy_and_scipy_only_for_a_sequential_test() -> None:
    # In a process of its own: this test process has imported them long since.
    probe = (
        "import sys, modelrollout.cli, modelrollout.handlers\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'scipy'}))\n"
        "from modelrollout.analysis import sequential\n"
        "from modelrollout.stats.counters import accumulate\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'scipy'}))\n"
        "from modelrollout.stats.sequential import rate_ratio_test\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'scipy'}))\n"
    )
    shown = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    assert shown == ["[]", "[]", "['numpy', 'scipy']"]


_ARENAS_SCRIPT = """
import ctypes, sys, threading
from modelrollout import memory
if sys.argv[1] == "limit":
    assert memory.limit_arenas(1)
barrier = threading.Barrier(4)
held = []
def work():
    held.append([bytes(1536) for _ in range(100)])  # above Python's small-object allocator: glibc's malloc
    barrier.wait()  # all alive at once: none hands its heap on to the next
threads = [threading.Thread(target=work) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
ctypes.CDLL("libc.so.6").malloc_stats()  # one "Arena N:" block per heap, on stderr
"""


def _arenas(mode: str, **env: str) -> int:
    run = subprocess.run(
        [sys.executable, "-c", _ARENAS_SCRIPT, mode],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    return sum(1 for line in run.stderr.splitlines() if line.startswith("Arena "))


def test_threads_share_the_heaps_the_operator_limits_them_to() -> None:
    assert _arenas("default") >= 3  # glibc's default: a heap for each thread that allocates
    assert _arenas("limit") == 1


def test_the_environment_and_other_c_libraries_keep_their_own_arenas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert not memory.limit_arenas()  # glibc read it at the process's start
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert not memory.limit_arenas(library="libnot-a-c-library.so.0")
