"""The Router over a live Istio VirtualService, with the official kubernetes client.

The client is synchronous, so every call runs in a worker thread with a request timeout: the operator's
event loop never waits on the API server. Writes replace the whole object carrying the resourceVersion that
was read, so a concurrent edit is never overwritten: the server answers 409 and the write starts again from
a fresh read.
"""

from __future__ import annotations

import asyncio

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelrollout.routing.istio import (
    VirtualService,
    last_spec_writer,
    managed_route_indexes,
    owner_of,
    read_canary_weight,
    virtual_service_ref,
    with_canary_weight,
    with_owner,
    without_owner,
)
from modelrollout.routing.router import Backend, Router, RouteState, RoutingConflict, RoutingProblem

ISTIO_GROUP = "networking.istio.io"
PLURAL = "virtualservices"
MAX_ATTEMPTS = 5


class IstioRouter(Router):
    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        namespace: str,
        name: str,
        api_version: str,
        routes: list[str] | None,
        stable: Backend,
        canary: Backend,
        owner: str,
        field_manager: str = "modelrollout-operator",
        request_timeout: float = 10.0,
    ) -> None:
        group, _, version = api_version.partition("/")
        if group != ISTIO_GROUP or not version:
            raise ValueError(f"not an Istio networking API version: {api_version!r}")
        self._api = client.CustomObjectsApi(api_client)
        self._version = version
        self.namespace = namespace
        self.name = name
        self.routes = list(routes) if routes else None
        self.stable = stable
        self.canary = canary
        self.owner = owner
        self.field_manager = field_manager
        self.request_timeout = request_timeout

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    async def read(self) -> RouteState:
        vs = await self._get()
        self._check_owner(vs)
        indexes = managed_route_indexes(vs, self.routes)
        weight, consistent = read_canary_weight(vs, indexes, self.stable, self.canary)
        return RouteState(
            canary_weight=weight,
            consistent=consistent,
            resource_version=str(vs["metadata"]["resourceVersion"]),
            # Our own manager included: the engine must tell its own unfinished write from someone else's.
            last_writer=last_spec_writer(vs, own_field_manager=""),
        )

    async def write(self, canary_weight: int) -> bool:
        for _ in range(MAX_ATTEMPTS):
            vs = await self._get()
            self._check_owner(vs)
            indexes = managed_route_indexes(vs, self.routes)
            weighted, weights_changed = with_canary_weight(
                vs, indexes, self.stable, self.canary, canary_weight
            )
            # The claim travels with the weights: there is never a moment where we moved traffic unmarked.
            body, claimed = with_owner(weighted, self.owner)
            if not (weights_changed or claimed):
                return False
            if await self._replace_unless_conflict(body):
                break
        else:
            raise RuntimeError(
                f"VirtualService {self.ref} kept changing under {MAX_ATTEMPTS} attempts to set the canary "
                f"weight to {canary_weight}"
            )
        written = await self.read()
        if written.canary_weight != canary_weight or not written.consistent:
            raise RuntimeError(
                f"VirtualService {self.ref} reads back canary weight {written.canary_weight} "
                f"(consistent: {written.consistent}) after writing {canary_weight}"
            )
        return True

    async def release(self) -> None:
        for _ in range(MAX_ATTEMPTS):
            try:
                vs = await self._get()
            except RoutingProblem:
                return
            body, changed = without_owner(vs, self.owner)
            if not changed:
                return
            try:
                if await self._replace_unless_conflict(body):
                    return
            except RoutingProblem:
                return
        raise RuntimeError(
            f"VirtualService {self.ref} kept changing under {MAX_ATTEMPTS} attempts to release it"
        )

    def _check_owner(self, vs: VirtualService) -> None:
        owner = owner_of(vs)
        if owner is not None and owner != self.owner:
            raise RoutingConflict(
                owner,
                f"VirtualService {virtual_service_ref(vs)} is already managed by ModelRollout {owner}; "
                f"{self.owner} leaves it alone",
            )

    async def _get(self) -> VirtualService:
        try:
            found = await asyncio.to_thread(
                self._api.get_namespaced_custom_object,
                ISTIO_GROUP,
                self._version,
                self.namespace,
                PLURAL,
                self.name,
                _request_timeout=self.request_timeout,
            )
        except ApiException as failed:
            if failed.status == 404:
                raise RoutingProblem(
                    "VirtualServiceNotFound",
                    f"VirtualService {self.ref} not found ({ISTIO_GROUP}/{self._version})",
                ) from failed
            raise
        if not isinstance(found, dict):
            raise TypeError(f"VirtualService {self.ref}: the API server answered {type(found).__name__}")
        return found

    async def _replace_unless_conflict(self, body: VirtualService) -> bool:
        """Write `body`, which carries the resourceVersion it was read at; False when someone wrote first."""
        try:
            await self._replace(body)
        except ApiException as failed:
            if failed.status == 409:
                return False
            if failed.status == 404:
                raise RoutingProblem(
                    "VirtualServiceNotFound", f"VirtualService {self.ref} is gone"
                ) from failed
            raise
        return True

    async def _replace(self, body: VirtualService) -> None:
        # managedFields are the server's bookkeeping; leaving them out keeps the live ones.
        body = {**body, "metadata": {k: v for k, v in body["metadata"].items() if k != "managedFields"}}
        await asyncio.to_thread(
            self._api.replace_namespaced_custom_object,
            ISTIO_GROUP,
            self._version,
            self.namespace,
            PLURAL,
            self.name,
            body,
            field_manager=self.field_manager,
            _request_timeout=self.request_timeout,
        )
