"""The Router over a live Istio VirtualService, with the operator's async client (each call with a request
timeout). A write replaces the whole object carrying the resourceVersion of the snapshot it was computed
from, so a concurrent edit is never overwritten: the server answers 409, which is raised as StaleWrite for
the caller to observe and decide again. The write's answer is the stored object, which is checked to show
the split before it is returned as the next snapshot (the read-back).

With a VirtualServiceCache a read comes from the watch when the watch can say (no API request); a write's
answer goes into the cache, and a conflict makes the next read a live one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from modelrollout.kube import without_managed_fields
from modelrollout.kubeclient import ApiError, KubeClient, object_path
from modelrollout.routing.istio import (
    VirtualService,
    claims_of,
    conflicting_owner,
    keeping_what_is_read,
    last_spec_writer,
    managed_route_indexes,
    returns_of,
    route_key,
    split_view,
    virtual_service_ref,
    with_claims,
    with_return,
    with_split,
    without_claims,
)
from modelrollout.routing.router import (
    Backend,
    ExperimentRoutes,
    Router,
    RouteView,
    RouteWrite,
    RoutingConflict,
    RoutingProblem,
    Snapshot,
    StaleWrite,
)
from modelrollout.routing.watch import VirtualServiceCache

ISTIO_GROUP = "networking.istio.io"
PLURAL = "virtualservices"


class IstioRouter(Router):
    def __init__(
        self,
        kube_client: KubeClient,
        *,
        namespace: str,
        name: str,
        api_version: str,
        routes: list[str] | None,
        owner: str,
        field_manager: str = "modelrollout-operator",
        request_timeout: float = 10.0,
        cache: VirtualServiceCache | None = None,
        on_read: Callable[[str], None] | None = None,
    ) -> None:
        group, _, version = api_version.partition("/")
        if group != ISTIO_GROUP or not version:
            raise ValueError(f"not an Istio networking API version: {api_version!r}")
        self._client = kube_client
        self._version = version
        self._path = object_path(ISTIO_GROUP, version, PLURAL, namespace, name)
        self.namespace = namespace
        self.name = name
        self.routes = list(routes) if routes else None
        self.owner = owner
        self.field_manager = field_manager
        self.request_timeout = request_timeout
        self._cache = cache
        self._on_read = on_read or (lambda _source: None)  # "cache" or "api", for the operator's metrics

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def _snapshot(self, vs: VirtualService) -> Snapshot:
        return Snapshot(
            resource_version=str(vs["metadata"]["resourceVersion"]),
            # Our own manager included: the engine must tell its own unfinished write from someone else's.
            last_writer=last_spec_writer(vs, own_field_manager=""),
            claims=claims_of(vs),
            body=vs,
            hosts=tuple(str(h) for h in (vs.get("spec") or {}).get("hosts") or ()),
            returns=returns_of(vs),
        )

    async def read(self) -> Snapshot:
        if self._cache is not None:
            known, cached = self._cache.cached(self._version, self.namespace, self.name)
            if known and cached is None:
                self._on_read("cache")
                raise self._not_found()
            if cached is not None:
                self._on_read("cache")
                return self._snapshot(cached)
        self._on_read("api")
        found = await self._get()
        if self._cache is not None:
            self._cache.fetched(self._version, found)
        return self._snapshot(found)

    def _not_found(self) -> RoutingProblem:
        return RoutingProblem(
            "VirtualServiceNotFound", f"VirtualService {self.ref} not found ({ISTIO_GROUP}/{self._version})"
        )

    def managed_keys(self, snapshot: Snapshot) -> list[str]:
        vs: VirtualService = snapshot.body
        return [route_key(vs, index) for index in managed_route_indexes(vs, self.routes)]

    def view(
        self,
        snapshot: Snapshot,
        stable: Backend,
        canary: Backend,
        *,
        retiring: tuple[Backend, ...] = (),
        stale_owner: str | None = None,
        experiment: ExperimentRoutes | None = None,
    ) -> RouteView:
        vs: VirtualService = snapshot.body
        indexes = managed_route_indexes(vs, self.routes)
        keys = [route_key(vs, i) for i in indexes]
        other = conflicting_owner(vs, keys, self.owner)
        if other is not None and other != stale_owner:
            raise RoutingConflict(
                other,
                f"VirtualService {virtual_service_ref(vs)} is already managed by ModelRollout {other}; "
                f"{self.owner} leaves it alone",
            )
        split = split_view(vs, indexes, stable, canary, retiring, experiment=experiment)
        claimed = any(snapshot.claims.get(key) == self.owner for key in keys)
        return replace(split, claimed=claimed)

    async def write(self, snapshot: Snapshot, desired: RouteWrite) -> Snapshot:
        vs: VirtualService = snapshot.body
        indexes = managed_route_indexes(vs, self.routes)
        weighted, _ = with_split(vs, indexes, desired)
        # The claim travels with the weights: there is never a moment where we moved traffic unmarked.
        body, _ = with_claims(
            weighted, [route_key(vs, i) for i in indexes], self.owner, desired.take_over_from
        )
        # So does a return to stable: a restart after this write finishes it, it never reads it as drift.
        returning = desired.returning
        body = with_return(
            body,
            self.owner,
            returning.model_dump(mode="json", by_alias=True, exclude_none=True) if returning else None,
            drop=(desired.take_over_from,) if desired.take_over_from else (),
        )
        if body == vs:
            return snapshot
        stored = self._snapshot(await self._replace(body))
        shown = split_view(
            stored.body,
            managed_route_indexes(stored.body, self.routes),
            desired.stable,
            desired.canary,
            experiment=desired.experiment,
        )
        if (
            shown.canary_weight != desired.canary_weight
            or shown.mirror != desired.mirror
            or not shown.consistent
            or not shown.experiment_in_place
        ):
            raise RuntimeError(
                f"VirtualService {self.ref} reads back canary weight {shown.canary_weight}, mirror "
                f"{shown.mirror}% (consistent: {shown.consistent}, experiment routes in place: "
                f"{shown.experiment_in_place}) after writing {desired.canary_weight}, "
                f"mirror {desired.mirror}%"
            )
        return stored

    async def release(self, snapshot: Snapshot) -> Snapshot:
        body, _ = without_claims(snapshot.body, self.owner)
        body = with_return(body, self.owner, None)
        if body == snapshot.body:
            return snapshot
        return self._snapshot(await self._replace(body))

    async def _get(self) -> VirtualService:
        try:
            found = await self._client.request("GET", self._path, timeout=self.request_timeout)
        except ApiError as failed:
            if failed.status == 404:
                raise self._not_found() from failed
            raise
        return _as_object(self.ref, found)

    async def _replace(self, body: VirtualService) -> VirtualService:
        """Write `body`, which carries the resourceVersion it was read at; the stored object."""
        body = without_managed_fields(body)
        try:
            stored = await self._client.request(
                "PUT",
                self._path,
                params={"fieldManager": self.field_manager},
                body=body,
                timeout=self.request_timeout,
            )
        except ApiError as failed:
            if self._cache is not None and failed.status in (404, 409):
                self._cache.invalidate(self._version, self.namespace, self.name)
            if failed.status == 409:
                raise StaleWrite(f"VirtualService {self.ref} changed since it was read") from failed
            if failed.status == 404:
                raise RoutingProblem(
                    "VirtualServiceNotFound", f"VirtualService {self.ref} is gone"
                ) from failed
            raise
        stored = _as_object(self.ref, stored)
        if self._cache is not None:
            self._cache.wrote(self._version, str(body["metadata"].get("resourceVersion", "")), stored)
        return stored


def _as_object(ref: str, found: Any) -> VirtualService:
    if not isinstance(found, dict):
        raise TypeError(f"VirtualService {ref}: the API server answered {type(found).__name__}")
    return keeping_what_is_read(found)
