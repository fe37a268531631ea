"""IstioRouter against a real kube-apiserver serving Istio's own CRDs: every write it makes passes Istio's
schema, concurrent edits meet real optimistic concurrency, and field managers are the server's own."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest
from kubernetes import client

from modelrollout.routing.istio import MANAGED_BY
from modelrollout.routing.istio_router import IstioRouter
from modelrollout.routing.router import Backend, RouteState, RoutingConflict, RoutingProblem
from scenario_support import Kubectl

pytestmark = pytest.mark.integration

V1 = "networking.istio.io/v1"
OWNER = "team-a/chat"
STABLE = Backend("llm-gpt4o")
CANARY = Backend("llm-claude")


def sample_vs(namespace: str) -> dict[str, Any]:
    """Like manifests/samples/virtualservice.yaml: a header route pinning evaluators to the canary, and the
    primary route, with retries and a timeout, whose weights the rollout manages."""
    return {
        "apiVersion": V1,
        "kind": "VirtualService",
        "metadata": {"name": "llm", "namespace": namespace, "annotations": {"team": "ml-platform"}},
        "spec": {
            "hosts": ["llm"],
            "http": [
                {
                    "name": "eval-pinned",
                    "match": [{"headers": {"x-llm-eval": {"exact": "canary"}}}],
                    "route": [{"destination": {"host": "llm-claude"}}],
                },
                {
                    "name": "primary",
                    "timeout": "120s",
                    "retries": {
                        "attempts": 2,
                        "perTryTimeout": "60s",
                        "retryOn": "5xx,reset,connect-failure",
                    },
                    "route": [
                        {"destination": {"host": "llm-gpt4o"}, "weight": 100},
                        {"destination": {"host": "llm-claude"}, "weight": 0},
                    ],
                },
            ],
        },
    }


def create(api_client: client.ApiClient, vs: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        "networking.istio.io",
        "v1",
        vs["metadata"]["namespace"],
        "virtualservices",
        vs,
        field_manager="gitops-sync",
    )
    return created


def live(api_client: client.ApiClient, namespace: str, name: str = "llm") -> dict[str, Any]:
    found: dict[str, Any] = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        "networking.istio.io", "v1", namespace, "virtualservices", name
    )
    return found


def router(
    api_client: client.ApiClient,
    namespace: str,
    *,
    owner: str = OWNER,
    routes: list[str] | None = None,
    api_version: str = V1,
    cls: type[IstioRouter] = IstioRouter,
) -> IstioRouter:
    return cls(
        api_client,
        namespace=namespace,
        name="llm",
        api_version=api_version,
        routes=["primary"] if routes is None else routes,
        stable=STABLE,
        canary=CANARY,
        owner=owner,
    )


def weights(vs: dict[str, Any], route: int = 1) -> list[tuple[str, int | None]]:
    return [
        (entry["destination"]["host"], entry.get("weight")) for entry in vs["spec"]["http"][route]["route"]
    ]


def patch(kubectl: Kubectl, namespace: str, operations: list[dict[str, Any]]) -> None:
    patched = kubectl(
        "-n", namespace, "patch", "virtualservices.networking.istio.io", "llm", "--type=json", "-p",
        json.dumps(operations),
    )  # fmt: skip
    assert patched.returncode == 0, patched.stderr


def test_write_moves_only_the_weights_and_claims_the_route(
    namespace: str, api_client: client.ApiClient
) -> None:
    before = create(api_client, sample_vs(namespace))

    assert asyncio.run(router(api_client, namespace).write(10)) is True

    after = live(api_client, namespace)
    assert weights(after) == [("llm-gpt4o", 90), ("llm-claude", 10)]
    expected_spec = copy.deepcopy(before["spec"])
    expected_spec["http"][1]["route"][0]["weight"] = 90
    expected_spec["http"][1]["route"][1]["weight"] = 10
    assert after["spec"] == expected_spec
    assert after["metadata"]["annotations"] == {"team": "ml-platform", MANAGED_BY: OWNER}
    state = asyncio.run(router(api_client, namespace).read())
    assert state == RouteState(
        canary_weight=10,
        consistent=True,
        resource_version=after["metadata"]["resourceVersion"],
        last_writer="modelrollout-operator",  # the latest spec writer, ours included
    )
    managers = {entry["manager"] for entry in after["metadata"]["managedFields"]}
    assert "modelrollout-operator" in managers


def test_the_same_weight_again_writes_nothing(namespace: str, api_client: client.ApiClient) -> None:
    create(api_client, sample_vs(namespace))
    rollout = router(api_client, namespace)
    assert asyncio.run(rollout.write(25)) is True
    version = live(api_client, namespace)["metadata"]["resourceVersion"]

    assert asyncio.run(rollout.write(25)) is False
    assert live(api_client, namespace)["metadata"]["resourceVersion"] == version


def test_a_missing_canary_destination_is_added_and_istio_accepts_it(
    namespace: str, api_client: client.ApiClient
) -> None:
    vs = sample_vs(namespace)
    vs["spec"]["http"][1]["route"] = [{"destination": {"host": f"llm-gpt4o.{namespace}.svc.cluster.local"}}]
    create(api_client, vs)
    rollout = router(api_client, namespace)
    assert asyncio.run(rollout.read()).canary_weight == 0  # a lone destination takes all traffic

    assert asyncio.run(rollout.write(5)) is True

    assert weights(live(api_client, namespace)) == [
        (f"llm-gpt4o.{namespace}.svc.cluster.local", 95),
        ("llm-claude", 5),
    ]


def test_a_hand_edited_weight_is_seen_with_who_changed_it(
    namespace: str, api_client: client.ApiClient, kubectl: Kubectl
) -> None:
    create(api_client, sample_vs(namespace))
    rollout = router(api_client, namespace)
    asyncio.run(rollout.write(10))

    patch(
        kubectl,
        namespace,
        [
            {"op": "replace", "path": "/spec/http/1/route/0/weight", "value": 70},
            {"op": "replace", "path": "/spec/http/1/route/1/weight", "value": 30},
        ],
    )
    drifted = asyncio.run(rollout.read())
    assert (drifted.canary_weight, drifted.consistent) == (30, True)
    assert drifted.last_writer == "kubectl-patch"  # kubectl patch's own field manager name

    patch(kubectl, namespace, [{"op": "replace", "path": "/spec/http/1/route/0/weight", "value": 95}])
    broken = asyncio.run(rollout.read())
    assert (broken.canary_weight, broken.consistent) == (30, False)

    assert asyncio.run(rollout.write(10)) is True
    assert weights(live(api_client, namespace)) == [("llm-gpt4o", 90), ("llm-claude", 10)]


def test_a_second_rollout_on_the_same_route_is_refused(namespace: str, api_client: client.ApiClient) -> None:
    create(api_client, sample_vs(namespace))
    asyncio.run(router(api_client, namespace).write(10))
    before = live(api_client, namespace)
    intruder = router(api_client, namespace, owner="team-b/chat-v2")

    with pytest.raises(RoutingConflict) as on_read:
        asyncio.run(intruder.read())
    assert on_read.value.owner == OWNER
    with pytest.raises(RoutingConflict) as on_write:
        asyncio.run(intruder.write(50))
    assert on_write.value.owner == OWNER
    assert f"{namespace}/llm" in str(on_write.value)
    asyncio.run(intruder.release())

    after = live(api_client, namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["metadata"]["annotations"][MANAGED_BY] == OWNER


def test_a_missing_virtual_service_is_a_routing_problem(namespace: str, api_client: client.ApiClient) -> None:
    create(api_client, sample_vs(namespace))
    rollout = router(api_client, namespace)
    asyncio.run(rollout.write(10))
    client.CustomObjectsApi(api_client).delete_namespaced_custom_object(
        "networking.istio.io", "v1", namespace, "virtualservices", "llm"
    )

    for attempt in (rollout.read(), rollout.write(20)):
        with pytest.raises(RoutingProblem) as problem:
            asyncio.run(attempt)
        assert problem.value.reason == "VirtualServiceNotFound"
        assert f"{namespace}/llm" in str(problem.value)
    asyncio.run(rollout.release())  # nothing to release: fine


def test_a_missing_route_is_a_routing_problem_and_nothing_is_written(
    namespace: str, api_client: client.ApiClient
) -> None:
    version = create(api_client, sample_vs(namespace))["metadata"]["resourceVersion"]
    rollout = router(api_client, namespace, routes=["shadow"])

    for attempt in (rollout.read(), rollout.write(20)):
        with pytest.raises(RoutingProblem) as problem:
            asyncio.run(attempt)
        assert problem.value.reason == "RouteNotFound"
        assert "'shadow'" in str(problem.value)
    assert live(api_client, namespace)["metadata"]["resourceVersion"] == version


def test_v1beta1_clients_move_the_same_weights(namespace: str, api_client: client.ApiClient) -> None:
    create(api_client, sample_vs(namespace))
    rollout = router(api_client, namespace, api_version="networking.istio.io/v1beta1")

    assert asyncio.run(rollout.write(50)) is True
    assert asyncio.run(rollout.read()).canary_weight == 50
    assert weights(live(api_client, namespace)) == [("llm-gpt4o", 50), ("llm-claude", 50)]


class RacedRouter(IstioRouter):
    """Someone else writes the VirtualService between our read and our first write."""

    race: list[dict[str, Any]]
    kubectl: Kubectl
    attempts = 0

    async def _replace(self, body: dict[str, Any]) -> None:
        self.attempts += 1
        if self.attempts == 1:
            patch(self.kubectl, self.namespace, self.race)
        await super()._replace(body)


def raced(
    api_client: client.ApiClient, namespace: str, kubectl: Kubectl, race: list[dict[str, Any]]
) -> RacedRouter:
    rollout = router(api_client, namespace, cls=RacedRouter)
    assert isinstance(rollout, RacedRouter)
    rollout.kubectl = kubectl
    rollout.race = race
    return rollout


def test_a_concurrent_edit_is_kept_and_the_write_still_lands(
    namespace: str, api_client: client.ApiClient, kubectl: Kubectl
) -> None:
    create(api_client, sample_vs(namespace))
    rollout = raced(
        api_client, namespace, kubectl, [{"op": "replace", "path": "/spec/http/1/timeout", "value": "90s"}]
    )

    assert asyncio.run(rollout.write(10)) is True

    assert rollout.attempts == 2  # the first replace met 409 Conflict
    after = live(api_client, namespace)
    assert after["spec"]["http"][1]["timeout"] == "90s"
    assert weights(after) == [("llm-gpt4o", 90), ("llm-claude", 10)]
    assert after["metadata"]["annotations"][MANAGED_BY] == OWNER


def test_another_rollout_that_wins_the_race_keeps_the_route(
    namespace: str, api_client: client.ApiClient, kubectl: Kubectl
) -> None:
    create(api_client, sample_vs(namespace))
    rollout = raced(
        api_client,
        namespace,
        kubectl,
        [{"op": "add", "path": "/metadata/annotations/modelrollout.io~1managed-by", "value": "team-b/other"}],
    )

    with pytest.raises(RoutingConflict) as conflict:
        asyncio.run(rollout.write(10))

    assert conflict.value.owner == "team-b/other"
    after = live(api_client, namespace)
    assert weights(after) == [("llm-gpt4o", 100), ("llm-claude", 0)]
    assert after["metadata"]["annotations"][MANAGED_BY] == "team-b/other"


def test_release_drops_only_our_mark(namespace: str, api_client: client.ApiClient) -> None:
    create(api_client, sample_vs(namespace))
    rollout = router(api_client, namespace)
    asyncio.run(rollout.write(10))

    asyncio.run(rollout.release())

    after = live(api_client, namespace)
    assert after["metadata"]["annotations"] == {"team": "ml-platform"}
    assert weights(after) == [("llm-gpt4o", 90), ("llm-claude", 10)]
    asyncio.run(rollout.release())
    assert live(api_client, namespace)["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]
    # Released, the route can be taken by the next rollout.
    assert asyncio.run(router(api_client, namespace, owner="team-b/next").write(0)) is True
