"""Giving memory back to the system after a burst.

When every rollout reconciles at once (the operator's start, a re-list after the API server was away), the
process allocates a few hundred MB for a minute and frees them, but glibc keeps what was freed: it returns
only the top of its heap to the system, and one long-lived object above a freed region pins everything
below it. Measured at 1,000 rollouts: 536 MB RSS two minutes after the start, of which glibc counted 278 MB
free but held; one `malloc_trim(0)` took 27 ms and brought RSS to 297 MB. Neither Python nor a library we use
does this (CPython leaves the C heap to the C library), so the operator asks glibc itself, now and then,
from a worker thread.

Only where the C library is glibc (`malloc_trim` and `mallinfo2` exist); elsewhere it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Below this much free-but-held memory a trim is not worth its arena locks.
WORTH_TRIMMING_BYTES = 16 * 1024 * 1024


class _MallInfo2(ctypes.Structure):
    # glibc >= 2.33: the counters are size_t (mallinfo's ints wrap above 2 GiB).
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@dataclass(frozen=True)
class Trim:
    held_before: int  # bytes glibc counted free but held
    rss_before: int | None  # bytes resident, where /proc says
    rss_after: int | None

    @property
    def returned(self) -> int:
        """Bytes the process stopped holding (0 when unknown or when it grew meanwhile)."""
        if self.rss_before is None or self.rss_after is None:
            return 0
        return max(0, self.rss_before - self.rss_after)


def _libc(library: str | None) -> ctypes.CDLL:
    return ctypes.CDLL(library or ctypes.util.find_library("c") or "libc.so.6")


class Glibc:
    """glibc's allocator, or nothing where the process does not run on glibc."""

    def __init__(self, library: str | None = None, *, worth_trimming: int = WORTH_TRIMMING_BYTES) -> None:
        self.worth_trimming = worth_trimming
        self._settled: int | None = None  # resident bytes right after the last trim
        self._trim: Callable[[int], int] | None = None
        self._info: Callable[[], _MallInfo2] | None = None
        try:
            libc = _libc(library)
            trim, info = libc.malloc_trim, libc.mallinfo2
        except (OSError, AttributeError):  # not glibc, or one older than 2.33
            return
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
        info.argtypes, info.restype = [], _MallInfo2
        self._trim, self._info = trim, info

    @property
    def available(self) -> bool:
        return self._trim is not None

    def held_free_bytes(self) -> int:
        """Bytes in glibc's heaps that are free (returned to the system or not: a trim leaves the count)."""
        return int(self._info().fordblks) if self._info is not None else 0

    def trim(self) -> Trim | None:
        """Return every free page glibc holds, when there may be something worth it: enough free memory,
        and the process grew since the last trim (a trim releases pages but leaves them counted free, so
        without growth a second one would find nothing). None when it did not trim."""
        if self._trim is None:
            return None
        held = self.held_free_bytes()
        before = resident_bytes()
        grown = before is None or self._settled is None or before - self._settled >= self.worth_trimming
        if held < self.worth_trimming or not grown:
            return None
        self._trim(0)
        after = resident_bytes()
        self._settled = after
        return Trim(held_before=held, rss_before=before, rss_after=after)


# glibc's mallopt parameter for the most heaps (arenas) its allocator makes: by default 8 per core, one more
# for each thread that meets a busy one.
_M_ARENA_MAX = -8
# The operator's threads (Prometheus workers, API clients) allocate little beside the event loop, but each
# arena they get keeps what they freed: at 5,000 rollouts (`make bench-scale`, one run) 302 MB RSS with
# MALLOC_ARENA_MAX=2 against 308-314 MB in four runs with glibc's default.
ARENAS = 2


def limit_arenas(arenas: int = ARENAS, library: str | None = None) -> bool:
    """At most `arenas` glibc heaps from now on (before the threads start); whether it was set. Not where
    MALLOC_ARENA_MAX is set (glibc took it at the start) nor off glibc."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        mallopt = _libc(library).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas))


def resident_bytes() -> int | None:
    """This process's resident set size, where /proc tells it."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


async def keep_returning_memory(
    period_seconds: float, on_trim: Callable[[Trim], None], allocator: Glibc | None = None
) -> None:
    """Every `period_seconds`, give back what glibc holds free: in a worker thread, since a trim walks every
    heap (tens of ms at a few hundred MB) and the event loop must not wait for it. Runs until cancelled."""
    allocator = allocator or Glibc()
    if not allocator.available:
        log.debug("not on glibc: freed memory is left to the C library")
        return
    while True:
        await asyncio.sleep(period_seconds)
        trimmed = await asyncio.to_thread(allocator.trim)
        if trimmed is not None:
            log.debug(
                "returned %.1f MB to the system (%.1f MB were free but held)",
                trimmed.returned / 1e6,
                trimmed.held_before / 1e6,
            )
            on_trim(trimmed)
