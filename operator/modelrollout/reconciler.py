"""One reconciliation of one ModelRollout: observe, ask the engine for a plan, execute the plan in order.

The shell holds no policy. It reads the VirtualService once, measures the gates when they are due, and runs
the plan's steps in the order the plan gives; every write is conditional on what was read (the rollout's
resourceVersion for its status, the VirtualService's for the weights). A conflict on either means someone
else wrote meanwhile: the shell observes again and asks the engine again, never writes blind. A write that
fails for any other reason is handed back to the engine (`write_failed`), which says what to record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from modelrollout import api, engine, report
from modelrollout.analysis import CheckResult
from modelrollout.config import OperatorConfig
from modelrollout.kube import (
    ACTION_ANNOTATION,
    Kube,
    RolloutRef,
    StaleObject,
    describe_api_error,
    without_managed_fields,
)
from modelrollout.kubeclient import KubeClient
from modelrollout.measure import Measurer
from modelrollout.metrics.templates import spec_template_errors
from modelrollout.notify import Notification, Notifier, now_text
from modelrollout.observe import Observed, RoutingObserver, target_of
from modelrollout.ports import KubeApi, Measuring, RouterFactory
from modelrollout.refresh_budget import RefreshBudget
from modelrollout.routing.envoy_filter import BucketFilter
from modelrollout.routing.istio_router import IstioRouter
from modelrollout.routing.router import Router, RoutingProblem, StaleWrite, backend_of
from modelrollout.routing.watch import VirtualServiceCache
from modelrollout.telemetry import Telemetry

log = logging.getLogger(__name__)

# Conflicts in a row before a tick gives up (the next tick starts afresh); steps of one transition per tick.
MAX_CONFLICTS = 4
MAX_STEPS = 3


class Stale(Exception):
    """Something this tick read changed before it wrote: observe again."""


class StaleRollout(Stale):
    """The rollout as stored now (None: gone) is newer than the one decided from: decide again from it."""

    def __init__(self, message: str, stored: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.stored = stored


class FilterWriteFailed(Exception):
    """The bucket EnvoyFilter could not be written; the VirtualService write that needs it is not made."""


@dataclass
class _Attempts:
    """What one tick keeps across its attempts after conflicts: the check (measured at most once per tick:
    the result, and whether the operator's own queue put it off), the Events it posted (a decision made
    again after a 409 posts none twice), whether this is the last attempt, and the seconds it waited on each
    kind of request."""

    check: tuple[CheckResult | None, bool] | None = None
    posted: set[engine.Event] = field(default_factory=set)
    last: bool = False
    waited: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def waiting_on(self, what: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.waited[what] = self.waited.get(what, 0.0) + time.perf_counter() - started

    def where_time_went(self, total: float) -> str:
        parts = [f"{what} {seconds:.2f} s" for what, seconds in self.waited.items() if seconds >= 0.01]
        # The rest is the event loop's: this tick's own work, other coroutines before it, collector pauses.
        parts.append(f"the rest {max(0.0, total - sum(self.waited.values())):.2f} s")
        return ", ".join(parts)


def _digest(status: Mapping[str, Any]) -> bytes:
    """A fingerprint of a stored status: what an unwritten status is compared with, so that the stored one is
    not kept alive beside the body that replaced it."""
    return hashlib.blake2b(json.dumps(status, sort_keys=True).encode(), digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class _Unwritten:
    """A status decided but not written, and the stored status it follows: the stored object's
    resourceVersion (the same version is the same status, so the digest is not computed again on every tick:
    3% of the operator's CPU at 2,500 rollouts) and a digest of its status (a change of the object that left
    the status as it was, a label say, keeps it). The status is kept as its JSON, compressed (about 0.9 KB,
    against 3 KB as JSON and 17 KB as a model; compressing takes ~90 us, reading it back ~70 us): at steady
    state every rollout has one."""

    version: str | None
    digest: bytes
    packed: bytes

    def follows(self, obj: Mapping[str, Any]) -> bool:
        return _status_digest(obj, self) == self.digest


def _status_digest(obj: Mapping[str, Any], kept: _Unwritten | None) -> bytes:
    """The digest of `obj`'s status, reused from `kept` when `obj` is the version it follows."""
    version = obj.get("metadata", {}).get("resourceVersion")
    if kept is not None and version and version == kept.version:
        return kept.digest
    return _digest(obj.get("status") or {})


def spec_problems(raw: Mapping[str, Any]) -> api.ModelRolloutSpec | list[str]:
    """The spec, or every reason the operator cannot act on it: what the models refuse (a gate query that
    could never be rendered among it), and a built-in template that does not render with the spec's subset
    label."""
    spec = api.checked_spec(dict(raw))
    if isinstance(spec, list):
        return spec
    return spec_template_errors(spec) or spec


def istio_routers(
    kube_client: KubeClient,
    request_timeout: float,
    *,
    cache: VirtualServiceCache | None = None,
    telemetry: Telemetry | None = None,
) -> RouterFactory:
    # Each source's counter, looked up once: every read of every rollout counts one (`labels` takes a lock
    # and builds its key each time).
    counters: dict[str, Any] = {}

    def counted(source: str) -> None:
        if telemetry is None:
            return
        counter = counters.get(source)
        if counter is None:
            counter = counters[source] = telemetry.virtual_service_reads.labels(source)
        counter.inc()

    def make(record: api.RoutingRecord, owner: str) -> Router:
        namespace, _, name = record.virtual_service.partition("/")
        return IstioRouter(
            kube_client,
            namespace=namespace,
            name=name,
            api_version=record.api_version,
            routes=record.routes,
            owner=owner,
            field_manager=engine.FIELD_MANAGER,
            request_timeout=request_timeout,
            cache=cache,
            on_read=counted,
        )

    return make


class Reconciler:
    def __init__(
        self,
        kube: KubeApi,
        routers: RouterFactory,
        measurer: Measuring,
        config: OperatorConfig,
        *,
        telemetry: Telemetry | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.clock = clock
        self.kube = kube
        self.measurer = measurer
        self.config = config
        self.telemetry = telemetry or Telemetry()
        self.observer = RoutingObserver(routers, kube.rollout_exists)
        self.notifier: Notifier | None = None
        self.virtual_services: VirtualServiceCache | None = None  # the watch the routers read from
        # The object our last write returned, per rollout, and the resourceVersions it superseded: a body
        # from a watch that has not caught up with our own write is never decided on. Kept until the watch
        # shows the version our write stored.
        self._latest: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {}
        # Per rollout, a status decided but not written (a quiet plan: only the numbers of checks changed):
        # decided from while the stored status is still the one it follows.
        self._unwritten: dict[str, _Unwritten] = {}
        self.refresh_budget = RefreshBudget(config.status_refreshes_per_second)

    @classmethod
    def for_cluster(cls, kube_client: KubeClient, config: OperatorConfig) -> tuple[Reconciler, Kube]:
        """The operator's reconciler over the API server and Prometheus, and its Kube adapter."""
        kube = Kube(kube_client, config.request_timeout)
        telemetry = Telemetry()
        cache = (
            VirtualServiceCache(
                kube_client, cluster_wide=config.cluster_wide, request_timeout=config.request_timeout
            )
            if config.watch_virtual_services
            else None
        )
        routers = istio_routers(kube_client, config.request_timeout, cache=cache, telemetry=telemetry)
        measurer = Measurer(kube, config, telemetry=telemetry)
        reconciler = cls(kube, routers, measurer, config, telemetry=telemetry)
        reconciler.virtual_services = cache
        return reconciler, kube

    # ---- the tick ----

    async def reconcile(
        self,
        body: Mapping[str, Any],
        may_write: Callable[[], bool] = lambda: True,
        *,
        check_requested: bool = False,
    ) -> engine.Plan | None:
        """One tick. `may_write` is asked before every write: False once the driver is told to stop (the
        rollout is being deleted and its finalizer takes over). `check_requested`: a check was asked for out
        of turn (an alert); the engine says whether it runs now."""
        started = time.perf_counter()
        obj = self._freshest(body)
        ref = RolloutRef.of(obj)
        attempts = _Attempts()
        try:
            return await self._attempt(ref, obj, attempts, may_write, check_requested)
        finally:
            took = time.perf_counter() - started
            self.telemetry.reconcile_seconds.observe(took)
            slow = self.config.slow_reconcile_seconds
            if slow is not None and took >= slow:
                log.warning(
                    "%s/%s: reconciliation took %.1f s: %s",
                    ref.namespace,
                    ref.name,
                    took,
                    attempts.where_time_went(took),
                )

    async def _attempt(
        self,
        ref: RolloutRef,
        obj: dict[str, Any],
        attempts: _Attempts,
        may_write: Callable[[], bool],
        check_requested: bool,
    ) -> engine.Plan | None:
        for attempt in range(1, MAX_CONFLICTS + 1):
            if obj.get("metadata", {}).get("deletionTimestamp"):
                return None  # the finalizer's turn
            try:
                attempts.last = attempt == MAX_CONFLICTS
                return await self._tick(ref, obj, attempts, may_write, check_requested)
            except (Stale, StaleObject, StaleWrite) as stale:
                log.debug("%s/%s: %s; observing again", ref.namespace, ref.name, stale)
                # A rollout read to find it stale is not read again.
                if isinstance(stale, StaleRollout):
                    fresh = stale.stored
                else:
                    with attempts.waiting_on("rollout reads"):
                        fresh = await self.kube.get_rollout(ref)
                if fresh is None:
                    return None
                obj = fresh
        log.warning(
            "%s/%s kept changing under %d attempts; next tick", ref.namespace, ref.name, MAX_CONFLICTS
        )
        return None

    def _freshest(self, body: Mapping[str, Any]) -> dict[str, Any]:
        obj = {k: body[k] for k in body}
        uid = obj.get("metadata", {}).get("uid", "")
        latest = self._latest.get(uid)
        if latest is None:
            return obj
        version = obj.get("metadata", {}).get("resourceVersion")
        if version in latest[0]:
            return latest[1]
        if version == latest[1].get("metadata", {}).get("resourceVersion"):
            # The watch shows our write: its bodies are the freshest from now on (resourceVersions cannot be
            # ordered, so only this exact one tells that it caught up).
            del self._latest[uid]
        return obj

    def _remember(self, ref: RolloutRef, superseded: str | None, stored: dict[str, Any]) -> None:
        """Keep the object our write returned, and the versions it (and the writes before it) superseded:
        the last few are enough, a watch is never further behind than that for long."""
        previous = self._latest.get(ref.uid, ((), {}))[0]
        versions = (*previous, superseded) if superseded is not None else previous
        # Nothing the operator decides reads a rollout's managedFields, and they describe every status field
        # again.
        self._latest[ref.uid] = (versions[-8:], without_managed_fields(stored))

    async def _tick(
        self,
        ref: RolloutRef,
        obj: dict[str, Any],
        attempts: _Attempts,
        may_write: Callable[[], bool],
        check_requested: bool,
    ) -> engine.Plan | None:
        plan: engine.Plan | None = None
        for _ in range(MAX_STEPS):
            plan, obj = await self._step(ref, obj, attempts, may_write, check_requested)
            if plan is None or not plan.again:
                break
        return plan

    async def _step(
        self,
        ref: RolloutRef,
        obj: dict[str, Any],
        attempts: _Attempts,
        may_write: Callable[[], bool],
        check_requested: bool,
    ) -> tuple[engine.Plan | None, dict[str, Any]]:
        now = self.clock()
        meta = obj["metadata"]
        generation = meta.get("generation")
        raw_status = obj.get("status") or {}
        stored = api.ModelRolloutStatus.model_validate(raw_status)
        unwritten = self._unwritten.get(ref.uid)
        status = (
            api.ModelRolloutStatus.model_validate_json(zlib.decompress(unwritten.packed))
            if unwritten is not None and unwritten.follows(obj)
            else stored
        )
        spec = spec_problems(obj.get("spec") or {})
        if isinstance(spec, list):
            plan = engine.invalid_spec(status, spec, now, generation)
            with attempts.waiting_on("status writes"):
                obj = await self._record(ref, obj, stored, plan.status, valid=False)
            await self._post(ref, plan.events, attempts)
            return plan, obj

        target = target_of(spec, ref.namespace)
        with attempts.waiting_on("routing reads"):
            observed, routing, previous = await self.observer.observe(spec, status, target, ref)
            filter_name = engine.observed_filter_name(spec, status, f"{ref.namespace}/{ref.name}")
            bucket_filter = (
                await self.kube.get_envoy_filter(ref.namespace, filter_name) if filter_name else None
            )
        action = (meta.get("annotations") or {}).get(ACTION_ANNOTATION)
        if attempts.check is None:
            due = engine.analysis_due(spec, status, now, self.config.started_at, requested=check_requested)
            same = status.pair_hash == engine.pair_hash(spec) and status.routing in (None, target)
            measured = None
            measurable = due and same and routing.usable
            if measurable:
                namespace = target.virtual_service.partition("/")[0]
                with attempts.waiting_on("check"):
                    measured = await self.measurer.measure(
                        spec,
                        ref,
                        now,
                        virtual_service_namespace=namespace,
                        canary_weight=routing.canary_weight,
                        mirror=routing.mirror,
                        status=status,
                        requested=check_requested,
                    )
            # Due and measurable, yet no result: the operator's own queue put it off.
            attempts.check = (measured, measurable and measured is None)
        check, check_deferred = attempts.check
        observation = engine.Observation(
            now=now,
            generation=generation,
            operator_started_at=self.config.started_at,
            routing=routing,
            target=target,
            previous=previous,
            check=check,
            check_deferred=check_deferred,
            check_requested=check_requested,
            recorded_check_at=stored.last_analysis.at if stored.last_analysis is not None else None,
            status_refresh=self.config.status_refresh,
            refresh_affordable=self.refresh_budget.affordable(),
            action=action,
            status_recorded=api.status_recorded(raw_status),
            rollout=f"{ref.namespace}/{ref.name}",
            rollout_uid=ref.uid,
            bucket_filter=bucket_filter,
        )
        plan = engine.decide(spec, status, observation)
        if plan.refresh:
            # Spent now, with no await since the budget was asked: a tick deciding during this write's round
            # trip sees it spent. Refunded if nothing gets written.
            self.refresh_budget.spend()
        # A check is used by one decision that got recorded; after a conflict the next decision reuses it.
        executed, obj = await self._execute(
            ref, obj, status, stored, plan, observed=observed, may_write=may_write, attempts=attempts
        )
        attempts.check = (None, False)
        self.telemetry.rollouts.record(
            ref.namespace, ref.name, executed.status, observation.check, executed.rollback_reason
        )
        self._notify(ref, spec, executed)
        return executed, obj

    # ---- executing a plan ----

    async def _execute(
        self,
        ref: RolloutRef,
        obj: dict[str, Any],
        before: api.ModelRolloutStatus,
        stored: api.ModelRolloutStatus,
        plan: engine.Plan,
        *,
        observed: Observed,
        may_write: Callable[[], bool],
        attempts: _Attempts,
    ) -> tuple[engine.Plan, dict[str, Any]]:
        """The plan carried out, or the plan that records why it could not be; and the object as stored.
        `before` is the status decided on, `stored` the one written (older when quiet plans went before).
        On the tick's last attempt, a VirtualService that changed under this write too is recorded as a failed
        write (another writer keeps changing it), not left unsaid."""
        await self._post(ref, plan.early_events, attempts)
        recorded = before
        # Whether a write conditional on the version decided from went through: the decision was made on the
        # rollout as it is now.
        current = False
        if plan.intent is not None:
            with attempts.waiting_on("status writes"):
                written = await self._record(ref, obj, stored, plan.intent)
            current = written is not obj
            obj = written
            recorded = stored = plan.intent
        if plan.consume_action is not None:
            with attempts.waiting_on("status writes"):
                consumed = await self.kube.consume_action(ref, plan.consume_action)
            if consumed is not None:
                self._remember(ref, obj["metadata"].get("resourceVersion"), consumed)
                obj = consumed
        step = plan.bucket_filter
        if plan.write is not None or plan.release_recorded or step is not None:
            if not may_write():
                # The driver is stopping: the finalizer owns the VirtualService now. Nothing more is recorded.
                return engine.Plan(status=stored), obj
            if not current:
                with attempts.waiting_on("rollout reads"):
                    await self._confirm_current(ref, obj)
            failure: str | None = None
            try:
                with attempts.waiting_on("routing writes"):
                    if step is not None and step.apply is not None:
                        await self._apply_filter(step.apply)
                    await self._write_routing(plan, observed)
            except Stale:
                raise
            except StaleWrite as conflict:
                if not attempts.last:
                    raise
                failure = (
                    f"{conflict}, under each of {MAX_CONFLICTS} writes in a row "
                    "(409: another writer keeps changing it)"
                )
            except Exception as error:  # refused, forbidden, or not shown on read-back: the engine decides
                failure = str(error) if isinstance(error, FilterWriteFailed) else describe_api_error(error)
            if failure is not None:
                log.warning("%s/%s: VirtualService write failed: %s", ref.namespace, ref.name, failure)
                failed = engine.write_failed(plan, recorded, failure, self.clock())
                with attempts.waiting_on("status writes"):
                    obj = await self._record(ref, obj, stored, failed.status)
                await self._post(ref, failed.events, attempts)
                self.telemetry.rollouts.count_write_failure(ref.namespace, ref.name)
                return failed, obj
            if step is not None and step.remove is not None:
                try:
                    with attempts.waiting_on("routing writes"):
                        await self.kube.delete_envoy_filter(ref.namespace, step.remove)
                except Exception as error:  # the traffic change stands; the engine says what to record
                    plan = engine.filter_removal_failed(plan, step.remove, describe_api_error(error))
        return plan, await self._record_plan(ref, obj, stored, plan, attempts)

    async def _record_plan(
        self,
        ref: RolloutRef,
        obj: dict[str, Any],
        stored: api.ModelRolloutStatus,
        plan: engine.Plan,
        attempts: _Attempts,
    ) -> dict[str, Any]:
        """Steps 5 and 6 of a plan whose writes went through: its status recorded (or kept, when quiet), its
        Events posted. Returns the object as stored."""
        if plan.quiet:
            # Only the numbers of checks changed: kept here, decided from, written with the next change.
            if plan.status != stored:
                self._unwritten[ref.uid] = _Unwritten(
                    obj["metadata"].get("resourceVersion"),
                    _status_digest(obj, self._unwritten.get(ref.uid)),
                    zlib.compress(plan.status.model_dump_json(by_alias=True).encode(), 1),
                )
            return obj
        with attempts.waiting_on("status writes"):
            try:
                written = await self._record(ref, obj, stored, plan.status)
            except BaseException:
                if plan.refresh:
                    self.refresh_budget.refund()  # not written: the next decision asks the budget again
                raise
        if plan.refresh:
            if written is obj:  # a refresh of what is already stored writes nothing
                self.refresh_budget.refund()
            else:
                self.telemetry.status_refreshes.inc()
        await self._post(ref, plan.events, attempts)
        return written

    async def _confirm_current(self, ref: RolloutRef, obj: dict[str, Any]) -> None:
        """Traffic moves only on a decision made from the rollout as stored now. A body can be older than the
        stored one (a watch behind another replica's writes, after a take-over of the Lease): its status would
        decide again what was already decided since, and the VirtualService write, conditional on the
        VirtualService alone, would go through before the status write meets its 409."""
        stored = await self.kube.get_rollout(ref)
        version = obj["metadata"].get("resourceVersion")
        if stored is None or stored.get("metadata", {}).get("resourceVersion") != version:
            raise StaleRollout(f"the rollout changed since version {version} was read", stored)

    async def _apply_filter(self, desired: BucketFilter) -> None:
        try:
            await self.kube.apply_envoy_filter(desired.manifest())
        except Exception as error:
            raise FilterWriteFailed(
                f"the bucket EnvoyFilter {desired.namespace}/{desired.name}: {describe_api_error(error)}"
            ) from error

    async def _write_routing(self, plan: engine.Plan, observed: Observed) -> None:
        if plan.write_on == "recorded":
            router, snapshot = observed.recorded_router, observed.recorded_snapshot
        else:
            router, snapshot = observed.spec_router, observed.spec_snapshot
        if plan.write is None and not plan.release_recorded:
            return
        if router is None or snapshot is None:
            raise Stale("the VirtualService to write was not read")
        if plan.write is not None:
            snapshot = await router.write(snapshot, plan.write)
        if plan.release_recorded and observed.recorded_router is not None:
            recorded = snapshot if plan.write_on == "recorded" else observed.recorded_snapshot
            if recorded is not None:
                await observed.recorded_router.release(recorded)

    async def _record(
        self,
        ref: RolloutRef,
        obj: dict[str, Any],
        current: api.ModelRolloutStatus,
        status: api.ModelRolloutStatus,
        *,
        valid: bool = True,
    ) -> dict[str, Any]:
        """Record `status` if it differs from what is stored, conditionally on the object's version. Its
        compact report is derived here, in one place before every write, from the status and the spec (an
        invalid spec, whatever its shape, is not read: the report then goes by the status alone)."""
        if status == current and current.report is not None and obj.get("status"):
            self._unwritten.pop(ref.uid, None)  # what it held is what is stored
            return obj  # nothing changed, the report neither: a quiet tick derives nothing
        spec_view = (obj.get("spec") or {}) if valid else {}
        status = status.model_copy(update={"report": report.summary(spec_view, status)})
        if status == current and obj.get("status"):
            self._unwritten.pop(ref.uid, None)
            return obj
        version = obj["metadata"].get("resourceVersion")
        stored = await self.kube.record_status(ref, status, version)
        # Recorded: whatever was kept unwritten is in `status` (decided from it).
        self._unwritten.pop(ref.uid, None)
        self._remember(ref, version, stored)
        return stored

    async def _post(self, ref: RolloutRef, events: tuple[engine.Event, ...], attempts: _Attempts) -> None:
        for event in events:
            if event in attempts.posted:
                continue
            attempts.posted.add(event)
            with attempts.waiting_on("Events"):
                await self.kube.emit_event(ref, event.type, event.reason, event.message)

    def _notify(self, ref: RolloutRef, spec: api.ModelRolloutSpec, plan: engine.Plan) -> None:
        if self.notifier is None:
            return
        status = plan.status
        rollback = status.rollback
        stages = report.finished_stages(spec.model_dump(by_alias=True, mode="json"), status)
        for event in plan.notifications:
            details = rollback if event.reason in ("RolledBack", "Aborted") and rollback else None
            self.notifier.submit(
                Notification(
                    event=event.reason,
                    namespace=ref.namespace,
                    name=ref.name,
                    message=event.message,
                    stage=status.progress,
                    canary=spec.canary.model or spec.canary.host,
                    stable=spec.stable.model or spec.stable.host,
                    gate=details.gate if details else None,
                    value=details.value if details else None,
                    threshold=details.threshold if details else None,
                    window=details.window if details else None,
                    at=now_text(),
                    stages=tuple(asdict(row) for row in stages),
                )
            )

    # ---- deletion, or the rollout driven elsewhere ----

    def forget(self, ref: RolloutRef) -> None:
        """Nothing of the rollout is kept: its /metrics series, its Prometheus connection's use, the object
        our last write returned, a status decided but not written (a deleted rollout, or one another shard's
        operator drives now, which decides from the status as stored)."""
        self.telemetry.rollouts.forget(ref.namespace, ref.name)
        self.measurer.forget(ref)
        self._latest.pop(ref.uid, None)
        self._unwritten.pop(ref.uid, None)

    async def on_delete(self, body: Mapping[str, Any]) -> None:
        """A rollout deleted mid-way returns traffic to stable; after Promoted the canary keeps it. Either way
        its claims on the VirtualService go, whatever the spec says now: the finalizer acts on what the
        rollout recorded when it started (status.routing), and on the spec only when nothing was recorded (the
        pair too: engine.deletion_pair)."""
        ref = RolloutRef.of(body)
        self.forget(ref)
        status = api.ModelRolloutStatus.model_validate(body.get("status") or {})
        record = status.routing
        spec = api.checked_spec(dict(body.get("spec") or {}))
        if record is None:
            if isinstance(spec, list):
                return  # never started and no VirtualService it could name: nothing claimed
            record = target_of(spec, ref.namespace)
        pair = engine.deletion_pair(status, None if isinstance(spec, list) else spec)
        router = self.observer.router(record, ref)
        for _ in range(MAX_CONFLICTS):
            try:
                snapshot = await router.read()
            except RoutingProblem:
                break  # the VirtualService is gone: nothing to put back or release
            try:
                if pair is not None:
                    view = await self.observer.view(
                        router,
                        snapshot,
                        None,
                        (backend_of(pair[0]), backend_of(pair[1])),
                        owner=f"{ref.namespace}/{ref.name}",
                    )
                    write = engine.deletion_write(status, view, pair)
                    if write is not None:
                        snapshot = await router.write(snapshot, write)
                        log.info(
                            "%s/%s deleted mid-rollout: traffic returned to stable", ref.namespace, ref.name
                        )
                await router.release(snapshot)
                break
            except StaleWrite:
                continue
        else:
            raise RuntimeError(f"VirtualService {record.virtual_service} kept changing while it was released")
        await self._remove_filter(ref, status)

    async def _remove_filter(self, ref: RolloutRef, status: api.ModelRolloutStatus) -> None:
        """The deleted rollout's bucket EnvoyFilter goes after its routes. A refusal does not hold the
        deletion up (the routes are back, and the filter's ownerReference lets the garbage collector remove
        it); it is logged with the API server's words."""
        if not status.bucket_filter:
            return
        try:
            await self.kube.delete_envoy_filter(ref.namespace, status.bucket_filter)
        except Exception as error:
            log.warning(
                "%s/%s deleted: its EnvoyFilter %s could not be removed (%s); the garbage collector "
                "removes it with its owner",
                ref.namespace,
                ref.name,
                status.bucket_filter,
                describe_api_error(error),
            )

    def close(self) -> None:
        self.measurer.close()
        if self.virtual_services is not None:
            self.virtual_services.close()
