"""How late the event loop runs, and why: a short timer that should wake every `PERIOD` seconds, timed.

Every check, status write and alert waits on the one event loop; a check that took 0.4 s while its grouped
answers were ready waited for the loop, not for Prometheus. A late wake-up has three possible causes, told
apart by CPU time over the same interval: the loop's own thread was running (its callbacks, or a collection
holding the interpreter: the thread's CPU time grows with the lateness); another thread of the process held
the interpreter lock (query workers reading answers, API client threads: the process' CPU time grows, the
loop thread's does not); or the process got no CPU (neither grows: the machine is busy with other work).
Written here, not taken from a library: asyncio's debug mode logs slow callbacks but costs on every
callback, and no well-kept library splits lateness by cause.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

PERIOD = 0.1  # seconds between wake-ups: 10 a second cost next to nothing


@dataclass(frozen=True)
class Lateness:
    """One wake-up `seconds` late, split by cause (the three add up to `seconds`)."""

    seconds: float
    loop_thread: float
    other_threads: float
    no_cpu: float


def split_lateness(late: float, loop_cpu: float, process_cpu: float) -> Lateness:
    """`late` seconds past the expected wake-up, given the CPU time the loop's thread and the whole process
    used over the interval. An estimate that leans one way: CPU time the loop thread used while it was not
    late counts towards its share first, then the other threads', so "no CPU" is never overstated (a wake-up
    0.5 s late with 0.03 s of loop CPU and nothing else: 0.47 s without a CPU)."""
    if late <= 0:
        return Lateness(0.0, 0.0, 0.0, 0.0)
    own = min(late, max(0.0, loop_cpu))
    others = min(late - own, max(0.0, process_cpu - loop_cpu))
    return Lateness(late, own, others, late - own - others)


async def watch_event_loop(
    observe: Callable[[Lateness], None],
    *,
    period: float = PERIOD,
    clock: Callable[[], float] = time.monotonic,
    loop_cpu: Callable[[], float] = time.thread_time,
    process_cpu: Callable[[], float] = time.process_time,
) -> None:
    """Runs until cancelled: every `period`, how late the loop woke (runs on the loop's own thread, so
    `thread_time` is the loop thread's CPU time)."""
    while True:
        started, own_started, all_started = clock(), loop_cpu(), process_cpu()
        await asyncio.sleep(period)
        late = clock() - started - period
        observe(split_lateness(late, loop_cpu() - own_started, process_cpu() - all_started))
