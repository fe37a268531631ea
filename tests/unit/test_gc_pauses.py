import asyncio
import contextlib
import gc
import weakref

from prometheus_client import CollectorRegistry

from modelrollout.gc_pauses import (
    GcPauseTimer,
    freeze_survivors,
    keep_long_lived_objects_frozen,
    space_full_collections,
)
from modelrollout.telemetry import Telemetry


def test_a_collection_is_timed_by_its_generation_from_the_collectors_own_callbacks() -> None:
    seen: list[tuple[int, float]] = []
    timer = GcPauseTimer(lambda generation, seconds: seen.append((generation, seconds)))
    timer.install()
    timer.install()  # once only, however often asked
    try:
        gc.collect(2)
        gc.collect(0)
    finally:
        timer.uninstall()
    gc.collect(1)  # not seen after uninstall
    assert [generation for generation, _seconds in seen] == [2, 0]
    assert all(seconds >= 0 for _generation, seconds in seen)


def test_the_time_is_from_start_to_stop_and_a_stop_without_a_start_is_ignored() -> None:
    ticks = iter([10.0, 10.25])
    seen: list[tuple[int, float]] = []
    timer = GcPauseTimer(lambda g, s: seen.append((g, s)), clock=lambda: next(ticks))
    timer("stop", {"generation": 1})
    timer("start", {"generation": 2})
    timer("stop", {"generation": 2})
    assert seen == [(2, 0.25)]


def test_pauses_are_exported_per_generation() -> None:
    registry = CollectorRegistry()
    telemetry = Telemetry(registry)
    telemetry.observe_gc_pause(2, 0.3)
    telemetry.observe_gc_pause(0, 0.002)
    count = registry.get_sample_value
    assert count("modelrollout_gc_pause_seconds_count", {"generation": "2"}) == 1
    assert count("modelrollout_gc_pause_seconds_bucket", {"generation": "2", "le": "0.25"}) == 0
    assert count("modelrollout_gc_pause_seconds_bucket", {"generation": "2", "le": "0.5"}) == 1
    assert count("modelrollout_gc_pause_seconds_count", {"generation": "0"}) == 1
    assert count("modelrollout_gc_pause_seconds_count", {"generation": "1"}) == 0


def test_full_collections_are_spaced_and_the_younger_thresholds_kept() -> None:
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        space_full_collections()
        assert gc.get_threshold() == (700, 10, 100)
        space_full_collections(after=50)
        assert gc.get_threshold() == (700, 10, 50)
    finally:
        gc.set_threshold(*saved)


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_objects_alive_at_a_freeze_are_left_out_until_the_next_period_collects_everything() -> None:
    """Frozen objects are walked by no collection; every period one full collection takes the garbage among
    them, and what is still alive is frozen again."""
    cycle = _Cycle()
    gone = weakref.ref(cycle)
    periods: list[float] = []

    async def scenario() -> None:
        release = asyncio.Event()

        async def sleep(seconds: float) -> None:
            periods.append(seconds)
            if len(periods) == 1:
                await release.wait()  # the first period lasts until the test has looked
            else:
                raise asyncio.CancelledError

        task = asyncio.create_task(keep_long_lived_objects_frozen(600, sleep=sleep, first_period_seconds=600))
        await asyncio.sleep(0)
        assert gc.get_freeze_count() > 0
        nonlocal cycle
        del cycle
        gc.collect()
        assert gone() is not None  # frozen: no collection walks it
        release.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(scenario())
        assert gone() is None  # the period's full collection took it
        assert gc.get_freeze_count() > 0  # what survived is frozen again
        assert periods == [600, 600]
    finally:
        gc.unfreeze()


def test_the_first_periods_are_short_and_double_up_to_the_period() -> None:
    """What a start leaves alive for good is frozen within minutes, not at the end of a whole period."""
    periods: list[float] = []

    async def sleep(seconds: float) -> None:
        periods.append(seconds)
        if len(periods) == 7:
            raise asyncio.CancelledError

    try:
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(keep_long_lived_objects_frozen(600, sleep=sleep))
        assert periods == [30, 60, 120, 240, 480, 600, 600]
        periods.clear()
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(keep_long_lived_objects_frozen(20, sleep=sleep))
        assert periods == [20] * 7  # a period shorter than the first one is the period
    finally:
        gc.unfreeze()


def test_what_survives_a_full_collection_is_frozen_while_the_periods_run() -> None:
    """Between two periods a full collection walks only what was promoted since the last one; garbage among
    the frozen survivors waits for the period's collection of everything."""
    cycle = _Cycle()
    gone = weakref.ref(cycle)

    async def scenario() -> None:
        release = asyncio.Event()

        async def sleep(seconds: float) -> None:
            await release.wait()
            raise asyncio.CancelledError

        task = asyncio.create_task(keep_long_lived_objects_frozen(600, sleep=sleep))
        await asyncio.sleep(0)
        gc.unfreeze()  # as if made after the start's freeze
        nonlocal cycle
        survivor = _Cycle()
        gc.collect(2)  # a full collection: `survivor` and `cycle` are alive, and frozen as it ends
        assert gc.get_freeze_count() > 0
        del cycle
        gc.collect(2)
        assert gone() is not None  # frozen: no full collection walks it until the period's
        del survivor
        young = weakref.ref(_Cycle())
        gc.collect(2)
        assert young() is None  # made after the freeze: collected as ever
        release.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(scenario())
        assert freeze_survivors not in gc.callbacks  # the task's end takes its callback out
        gc.collect(2)
        assert gone() is not None  # still frozen: nothing unfroze it
        gc.unfreeze()
        gc.collect(2)
        assert gone() is None
    finally:
        gc.unfreeze()
