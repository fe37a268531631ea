"""One reconciliation of one ModelRollout: observe (VirtualService, gates, action), decide (engine), apply.

The order of applying is what keeps traffic safe and the status true: the VirtualService is written and read
back (the router verifies) before the status claims anything; a return to stable first records the pending
rollback in status, without claiming it, so that a restart finishes it rather than undoing it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from modelrollout import api, engine
from modelrollout.conditions import set_condition
from modelrollout.config import OperatorConfig
from modelrollout.kube import ACTION_ANNOTATION, Kube, RolloutRef, describe_api_error
from modelrollout.measure import Measurer
from modelrollout.notify import NOTIFIED_REASONS, Notification, Notifier, now_text
from modelrollout.routing.istio_router import IstioRouter
from modelrollout.routing.router import Backend, RoutingConflict, RoutingProblem
from modelrollout.telemetry import Telemetry

log = logging.getLogger(__name__)

BEFORE_WRITE_REASONS = ("StableChanged",)


def _backend(target: api.Target) -> Backend:
    return Backend(host=target.host, subset=target.subset, port=target.port)


def _ref(body: Mapping[str, Any]) -> RolloutRef:
    meta = body["metadata"]
    return RolloutRef(namespace=meta["namespace"], name=meta["name"], uid=meta.get("uid", ""))


def _without_write_failure(status: api.ModelRolloutStatus) -> api.ModelRolloutStatus:
    """This tick wrote what it had to (or had nothing to write): a WriteFailed report is over."""
    failed = next(
        (c for c in status.conditions if c.type == "Degraded" and c.reason == engine.WRITE_FAILED), None
    )
    if failed is None:
        return status
    conditions = set_condition(
        status.conditions,
        "Degraded",
        "False",
        reason="Resolved",
        message="",
        now=datetime.now(UTC),
        generation=status.observed_generation,
    )
    return status.model_copy(update={"conditions": conditions})


class Reconciler:
    def __init__(self, api_client: client.ApiClient, config: OperatorConfig) -> None:
        self.api_client = api_client
        self.config = config
        self.kube = Kube(api_client, config.request_timeout)
        self.telemetry = Telemetry()
        self.notifier: Notifier | None = None
        self.measurer = Measurer(self.kube, config, telemetry=self.telemetry)

    def router(self, spec: api.ModelRolloutSpec, ref: RolloutRef) -> IstioRouter:
        istio = spec.traffic_routing.istio
        return IstioRouter(
            self.api_client,
            namespace=istio.virtual_service.namespace or ref.namespace,
            name=istio.virtual_service.name,
            api_version=istio.api_version.value,
            routes=istio.routes,
            stable=_backend(spec.stable),
            canary=_backend(spec.canary),
            owner=f"{ref.namespace}/{ref.name}",
            field_manager=engine.FIELD_MANAGER,
            request_timeout=self.config.request_timeout,
        )

    async def reconcile(self, body: Mapping[str, Any]) -> engine.Decision:
        with self.telemetry.reconcile_seconds.time():
            return await self._reconcile(body)

    async def _reconcile(self, body: Mapping[str, Any]) -> engine.Decision:
        ref = _ref(body)
        now = datetime.now(UTC)
        generation = body["metadata"].get("generation")
        status = api.ModelRolloutStatus.model_validate(body.get("status") or {})
        spec = api.checked_spec(body.get("spec") or {})
        if isinstance(spec, list):
            decision = engine.invalid_spec(status, spec, now, generation)
            await self._apply(ref, status, decision, None)
            return decision
        router = self.router(spec, ref)
        routing = await self._observe_routing(router)

        action = (body["metadata"].get("annotations") or {}).get(ACTION_ANNOTATION)
        if action is not None and not await self.kube.consume_action(ref, action):
            action = None  # changed or removed meanwhile: the next tick sees the new value

        usable = routing.problem is None and routing.conflict_owner is None
        check = None
        if usable and engine.analysis_due(spec, status, now, self.config.started_at):
            vs_namespace = spec.traffic_routing.istio.virtual_service.namespace or ref.namespace
            check = await self.measurer.measure(spec, ref, now, virtual_service_namespace=vs_namespace)
        observation = engine.Observation(
            now=now,
            generation=generation,
            operator_started_at=self.config.started_at,
            routing=routing,
            check=check,
            action=action,
        )
        decision = engine.decide(spec, status, observation)
        await self._apply(ref, status, decision, router)
        self.telemetry.record(ref.namespace, ref.name, decision.status, check, decision.rolled_back)
        self._notify(ref, spec, decision)
        return decision

    def _notify(self, ref: RolloutRef, spec: api.ModelRolloutSpec, decision: engine.Decision) -> None:
        if self.notifier is None:
            return
        status = decision.status
        rollback = status.rollback
        for event in decision.events:
            if event.reason not in NOTIFIED_REASONS:
                continue
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
                )
            )

    async def _observe_routing(self, router: IstioRouter) -> engine.RoutingView:
        try:
            state = await router.read()
        except RoutingConflict as conflict:
            return engine.RoutingView(conflict_owner=conflict.owner)
        except RoutingProblem as problem:
            return engine.RoutingView(problem_reason=problem.reason, problem=str(problem))
        return engine.RoutingView(
            canary_weight=state.canary_weight, consistent=state.consistent, last_writer=state.last_writer
        )

    async def _apply(
        self,
        ref: RolloutRef,
        before: api.ModelRolloutStatus,
        decision: engine.Decision,
        router: IstioRouter | None,
    ) -> None:
        weight = decision.canary_weight
        # Warnings about what is about to happen go out before traffic moves, the rest after.
        early = [e for e in decision.events if e.reason in BEFORE_WRITE_REASONS]
        for event in early:
            await self.kube.emit_event(ref, event.type, event.reason, event.message)
        if router is not None and weight is not None:
            if decision.status.rollback is not None and decision.status.phase in (
                api.Phase.ROLLED_BACK,
                api.Phase.ABORTED,
            ):
                await self.kube.patch_status(ref, engine.pending_return(before, decision.status))
            try:
                await router.write(weight)  # reads back what it wrote
            except Exception as error:  # the status keeps what the VS shows; the next tick retries
                await self._write_failed(ref, before, weight, error)
                return
        status = _without_write_failure(decision.status)
        if status != before:
            await self.kube.patch_status(ref, status)
        for event in decision.events:
            if event not in early:
                await self.kube.emit_event(ref, event.type, event.reason, event.message)

    async def _write_failed(
        self, ref: RolloutRef, status: api.ModelRolloutStatus, weight: int, error: BaseException
    ) -> None:
        """Say it everywhere a person looks: the log, an Event, and a Degraded condition (the engine clears it
        once a write goes through)."""
        reason = describe_api_error(error)
        message = f"could not set the canary weight to {weight}%: {reason}"
        log.warning("%s/%s: %s", ref.namespace, ref.name, message)
        await self.kube.emit_event(ref, "Warning", "WriteFailed", message)
        now = datetime.now(UTC)
        conditions = set_condition(
            status.conditions,
            "Degraded",
            "True",
            reason=engine.WRITE_FAILED,
            message=message,
            now=now,
            generation=status.observed_generation,
        )
        try:
            await self.kube.patch_conditions(ref, conditions)
        except Exception as patch_error:  # reported in the log above; nothing more to do
            log.warning(
                "%s/%s: could not record the failure: %s",
                ref.namespace,
                ref.name,
                describe_api_error(patch_error),
            )

    async def on_delete(self, body: Mapping[str, Any]) -> None:
        """A rollout deleted mid-way returns traffic to stable; after Promoted the canary keeps it. Either way
        the VirtualService stops being marked as ours."""
        ref = _ref(body)
        self.telemetry.forget(ref.namespace, ref.name)
        spec = api.checked_spec(body.get("spec") or {})
        if isinstance(spec, list):
            return
        status = api.ModelRolloutStatus.model_validate(body.get("status") or {})
        router = self.router(spec, ref)
        try:
            if status.pair_hash is not None and status.phase != api.Phase.PROMOTED:
                await router.write(0)
                log.info("%s/%s deleted mid-rollout: traffic returned to stable", ref.namespace, ref.name)
            await router.release()
        except RoutingConflict:
            return  # never ours
        except RoutingProblem as problem:
            # Nothing of ours left to put back (the VirtualService or its route is gone): do not hold the
            # deletion hostage. API errors, in contrast, propagate and the deletion is retried.
            log.warning("%s/%s deleted; VirtualService not restored: %s", ref.namespace, ref.name, problem)

    def close(self) -> None:
        self.measurer.close()
