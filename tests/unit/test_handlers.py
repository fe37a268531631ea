"""The kopf glue and the rollouts' drivers: events start, feed and stop a rollout's driver; the driver and the
finalizer of one rollout never interleave their effects; what a driver keeps of its object is small."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import json
import weakref
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import kopf
import pytest

from fakes import World, sample_spec, sample_vs
from modelrollout import engine, handlers
from modelrollout.config import OperatorConfig
from modelrollout.drivers import Driven, Drivers, pack
from modelrollout.kube import ACTION_ANNOTATION, RolloutRef
from modelrollout.shards import SHARD_LABEL
from modelrollout.slots import ReconcileSlots
from modelrollout.telemetry import Telemetry
from modelrollout.wakeups import Wakeups


def operator(w: World) -> kopf.Memo:
    """The memo kopf hands the handlers, as `configure` leaves it, over the fakes."""
    memo = kopf.Memo()
    memo.reconciler = w.reconciler
    memo.wakeups = Wakeups()
    memo.slots = ReconcileSlots(4)
    memo.drivers = handlers.drivers_for(w.reconciler, memo.slots, memo.wakeups)
    return memo


def event(obj: dict[str, Any], kind: str | None = "MODIFIED") -> kopf.RawEvent:
    return {"type": kind, "object": json.loads(json.dumps(obj))}  # type: ignore[typeddict-item]


def counting_ticks(w: World) -> list[str]:
    """The resourceVersion of the object each tick of the driver decided on."""
    seen: list[str] = []
    reconcile = w.reconciler.reconcile

    async def counted(body: Any, may_write: Callable[[], bool] = lambda: True, **kwargs: Any) -> Any:
        seen.append(body["metadata"]["resourceVersion"])
        return await reconcile(body, may_write, **kwargs)

    w.reconciler.reconcile = counted  # type: ignore[method-assign]
    return seen


def test_a_deletion_waits_for_the_tick_in_progress_and_the_driver_starts_no_other() -> None:
    w = World()
    w.server.put_vs(sample_vs())
    w.server.create_rollout(sample_spec())
    w.tick()
    w.now += timedelta(minutes=1)  # the next tick advances to 50%
    order: list[str] = []
    handlers.Runtime.tick_seconds = 0.01
    finalize = w.reconciler.on_delete

    async def on_delete(body: kopf.Body) -> None:
        order.append("finalizer runs")
        await finalize(body)

    w.reconciler.on_delete = on_delete  # type: ignore[method-assign]

    async def scenario() -> None:
        memo = operator(w)
        deletion: list[asyncio.Task[None]] = []

        async def delete_mid_tick() -> None:
            # The rollout is deleted and kopf runs the finalizer while the tick is about to write.
            order.append("tick writes")
            w.server.delete_rollout()
            body = kopf.Body(w.server.rollout())
            deletion.append(asyncio.create_task(handlers.release(body=body, memo=memo)))
            await asyncio.sleep(0.05)  # the finalizer gets every chance to run now; it must wait
            order.append("tick done")

        w.server.before_vs_write = delete_mid_tick
        await handlers.wake(event=event(w.server.rollout(), None), memo=memo)
        driven = memo.drivers.get("uid-chat")
        assert driven is not None
        assert driven.task is not None
        await asyncio.wait_for(driven.task, 5)
        await asyncio.wait_for(deletion[0], 5)
        assert memo.drivers.get("uid-chat") is None  # finalized: nothing of it is kept

    asyncio.run(scenario())

    assert order == ["tick writes", "tick done", "finalizer runs"]
    assert w.server.weights() == (100, 0)
    assert w.server.claims() == {}


def test_events_start_feed_and_stop_the_driver() -> None:
    """The first event starts the driver; a spec edit or an action wakes it at once with the newer object;
    our own status writes do not wake it; the deleting event stops it."""
    w = World()
    w.server.put_vs(sample_vs())
    w.server.create_rollout(sample_spec())
    ticks = counting_ticks(w)
    handlers.Runtime.tick_seconds = 60.0  # only events can bring the next tick within the test

    async def scenario() -> None:
        memo = operator(w)
        drivers: Drivers = memo.drivers
        await handlers.wake(event=event(w.server.rollout(), None), memo=memo)
        await asyncio.sleep(0.1)
        assert len(ticks) == 1  # started; the engine's next moment is minutes away
        status_written = w.server.rollout()["metadata"]["resourceVersion"]
        assert ticks[0] != status_written
        await handlers.wake(event=event(w.server.rollout()), memo=memo)  # our own status write
        await asyncio.sleep(0.1)
        assert len(ticks) == 1
        w.server.annotate("abort")
        annotated = w.server.rollout()["metadata"]["resourceVersion"]
        await handlers.wake(event=event(w.server.rollout()), memo=memo)
        await asyncio.sleep(0.1)
        assert ticks[1:] == [annotated]  # at once, and on the object the event brought
        assert w.server.status().phase == "Aborted"
        w.server.delete_rollout()
        await handlers.wake(event=event(w.server.rollout()), memo=memo)
        driven = drivers.get("uid-chat")
        assert driven is not None
        assert driven.stopped
        assert driven.task is not None
        await asyncio.wait_for(driven.task, 1)  # it was asleep: it ends at once
        await handlers.wake(event=event(w.server.rollout(), "DELETED"), memo=memo)
        assert drivers.get("uid-chat") is None

    asyncio.run(scenario())
    assert len(ticks) == 2


def test_only_rollouts_of_the_operators_shard_are_driven_and_one_relabelled_away_is_let_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An operator of shard `a` starts no driver for a rollout of no shard; it drives the rollout once it is
    labelled `a`, and lets it go (its driver ends, nothing kept) when it is relabelled `b`. Its finalizer
    filter follows the same label."""
    w = World()
    w.server.put_vs(sample_vs())
    w.server.create_rollout(sample_spec())
    ticks = counting_ticks(w)
    forgotten: list[str] = []
    forget = w.reconciler.forget

    def forgetting(ref: RolloutRef) -> None:
        forgotten.append(ref.name)
        forget(ref)

    w.reconciler.forget = forgetting  # type: ignore[method-assign]
    monkeypatch.setattr(handlers.Runtime, "shard", "a")
    monkeypatch.setattr(handlers.Runtime, "tick_seconds", 60.0)

    def label(shard: str) -> None:
        w.server.edit_rollout(lambda obj: obj["metadata"].__setitem__("labels", {SHARD_LABEL: shard}))

    async def scenario() -> None:
        memo = operator(w)
        drivers: Drivers = memo.drivers
        await handlers.wake(event=event(w.server.rollout(), None), memo=memo)
        await asyncio.sleep(0.1)
        assert drivers.get("uid-chat") is None
        assert ticks == []
        label("a")
        await handlers.wake(event=event(w.server.rollout()), memo=memo)
        await asyncio.sleep(0.1)
        driven = drivers.get("uid-chat")
        assert driven is not None
        assert driven.task is not None
        assert len(ticks) == 1
        assert w.server.weights() == (90, 10)
        assert forgotten == []
        label("b")
        await handlers.wake(event=event(w.server.rollout()), memo=memo)
        assert drivers.get("uid-chat") is None
        await asyncio.wait_for(driven.task, 1)  # asleep until its next moment: it ends at once
        assert driven.stopped
        await asyncio.sleep(0.05)
        assert forgotten == ["chat"]  # its /metrics series and what the reconciler kept of it go too
        # The other shard's events start nothing here.
        await handlers.wake(event=event(w.server.rollout()), memo=memo)
        await asyncio.sleep(0.1)
        assert drivers.get("uid-chat") is None

    asyncio.run(scenario())
    assert len(ticks) == 1
    assert handlers._in_this_shard(labels={SHARD_LABEL: "a"})
    assert not handlers._in_this_shard(labels={SHARD_LABEL: "b"})
    assert not handlers._in_this_shard(labels={})
    monkeypatch.setattr(handlers.Runtime, "shard", None)
    assert handlers._in_this_shard(labels={})
    assert handlers._in_this_shard(labels={SHARD_LABEL: ""})
    assert not handlers._in_this_shard(labels={SHARD_LABEL: "a"})


def test_shutdown_stops_every_driver() -> None:
    w = World()
    w.server.put_vs(sample_vs())
    for name in ("a", "b", "c"):
        w.server.create_rollout(sample_spec(), name=name)
    handlers.Runtime.tick_seconds = 60.0

    async def scenario() -> None:
        memo = operator(w)
        for name in ("a", "b", "c"):
            await handlers.wake(event=event(w.server.rollout(name), None), memo=memo)
        await asyncio.sleep(0.1)
        drivers: Drivers = memo.drivers
        tasks = [drivers.get(f"uid-{name}").task for name in ("a", "b", "c")]  # type: ignore[union-attr]
        assert all(task is not None and not task.done() for task in tasks)
        await asyncio.wait_for(drivers.shutdown(5), 1)
        assert all(task is not None and task.done() and not task.cancelled() for task in tasks)

    asyncio.run(scenario())


def test_a_driver_keeps_its_object_compressed_without_managed_fields() -> None:
    w = World()
    w.server.create_rollout(sample_spec())
    raw = w.server.rollout()
    raw["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {"f:x": {}}}}] * 20
    raw["metadata"]["annotations"] = {ACTION_ANNOTATION: "abort"}
    driven = Driven("llm/chat", "uid-chat", pack(raw))
    body = driven.body()
    assert "managedFields" not in body["metadata"]
    del raw["metadata"]["managedFields"]
    assert body == raw
    assert driven.packed is not None
    assert len(driven.packed) < len(json.dumps(raw)) / 2
    assert body is not driven.body()  # each tick decodes its own copy: nothing it changes is kept


def test_the_wait_follows_the_engines_next_moment_within_the_resync() -> None:
    handlers.Runtime.tick_seconds, handlers.Runtime.resync_seconds = 5.0, 60.0
    plan = engine.Plan(status=None, look_after=timedelta(seconds=12))  # type: ignore[arg-type]
    assert handlers._wait_seconds(plan) == 12 + handlers.WAKE_MARGIN_SECONDS
    assert handlers._wait_seconds(None) == 5.0
    far = engine.Plan(status=None, look_after=timedelta(hours=1))  # type: ignore[arg-type]
    assert handlers._wait_seconds(far) == 60.0


def test_a_driver_does_not_keep_the_event_that_started_it() -> None:
    """kopf runs an event handler with the event's cause in a context variable; a task started there would
    keep that context (the event's body among it) for the driver's whole life."""
    w = World()
    w.server.put_vs(sample_vs())
    w.server.create_rollout(sample_spec())
    handlers.Runtime.tick_seconds = 60.0
    cause: contextvars.ContextVar[object] = contextvars.ContextVar("cause")

    class Cause:
        pass

    async def scenario() -> weakref.ref[Cause]:
        memo = operator(w)
        holder = [Cause()]
        kept = weakref.ref(holder[0])

        async def kopf_worker() -> None:
            cause.set(holder.pop())
            await handlers.wake(event=event(w.server.rollout(), None), memo=memo)

        await asyncio.create_task(kopf_worker())
        await asyncio.sleep(0.1)
        gc.collect()
        driven = memo.drivers.get("uid-chat")
        assert driven.task is not None
        assert not driven.task.done()  # the driver runs on ...
        assert kept() is None  # ... without the cause of the event that started it
        await memo.drivers.shutdown(1)
        return kept

    asyncio.run(scenario())


def test_a_failing_tick_posts_one_event_per_distinct_failure() -> None:
    w = World()
    w.server.put_vs(sample_vs())
    w.server.create_rollout(sample_spec())
    failures = iter([RuntimeError("boom"), RuntimeError("boom"), RuntimeError("bang")])

    async def failing(body: Any, may_write: Callable[[], bool] = lambda: True, **kwargs: Any) -> Any:
        raise next(failures)

    w.reconciler.reconcile = failing  # type: ignore[method-assign]
    tick = handlers.drivers_for(w.reconciler, ReconcileSlots(1), Wakeups())._tick

    async def scenario() -> None:
        for _ in range(3):
            assert await tick(w.server.rollout(), lambda: True, False) is None

    asyncio.run(scenario())
    failed = [(kind, message) for kind, reason, message in w.server.events if reason == "ReconcileFailed"]
    assert failed == [
        ("Warning", "reconcile failed: RuntimeError: boom"),
        ("Warning", "reconcile failed: RuntimeError: bang"),
    ]


def test_a_driver_that_ended_without_being_stopped_starts_again_with_the_next_event() -> None:
    w = World()
    w.server.put_vs(sample_vs())
    w.server.create_rollout(sample_spec())
    handlers.Runtime.tick_seconds = 60.0

    async def scenario() -> None:
        memo = operator(w)
        await handlers.wake(event=event(w.server.rollout(), None), memo=memo)
        driven = memo.drivers.get("uid-chat")
        first = driven.task
        assert first is not None
        first.cancel()  # as if it had died of a bug past its own guard
        await asyncio.gather(first, return_exceptions=True)
        await handlers.wake(event=event(w.server.rollout()), memo=memo)
        assert driven.task is not first
        assert not driven.task.done()
        await memo.drivers.shutdown(1)

    asyncio.run(scenario())


def test_a_driver_stopped_while_it_waits_for_a_slot_starts_no_tick() -> None:
    """Every slot is taken when the driver's turn comes; it is told to stop meanwhile (its rollout is being
    deleted, or the operator stops): once a slot frees it ends without ticking."""
    ticks: list[dict[str, Any]] = []

    async def tick(body: dict[str, Any], may_write: Callable[[], bool], check_requested: bool) -> None:
        ticks.append(body)

    async def scenario() -> None:
        slots = ReconcileSlots(1)
        drivers = Drivers(
            tick,
            slots=slots,
            wakeups=Wakeups(),
            leading=lambda: True,
            wait_seconds=lambda plan: 60.0,
            canary_service=lambda obj: None,
        )
        w = World()
        w.server.create_rollout(sample_spec())
        async with slots.slot(urgent=True):  # another rollout's reconciliation holds the only slot
            drivers.seen("ADDED", w.server.rollout())
            await asyncio.sleep(0.05)
            assert slots.waiting == 1
            drivers.stop("uid-chat")
        driven = drivers.get("uid-chat")
        assert driven is not None
        assert driven.task is not None
        await asyncio.wait_for(driven.task, 1)

    asyncio.run(scenario())
    assert ticks == []


def test_telemetry_is_served_collections_timed_and_long_lived_objects_frozen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(handlers.Runtime, "config", OperatorConfig(metrics_port=9464, gc_freeze_seconds=600))
    telemetry = Telemetry()
    served: list[int] = []
    monkeypatch.setattr(telemetry, "serve", served.append)
    memo = kopf.Memo()

    async def scenario() -> None:
        handlers._start_telemetry(memo, telemetry)
        try:
            await asyncio.sleep(0)
            assert gc.get_freeze_count() > 0  # the first freeze
            gc.unfreeze()
            gc.collect()
            assert telemetry.gc_pause_seconds.labels("2")._sum.get() > 0  # timed into /metrics
        finally:
            memo.gc_freeze_task.cancel()
            memo.gc_pause_timer.uninstall()
            gc.unfreeze()

    asyncio.run(scenario())
    assert served == [9464]
