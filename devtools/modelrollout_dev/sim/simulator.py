"""The simulated mesh: requests routed by the live VirtualServices to fake LLM backends, recorded as Istio
metrics, driven by a load generator and controlled over HTTP (see `server`).

What is recorded for a request:
- routed (200 from the mesh): the backend's status, latency and tokens, as `istio_*` metrics of the
  destination, as `vllm:*` metrics of the backend's model, and in the stats under the destination; the
  experiment headers it arrived with (after the VirtualService's header operations) in
  `sim_backend_requests_total`;
- a mirror copy: served by the mirror's backend and recorded in the metrics like any request (the mirror's
  sidecar and engine see it; a backend does not know it serves a mirror), its reply discarded; it carries the
  headers the destination received and counts in `sim_backend_requests_total` with mirrored="true"; the
  stats count it under `mirrored`, not as a request, and never as a user's answer;
- answered by the mesh itself (404 no VirtualService / no route, 503 no weighted destination, a direct
  response): not in the `istio_*` metrics, because no destination sidecar ever saw it and every series here
  is reporter="destination", nor in the `vllm:*` ones (no engine saw it); the stats count it under its
  status.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kubernetes import client

from modelrollout_dev.sim.backends import Backends, Served
from modelrollout_dev.sim.load import USER_HEADER, Flow, LoadGenerator
from modelrollout_dev.sim.lua_filters import LuaFilters
from modelrollout_dev.sim.metrics import MeshMetrics, model_name
from modelrollout_dev.sim.routing import Destination, Request, RouteResult, route
from modelrollout_dev.sim.server import ControlServer
from modelrollout_dev.sim.stats import Stats
from modelrollout_dev.sim.telemetry import VariantTag
from modelrollout_dev.sim.watcher import IstioWatcher

VirtualServices = Callable[[], Sequence[Mapping[str, Any]]]


@dataclass(frozen=True)
class Outcome:
    """What happened to one request: the mesh's routing, then (if routed) the backend's answer."""

    status: int
    routing: RouteResult
    latency_ms: float | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    mirror_statuses: tuple[int, ...] = ()
    ttft_ms: float | None = None
    finished_reason: str | None = None
    model_name: str | None = None
    user_id: str | None = None  # the user id the request carried, if any

    @property
    def destination(self) -> Destination | None:
        return self.routing.destination

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "destination": _describe(self.routing.destination),
            "route": self.routing.route,
            "virtual_service": self.routing.virtual_service,
            "mesh_status": self.routing.status,
            "headers": dict(self.routing.headers),
            "authority": self.routing.authority,
            "latency_ms": self.latency_ms,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "ttft_ms": self.ttft_ms,
            "finished_reason": self.finished_reason,
            "model_name": self.model_name,
            "user_id": self.user_id,
            "mirrors": [
                {**(_describe(mirror) or {}), "status": status, "authority": self.routing.mirror_authority}
                for mirror, status in zip(self.routing.mirrors, self.mirror_statuses, strict=True)
            ],
        }


def _describe(destination: Destination | None) -> dict[str, Any] | None:
    if destination is None:
        return None
    return {
        "key": destination.key,
        "service": destination.service,
        "namespace": destination.namespace,
        "fqdn": destination.fqdn,
        "subset": destination.subset,
        "port": destination.port,
    }


class Simulator:
    """`Simulator(api_client, namespaces, seed)`: watch the VirtualServices of `namespaces` (all if None) and
    route through them. Without an API client, `virtual_services` supplies them (a fixed list, say).
    `shadow_host_suffix`: mirror copies carry `-shadow` on their authority, as before Istio 1.28 (see
    `routing.route`)."""

    def __init__(
        self,
        api_client: client.ApiClient | None,
        namespaces: Sequence[str] | None = None,
        seed: int | None = None,
        *,
        virtual_services: VirtualServices | None = None,
        api_version: str = "v1",
        port: int = 0,
        bind: str = "127.0.0.1",
        source_namespace: str | None = None,
        shadow_host_suffix: bool = False,
    ) -> None:
        self.watcher: IstioWatcher | None = None
        self.filter_watcher: IstioWatcher | None = None
        self.telemetry_watcher: IstioWatcher | None = None
        self.variant_tag = VariantTag(list)
        self._virtual_services: VirtualServices
        self.lua_filters: LuaFilters | None = None
        if api_client is not None and virtual_services is None:
            self.watcher = IstioWatcher(api_client, namespaces, api_version=api_version)
            self._virtual_services = self.watcher.snapshot
            # The EnvoyFilters of the same namespaces: their Lua runs in the client's sidecar, before routing.
            self.filter_watcher = IstioWatcher(
                api_client, namespaces, api_version="v1alpha3", plural="envoyfilters"
            )
            self.lua_filters = LuaFilters(self.filter_watcher.snapshot)
            # Telemetries: the tag overrides the destination sidecar applies to the standard metrics.
            self.telemetry_watcher = IstioWatcher(
                api_client, None, api_version="v1", plural="telemetries", group="telemetry.istio.io"
            )
            self.variant_tag = VariantTag(self.telemetry_watcher.snapshot)
        elif virtual_services is not None and api_client is None:
            self._virtual_services = virtual_services
        else:
            raise ValueError(
                "give either an API client to watch VirtualServices or a virtual_services source"
            )
        # Requests without an explicit source come from the first watched namespace, like a client pod there.
        self.source_namespace = source_namespace or (namespaces[0] if namespaces else "default")
        self.shadow_host_suffix = shadow_host_suffix
        self.backends = Backends()
        self.metrics = MeshMetrics()
        self.stats = Stats()
        # The load generator draws from its own generator in its own thread, so a seeded run repeats its
        # sequence of picks; requests from the control API share this one, under a lock.
        self._rng = random.Random(None if seed is None else seed + 1)  # noqa: S311  (not secrets)
        self._rng_lock = threading.Lock()
        self.load = LoadGenerator(self._send, seed)
        self.server = ControlServer(self, bind, port)

    # ---- lifecycle ----

    def start(self) -> Simulator:
        if self.watcher is not None:
            self.watcher.start()
        if self.filter_watcher is not None:
            self.filter_watcher.start()
        if self.telemetry_watcher is not None:
            self.telemetry_watcher.start()
        self.load.start()
        self.server.start()
        return self

    def stop(self) -> None:
        self.load.stop()
        self.server.stop()
        if self.watcher is not None:
            self.watcher.stop()
        if self.filter_watcher is not None:
            self.filter_watcher.stop()
        if self.telemetry_watcher is not None:
            self.telemetry_watcher.stop()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_synced(self, timeout: float = 30.0) -> bool:
        watchers = [w for w in (self.watcher, self.filter_watcher) if w is not None]
        return all(w.wait_synced(timeout) for w in watchers)

    @property
    def address(self) -> str:
        """`127.0.0.1:PORT` of `/metrics` and the control API."""
        return self.server.address

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def virtual_services(self) -> Sequence[Mapping[str, Any]]:
        return self._virtual_services()

    # ---- traffic ----

    def set_load(
        self,
        host: str,
        rps: float,
        *,
        headers: Mapping[str, str] | None = None,
        users: int = 100,
        path: str = "/v1/chat/completions",
        source_workload: str = "loadgen",
        source_namespace: str | None = None,
        bucket_header: str | None = None,
        experiment_id: str | None = None,
    ) -> Flow:
        """Send `rps` requests per second to `host` (0 stops that flow). With `bucket_header` and
        `experiment_id`, each request also carries its user's sticky bucket in that header."""
        flow = Flow(
            host=host,
            rps=float(rps),
            headers=dict(headers or {}),
            users=users,
            path=path,
            source_workload=source_workload,
            source_namespace=source_namespace or self.source_namespace,
            bucket_header=bucket_header,
            experiment_id=experiment_id,
        )
        self.load.set_flow(flow)
        return flow

    def handle(
        self,
        request: Request,
        *,
        source_workload: str = "client",
        rng: random.Random | None = None,
        user_header: str | None = USER_HEADER,
    ) -> Outcome:
        """Route one request, have its backend answer, record it (per user too, if it carries
        `user_header`). Without `rng`, the simulator's own (shared by callers, so under a lock)."""
        user_id = request.headers.get(user_header.lower()) if user_header else None
        if rng is not None:
            return self._handle(request, source_workload, rng, user_id)
        with self._rng_lock:
            return self._handle(request, source_workload, self._rng, user_id)

    def _send(self, flow: Flow, request: Request, rng: random.Random) -> None:
        self._handle(request, flow.source_workload, rng, request.headers.get(flow.user_header.lower()))

    def _handle(
        self, request: Request, source_workload: str, rng: random.Random, user_id: str | None
    ) -> Outcome:
        if self.lua_filters is not None:
            request = self._filtered(request, source_workload)
        routing = route(self._virtual_services(), request, rng, shadow_host_suffix=self.shadow_host_suffix)
        route_key = f"{routing.virtual_service}#{routing.route}" if routing.route else None
        destination = routing.destination
        if destination is None:
            self.stats.count(None, routing.status, route_key)
            return Outcome(routing.status, routing, user_id=user_id)
        source_namespace = request.source_namespace or self.source_namespace
        served = self._serve(destination, routing, rng, source_workload, source_namespace, mirrored=False)
        mirror_statuses = tuple(
            self._serve(mirror, routing, rng, source_workload, source_namespace, mirrored=True).status
            for mirror in routing.mirrors
        )
        self.stats.count(
            destination.key,
            served.status,
            route_key,
            tuple(mirror.key for mirror in routing.mirrors),
            user_id,
        )
        return Outcome(
            served.status,
            routing,
            served.latency_ms,
            served.tokens_in,
            served.tokens_out,
            mirror_statuses,
            served.ttft_ms,
            served.finished_reason,
            model_name(destination, served),
            user_id,
        )

    def _filtered(self, request: Request, source_workload: str) -> Request:
        """The request as the client's sidecar passes it on after its Lua filters (EnvoyFilters)."""
        assert self.lua_filters is not None  # noqa: S101 - only called with filters
        authority = request.host if request.port is None else f"{request.host}:{request.port}"
        headers = self.lua_filters.apply(
            request.headers,
            authority,
            request.source_namespace or self.source_namespace,
            source_workload,
        )
        return replace(request, headers=headers) if headers != dict(request.headers) else request

    def _serve(
        self,
        destination: Destination,
        routing: RouteResult,
        rng: random.Random,
        source_workload: str,
        source_namespace: str,
        *,
        mirrored: bool,
    ) -> Served:
        """`destination`'s backend answers the request `routing` forwarded to it (a mirror copy carries the
        same headers as the request the routed destination received)."""
        served = self.backends.serve(destination.service, destination.namespace, rng)
        self.metrics.record_served(
            destination,
            served,
            source_workload=source_workload,
            source_namespace=source_namespace,
            variant=self.variant_tag(destination.namespace, routing.headers),
        )
        self.metrics.record_received(destination, routing.headers, mirrored=mirrored)
        return served
