"""kopf glue only: settings, the watch events that feed each ModelRollout's driver (`drivers`), the deletion
finalizer. Every decision is made in `engine`, every effect in `reconciler`."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import kopf

from modelrollout import api, engine, memory
from modelrollout.alert_receiver import AlertReceiver
from modelrollout.alerts import canary_service
from modelrollout.config import OperatorConfig
from modelrollout.drivers import Drivers, rollout_key
from modelrollout.gc_pauses import GcPauseTimer, keep_long_lived_objects_frozen, space_full_collections
from modelrollout.kube import ACTION_ANNOTATION, RolloutRef, default_client, describe_api_error
from modelrollout.kubeclient import ApiError, KubeClient
from modelrollout.loop_stalls import watch_event_loop
from modelrollout.notify import Notifier, NotifyTargets
from modelrollout.reconciler import Reconciler
from modelrollout.shards import SHARD_LABEL, in_shard, of_shard, shard_of
from modelrollout.slots import ReconcileSlots
from modelrollout.telemetry import Telemetry
from modelrollout.wakeups import Wakeups

FINALIZER = f"{api.GROUP}/finalizer"
KOPF_WORKERS = 128
# How long a driver may take to finish its tick when the operator stops, before it is cancelled.
DRIVER_STOP_SECONDS = 30.0
log = logging.getLogger(__name__)


class Runtime:
    """Set by the `run` command before kopf starts."""

    config = OperatorConfig()
    tick_seconds = 5.0
    namespaces: tuple[str, ...] = ()
    # A rollout with nothing due (a long soak, a finished rollout) is looked at no less often than this, in
    # case something no event reports changed (an EnvoyFilter removed by hand, a VirtualService created).
    resync_seconds = 60.0
    # The rollouts this operator drives: those labelled with this shard (modelrollout.shards); None: those
    # labelled with none.
    shard: str | None = None
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


def _start_telemetry(memo: kopf.Memo, telemetry: Telemetry) -> None:
    """/metrics served (with a port), garbage collections and the event loop's lateness timed into them;
    long-lived objects frozen out of the collections' walks."""
    if Runtime.config.metrics_port:
        telemetry.serve(Runtime.config.metrics_port)
        memo.gc_pause_timer = GcPauseTimer(telemetry.observe_gc_pause)
        memo.gc_pause_timer.install()
        memo.loop_watch_task = asyncio.create_task(watch_event_loop(telemetry.observe_lateness))
    if Runtime.config.gc_freeze_seconds:
        memo.gc_freeze_task = asyncio.create_task(
            keep_long_lived_objects_frozen(Runtime.config.gc_freeze_seconds)
        )


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Our own names on the objects, so nothing collides with another kopf operator in the cluster.
    settings.persistence.finalizer = of_shard(FINALIZER, Runtime.shard)
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
    if Runtime.shard:
        log.info("driving the rollouts labelled %s=%s only", SHARD_LABEL, Runtime.shard)
    kube_client = await asyncio.to_thread(
        default_client, user_agent(Runtime.identity), Runtime.config.request_timeout
    )
    memo.kube_client = kube_client
    reconciler, kube = Reconciler.for_cluster(kube_client, Runtime.config)
    memo.reconciler = reconciler
    reconciler.telemetry.watch_slots(_slots(memo))
    wakeups = _wakeups(memo)
    memo.drivers = drivers_for(reconciler, _slots(memo), wakeups)
    if reconciler.virtual_services is not None:
        # A change to a VirtualService wakes the rollouts that claim it: drift is corrected when it happens.
        reconciler.virtual_services.on_change = wakeups.on_virtual_service
    _start_telemetry(memo, reconciler.telemetry)
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


def drivers_for(reconciler: Reconciler, slots: ReconcileSlots, wakeups: Wakeups) -> Drivers:
    """The rollouts' drivers, each tick one `reconciler.reconcile`."""
    # The last failure reported per rollout: a tick that fails the same way every time posts one Event, not
    # one per tick; the next success (or another failure) resets it.
    reported: dict[str, str] = {}

    async def tick(
        body: dict[str, Any], may_write: Callable[[], bool], check_requested: bool
    ) -> engine.Plan | None:
        key = rollout_key(body)
        try:
            plan = await reconciler.reconcile(body, may_write=may_write, check_requested=check_requested)
        except ApiError as error:  # the API server's own words, e.g. a missing RBAC permission
            message = f"reconcile failed: {describe_api_error(error)}"
            log.error("%s: %s", key, message)
        except Exception as error:  # a failed tick is retried at the next one; state lives in status
            log.exception("%s: reconcile failed", key)
            message = f"reconcile failed: {type(error).__name__}: {error}"
        else:
            reported.pop(key, None)
            return plan
        if reported.get(key) != message:
            reported[key] = message
            await reconciler.kube.emit_event(RolloutRef.of(body), "Warning", "ReconcileFailed", message)
        return None

    def leading() -> bool:  # Runtime.leading is set by `run`, read at each ask
        return Runtime.leading()

    return Drivers(
        tick,
        slots=slots,
        wakeups=wakeups,
        leading=leading,
        wait_seconds=_wait_seconds,
        canary_service=_canary_service,
        forget=lambda body: reconciler.forget(RolloutRef.of(body)),
        retry_seconds=Runtime.tick_seconds,
    )


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    receiver: AlertReceiver | None = getattr(memo, "alert_receiver", None)
    if receiver is not None:
        await receiver.stop()
    drivers: Drivers | None = getattr(memo, "drivers", None)
    if drivers is not None:
        await drivers.shutdown(DRIVER_STOP_SECONDS)
    reconciler: Reconciler | None = getattr(memo, "reconciler", None)
    if reconciler is not None:
        if reconciler.notifier is not None:
            await reconciler.notifier.drain(5)
        reconciler.close()
    kube_client: KubeClient | None = getattr(memo, "kube_client", None)
    if kube_client is not None:
        await kube_client.close()
    timer: GcPauseTimer | None = getattr(memo, "gc_pause_timer", None)
    if timer is not None:
        timer.uninstall()
    for name in ("notifier_task", "leadership_task", "memory_task", "gc_freeze_task", "loop_watch_task"):
        task: asyncio.Task[None] | None = getattr(memo, name, None)
        if task is not None:
            task.cancel()


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


def _canary_service(body: Mapping[str, Any]) -> tuple[str, str] | None:
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
    namespace = (body.get("metadata") or {}).get("namespace") or ""
    return canary_service(host, where if isinstance(where, str) and where else namespace)


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def wake(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Every watch event goes to the rollout's driver (started by the first). An action or a spec edit is
    acted on now, not at the next tick. Our own status writes also arrive here; they must not wake the
    driver, or every write would trigger the next one."""
    obj: Any = event.get("object")
    if not isinstance(obj, dict):
        return
    drivers: Drivers = memo.drivers
    meta = obj.get("metadata") or {}
    if not in_shard(meta.get("labels"), Runtime.shard):
        # Another shard's rollout: not driven here. One that was (relabelled) is let go: its driver stops at
        # once, writing nothing more, and the operator of its new shard drives it from its status.
        if drivers.leave(str(meta.get("uid") or "")):
            log.info(
                "%s: now in shard %s, driven by that shard's operator",
                rollout_key(obj),
                shard_of(meta.get("labels")) or "(none: the operator without --shard)",
            )
        return
    drivers.seen(event.get("type"), obj)
    pending_action = ACTION_ANNOTATION in (meta.get("annotations") or {})
    new_spec = meta.get("generation") != (obj.get("status") or {}).get("observedGeneration")
    if event.get("type") != "DELETED" and (pending_action or new_spec):
        _wakeups(memo).wake(rollout_key(obj))


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


def _in_this_shard(labels: kopf.Labels, **_: Any) -> bool:
    """kopf's filter of the finalizer: only the operator of a rollout's shard holds its finalizer on it
    (kopf here adds this shard's finalizer to the rollouts of this shard and removes it from those that
    leave)."""
    return in_shard(labels, Runtime.shard)


@kopf.on.delete(api.GROUP, api.VERSION, api.PLURAL, when=_in_this_shard)
async def release(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    reconciler: Reconciler = memo.reconciler
    drivers: Drivers = memo.drivers
    if not Runtime.leading():
        raise kopf.TemporaryError("this replica no longer holds the Lease; the leader finalizes", delay=2)
    uid = body.metadata.uid or ""
    # Its driver is told to stop; a tick in progress finishes first (the lock), no other starts.
    driven = drivers.stopping(uid, rollout_key(body))
    async with driven.lock:
        try:
            await reconciler.on_delete(body)
        except Exception as error:
            raise kopf.TemporaryError(f"could not return traffic to stable: {error}", delay=2) from error
    drivers.finalized(uid)
