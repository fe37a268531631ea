"""What the reconciler needs of the world, as small interfaces: the API server (besides the VirtualService),
the gate measurement, and a router per VirtualService. `kube.Kube`, `measure.Measurer` and
`routing.istio_router.IstioRouter` implement them in a cluster; `tests/fakes.py` in memory."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from modelrollout import api
from modelrollout.analysis import CheckResult
from modelrollout.kube import RolloutRef
from modelrollout.routing.router import Router


class KubeApi(Protocol):
    """What the reconciler needs of the API server besides the VirtualService (kube.Kube in a cluster)."""

    async def record_status(
        self, ref: RolloutRef, status: api.ModelRolloutStatus, resource_version: str | None
    ) -> dict[str, Any]: ...

    async def get_rollout(self, ref: RolloutRef) -> dict[str, Any] | None: ...

    async def rollout_exists(self, namespace: str, name: str) -> bool: ...

    async def consume_action(self, ref: RolloutRef, value: str) -> dict[str, Any] | None: ...

    async def emit_event(self, ref: RolloutRef, type_: str, reason: str, message: str) -> None: ...

    async def get_envoy_filter(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def apply_envoy_filter(self, manifest: dict[str, Any]) -> dict[str, Any]: ...

    async def delete_envoy_filter(self, namespace: str, name: str) -> None: ...


class Measuring(Protocol):
    async def measure(
        self,
        spec: api.ModelRolloutSpec,
        ref: RolloutRef,
        now: datetime,
        *,
        virtual_service_namespace: str,
        canary_weight: int | None = None,
        mirror: int = 0,
        status: api.ModelRolloutStatus | None = None,
        requested: bool = False,
    ) -> CheckResult | None: ...

    def forget(self, ref: RolloutRef) -> None: ...

    def close(self) -> None: ...


# A router for the VirtualService a record names, acting for the rollout `namespace/name` (its claims' owner).
RouterFactory = Callable[[api.RoutingRecord, str], Router]
