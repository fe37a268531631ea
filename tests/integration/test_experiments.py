"""Experiments end to end: the operator writes shadow mirrors, sticky bucket routes, overrides and dimension
headers into a VirtualService on the real API server (Istio's own schema validates each write), the simulated
mesh routes simulated users through it the way Envoy does, Prometheus scrapes the mesh, and the operator gates
on what it scraped.

The module has its own simulated mesh, so its per-user log and request counts see this module's traffic only.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from install_support import render
from modelrollout import assign
from modelrollout_dev.devenv.prometheus import PrometheusServer
from modelrollout_dev.sim.routing import Request
from modelrollout_dev.sim.simulator import Simulator
from scenario_support import (
    CANARY,
    STABLE,
    Kubectl,
    Rollout,
    ServedRollout,
    served_rollout,
    simulated_mesh,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("modelrollout_crd", "operator")]

ANALYSIS: dict[str, Any] = {
    "interval": "1s",
    "window": "4s",
    "minRequests": 10,
    "failureLimit": 0,
    "inconclusiveLimit": 120,
}
# An experiment id whose buckets for user-0 .. user-999 put 4.7%, 24.8% and 49.5% of them below 5, 25 and 50:
# the assignment is a pure function of the id and the user, so the user shares below are exact, not sampled.
STICKY_ID = "sticky-ab"
USERS = 1000


def within_sampling_error(share: float, weight: int, users: int) -> bool:
    """Whether a user share (%) is the weight up to 4.5 binomial standard errors: each user's bucket is a hash
    of the experiment id and the user, so the share among the users seen varies from run to run with the
    namespace-derived id and with which users the load reached; 4.5 errors fail a correct split about once in
    150,000 runs yet still catch a split off by a few points (25% +- 6.5 points for 900 users)."""
    standard_error = 100 * (weight / 100 * (1 - weight / 100) / users) ** 0.5
    return abs(share - weight) <= 4.5 * standard_error


@pytest.fixture(scope="module")
def mesh(api_client: client.ApiClient, prometheus: PrometheusServer) -> Iterator[Simulator]:
    with simulated_mesh(api_client, prometheus, "experiments", seed=23) as simulator:
        yield simulator


class Experiment(ServedRollout):
    """A served rollout whose VirtualService the operator writes experiment routes into."""

    def __init__(self, rollout: Rollout, mesh: Simulator) -> None:
        super().__init__(rollout, mesh)
        self.original = copy.deepcopy(rollout.vs()["spec"])

    def send(self, headers: dict[str, str], count: int = 20) -> set[str]:
        """Destinations that answered `count` requests carrying `headers`."""
        answered = set()
        for _ in range(count):
            request = Request(self.host, headers=headers, source_namespace=self.rollout.namespace)
            outcome = self.mesh.handle(request)
            answered.add(outcome.destination.key if outcome.destination else str(outcome.status))
        return answered

    def answers_per_user(self) -> dict[str, dict[str, int]]:
        users: dict[str, dict[str, int]] = self.mesh.stats.users()["since_reset"]
        return users

    def wait_mesh_follows(self) -> None:
        """Until the mesh routes by the VirtualService the API server holds now."""
        wanted = self.rollout.vs()["metadata"]["resourceVersion"]

        def synced() -> bool:
            return any(
                vs["metadata"]["resourceVersion"] == wanted
                for vs in self.mesh.virtual_services()
                if vs["metadata"]["namespace"] == self.rollout.namespace
            )

        deadline = time.monotonic() + 10
        while not synced():
            assert time.monotonic() < deadline, "the mesh did not pick up the VirtualService"
            time.sleep(0.05)


@pytest.fixture
def experiment(
    api_client: client.ApiClient, kubectl: Kubectl, namespace: str, exporter: Any, mesh: Simulator
) -> Iterator[Experiment]:
    with served_rollout(Experiment, api_client, kubectl, namespace, exporter, mesh) as subject:
        yield subject


def test_a_shadow_stage_gives_users_only_stable_answers_and_a_canary_regression_removes_the_mirror(
    experiment: Experiment, prometheus: PrometheusServer
) -> None:
    experiment.load(100, users=USERS)
    experiment.rollout.create(
        stages=[{"shadow": 50, "duration": "600s"}, {"weight": 100}],
        models=experiment.models,
        experiment={
            "id": f"shadow-{experiment.rollout.namespace}",
            "overrides": [{"header": "x-experiment", "value": "canary", "variant": "canary"}],
        },
        gates=[{"name": "error-rate", "template": "istio-error-rate", "max": 0.05}],
        **ANALYSIS,
    )
    experiment.rollout.wait_status("in the shadow stage", lambda s: s.get("shadow") == 50)
    route = experiment.rollout.managed_route()
    assert route["mirror"]["host"] == CANARY
    assert route["mirrorPercentage"] == {"value": 50}
    assert experiment.rollout.weights() == (100, 0)
    experiment.wait_mesh_follows()
    experiment.mesh.stats.reset()
    time.sleep(6)  # 600 requests at 100 per second
    counts = experiment.mesh.stats.snapshot()["since_reset"]
    users = experiment.answers_per_user()
    served = counts["destinations"].get(experiment.stable_key, 0)
    mirrored = counts["mirrored"].get(experiment.canary_key, 0)
    assert served >= 500
    assert experiment.canary_key not in counts["destinations"]  # no user request answered by the canary
    assert users, "the per-user log is empty"
    assert all(set(answers) == {experiment.stable_key} for answers in users.values())
    assert abs(mirrored / served - 0.5) <= 0.05, (mirrored, served)
    # Testers are pinned to the canary at weight 0 too.
    assert experiment.send({"x-experiment": "canary"}) == {experiment.canary_key}
    # The gate measures the canary on mirrored traffic alone: it has requests although no user reaches it.
    checked = experiment.rollout.wait_status(
        "a check over shadow traffic",
        lambda s: any((g.get("requests") or 0) > 0 for g in (s.get("lastAnalysis") or {}).get("gates", [])),
    )
    assert checked["phase"] == "Progressing"
    # The mirror copies reach the canary's backend, which counts them as mirrored.
    mirrored_series = prometheus.wait_for_series(
        f'sim_backend_requests_total{{namespace="{experiment.rollout.namespace}",service="{CANARY}",'
        'mirrored="true"} > 0'
    )
    assert mirrored_series

    experiment.mesh.backends.update(CANARY, experiment.rollout.namespace, error_rate=0.3)
    status = experiment.rollout.wait_phase("RolledBack", timeout=40)
    assert status["rollback"]["gate"] == "error-rate"
    assert (status["canaryWeight"], status["shadow"]) == (0, 0)
    route = experiment.rollout.managed_route()
    assert "mirror" not in route
    assert "mirrorPercentage" not in route
    assert experiment.rollout.weights() == (100, 0)
    reasons = experiment.rollout.wait_reasons("RolledBack")
    assert "RolledBack" in reasons
    message = next(m for _, reason, m in experiment.rollout.events() if reason == "RolledBack")
    assert message.startswith("shadow stopped: the mirror to the canary removed")


def test_sticky_buckets_keep_each_user_on_one_variant_moving_only_to_the_canary_then_abort_clears_all(
    experiment: Experiment, prometheus: PrometheusServer
) -> None:
    experiment.load(400, users=USERS, bucket_header="x-user-bucket", experiment_id=STICKY_ID)
    stages = [{"weight": w, "duration": "2s", "approval": "Manual"} for w in (5, 25, 50, 100)]
    experiment.rollout.create(
        stages=stages,
        models=experiment.models,
        experiment={
            "id": STICKY_ID,
            "stickiness": {"bucketHeader": "x-user-bucket"},
            "overrides": [
                {"header": "x-experiment", "value": "canary", "variant": "canary"},
                {"header": "x-experiment", "value": "stable", "variant": "stable"},
            ],
        },
        gates=[{"name": "error-rate", "template": "istio-error-rate", "max": 0.05}],
        **ANALYSIS,
    )
    canary_users: set[str] = set()
    for stage, weight in enumerate((5, 25, 50, 100)):
        experiment.rollout.wait_status(
            f"stage {stage + 1} awaiting approval",
            lambda s, stage=stage: s.get("stage") == stage and s.get("reason") == "AwaitingApproval",
            timeout=60,
        )
        experiment.wait_mesh_follows()
        experiment.mesh.stats.reset()
        time.sleep(8)  # about 3,200 requests: nearly every one of the 1,000 users is seen
        users = experiment.answers_per_user()
        counts = experiment.mesh.stats.snapshot()["since_reset"]["destinations"]
        assert len(users) > 0.9 * USERS
        assert all(len(answers) == 1 for answers in users.values()), "a user met both variants in one stage"
        now_canary = {user for user, answers in users.items() if experiment.canary_key in answers}
        seen_before = canary_users & set(users)
        assert seen_before <= now_canary, (
            f"users moved canary -> stable at {weight}%: {seen_before - now_canary}"
        )
        canary_users |= now_canary
        user_share = 100 * len(now_canary) / len(users)
        request_share = 100 * counts.get(experiment.canary_key, 0) / sum(counts.values())
        assert within_sampling_error(user_share, weight, len(users)), (weight, user_share)
        print(
            f"stage {stage + 1} at {weight}%: users {user_share:.1f}% canary, requests {request_share:.1f}%"
        )
        # Overrides pin testers and internal traffic whatever the weight.
        assert experiment.send({"x-experiment": "canary", "x-user-bucket": "99"}) == {experiment.canary_key}
        assert experiment.send({"x-experiment": "stable", "x-user-bucket": "0"}) == {experiment.stable_key}
        if weight < 100:
            experiment.rollout.act("promote")

    # The backends saw the four dimension headers of their variant.
    seen = prometheus.wait_for_series(
        f"sum by (service, model, prompt_version, experiment_id, variant) (sim_backend_requests_total{{"
        f'namespace="{experiment.rollout.namespace}",mirrored="false"}})'
    )
    # Prometheus leaves out empty labels: requests sent before the rollout carried no dimensions.
    labels = {
        tuple(s["metric"].get(n) for n in ("service", "variant", "experiment_id", "model")) for s in seen
    }
    assert (STABLE, "stable", STICKY_ID, experiment.models[0]) in labels
    assert (CANARY, "canary", STICKY_ID, experiment.models[1]) in labels

    # The kill switch: one write back to the user's VirtualService, weights aside.
    before = experiment.rollout.vs()["metadata"]["generation"]
    experiment.rollout.act("abort")
    experiment.rollout.wait_phase("Aborted")
    after = experiment.rollout.vs()
    assert after["metadata"]["generation"] == before + 1
    expected = copy.deepcopy(experiment.original)
    managed = next(r for r in expected["http"] if r["name"] == "primary")
    managed["route"] = [
        {"destination": {"host": STABLE}, "weight": 100},
        {"destination": {"host": CANARY}, "weight": 0},
    ]
    assert after["spec"] == expected
    experiment.wait_mesh_follows()
    assert experiment.send({"x-experiment": "canary", "x-user-bucket": "0"}) == {experiment.stable_key}


def test_a_user_id_header_is_bucketed_in_the_mesh_by_the_operators_envoy_filter(
    experiment: Experiment,
) -> None:
    """stickiness.userHeader: the operator writes an EnvoyFilter whose Lua the simulated sidecars run as Envoy
    would; each user lands exactly where modelrollout.assign puts them, even though every client claims
    bucket 0; abort takes the routes and then the filter away."""
    ns = experiment.rollout.namespace
    # Every client claims the first bucket: only the filter decides.
    experiment.load(400, users=USERS, headers={"x-modelrollout-bucket": "0"})
    experiment_id = f"by-user-{ns}"
    experiment.rollout.create(
        stages=[{"weight": 25, "duration": "1s", "approval": "Manual"}, {"weight": 100}],
        models=experiment.models,
        experiment={"id": experiment_id, "stickiness": {"userHeader": "x-user-id"}},
        gates=[{"name": "error-rate", "template": "istio-error-rate", "max": 0.05}],
        **ANALYSIS,
    )
    experiment.rollout.wait_status(
        "awaiting approval at 25%", lambda s: s.get("reason") == "AwaitingApproval"
    )
    status = experiment.rollout.status()
    name = f"{experiment.rollout.name}-modelrollout-buckets"
    assert status["bucketFilter"] == name
    live = experiment.rollout.objects.get_namespaced_custom_object(
        "networking.istio.io", "v1alpha3", ns, "envoyfilters", name
    )
    assert live["metadata"]["ownerReferences"][0]["uid"] == experiment.rollout.get()["metadata"]["uid"]
    experiment.wait_mesh_follows()
    assert experiment.mesh.filter_watcher is not None
    deadline = time.monotonic() + 10
    while experiment.mesh.filter_watcher.get(ns, name) is None:
        assert time.monotonic() < deadline, "the mesh did not pick up the EnvoyFilter"
        time.sleep(0.05)

    experiment.mesh.stats.reset()
    time.sleep(6)  # about 2,400 requests from up to 1,000 users
    users = experiment.answers_per_user()
    assert len(users) > 0.8 * USERS
    assert all(len(answers) == 1 for answers in users.values()), "a user met both variants"
    on_canary = {user for user, answers in users.items() if experiment.canary_key in answers}
    expected = {user for user in users if assign.variant(experiment_id, user, 25) == "canary"}
    assert on_canary == expected
    share = 100 * len(on_canary) / len(users)
    assert within_sampling_error(share, 25, len(users)), share
    assert experiment.mesh.lua_filters is not None
    assert experiment.mesh.lua_filters.errors == 0, experiment.mesh.lua_filters.last_error

    experiment.rollout.act("abort")
    experiment.rollout.wait_phase("Aborted")
    assert experiment.rollout.weights() == (100, 0)
    assert (
        "bucketFilter" not in experiment.rollout.status() or not experiment.rollout.status()["bucketFilter"]
    )
    with pytest.raises(client.ApiException) as gone:
        experiment.rollout.objects.get_namespaced_custom_object(
            "networking.istio.io", "v1alpha3", ns, "envoyfilters", name
        )
    assert gone.value.status == 404


def test_the_charts_telemetry_labels_istios_request_metrics_with_the_variant(
    experiment: Experiment, prometheus: PrometheusServer, helm: Path, api_client: client.ApiClient
) -> None:
    """The chart's optional Telemetry (variantLabel), created on the real API server (Istio's schema checks
    it): the destination-reported request metrics of the rollout's services carry `variant` from the
    x-variant header the operator sets on each destination; requests without it are `none`."""
    namespace = experiment.rollout.namespace
    rendered = render(
        helm,
        namespace,
        "--set",
        "variantLabel.enabled=true",
        "--set",
        f"variantLabel.namespaces={{{namespace}}}",
    )
    [telemetry] = [o for o in rendered if o["kind"] == "Telemetry"]
    assert telemetry["metadata"]["namespace"] == namespace
    client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        "telemetry.istio.io", "v1", namespace, "telemetries", telemetry
    )
    experiment.load(40)
    experiment.rollout.create(
        stages=[{"weight": 30, "duration": "60s"}, {"weight": 100}],
        models=experiment.models,
        experiment={},  # dimensions on: the x-variant header on each managed destination
        gates=[{"name": "error-rate", "template": "istio-error-rate", "max": 0.05}],
        **ANALYSIS,
    )
    experiment.rollout.wait_status("stage 1", lambda s: s.get("canaryWeight") == 30, timeout=30)
    selector = f'destination_service_namespace="{namespace}", variant!=""'
    by_variant = f"sum by (destination_service_name, variant) (istio_requests_total{{{selector}}})"
    seen = prometheus.wait_for_series(by_variant, timeout=30)

    def labelled() -> set[tuple[str, str]]:
        return {
            (s["metric"]["destination_service_name"], s["metric"]["variant"])
            for s in prometheus.api_get("/api/v1/query", {"query": by_variant})["data"]["result"]
        }

    deadline = time.monotonic() + 30
    while not {(STABLE, "stable"), (CANARY, "canary")} <= labelled():
        assert time.monotonic() < deadline, labelled()
        time.sleep(0.5)
    assert seen
    assert (CANARY, "stable") not in labelled()
    assert (STABLE, "canary") not in labelled()
    # A request that no managed route gave the dimension headers is labelled `none`.
    experiment.send({"x-llm-eval": "canary"}, count=5)
    deadline = time.monotonic() + 30
    while (CANARY, "none") not in labelled():
        assert time.monotonic() < deadline, labelled()
        time.sleep(0.5)
