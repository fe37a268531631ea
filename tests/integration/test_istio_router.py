"""IstioRouter against a real kube-apiserver serving Istio's own CRDs: every write it makes passes Istio's
schema, concurrent edits meet real optimistic concurrency, and field managers are the server's own."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest
from kubernetes import client

from modelrollout.kubeclient import KubeClient
from modelrollout.routing.istio import MANAGED_BY
from modelrollout.routing.istio_router import IstioRouter
from modelrollout.routing.router import (
    Backend,
    RouteView,
    RouteWrite,
    RoutingConflict,
    RoutingProblem,
    Snapshot,
    StaleWrite,
)
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
    kube_client: KubeClient,
    namespace: str,
    *,
    owner: str = OWNER,
    routes: list[str] | None = None,
    api_version: str = V1,
    cls: type[IstioRouter] = IstioRouter,
) -> IstioRouter:
    return cls(
        kube_client,
        namespace=namespace,
        name="llm",
        api_version=api_version,
        routes=["primary"] if routes is None else routes,
        owner=owner,
    )


def split(weight: int, stable: Backend = STABLE, canary: Backend = CANARY) -> RouteWrite:
    return RouteWrite(stable=stable, canary=canary, canary_weight=weight)


def view(rollout: IstioRouter, snapshot: Snapshot | None = None) -> RouteView:
    return rollout.view(snapshot or asyncio.run(rollout.read()), STABLE, CANARY)


def write(rollout: IstioRouter, weight: int) -> Snapshot:
    """One tick's worth: read, then write conditionally on what was read."""
    return asyncio.run(rollout.write(asyncio.run(rollout.read()), split(weight)))


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
    namespace: str, api_client: client.ApiClient, kube_client: KubeClient
) -> None:
    before = create(api_client, sample_vs(namespace))
    rollout = router(kube_client, namespace)
    read = asyncio.run(rollout.read())

    written = asyncio.run(rollout.write(read, split(10)))

    after = live(api_client, namespace)
    assert weights(after) == [("llm-gpt4o", 90), ("llm-claude", 10)]
    expected_spec = copy.deepcopy(before["spec"])
    expected_spec["http"][1]["route"][0]["weight"] = 90
    expected_spec["http"][1]["route"][1]["weight"] = 10
    assert after["spec"] == expected_spec
    assert after["metadata"]["annotations"] == {
        "team": "ml-platform",
        MANAGED_BY: '{"primary":"team-a/chat"}',
    }
    # The write's answer is the stored object: the read-back, with the resourceVersion the next write needs.
    assert written.resource_version == after["metadata"]["resourceVersion"] != read.resource_version
    assert written.claims == {"primary": OWNER}
    assert written.last_writer == "modelrollout-operator"  # the latest spec writer, ours included
    assert view(rollout, written) == RouteView(
        canary_weight=10, consistent=True, canary_present=True, claimed=True
    )
    managers = {entry["manager"] for entry in after["metadata"]["managedFields"]}
    assert "modelrollout-operator" in managers


def test_the_same_weight_again_writes_nothing(
    namespace: str, api_client: client.ApiClient, kube_client: KubeClient
) -> None:
    create(api_client, sample_vs(namespace))
    rollout = router(kube_client, namespace)
    written = write(rollout, 25)

    again = asyncio.run(rollout.write(written, split(25)))

    assert again is written
    assert live(api_client, namespace)["metadata"]["resourceVersion"] == written.resource_version


def test_a_missing_canary_destination_is_added_and_istio_accepts_it(
    namespace: str, api_client: client.ApiClient, kube_client: KubeClient
) -> None:
    vs = sample_vs(namespace)
    vs["spec"]["http"][1]["route"] = [{"destination": {"host": f"llm-gpt4o.{namespace}.svc.cluster.local"}}]
    create(api_client, vs)
    rollout = router(kube_client, namespace)
    lone = view(rollout)
    assert (lone.canary_weight, lone.canary_present) == (0, False)  # a lone destination takes all traffic

    write(rollout, 5)

    assert weights(live(api_client, namespace)) == [
        (f"llm-gpt4o.{namespace}.svc.cluster.local", 95),
        ("llm-claude", 5),
    ]


def test_a_hand_edited_weight_is_seen_with_who_changed_it(
    namespace: str, api_client: client.ApiClient, kube_client: KubeClient, kubectl: Kubectl
) -> None:
    create(api_client, sample_vs(namespace))
    rollout = router(kube_client, namespace)
    write(rollout, 10)

    patch(
        kubectl,
        namespace,
        [
            {"op": "replace", "path": "/spec/http/1/route/0/weight", "value": 70},
            {"op": "replace", "path": "/spec/http/1/route/1/weight", "value": 30},
        ],
    )
    drifted = asyncio.run(rollout.read())
    assert (view(rollout, drifted).canary_weight, view(rollout, drifted).consistent) == (30, True)
    assert drifted.last_writer == "kubectl-patch"  # kubectl patch's own field manager name

    patch(kubectl, namespace, [{"op": "replace", "path": "/spec/http/1/route/0/weight", "value": 95}])
    broken = view(rollout)
    assert (broken.canary_weight, broken.consistent) == (30, False)

    write(rollout, 10)
    assert weights(live(api_client, namespace)) == [("llm-gpt4o", 90), ("llm-claude", 10)]


def test_a_second_rollout_on_the_same_route_is_refused(
    namespace: str, api_client: client.ApiClient, kube_client: KubeClient
) -> None:
    create(api_client, sample_vs(namespace))
    write(router(kube_client, namespace), 10)
    before = live(api_client, namespace)
    intruder = router(kube_client, namespace, owner="team-b/chat-v2")
    snapshot = asyncio.run(intruder.read())

    with pytest.raises(RoutingConflict) as on_view:
        view(intruder, snapshot)
    assert on_view.value.owner == OWNER
    with pytest.raises(RoutingConflict) as on_write:
        asyncio.run(intruder.write(snapshot, split(50)))
    assert on_write.value.owner == OWNER
    asyncio.run(intruder.release(snapshot))

    after = live(api_client, namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["metadata"]["annotations"][MANAGED_BY] == '{"primary":"team-a/chat"}'


def test_two_rollouts_on_two_routes_of_one_virtual_service(
    namespace: str, api_client: client.ApiClient, kube_client: KubeClient
) -> None:
    vs = sample_vs(namespace)
    vs["spec"]["http"][0]["route"] = [
        {"destination": {"host": "llm-gpt4o"}, "weight": 100},
        {"destination": {"host": "llm-mini"}, "weight": 0},
    ]
    create(api_client, vs)
    chat = router(kube_client, namespace)
    evaluation = router(kube_client, namespace, owner="team-a/eval", routes=["eval-pinned"])

    write(chat, 10)
    snapshot = asyncio.run(evaluation.read())
    asyncio.run(evaluation.write(snapshot, split(30, canary=Backend("llm-mini"))))

    after = live(api_client, namespace)
    assert weights(after, 0) == [("llm-gpt4o", 70), ("llm-mini", 30)]
    assert weights(after, 1) == [("llm-gpt4o", 90), ("llm-claude", 10)]
    assert json.loads(after["metadata"]["annotations"][MANAGED_BY]) == {
        "primary": OWNER,
        "eval-pinned": "team-a/eval",
    }
    asyncio.run(chat.release(asyncio.run(chat.read())))
    assert json.loads(live(api_client, namespace)["metadata"]["annotations"][MANAGED_BY]) == {
        "eval-pinned": "team-a/eval"
    }


def test_a_claim_left_by_a_rollout_that_is_gone_can_be_taken_over(
    namespace: str, api_client: client.ApiClient, kube_client: KubeClient
) -> None:
    create(api_client, sample_vs(namespace))
    write(router(kube_client, namespace, owner="team-a/deleted"), 10)
    heir = router(kube_client, namespace)
    snapshot = asyncio.run(heir.read())
    assert view_or_conflict(heir, snapshot) == "team-a/deleted"

    seen = heir.view(snapshot, STABLE, CANARY, stale_owner="team-a/deleted")
    assert (seen.canary_weight, seen.claimed) == (10, False)
    taken = asyncio.run(
        heir.write(
            snapshot,
            RouteWrite(stable=STABLE, canary=CANARY, canary_weight=10, take_over_from="team-a/deleted"),
        )
    )

    assert taken.claims == {"primary": OWNER}
    assert weights(live(api_client, namespace)) == [("llm-gpt4o", 90), ("llm-claude", 10)]


def view_or_conflict(rollout: IstioRouter, snapshot: Snapshot) -> str | None:
    try:
        rollout.view(snapshot, STABLE, CANARY)
    except RoutingConflict as conflict:
        return conflict.owner
    return None


def test_a_missing_virtual_service_is_a_routing_problem(
    namespace: str, api_client: client.ApiClient, kube_client: KubeClient
) -> None:
    create(api_client, sample_vs(namespace))
    rollout = router(kube_client, namespace)
    snapshot = write(rollout, 10)
    client.CustomObjectsApi(api_client).delete_namespaced_custom_object(
        "networking.istio.io", "v1", namespace, "virtualservices", "llm"
    )

    with pytest.raises(RoutingProblem) as on_read:
        asyncio.run(rollout.read())
    assert on_read.value.reason == "VirtualServiceNotFound"
    assert f"{namespace}/llm" in str(on_read.value)
    with pytest.raises(RoutingProblem) as on_write:
        asyncio.run(rollout.write(snapshot, split(20)))
    assert on_write.value.reason == "VirtualServiceNotFound"


def test_a_missing_route_is_a_routing_problem_and_nothing_is_written(
    namespace: str, api_client: client.ApiClient, kube_client: KubeClient
) -> None:
    version = create(api_client, sample_vs(namespace))["metadata"]["resourceVersion"]
    rollout = router(kube_client, namespace, routes=["shadow"])
    snapshot = asyncio.run(rollout.read())

    for attempt in (lambda: view(rollout, snapshot), lambda: asyncio.run(rollout.write(snapshot, split(20)))):
        with pytest.raises(RoutingProblem) as problem:
            attempt()
        assert problem.value.reason == "RouteNotFound"
        assert "'shadow'" in str(problem.value)
    assert live(api_client, namespace)["metadata"]["resourceVersion"] == version


def test_v1beta1_clients_move_the_same_weights(
    namespace: str, api_client: client.ApiClient, kube_client: KubeClient
) -> None:
    create(api_client, sample_vs(namespace))
    rollout = router(kube_client, namespace, api_version="networking.istio.io/v1beta1")

    write(rollout, 50)
    assert view(rollout).canary_weight == 50
    assert weights(live(api_client, namespace)) == [("llm-gpt4o", 50), ("llm-claude", 50)]


def test_a_concurrent_edit_makes_the_write_stale_and_is_kept(
    namespace: str, api_client: client.ApiClient, kube_client: KubeClient, kubectl: Kubectl
) -> None:
    """A write is conditional on the snapshot it was computed from: someone else's edit in between is a 409,
    raised for the caller to observe again, and never overwritten."""
    create(api_client, sample_vs(namespace))
    rollout = router(kube_client, namespace)
    snapshot = asyncio.run(rollout.read())
    patch(kubectl, namespace, [{"op": "replace", "path": "/spec/http/1/timeout", "value": "90s"}])

    with pytest.raises(StaleWrite):
        asyncio.run(rollout.write(snapshot, split(10)))

    after = live(api_client, namespace)
    assert after["spec"]["http"][1]["timeout"] == "90s"
    assert weights(after) == [("llm-gpt4o", 100), ("llm-claude", 0)]
    write(rollout, 10)  # observed again: lands, and keeps the edit
    after = live(api_client, namespace)
    assert (after["spec"]["http"][1]["timeout"], weights(after)) == (
        "90s",
        [("llm-gpt4o", 90), ("llm-claude", 10)],
    )


def test_another_rollout_that_wins_the_race_keeps_the_route(
    namespace: str, api_client: client.ApiClient, kube_client: KubeClient, kubectl: Kubectl
) -> None:
    create(api_client, sample_vs(namespace))
    rollout = router(kube_client, namespace)
    snapshot = asyncio.run(rollout.read())
    patch(
        kubectl,
        namespace,
        [{"op": "add", "path": "/metadata/annotations/modelrollout.io~1managed-by", "value": "team-b/other"}],
    )

    with pytest.raises(StaleWrite):
        asyncio.run(rollout.write(snapshot, split(10)))
    with pytest.raises(RoutingConflict) as conflict:
        view(rollout)

    assert conflict.value.owner == "team-b/other"
    after = live(api_client, namespace)
    assert weights(after) == [("llm-gpt4o", 100), ("llm-claude", 0)]
    assert after["metadata"]["annotations"][MANAGED_BY] == "team-b/other"


def test_release_drops_only_our_mark(
    namespace: str, api_client: client.ApiClient, kube_client: KubeClient
) -> None:
    create(api_client, sample_vs(namespace))
    rollout = router(kube_client, namespace)
    written = write(rollout, 10)

    released = asyncio.run(rollout.release(written))

    after = live(api_client, namespace)
    assert after["metadata"]["annotations"] == {"team": "ml-platform"}
    assert weights(after) == [("llm-gpt4o", 90), ("llm-claude", 10)]
    assert asyncio.run(rollout.release(released)) is released
    assert live(api_client, namespace)["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]
    # Released, the route can be taken by the next rollout.
    write(router(kube_client, namespace, owner="team-b/next"), 0)
    assert live(api_client, namespace)["metadata"]["annotations"][MANAGED_BY] == '{"primary":"team-b/next"}'
