"""How long Python's cyclic garbage collector stops the operator.

A collection holds the interpreter lock from start to end: while it runs, the event loop answers no watch
event, no alert and no check. With a thousand rollouts the process tracks hundreds of thousands of container
objects (statuses, the VirtualService cache), and a full (generation 2) collection walks them
all. prometheus_client counts collections but not their
time, so the operator times them itself from `gc.callbacks` (called by the collector at its start and stop,
on the thread that triggered it).

Full collections are also spaced further apart than CPython's default. Measured at 1,000 rollouts (2 cores,
`modelrollout_gc_pause_seconds`): each full collection stopped the loop for 230-300 ms, and with the default
thresholds one ran every ~14 s (13 in 3 minutes, 1.7% of a core), because every check replaces the
rollout's status and kopf's body, and those survive long enough to be promoted. Waiting for 100
generation-1 collections instead of 10 gave 2 in the same 3 minutes, the same pause each, the same RSS
(249 vs 256 MB). While bodies were kept as Python objects, freezing the objects alive after the start
(`gc.freeze`) and a larger generation-0 threshold did not shorten the pause (316 ms): the objects a full
collection walked were the ones that churn.

Since rollout bodies and VirtualServices are kept compressed (bytes, which the collector does not track),
what a full collection walks is mostly what lives as long as the process: modules, classes, functions, the
drivers. Measured at 1,000 rollouts (2 cores, a scratch probe): about 210,000 tracked objects, each full
collection 110-140 ms, most finding nothing to collect; with those objects frozen (`gc.freeze`: left out of
every collection) a full collection walked about 30,000 and took 10-11 ms. `keep_long_lived_objects_frozen`
freezes at the start and, every period, unfreezes, collects everything once and freezes what is still alive:
one full pause per period, and cyclic garbage among frozen objects lives at most that long.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

Observe = Callable[[int, float], None]

# Generation-1 collections between two full collections (CPython's default is 10). CPython still waits, as
# well, until the objects promoted since the last full collection reach a quarter of those it kept then.
FULL_COLLECTION_AFTER = 100


def space_full_collections(after: int = FULL_COLLECTION_AFTER) -> None:
    young, middle, _old = gc.get_threshold()
    gc.set_threshold(young, middle, after)


class GcPauseTimer:
    """Calls `observe(generation, seconds)` after each collection; `install` once, `uninstall` to stop."""

    def __init__(self, observe: Observe, clock: Callable[[], float] = time.perf_counter) -> None:
        self._observe = observe
        self._clock = clock
        self._started: float | None = None

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._clock()
        elif phase == "stop" and self._started is not None:
            seconds = self._clock() - self._started
            self._started = None
            self._observe(int(info["generation"]), seconds)

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


# The first period, doubled each time up to the full period. At the operator's start every rollout gets its
# driver, task, lock and kopf's per-object state, which live as long as the process; frozen only at the end of
# a whole period, they are walked by every full collection until then. Measured at 5,000 rollouts (the scale
# benchmark, a 600 s period, the start 340 s long): full collections every ~10 s, 341 ms each on average, the
# event loop stopped for each.
FIRST_PERIOD_SECONDS = 30.0


async def keep_long_lived_objects_frozen(
    period_seconds: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    first_period_seconds: float = FIRST_PERIOD_SECONDS,
) -> None:
    """Freeze now, then at the end of each period collect everything once and freeze what survives: periods of
    `first_period_seconds`, doubled each time up to `period_seconds`. Between those, what survives any full
    collection is frozen as it ends (`freeze_survivors`). Runs until cancelled; on the event loop, as any
    collection does (the collector holds the interpreter lock)."""
    gc.freeze()
    gc.callbacks.append(freeze_survivors)
    try:
        wait = min(first_period_seconds, period_seconds)
        while True:
            await sleep(wait)
            wait = min(2 * wait, period_seconds)
            gc.unfreeze()
            started = time.perf_counter()
            gc.collect()
            gc.freeze()
            log.debug(
                "collected everything in %.0f ms; %d objects left out of collections until the next time",
                (time.perf_counter() - started) * 1000,
                gc.get_freeze_count(),
            )
    finally:
        gc.callbacks.remove(freeze_survivors)


def freeze_survivors(phase: str, info: dict[str, Any]) -> None:
    """A `gc.callbacks` entry: at the end of a full collection, freeze what it left alive.

    Each full collection walks every object not frozen. The period's freeze leaves out what lived through it,
    but objects that live long and are made after it (a rollout's new status, kopf's state of a new
    rollout, the VirtualService cache's entries) pile up in the oldest generation until the next period, and
    every full collection walks them again. Measured at 5,000 rollouts (the scale benchmark): 43 full
    collections in ten minutes, 215 ms each on average, every one over 100 ms. At the end of a full
    collection the younger generations are empty and what is left was just found alive: frozen then, the next
    full collection walks only what was promoted since. What becomes cyclic garbage among them is taken by the
    period's collection of everything (objects freed by their reference counts go at once, frozen or not).
    Called on the thread that triggered the collection, under the interpreter lock; `gc.freeze` only moves
    the collector's lists."""
    if phase == "stop" and info.get("generation") == 2:
        gc.freeze()
