"""In-memory fakes of the adapters the reconciler talks to, for the unit tier.

`FakeApiServer` keeps ModelRollouts and VirtualServices the way the API server does where it matters to the
operator: every write bumps a resourceVersion, a write carrying an older one is refused with 409, and faults
can be injected (a refused VirtualService write, a conflict on the next write, a rollout deleted mid-tick,
a mutating webhook that rewrites what a VirtualService write stores).
`FakeRouter` is the real IstioRouter with its two I/O methods pointed at that store, so every VirtualService
the operator computes goes through the real transforms and the real claim rules.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from modelrollout import api
from modelrollout.analysis import CheckResult
from modelrollout.config import OperatorConfig
from modelrollout.kube import ACTION_ANNOTATION, RolloutRef, StaleObject
from modelrollout.kubeclient import ApiError, Credentials, KubeClient
from modelrollout.notify import Notification, Notifier, NotifyTargets
from modelrollout.reconciler import Reconciler
from modelrollout.routing.envoy_filter import BucketFilter, bucket_filter
from modelrollout.routing.istio_router import IstioRouter
from modelrollout.routing.router import Router

NAMESPACE = "llm"
STABLE, CANARY = "llm-gpt4o", "llm-claude"
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def api_error(status: int, message: str) -> ApiError:
    return ApiError(status, "Refused", json.dumps({"kind": "Status", "message": message, "code": status}))


def unused_client() -> KubeClient:
    """A client for adapters whose requests the fakes answer: it never connects."""
    return KubeClient(Credentials(server="https://unused.invalid"))


@dataclass
class FakeApiServer:
    rollouts: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    virtual_services: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    version: int = 100
    # Faults: the next VirtualService writes are refused with this error (count), or conflict (count).
    refuse_vs_writes: int = 0
    refusal: ApiError = field(default_factory=lambda: api_error(403, "denied by policy"))
    conflict_vs_writes: int = 0
    conflict_status_writes: int = 0
    status_write_seconds: float = 0.0  # each status write's round trip (other ticks run meanwhile)
    vs_writes: int = 0
    status_writes: int = 0
    # Called before a VirtualService write lands (after the faults): a race, e.g. a deletion mid-tick.
    before_vs_write: Callable[[], Awaitable[None] | None] | None = None
    # A mutating admission webhook: changes the body of every VirtualService write before it is stored.
    admit_vs: Callable[[dict[str, Any]], None] | None = None
    # The resourceVersion each status write was made conditional on (None: an unconditional write).
    status_versions: list[str | None] = field(default_factory=list)
    # EnvoyFilters by (namespace, name); the next filter writes (apply or delete) are refused (count).
    envoy_filters: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    refuse_filter_writes: int = 0
    filter_writes: list[str] = field(default_factory=list)  # "apply NAME" / "delete NAME", in order
    # The order of writes of either kind: "vs" / "filter apply" / "filter delete".
    write_log: list[str] = field(default_factory=list)

    def bump(self) -> str:
        self.version += 1
        return str(self.version)

    # ---- VirtualServices ----

    def put_vs(self, vs: dict[str, Any]) -> None:
        meta = vs["metadata"]
        meta["resourceVersion"] = self.bump()
        meta.setdefault("managedFields", [{"manager": "kubectl-create", "time": "2026-11-23T09:00:00Z",
                                           "fieldsV1": {"f:spec": {"f:http": {}}}}])  # fmt: skip
        self.virtual_services[(meta["namespace"], meta["name"])] = copy.deepcopy(vs)

    def vs(self, name: str = "llm", namespace: str = NAMESPACE) -> dict[str, Any]:
        return copy.deepcopy(self.virtual_services[(namespace, name)])

    def weights(self, name: str = "llm", route: int = 0, namespace: str = NAMESPACE) -> tuple[int, int]:
        """(stable, canary) weights of a route; 0 for a destination that is absent."""
        found = {
            e["destination"]["host"]: e.get("weight", 100)
            for e in self.vs(name, namespace)["spec"]["http"][route]["route"]
        }
        return found.get(STABLE, 0), found.get(CANARY, 0)

    def claims(self, name: str = "llm") -> dict[str, str]:
        raw = (self.vs(name)["metadata"].get("annotations") or {}).get("modelrollout.io/managed-by")
        return json.loads(raw) if raw else {}

    def edit_vs(
        self,
        change: Callable[[dict[str, Any]], None],
        manager: str = "kubectl-edit",
        at: str = "2026-11-23T23:59:59Z",
    ) -> None:
        vs = self.vs()
        change(vs)
        vs["metadata"]["managedFields"] = [
            *vs["metadata"].get("managedFields", []),
            {"manager": manager, "time": at, "fieldsV1": {"f:spec": {"f:http": {}}}},
        ]
        self.put_vs(vs)

    def get_vs(self, namespace: str, name: str) -> dict[str, Any]:
        if (namespace, name) not in self.virtual_services:
            raise api_error(404, f"virtualservices {name!r} not found")
        return copy.deepcopy(self.virtual_services[(namespace, name)])

    def replace_vs(self, namespace: str, name: str, body: dict[str, Any], manager: str) -> dict[str, Any]:
        if self.refuse_vs_writes:
            self.refuse_vs_writes -= 1
            raise self.refusal
        if self.conflict_vs_writes:
            self.conflict_vs_writes -= 1
            self.edit_vs(lambda vs: None, manager="someone-else")  # someone else wrote first
            raise api_error(409, "the object has been modified")
        current = self.get_vs(namespace, name)
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise api_error(
                409, "the object has been modified; please apply your changes to the latest version"
            )
        stored = copy.deepcopy(body)
        if self.admit_vs is not None:
            self.admit_vs(stored)
        stored["metadata"]["managedFields"] = (
            [
                *current["metadata"].get("managedFields", []),
                {"manager": manager, "time": "2026-11-23T23:59:59Z", "fieldsV1": {"f:spec": {"f:http": {}}}},
            ]
            if stored["spec"] != current["spec"]
            else current["metadata"].get("managedFields", [])
        )
        self.vs_writes += 1
        self.put_vs(stored)
        return self.get_vs(namespace, name)

    # ---- ModelRollouts ----

    def create_rollout(self, spec: dict[str, Any], name: str = "chat", namespace: str = NAMESPACE) -> None:
        self.rollouts[(namespace, name)] = {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "generation": 1,
                         "resourceVersion": self.bump(), "annotations": {}},
            "spec": spec,
        }  # fmt: skip

    def rollout(self, name: str = "chat", namespace: str = NAMESPACE) -> dict[str, Any]:
        return copy.deepcopy(self.rollouts[(namespace, name)])

    def status(self, name: str = "chat") -> api.ModelRolloutStatus:
        return api.ModelRolloutStatus.model_validate(self.rollout(name).get("status") or {})

    def edit_rollout(self, change: Callable[[dict[str, Any]], None], name: str = "chat") -> None:
        obj = self.rollouts[(NAMESPACE, name)]
        before = copy.deepcopy(obj["spec"])
        change(obj)
        if obj["spec"] != before:
            obj["metadata"]["generation"] += 1
        obj["metadata"]["resourceVersion"] = self.bump()

    def annotate(self, action: str, name: str = "chat") -> None:
        self.edit_rollout(
            lambda obj: obj["metadata"]["annotations"].__setitem__(ACTION_ANNOTATION, action), name
        )

    def delete_rollout(self, name: str = "chat") -> None:
        self.edit_rollout(
            lambda obj: obj["metadata"].__setitem__("deletionTimestamp", "2026-11-23T12:00:00Z"), name
        )


class FakeKube:
    def __init__(self, server: FakeApiServer) -> None:
        self.server = server

    async def record_status(
        self, ref: RolloutRef, status: api.ModelRolloutStatus, resource_version: str | None
    ) -> dict[str, Any]:
        if self.server.status_write_seconds:
            await asyncio.sleep(self.server.status_write_seconds)  # the round trip, other ticks meanwhile
        obj = self.server.rollouts[(ref.namespace, ref.name)]
        self.server.status_versions.append(resource_version)
        if self.server.conflict_status_writes:
            self.server.conflict_status_writes -= 1
            obj["metadata"]["resourceVersion"] = self.server.bump()  # someone else wrote first
        if resource_version is not None and resource_version != obj["metadata"]["resourceVersion"]:
            raise StaleObject("changed since it was read")
        obj["status"] = status.model_dump(by_alias=True, mode="json")
        obj["metadata"]["resourceVersion"] = self.server.bump()
        self.server.status_writes += 1
        return copy.deepcopy(obj)

    async def get_rollout(self, ref: RolloutRef) -> dict[str, Any] | None:
        found = self.server.rollouts.get((ref.namespace, ref.name))
        return copy.deepcopy(found) if found else None

    async def rollout_exists(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self.server.rollouts

    async def consume_action(self, ref: RolloutRef, value: str) -> dict[str, Any] | None:
        obj = self.server.rollouts.get((ref.namespace, ref.name))
        if obj is None or obj["metadata"]["annotations"].get(ACTION_ANNOTATION) != value:
            return None
        del obj["metadata"]["annotations"][ACTION_ANNOTATION]
        obj["metadata"]["resourceVersion"] = self.server.bump()
        return copy.deepcopy(obj)

    async def emit_event(self, ref: RolloutRef, type_: str, reason: str, message: str) -> None:
        self.server.events.append((type_, reason, message))

    async def get_envoy_filter(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.server.envoy_filters.get((namespace, name))
        return copy.deepcopy(found) if found else None

    def _filter_write(self, what: str) -> None:
        if self.server.refuse_filter_writes:
            self.server.refuse_filter_writes -= 1
            raise api_error(403, "envoyfilters is forbidden")
        self.server.filter_writes.append(what)
        self.server.write_log.append(f"filter {what.split(maxsplit=1)[0]}")

    async def apply_envoy_filter(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        self._filter_write(f"apply {meta['name']}")
        stored = copy.deepcopy(manifest)
        stored["metadata"]["resourceVersion"] = self.server.bump()
        self.server.envoy_filters[(meta["namespace"], meta["name"])] = stored
        return copy.deepcopy(stored)

    async def delete_envoy_filter(self, namespace: str, name: str) -> None:
        self._filter_write(f"delete {name}")
        self.server.envoy_filters.pop((namespace, name), None)


class FakeRouter(IstioRouter):
    """The real router, its reads and writes going to the in-memory store."""

    server: FakeApiServer

    async def _get(self) -> dict[str, Any]:
        try:
            return self.server.get_vs(self.namespace, self.name)
        except ApiError as missing:
            from modelrollout.routing.router import RoutingProblem  # noqa: PLC0415

            raise RoutingProblem(
                "VirtualServiceNotFound", f"VirtualService {self.ref} not found"
            ) from missing

    async def _replace(self, body: dict[str, Any]) -> dict[str, Any]:
        from modelrollout.routing.router import RoutingProblem, StaleWrite  # noqa: PLC0415

        race, self.server.before_vs_write = self.server.before_vs_write, None
        if race is not None:
            raced = race()
            if raced is not None:
                await raced
        try:
            stored = self.server.replace_vs(self.namespace, self.name, body, self.field_manager)
            self.server.write_log.append("vs")
            return stored
        except ApiError as failed:
            if failed.status == 409:
                raise StaleWrite("changed since it was read") from failed
            if failed.status == 404:
                raise RoutingProblem("VirtualServiceNotFound", "gone") from failed
            raise


@dataclass
class FakeMeasurer:
    """Answers every check with the verdict it is set to (None: no check this tick, as when deferred)."""

    verdict: api.Verdict | None = api.Verdict.PASS
    value: float = 0.004
    calls: int = 0
    seen: list[tuple[int | None, int | None]] = field(default_factory=list)  # (live weight, status stage)
    mirrors: list[int] = field(default_factory=list)  # the live mirror percent of each check
    requested: list[bool] = field(default_factory=list)  # whether an alert asked for each check
    namespaces: list[str] = field(default_factory=list)  # the VirtualService namespace each check was given
    delay: float = 0.0  # seconds each check waits, as for Prometheus

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
    ) -> CheckResult | None:
        self.calls += 1
        self.requested.append(requested)
        self.seen.append((canary_weight, status.stage if status else None))
        self.mirrors.append(mirror)
        self.namespaces.append(virtual_service_namespace)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.verdict is None:
            return None
        gate = api.GateResult(
            name="error-rate", verdict=self.verdict, value=self.value, max=0.02, window="30s",
            message=f"{self.value} vs <= 0.02", requests=500,
        )  # fmt: skip
        return CheckResult(at=now, verdict=self.verdict, gates=(gate,), canary_requests=500,
                           summary=f"error-rate {self.value}")  # fmt: skip

    def forget(self, ref: RolloutRef) -> None:
        pass

    def close(self) -> None:
        pass


class RecordingNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__(NotifyTargets(webhook_url="http://127.0.0.1:9/unused"))
        self.submitted: list[Notification] = []

    def submit(self, notification: Notification) -> None:
        self.submitted.append(notification)


def sample_vs(namespace: str = NAMESPACE, name: str = "llm") -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "hosts": ["llm"],
            "http": [
                {
                    "name": "primary",
                    "retries": {"attempts": 2},
                    "route": [{"destination": {"host": STABLE}, "weight": 100}],
                }
            ],
        },
    }


def sample_bucket_filter(experiment_id: str = "exp-1") -> BucketFilter:
    """The bucket EnvoyFilter of rollout llm/chat (uid-1) for the VirtualService host `chat`."""
    return bucket_filter(
        namespace="llm",
        rollout="chat",
        rollout_uid="uid-1",
        bucket_header="x-modelrollout-bucket",
        user_header="x-user-id",
        experiment_id=experiment_id,
        hosts=["chat"],
        vs_namespace="llm",
    )


def sample_spec(**analysis: Any) -> dict[str, Any]:
    return {
        "stable": {"host": STABLE, "model": "gpt-4o"},
        "canary": {"host": CANARY, "model": "claude-opus-4-8"},
        "trafficRouting": {"istio": {"virtualService": {"name": "llm"}, "routes": ["primary"]}},
        "stages": [
            {"weight": 10, "duration": "1m"},
            {"weight": 50, "duration": "1m"},
            {"weight": 100},
        ],
        "analysis": {
            "interval": "10s",
            "window": "30s",
            "failureLimit": 0,
            "gates": [{"name": "error-rate", "template": "istio-error-rate", "max": 0.02}],
            **analysis,
        },
    }


@dataclass
class World:
    """One operator (a Reconciler over the fakes) and the objects it drives, on a clock the test moves."""

    server: FakeApiServer = field(default_factory=FakeApiServer)
    measurer: FakeMeasurer = field(default_factory=FakeMeasurer)
    now: datetime = T0
    notifier: RecordingNotifier = field(default_factory=RecordingNotifier)
    reconciler: Reconciler = field(init=False)

    def __post_init__(self) -> None:
        self.reconciler = self.new_operator()

    def new_operator(self) -> Reconciler:
        """A (re)started operator: nothing in memory but its configuration."""

        def routers(record: api.RoutingRecord, owner: str) -> Router:
            namespace, _, name = record.virtual_service.partition("/")
            router = FakeRouter(
                unused_client(),
                namespace=namespace,
                name=name,
                api_version=record.api_version,
                routes=record.routes,
                owner=owner,
            )
            router.server = self.server
            return router

        config = OperatorConfig(
            prometheus_url="http://127.0.0.1:9090", started_at=self.now - timedelta(hours=1)
        )
        reconciler = Reconciler(FakeKube(self.server), routers, self.measurer, config, clock=lambda: self.now)
        reconciler.notifier = self.notifier
        return reconciler

    def tick(self, after: timedelta = timedelta(seconds=0), name: str = "chat") -> Any:
        import asyncio  # noqa: PLC0415

        self.now += after
        return asyncio.run(self.reconciler.reconcile(self.server.rollout(name)))

    def delete(self, name: str = "chat") -> None:
        import asyncio  # noqa: PLC0415

        asyncio.run(self.reconciler.on_delete(self.server.rollout(name)))

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.server.events]
