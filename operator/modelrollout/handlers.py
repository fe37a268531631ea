"""kopf glue only: settings, one driver (daemon) per ModelRollout, the deletion finalizer. Every decision is
made in `engine`, every effect in `reconciler`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from modelrollout import api, engine, memory
from modelrollout.alert_receiver import AlertReceiver
from modelrollout.alerts import canary_service
from modelrollout.compact import share_strings
from modelrollout.config import OperatorConfig
from modelrollout.gc_pauses import GcPauseTimer, space_full_collections
from modelrollout.kube import ACTION_ANNOTATION, default_api_client, describe_api_error
from modelrollout.notify import Notifier, NotifyTargets
from modelrollout.reconciler import Reconciler
from modelrollout.slots import ReconcileSlots
from modelrollout.wakeups import Wakeups

FINALIZER = f"{api.GROUP}/finalizer"
KOPF_WORKERS = 128
log = logging.getLogger(__name__)


class Runtime:
    """Set by the `run` command before kopf starts."""

    config = OperatorConfig()
    tick_seconds = 5.0
    namespaces: tuple[str, ...] = ()
    # A rollout with nothing due (a long soak, a finished rollout) is looked at no less often than this, in
    # case something no event reports changed (an EnvoyFilter removed by hand, a VirtualService created).
    resync_seconds = 60.0
    alerts_port = 0  # 0: no alert receiver
    alerts_token: str | None = None
    identity = ""
    # Whether this replica may reconcile and write: always, unless it runs under leader election (`elected`);
    # then the operator stops once it no longer may.
    leading: Callable[[], bool] = staticmethod(lambda: True)
    elected = False


def user_agent(identity: str) -> str:
    """The user agent of this replica's API requests: its identity shows in the API server's audit log."""
    return f"modelrollout-operator/{identity}" if identity else "modelrollout-operator"


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Our own names on the objects, so nothing collides with another kopf operator in the cluster.
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    # kopf's own per-handler Events are noise next to ours; keep only its warnings and errors.
    settings.posting.level = logging.WARNING
    # Watches reconnect well before load balancers drop idle streams.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    # kopf handles each rollout's watch events in a worker of its own, by default as many at once as there
    # are rollouts with events. At the start every rollout has one (and a new rollout gets kopf's finalizer
    # and annotation patches): measured at 1,000 new rollouts, 385 of kopf's API requests in flight at once
    # and 270 MB more memory within 10 s, most of which the allocator kept afterwards. Bounded, the start
    # goes at the pace the API server answers. An idle worker gives its place up after 0.25 s, not kopf's
    # 5 s: every status write comes back as an event that takes a worker. Measured at 1,000 new rollouts:
    # 64 workers lingering 1 s, every rollout checked 91 s after the start (benchmark); 128 lingering 0.25 s,
    # 65 s (probe) and 85 s (benchmark, with a standby); 256, 66 s with a peak 36 MB higher (probe).
    settings.queueing.worker_limit = KOPF_WORKERS
    settings.queueing.idle_timeout = 0.25
    if Runtime.namespaces and not any(c in "".join(Runtime.namespaces) for c in "*?[!"):
        # Exact namespaces need no cluster-wide discovery: a namespaced install (Roles only) starts at once
        # instead of retrying cluster-scoped lists it may not make.
        settings.scanning.disabled = True
    space_full_collections()
    api_client = await asyncio.to_thread(default_api_client)
    api_client.user_agent = user_agent(Runtime.identity)
    reconciler, kube = Reconciler.for_cluster(api_client, Runtime.config)
    memo.reconciler = reconciler
    reconciler.telemetry.watch_slots(_slots(memo))
    wakeups = _wakeups(memo)
    if reconciler.virtual_services is not None:
        # A change to a VirtualService wakes the rollouts that claim it: drift is corrected when it happens.
        reconciler.virtual_services.on_change = wakeups.on_virtual_service
    if Runtime.config.metrics_port:
        reconciler.telemetry.serve(Runtime.config.metrics_port)
        memo.gc_pause_timer = GcPauseTimer(reconciler.telemetry.observe_gc_pause)
        memo.gc_pause_timer.install()
    if Runtime.config.return_memory_seconds:
        returned = reconciler.telemetry.memory_returned
        memo.memory_task = asyncio.create_task(
            memory.keep_returning_memory(
                Runtime.config.return_memory_seconds, lambda trim: returned.inc(trim.returned)
            )
        )
    if Runtime.elected:
        memo.leadership_task = asyncio.create_task(_step_down_when_lost())
    if Runtime.alerts_port:
        receiver = AlertReceiver(wakeups, token=Runtime.alerts_token, telemetry=reconciler.telemetry)
        await receiver.start(Runtime.alerts_port)
        memo.alert_receiver = receiver
    if Runtime.config.notify_secret:
        # "namespace/name", or a bare name in the operator's own namespace (the chart passes that).
        secret_namespace, _slash, secret_name = Runtime.config.notify_secret.rpartition("/")
        secret_namespace = secret_namespace or os.environ.get("POD_NAMESPACE", "default")
        try:
            targets = NotifyTargets.from_secret_data(
                await kube.read_secret_data(secret_namespace, secret_name)
            )
        except Exception as error:  # notifications are a courtesy: the operator runs without them
            log.error("notifications off: Secret %s unusable: %s", Runtime.config.notify_secret, error)
        else:
            reconciler.notifier = Notifier(targets)
            memo.notifier_task = asyncio.create_task(reconciler.notifier.run())


async def _step_down_when_lost() -> None:
    """Stop the operator once this replica no longer holds its Lease: as a SIGTERM would, so kopf winds down
    the way it does for a pod's termination (a stop flag would leave a waiter that delays every exit)."""
    while Runtime.leading():  # noqa: ASYNC110 - leadership lapses with time, no event marks it
        await asyncio.sleep(0.25)
    log.error("no longer the leader: stopping")
    os.kill(os.getpid(), signal.SIGTERM)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    receiver: AlertReceiver | None = getattr(memo, "alert_receiver", None)
    if receiver is not None:
        await receiver.stop()
    reconciler: Reconciler | None = getattr(memo, "reconciler", None)
    if reconciler is not None:
        if reconciler.notifier is not None:
            await reconciler.notifier.drain(5)
        reconciler.close()
    timer: GcPauseTimer | None = getattr(memo, "gc_pause_timer", None)
    if timer is not None:
        timer.uninstall()
    for name in ("notifier_task", "leadership_task", "memory_task"):
        task: asyncio.Task[None] | None = getattr(memo, name, None)
        if task is not None:
            task.cancel()


def _lock(memo: kopf.Memo, uid: str) -> asyncio.Lock:
    """One lock per rollout, shared by its driver and its finalizer: their effects never interleave."""
    if not hasattr(memo, "locks"):
        memo.locks = {}
    locks: dict[str, asyncio.Lock] = memo.locks
    return locks.setdefault(uid, asyncio.Lock())


def _wakeups(memo: kopf.Memo) -> Wakeups:
    """The drivers' alarms, one registry for the operator (set at startup, shared by every object's memo)."""
    if not hasattr(memo, "wakeups"):
        memo.wakeups = Wakeups()
    wakeups: Wakeups = memo.wakeups
    return wakeups


def _slots(memo: kopf.Memo) -> ReconcileSlots:
    """The reconciliation slots every driver takes in turn (one set for the operator, like the alarms)."""
    if not hasattr(memo, "slots"):
        memo.slots = ReconcileSlots(Runtime.config.max_concurrent_reconciles)
    slots: ReconcileSlots = memo.slots
    return slots


def _name(body: kopf.Body) -> str:
    return f"{body.metadata.namespace}/{body.metadata.name}"


def _canary_service(body: kopf.Body) -> tuple[str, str] | None:
    """The canary Service the rollout routes to, for alerts that name the Service (read leniently: a spec
    the engine refuses names none)."""
    spec = body.get("spec") or {}
    canary = spec.get("canary") if isinstance(spec, dict) else None
    host = canary.get("host") if isinstance(canary, dict) else None
    istio = (spec.get("trafficRouting") or {}).get("istio") or {} if isinstance(spec, dict) else {}
    virtual_service = istio.get("virtualService") if isinstance(istio, dict) else None
    where = virtual_service.get("namespace") if isinstance(virtual_service, dict) else None
    if not isinstance(host, str):
        return None
    return canary_service(host, where if isinstance(where, str) and where else body.metadata.namespace or "")


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def wake(body: kopf.Body, event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """An action or a spec edit is acted on now, not at the next tick. Our own status writes also arrive
    here; they must not wake the driver, or every write would trigger the next one."""
    slim_kept_body(event)
    pending_action = ACTION_ANNOTATION in body.metadata.annotations
    new_spec = body.metadata.get("generation") != body.status.get("observedGeneration")
    if pending_action or new_spec:
        _wakeups(memo).wake(_name(body))


def slim_kept_body(event: kopf.RawEvent) -> None:
    """Make a watch event's object small, in place: that object is the body kopf keeps for the rollout's
    driver until the next event, one per rollout. Its metadata.managedFields (the API server's per-field
    bookkeeping of every writer, our status writes included) are dropped: about 20 KB per rollout as Python
    objects, which nothing in the operator or in kopf reads. Its strings are shared with the other rollouts'
    bodies (`compact`): 19 KB -> 10 KB for what remains. If kopf ever kept a copy instead, this would only do
    nothing."""
    obj: Any = event.get("object")
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
        share_strings(obj)


@kopf.daemon(api.GROUP, api.VERSION, api.PLURAL, cancellation_timeout=30)
async def drive(
    body: kopf.Body,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    """The one driver of this rollout: reconcile, then wait for the next tick or a change (a spec edit, an
    action, a change to its VirtualService, an alert)."""
    reconciler: Reconciler = memo.reconciler
    slots = _slots(memo)
    wakeups = _wakeups(memo)
    rollout = _name(body)
    alarm = wakeups.alarm(rollout)
    lock = _lock(memo, body.metadata.uid or "")
    woken = False  # by the alarm (an alert, an action, a spec edit, its VirtualService), not by its timer
    while not stopped:
        alarm.clear()
        wakeups.route_canary(rollout, _canary_service(body))
        requested = wakeups.take_check_request(rollout)
        plan: engine.Plan | None = None
        async with slots.slot(urgent=woken or requested), lock:
            if stopped or not Runtime.leading():
                break
            try:
                # Asked before every write: once kopf stops the driver (a deletion, or this replica lost its
                # Lease), nothing more is written.
                plan = await reconciler.reconcile(
                    body, may_write=lambda: not stopped and Runtime.leading(), check_requested=requested
                )
            except ApiException as error:  # the API server's own words, e.g. a missing RBAC permission
                logger.error("reconcile failed: %s", describe_api_error(error))
            except Exception:  # a failed tick is retried at the next one; state lives in status, not here
                logger.exception("reconcile failed")
        if plan is not None and plan.keep_check_request:
            wakeups.keep_check_request(rollout)
        waiting = _wait_seconds(plan)
        log.debug(
            "%s: next look in %.2f s (engine: %s)", rollout, waiting, plan.look_after if plan else "none"
        )
        # Not held while waiting: the plan carries a whole status (about 20 KB), for every rollout at once.
        plan = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(alarm.wait(), timeout=waiting)
        woken = alarm.is_set()
    wakeups.forget(rollout, alarm)


# Added to the engine's moment: the loop's timers may fire a little before the wall clock the engine reads
# has reached it, and a driver woken a hair early would find nothing due and go round once more.
WAKE_MARGIN_SECONDS = 0.05


def _wait_seconds(plan: engine.Plan | None) -> float:
    """Until the engine's next timed moment (its next check, the end of a soak), within the resync period;
    a tick when it names none or the tick failed."""
    look = plan.look_after if plan is not None else None
    if look is None or look <= timedelta(0):
        return Runtime.tick_seconds
    resync = max(Runtime.resync_seconds, Runtime.tick_seconds)
    return resync if look == engine.ONLY_EVENTS else min(look.total_seconds() + WAKE_MARGIN_SECONDS, resync)


@kopf.on.delete(api.GROUP, api.VERSION, api.PLURAL)
async def release(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    reconciler: Reconciler = memo.reconciler
    if not Runtime.leading():
        raise kopf.TemporaryError("this replica no longer holds the Lease; the leader finalizes", delay=2)
    # Waits for a tick in progress to finish; the driver, told to stop, starts no other.
    async with _lock(memo, body.metadata.uid or ""):
        try:
            await reconciler.on_delete(body)
        except Exception as error:
            raise kopf.TemporaryError(f"could not return traffic to stable: {error}", delay=2) from error
    memo.locks.pop(body.metadata.uid or "", None)
