"""kopf glue only: settings, one driver (daemon) per ModelRollout, the deletion finalizer. Every decision is
made in `engine`, every effect in `reconciler`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from modelrollout import api
from modelrollout.config import OperatorConfig
from modelrollout.kube import ACTION_ANNOTATION, default_api_client, describe_api_error
from modelrollout.notify import Notifier, NotifyTargets
from modelrollout.reconciler import Reconciler

FINALIZER = f"{api.GROUP}/finalizer"
log = logging.getLogger(__name__)


class Runtime:
    """Set by the `run` command before kopf starts."""

    config = OperatorConfig()
    tick_seconds = 5.0
    namespaces: tuple[str, ...] = ()


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
    if Runtime.namespaces and not any(c in "".join(Runtime.namespaces) for c in "*?[!"):
        # Exact namespaces need no cluster-wide discovery: a namespaced install (Roles only) starts at once
        # instead of retrying cluster-scoped lists it may not make.
        settings.scanning.disabled = True
    reconciler, kube = Reconciler.for_cluster(await asyncio.to_thread(default_api_client), Runtime.config)
    memo.reconciler = reconciler
    if Runtime.config.metrics_port:
        reconciler.telemetry.serve(Runtime.config.metrics_port)
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


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    reconciler: Reconciler | None = getattr(memo, "reconciler", None)
    if reconciler is not None:
        if reconciler.notifier is not None:
            await reconciler.notifier.drain(5)
        reconciler.close()
    task: asyncio.Task[None] | None = getattr(memo, "notifier_task", None)
    if task is not None:
        task.cancel()


def _lock(memo: kopf.Memo, uid: str) -> asyncio.Lock:
    """One lock per rollout, shared by its driver and its finalizer: their effects never interleave."""
    if not hasattr(memo, "locks"):
        memo.locks = {}
    locks: dict[str, asyncio.Lock] = memo.locks
    return locks.setdefault(uid, asyncio.Lock())


def _wakeup(memo: kopf.Memo) -> asyncio.Event:
    if not hasattr(memo, "wakeup"):
        memo.wakeup = asyncio.Event()
    wakeup: asyncio.Event = memo.wakeup
    return wakeup


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def wake(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """An action or a spec edit is acted on now, not at the next tick. Our own status writes also arrive
    here; they must not wake the driver, or every write would trigger the next one."""
    pending_action = ACTION_ANNOTATION in body.metadata.annotations
    new_spec = body.metadata.get("generation") != body.status.get("observedGeneration")
    if pending_action or new_spec:
        _wakeup(memo).set()


@kopf.daemon(api.GROUP, api.VERSION, api.PLURAL, cancellation_timeout=30)
async def drive(
    body: kopf.Body,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    """The one driver of this rollout: reconcile, then wait for the next tick or a change."""
    reconciler: Reconciler = memo.reconciler
    wakeup = _wakeup(memo)
    lock = _lock(memo, body.metadata.uid or "")
    while not stopped:
        wakeup.clear()
        async with lock:
            if stopped:
                break
            try:
                # Asked before every write: once kopf stops the driver (a deletion), nothing more is written.
                await reconciler.reconcile(body, may_write=lambda: not stopped)
            except ApiException as error:  # the API server's own words, e.g. a missing RBAC permission
                logger.error("reconcile failed: %s", describe_api_error(error))
            except Exception:  # a failed tick is retried at the next one; state lives in status, not here
                logger.exception("reconcile failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), timeout=Runtime.tick_seconds)


@kopf.on.delete(api.GROUP, api.VERSION, api.PLURAL)
async def release(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    reconciler: Reconciler = memo.reconciler
    # Waits for a tick in progress to finish; the driver, told to stop, starts no other.
    async with _lock(memo, body.metadata.uid or ""):
        try:
            await reconciler.on_delete(body)
        except Exception as error:
            raise kopf.TemporaryError(f"could not return traffic to stable: {error}", delay=2) from error
    memo.locks.pop(body.metadata.uid or "", None)
