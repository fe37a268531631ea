"""The kopf glue: the driver and the finalizer of one rollout never interleave their effects."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import timedelta

import kopf

from fakes import World, sample_spec, sample_vs
from modelrollout import handlers


class Flag:
    """What kopf hands a daemon as `stopped`: false until the daemon is told to stop."""

    def __init__(self) -> None:
        self.set = False

    def __bool__(self) -> bool:
        return self.set


def test_a_deletion_waits_for_the_tick_in_progress_and_the_driver_starts_no_other() -> None:
    w = World()
    w.server.put_vs(sample_vs())
    w.server.create_rollout(sample_spec())
    w.tick()
    w.now += timedelta(minutes=1)  # the next tick advances to 50%
    memo = kopf.Memo()
    memo.reconciler = w.reconciler
    stopped = Flag()
    order: list[str] = []
    handlers.Runtime.tick_seconds = 0.01

    finalize = w.reconciler.on_delete

    async def on_delete(body: kopf.Body) -> None:
        order.append("finalizer runs")
        await finalize(body)

    w.reconciler.on_delete = on_delete  # type: ignore[method-assign]

    async def scenario() -> None:
        deletion: list[asyncio.Task[None]] = []

        async def delete_mid_tick() -> None:
            # kopf runs the finalizer and tells the driver to stop while its tick is about to write.
            order.append("tick writes")
            w.server.delete_rollout()
            stopped.set = True
            body = kopf.Body(w.server.rollout())
            deletion.append(asyncio.create_task(handlers.release(body=body, memo=memo)))
            await asyncio.sleep(0.05)  # the finalizer gets every chance to run now; it must wait
            order.append("tick done")

        w.server.before_vs_write = delete_mid_tick
        driver = asyncio.create_task(
            handlers.drive(body=kopf.Body(w.server.rollout()), memo=memo, stopped=stopped, logger=None)
        )
        await asyncio.wait_for(driver, 5)
        await asyncio.wait_for(deletion[0], 5)

    asyncio.run(scenario())

    assert order == ["tick writes", "tick done", "finalizer runs"]
    assert w.server.weights() == (100, 0)
    assert w.server.claims() == {}


def test_the_body_kopf_keeps_loses_its_managed_fields_and_shares_its_strings_when_the_event_arrives() -> None:
    w = World()
    w.server.create_rollout(sample_spec())
    raw = json.loads(json.dumps(w.server.rollout()))  # as decoded from a watch: its own copy of every string
    raw["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    raw["metadata"]["annotations"] = {"kept": "yes"}
    kept = kopf.Body(raw)  # kopf's view for the driver: over the very dict of the event
    memo = kopf.Memo()
    asyncio.run(handlers.wake(body=kept, event={"type": "MODIFIED", "object": raw}, memo=memo))
    assert "managedFields" not in kept.metadata
    assert kept.metadata.annotations == {"kept": "yes"}
    assert kept.spec == w.server.rollout()["spec"]
    # Its strings are the process-wide copies (a second rollout's body adds none of them again).
    key = next(iter(raw["spec"]))
    assert key is sys.intern(str(key))
    handlers.slim_kept_body({"type": None, "object": {"metadata": None}})  # nothing to drop: no error
