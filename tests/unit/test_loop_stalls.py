"""The event loop's lateness: split by cause from CPU times (a table), and timed on a real loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from modelrollout.loop_stalls import Lateness, split_lateness, watch_event_loop


@pytest.mark.parametrize(
    ("late", "loop_cpu", "process_cpu", "expected"),
    [
        (0.0, 0.02, 0.05, Lateness(0.0, 0.0, 0.0, 0.0)),
        (-0.001, 0.0, 0.0, Lateness(0.0, 0.0, 0.0, 0.0)),  # a timer a hair early is on time
        (0.5, 0.52, 0.52, Lateness(0.5, 0.5, 0.0, 0.0)),  # a collection: the loop thread ran throughout
        (0.5, 0.01, 0.49, Lateness(0.5, 0.01, 0.48, 0.01)),  # a worker thread held the interpreter
        (0.5, 0.03, 0.03, Lateness(0.5, 0.03, 0.0, 0.47)),  # descheduled: nothing of ours ran
        (0.2, 0.05, 0.1, Lateness(0.2, 0.05, 0.05, 0.1)),
    ],
)
def test_lateness_is_split_by_what_used_the_cpu(
    late: float, loop_cpu: float, process_cpu: float, expected: Lateness
) -> None:
    split = split_lateness(late, loop_cpu, process_cpu)
    assert split.seconds == pytest.approx(expected.seconds)
    assert (split.loop_thread, split.other_threads, split.no_cpu) == pytest.approx(
        (expected.loop_thread, expected.other_threads, expected.no_cpu)
    )


def test_a_blocked_loop_is_seen_late_and_on_its_own_thread() -> None:
    seen: list[Lateness] = []

    async def main() -> None:
        watching = asyncio.create_task(watch_event_loop(seen.append, period=0.02))
        await asyncio.sleep(0.05)
        deadline = time.thread_time() + 0.3
        while time.thread_time() < deadline:  # the loop's own thread busy for 0.3 s of CPU
            pass
        await asyncio.sleep(0.05)
        watching.cancel()

    asyncio.run(main())
    worst = max(seen, key=lambda late: late.seconds)
    assert worst.seconds >= 0.25
    assert worst.loop_thread >= 0.25
    # Nothing else of this process ran meanwhile. How long the machine gave it no CPU is the machine's (a busy
    # one, as when other test tiers run, adds to the lateness there), so only the loop's own share is counted.
    assert worst.other_threads < 0.05
    assert sum(1 for late in seen if late.loop_thread > 0.1) == 1
