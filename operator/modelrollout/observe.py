"""Observing the routing for one tick: read each VirtualService the rollout needs once, and view it for the
pairs the engine asks about (the spec's, and the recorded one when the spec names another pair or another
VirtualService). A claim by another rollout is checked against the API server: one left by a rollout that no
longer exists is reported as stale, for the engine to take over."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import ValidationError

from modelrollout import api, engine
from modelrollout.kube import RolloutRef
from modelrollout.ports import RouterFactory
from modelrollout.routing.router import (
    Backend,
    ExperimentRoutes,
    Router,
    RoutingConflict,
    RoutingProblem,
    Snapshot,
    backend_of,
)


def target_of(spec: api.ModelRolloutSpec, namespace: str) -> api.RoutingRecord:
    """Where the spec routes: the VirtualService (namespace/name), its API version and the managed routes."""
    istio = spec.traffic_routing.istio
    return api.RoutingRecord(
        virtual_service=f"{istio.virtual_service.namespace or namespace}/{istio.virtual_service.name}",
        api_version=istio.api_version.value,
        routes=list(istio.routes) if istio.routes else None,
    )


@dataclass
class Observed:
    """One observation of the routing: each router with the snapshot it read (or the problem it met)."""

    spec_router: Router
    spec_snapshot: Snapshot | None
    recorded_router: Router | None = None
    recorded_snapshot: Snapshot | None = None


class RoutingObserver:
    def __init__(self, routers: RouterFactory, exists: Callable[[str, str], Awaitable[bool]]) -> None:
        self._routers = routers
        self._exists = exists

    def router(self, record: api.RoutingRecord, ref: RolloutRef) -> Router:
        """The router of the VirtualService `record` names, acting for the rollout `ref`."""
        return self._routers(record, f"{ref.namespace}/{ref.name}")

    async def observe(
        self,
        spec: api.ModelRolloutSpec,
        status: api.ModelRolloutStatus,
        target: api.RoutingRecord,
        ref: RolloutRef,
    ) -> tuple[Observed, engine.RoutingView, engine.RoutingView | None]:
        spec_router = self.router(target, ref)
        spec_snapshot, spec_problem = await self.read(spec_router)
        observed = Observed(spec_router, spec_snapshot)
        recorded_pair = (
            status.pair_hash is not None and status.stable is not None and status.canary is not None
        )
        pair_changed = recorded_pair and status.pair_hash != engine.pair_hash(spec)
        recorded_target = status.routing or target
        target_changed = recorded_pair and recorded_target != target
        pair = (backend_of(spec.stable), backend_of(spec.canary))
        retiring: tuple[Backend, ...] = ()
        if pair_changed and not target_changed and status.stable and status.canary:
            old = (backend_of(status.stable), backend_of(status.canary))
            retiring = tuple(b for b in old if b not in pair)
        owner = f"{ref.namespace}/{ref.name}"
        experiment = engine.live_experiment(spec, status, owner)
        routing = await self.view(
            spec_router, spec_snapshot, spec_problem, pair, retiring, experiment=experiment, owner=owner
        )
        previous = None
        if (pair_changed or target_changed) and status.stable is not None and status.canary is not None:
            if target_changed:
                observed.recorded_router = self.router(recorded_target, ref)
                observed.recorded_snapshot, problem = await self.read(observed.recorded_router)
            else:
                observed.recorded_router, observed.recorded_snapshot = spec_router, spec_snapshot
                problem = spec_problem
            previous = await self.view(
                observed.recorded_router,
                observed.recorded_snapshot,
                problem,
                (backend_of(status.stable), backend_of(status.canary)),
                owner=owner,
            )
        return observed, routing, previous

    async def read(self, router: Router) -> tuple[Snapshot | None, RoutingProblem | None]:
        try:
            return await router.read(), None
        except RoutingProblem as problem:
            return None, problem

    async def view(
        self,
        router: Router,
        snapshot: Snapshot | None,
        problem: RoutingProblem | None,
        pair: tuple[Backend, Backend],
        retiring: tuple[Backend, ...] = (),
        *,
        experiment: ExperimentRoutes | None = None,
        owner: str,
    ) -> engine.RoutingView:
        """The view of `pair` on what `router` read. One that cannot be used still says whether `owner` (the
        rollout) holds a claim on the object (on any route): a claim it must give up when it leaves."""
        stable, canary = pair
        if snapshot is None:
            assert problem is not None  # noqa: S101 - _read returns one or the other
            return engine.RoutingView(problem_reason=problem.reason, problem=str(problem), claimed=False)
        claims = snapshot.claims.values()  # asked only of a view that cannot be used (a usable one knows)
        stale_owner = None
        for _ in range(2):
            try:
                view = router.view(
                    snapshot,
                    stable,
                    canary,
                    retiring=retiring,
                    stale_owner=stale_owner,
                    experiment=experiment,
                )
            except RoutingConflict as conflict:
                owner_ns, _, owner_name = conflict.owner.partition("/")
                if stale_owner is None and owner_name and not await self._exists(owner_ns, owner_name):
                    stale_owner = conflict.owner  # left by a rollout that is gone: ours to take over
                    continue
                return engine.RoutingView(conflict_owner=conflict.owner, claimed=owner in claims)
            except RoutingProblem as missing:
                return engine.RoutingView(
                    problem_reason=missing.reason, problem=str(missing), claimed=owner in claims
                )
            return engine.RoutingView(
                canary_weight=view.canary_weight,
                consistent=view.consistent,
                canary_present=view.canary_present,
                claimed=view.claimed,
                mirror=view.mirror,
                experiment_in_place=view.experiment_in_place,
                last_writer=snapshot.last_writer,
                stale_owner=stale_owner,
                hosts=snapshot.hosts,
                returning=_returning(snapshot, owner),
            )
        return engine.RoutingView(conflict_owner=stale_owner, claimed=owner in claims)


def _returning(snapshot: Snapshot, owner: str) -> api.RouteReturn | None:
    """The return to stable `owner`'s latest write recorded on the object; one that does not parse (edited
    by hand, or written by a newer operator in a shape this one does not know) counts as none."""
    record = snapshot.returns.get(owner)
    if record is None:
        return None
    try:
        return api.RouteReturn.model_validate(record)
    except ValidationError:
        return None
