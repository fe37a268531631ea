"""One driver per rollout: an asyncio task that reconciles the rollout, then waits for its next moment (the
engine's next check, the end of a soak) or a wake (a spec edit, an action, a change to its VirtualService, an
alert). A rollout's first watch event starts its driver, every later event hands it the newer object, and its
deletion stops it (the finalizer takes over); the operator's shutdown stops them all. Pure asyncio: the kopf
glue feeds the events and provides the tick.

Why the operator's own tasks and not a kopf daemon per rollout: a daemon keeps the rollout's body as Python
objects for the daemon's whole life (10 KB each after sharing strings) next to kopf's per-daemon machinery
(its cause, state, loggers, flags, throttler and several coroutines). Here a rollout costs its latest object
as compressed JSON (about 1.5 KB, decoded once per tick in ~50 us), one task and one lock.

A driver's effects and its finalizer's never interleave: both hold the rollout's lock, and a driver asks
`stopped` (and whether this replica still leads) before every write.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelrollout import engine
from modelrollout.slots import ReconcileSlots
from modelrollout.wakeups import Wakeups

log = logging.getLogger(__name__)

# A rollout woken out of turn (an alert, an action, a spec edit, its VirtualService) that waits this long
# for a reconciliation slot (all taken) or for its own tick says so: what it was woken for is answered late.
URGENT_TURN_LOGGED_SECONDS = 1.0


class Tick(Protocol):
    """One reconciliation of `body`; `may_write` is asked before every write. Returns the plan carried
    out, or None if the tick failed (the tick reports its own failures)."""

    def __call__(
        self, body: dict[str, Any], may_write: Callable[[], bool], check_requested: bool
    ) -> Awaitable[engine.Plan | None]: ...


def pack(obj: Mapping[str, Any]) -> bytes:
    """A watch event's object as the driver keeps it: JSON, compressed, without metadata.managedFields (the
    API server's per-field bookkeeping of every writer, which nothing in the operator reads)."""
    meta = obj.get("metadata")
    if isinstance(meta, Mapping) and "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return zlib.compress(json.dumps(obj, separators=(",", ":")).encode(), 1)


def rollout_key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


@dataclass(eq=False)
class Driven:
    """One rollout as its driver and its finalizer share it."""

    key: str  # namespace/name
    uid: str
    packed: bytes | None  # the latest object the watch showed (`pack`); None if only the finalizer saw it
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    stopped: bool = False  # deleted, or the operator stops: the driver writes nothing more
    left: bool = False  # driven elsewhere now (another shard): forgotten when its driver ends
    task: asyncio.Task[None] | None = None

    def body(self) -> dict[str, Any]:
        if self.packed is None:
            raise LookupError(f"{self.key}: no object seen")
        body: dict[str, Any] = json.loads(zlib.decompress(self.packed))
        return body


class Drivers:
    def __init__(
        self,
        tick: Tick,
        *,
        slots: ReconcileSlots,
        wakeups: Wakeups,
        leading: Callable[[], bool],
        wait_seconds: Callable[[engine.Plan | None], float],
        canary_service: Callable[[Mapping[str, Any]], tuple[str, str] | None],
        forget: Callable[[Mapping[str, Any]], None] = lambda body: None,
        retry_seconds: float = 5.0,
    ) -> None:
        """`forget` is given the last object of a rollout that left (`leave`) once its driver has ended."""
        self._tick = tick
        self._forget = forget
        self._slots = slots
        self._wakeups = wakeups
        self._leading = leading
        self._wait_seconds = wait_seconds
        self._canary_service = canary_service
        self._retry_seconds = retry_seconds
        self._driven: dict[str, Driven] = {}  # by uid
        # Drivers run in (a copy of) the context the operator made them in, not in that of the event that
        # starts each: a task keeps its context for life, and an event handler's holds the event's cause
        # (its body, patch and logger). Measured at 1,000 rollouts: 7.6 MB of first bodies kept that way.
        self._context = contextvars.copy_context()

    def get(self, uid: str) -> Driven | None:
        return self._driven.get(uid)

    def seen(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        """A watch event of a rollout: start its driver, hand it the newer object, or stop it."""
        meta = obj.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        if not uid:
            return
        if event_type == "DELETED":
            self.stop(uid)
            self._driven.pop(uid, None)
            return
        key = rollout_key(obj)
        driven = self._driven.get(uid)
        if driven is None:
            driven = self._driven[uid] = Driven(key, uid, pack(obj))
        else:
            driven.packed = pack(obj)
        if meta.get("deletionTimestamp"):
            self.stop(uid)
            return
        # Kept current from every event, so an alert naming the canary Service finds the rollout at once.
        self._wakeups.route_canary(key, self._canary_service(obj))
        # A driver that ended without being stopped (a bug past its guard) starts again with the next event.
        if (driven.task is None or driven.task.done()) and not driven.stopped:
            driven.task = asyncio.create_task(
                self._drive(driven), name=f"drive {key}", context=self._context.copy()
            )

    def leave(self, uid: str) -> bool:
        """The rollout is no longer driven here (it moved to another shard): its driver stops (a tick under
        way writes nothing more), its entry goes, and it is forgotten as the driver ends, after that tick
        (forgotten earlier, the tick would bring its /metrics series back). False if no driver of it ran
        here."""
        driven = self._driven.get(uid)
        if driven is None:
            return False
        driven.left = True
        self.stop(uid)
        del self._driven[uid]
        if driven.task is None or driven.task.done():
            self._forget_left(driven)
        return True

    def stopping(self, uid: str, key: str) -> Driven:
        """The rollout's entry, its driver told to stop (made, stopped, if no event showed it yet): for the
        finalizer, which then takes its lock."""
        driven = self._driven.setdefault(uid, Driven(key, uid, None))
        self.stop(uid)
        return driven

    def stop(self, uid: str) -> None:
        driven = self._driven.get(uid)
        if driven is not None and not driven.stopped:
            driven.stopped = True
            self._wakeups.wake(driven.key)  # a waiting driver ends now, not at its next moment

    def _forget_left(self, driven: Driven) -> None:
        if driven.packed is not None:
            self._forget(driven.body())

    def finalized(self, uid: str) -> None:
        """The finalizer is done with the rollout: nothing of it is kept (a DELETED event may be missed)."""
        driven = self._driven.get(uid)
        if driven is not None and driven.stopped:
            del self._driven[uid]

    async def shutdown(self, grace_seconds: float) -> None:
        """Stop every driver: each may finish its tick within `grace_seconds`, then is cancelled."""
        tasks = [driven.task for driven in self._driven.values() if driven.task is not None]
        for uid in list(self._driven):
            self.stop(uid)
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=grace_seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _drive(self, driven: Driven) -> None:
        alarm = self._wakeups.alarm(driven.key)
        woken = False  # by the alarm (an alert, an action, a spec edit, its VirtualService), not by its timer
        try:
            while not driven.stopped:
                alarm.clear()
                try:
                    waiting = await self._once(driven, urgent=woken)
                except Exception:  # a bug, not a failed tick (the tick reports its own): keep driving
                    log.exception("%s: driver step failed", driven.key)
                    waiting = self._retry_seconds
                if driven.stopped:
                    break
                woken = await _sleep(alarm, waiting)
        finally:
            self._wakeups.forget(driven.key, alarm)
            if driven.left:
                self._forget_left(driven)

    async def _once(self, driven: Driven, *, urgent: bool) -> float:
        """One reconciliation in turn; the seconds until the next look."""
        requested = self._wakeups.take_check_request(driven.key)
        asked = time.perf_counter()
        async with self._slots.slot(urgent=urgent or requested), driven.lock:
            turn = time.perf_counter() - asked
            if (urgent or requested) and turn >= URGENT_TURN_LOGGED_SECONDS:
                log.info("%s: woken out of turn, waited %.1f s for a reconciliation slot", driven.key, turn)
            if driven.stopped or not self._leading():
                driven.stopped = True
                return 0.0
            # The newest object: events may have come while this driver waited for its turn.
            plan = await self._tick(driven.body(), lambda: not driven.stopped and self._leading(), requested)
        if plan is not None and plan.keep_check_request:
            self._wakeups.keep_check_request(driven.key)
        waiting = self._wait_seconds(plan)
        log.debug(
            "%s: next look in %.2f s (engine: %s)", driven.key, waiting, plan.look_after if plan else "none"
        )
        return waiting


async def _sleep(alarm: asyncio.Event, seconds: float) -> bool:
    """Wait for `alarm` or `seconds`, whichever comes first; True if the alarm rang. One timer and the
    alarm's waiter, not wait_for's extra task: every idle rollout sits here."""
    timer_rang = False

    def ring() -> None:
        nonlocal timer_rang
        timer_rang = True
        alarm.set()

    timer = asyncio.get_running_loop().call_later(seconds, ring)
    try:
        await alarm.wait()
    finally:
        timer.cancel()
    return not timer_rang
