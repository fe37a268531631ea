"""Shadow stages and experiment routes through the reconciler, over the in-memory API server and the real
VirtualService transform: what the VirtualService shows, what the status and Events say, and the kill switch
(abort, rollback, promotion, deletion) taking every addition away."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

from fakes import NAMESPACE, World, sample_spec, sample_vs
from modelrollout import api
from modelrollout.engine import pair_hash

F = api.Verdict.FAIL
SHADOW_STAGES = [{"shadow": 50, "duration": "1m"}, {"weight": 10, "duration": "1m"}, {"weight": 100}]
EXPERIMENT = {
    "stickiness": {"bucketHeader": "x-user-bucket"},
    "overrides": [{"header": "x-experiment", "value": "canary", "variant": "canary"}],
}


def world(stages: list[dict[str, Any]] | None = None, experiment: dict[str, Any] | None = None) -> World:
    w = World()
    w.server.put_vs(sample_vs())
    spec = sample_spec()
    if stages is not None:
        spec["stages"] = copy.deepcopy(stages)
    if experiment is not None:
        spec["experiment"] = copy.deepcopy(experiment)
    w.server.create_rollout(spec)
    return w


def managed(w: World) -> dict[str, Any]:
    return next(r for r in w.server.vs()["spec"]["http"] if r["name"] == "primary")


def route_names(w: World) -> list[str]:
    return [r["name"] for r in w.server.vs()["spec"]["http"]]


def mirror(w: World) -> float | None:
    route = managed(w)
    return (route.get("mirrorPercentage") or {}).get("value") if route.get("mirror") else None


def weights(w: World) -> list[int]:
    return [entry["weight"] for entry in managed(w)["route"]]


# ---- shadow stages ----


def test_a_shadow_stage_mirrors_then_the_rollout_goes_on_to_weighted_stages() -> None:
    w = world(SHADOW_STAGES)
    w.tick()
    status = w.server.status()
    assert (status.stage, status.canary_weight, status.shadow) == (0, 0, 50)
    assert (weights(w), mirror(w)) == ([100, 0], 50)
    assert "at shadow 50%" in status.message

    w.tick(timedelta(minutes=1))  # soaked and the check passes
    assert w.measurer.mirrors[-1] == 50  # the check knew it measured a shadow stage
    status = w.server.status()
    assert (status.stage, status.canary_weight, status.shadow) == (1, 10, 0)
    assert (weights(w), mirror(w)) == ([90, 10], None)

    w.tick(timedelta(minutes=1))
    w.tick(timedelta(seconds=30))
    assert w.server.status().phase == api.Phase.PROMOTED
    assert weights(w) == [0, 100]


def test_a_breach_in_a_shadow_stage_removes_the_mirror_like_a_rollback() -> None:
    w = world(SHADOW_STAGES)
    w.tick()
    w.measurer.verdict, w.measurer.value = F, 0.3
    w.tick(timedelta(seconds=10))
    status = w.server.status()
    assert (status.phase, status.canary_weight, status.shadow) == (api.Phase.ROLLED_BACK, 0, 0)
    assert (weights(w), mirror(w)) == ([100, 0], None)
    assert [n.event for n in w.notifier.submitted] == ["RolledBack"]
    message = next(m for _, reason, m in w.server.events if reason == "RolledBack")
    assert message.startswith("shadow stopped: the mirror to the canary removed at stage 1/3")


def test_a_shadow_only_rollout_waits_for_a_human_to_send_users_to_the_canary() -> None:
    w = world([{"shadow": 100, "duration": "1m"}])
    w.tick()
    w.tick(timedelta(minutes=1))
    status = w.server.status()
    assert (status.phase, status.reason) == (api.Phase.PAUSED, "AwaitingApproval")
    assert (weights(w), mirror(w)) == ([100, 0], 100)
    w.server.annotate("promote")
    w.tick(timedelta(seconds=10))
    status = w.server.status()
    assert (status.phase, status.canary_weight, status.shadow) == (api.Phase.PROMOTED, 100, 0)
    assert (weights(w), mirror(w)) == ([0, 100], None)


def test_a_mirror_changed_by_someone_else_is_put_back() -> None:
    w = world(SHADOW_STAGES)
    w.tick()

    def lower(vs: dict[str, Any]) -> None:
        vs["spec"]["http"][0]["mirrorPercentage"] = {"value": 5}

    w.server.edit_vs(lower, at="2026-11-24T00:00:05Z")
    w.tick(timedelta(seconds=10))
    assert mirror(w) == 50
    message = next(m for _, reason, m in w.server.events if reason == "DriftCorrected")
    assert message == "canary at shadow 5% set by kubectl-edit put back to shadow 50%"


def test_stages_edited_under_a_weighted_stage_can_continue_in_a_shadow_stage() -> None:
    w = world()
    w.tick()
    assert weights(w) == [90, 10]
    w.server.edit_rollout(
        lambda r: r["spec"].update(stages=[{"shadow": 100}, {"weight": 20}, {"weight": 100}])
    )
    w.tick(timedelta(seconds=10))
    status = w.server.status()
    assert (status.stage, status.canary_weight, status.shadow) == (0, 0, 100)
    assert (weights(w), mirror(w)) == ([100, 0], 100)
    message = next(m for _, reason, m in w.server.events if reason == "StagesChanged")
    assert "continuing at stage 1/3 at shadow 100%" in message


def test_deletion_in_a_shadow_stage_removes_the_mirror_and_the_claim() -> None:
    w = world(SHADOW_STAGES, EXPERIMENT)
    original = sample_vs()
    w.tick()
    w.delete()
    live = w.server.vs()
    assert route_names(w) == ["primary"]
    assert "mirror" not in live["spec"]["http"][0]
    assert w.server.claims() == {}
    route = live["spec"]["http"][0]
    assert route["route"][0] == {**original["spec"]["http"][0]["route"][0], "weight": 100}


# ---- experiment routes ----


def test_experiment_routes_come_with_the_rollout_and_leave_with_the_promotion() -> None:
    w = world(experiment=EXPERIMENT)
    w.tick()
    status = w.server.status()
    assert status.experiment_id == f"llm/chat/{pair_hash(api.parse_spec(w.server.rollout()['spec']))}"
    assert route_names(w) == [
        "primary--mro-override-0",
        "primary--mro-buckets-canary",
        "primary--mro-buckets-stable",
        "primary",
    ]
    headers = managed(w)["route"][1]["headers"]["request"]["set"]
    assert headers == {
        "x-model": "claude-opus-4-8",
        "x-experiment-id": status.experiment_id,
        "x-variant": "canary",
    }
    w.tick(timedelta(minutes=1))
    w.tick(timedelta(minutes=1))
    w.tick(timedelta(seconds=30))
    assert w.server.status().phase == api.Phase.PROMOTED
    assert route_names(w) == ["primary"]
    assert all("headers" not in entry for entry in managed(w)["route"])


def test_abort_gives_back_the_users_route_except_the_weights_in_one_write() -> None:
    w = world(SHADOW_STAGES, EXPERIMENT)
    original = copy.deepcopy(w.server.vs()["spec"])
    w.tick()
    w.tick(timedelta(minutes=1))
    assert len(route_names(w)) == 4
    writes = w.server.vs_writes
    w.server.annotate("abort")
    w.tick(timedelta(seconds=10))
    assert w.server.vs_writes == writes + 1
    spec = w.server.vs()["spec"]
    expected = copy.deepcopy(original)
    expected["http"][0]["route"] = [
        {"destination": {"host": original["http"][0]["route"][0]["destination"]["host"]}, "weight": 100},
        {"destination": {"host": managed(w)["route"][1]["destination"]["host"]}, "weight": 0},
    ]
    assert spec == expected
    assert w.server.status().phase == api.Phase.ABORTED


def test_an_edit_of_the_experiment_mid_rollout_is_written_without_counting_as_drift() -> None:
    w = world(experiment=EXPERIMENT)
    w.tick()
    w.server.edit_rollout(lambda r: r["spec"]["experiment"].update(overrides=[], id="exp-7"))
    w.tick(timedelta(seconds=10))
    assert route_names(w) == ["primary--mro-buckets-canary", "primary--mro-buckets-stable", "primary"]
    assert managed(w)["route"][0]["headers"]["request"]["set"]["x-experiment-id"] == "exp-7"
    assert "ExperimentRoutesUpdated" in w.reasons()
    assert "DriftCorrected" not in w.reasons()
    assert w.server.status().experiment_id == "exp-7"


def test_generated_routes_removed_by_someone_else_are_put_back() -> None:
    w = world(experiment=EXPERIMENT)
    w.tick()

    def strip(vs: dict[str, Any]) -> None:
        vs["spec"]["http"] = [r for r in vs["spec"]["http"] if "--mro-" not in r["name"]]

    w.server.edit_vs(strip)
    w.tick(timedelta(seconds=10))
    assert len(route_names(w)) == 4


def test_an_experiment_that_cannot_be_placed_fails_its_write_and_a_rollback_still_lands() -> None:
    w = world(experiment=EXPERIMENT)
    w.tick()
    assert weights(w) == [90, 10]

    def match_bucket(vs: dict[str, Any]) -> None:
        primary = next(r for r in vs["spec"]["http"] if r["name"] == "primary")
        primary["match"] = [{"headers": {"x-user-bucket": {"exact": "7"}}}]

    w.server.edit_vs(match_bucket, at="2026-11-24T00:00:05Z")
    w.tick(timedelta(seconds=10))
    status = w.server.status()
    degraded = next(c for c in status.conditions if c.type == "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "WriteFailed")
    assert "already matches on header 'x-user-bucket'" in degraded.message
    assert weights(w) == [90, 10]  # traffic stays where the VirtualService says

    w.measurer.verdict, w.measurer.value = F, 0.3
    w.tick(timedelta(seconds=10))
    assert (w.server.status().phase, weights(w)) == (api.Phase.ROLLED_BACK, [100, 0])
    assert route_names(w) == ["primary"]


def test_a_new_canary_takes_the_old_pairs_mirror_and_routes_away_before_it_starts() -> None:
    w = world(SHADOW_STAGES, EXPERIMENT)
    w.tick()
    assert mirror(w) == 50
    w.server.edit_rollout(lambda r: r["spec"]["canary"].update(host="llm-next", model="next-model"))
    w.tick(timedelta(seconds=10))
    hosts = [entry["destination"]["host"] for entry in managed(w)["route"]]
    assert "llm-claude" not in hosts
    assert managed(w)["mirror"] == {"host": "llm-next"}  # the new pair's own shadow stage
    assert "Superseded" in w.reasons()


# ---- the bucket EnvoyFilter (stickiness.userHeader) ----

BY_USER = {"stickiness": {"userHeader": "x-user-id"}}
FILTER = "chat-modelrollout-buckets"


def envoy_filter(w: World) -> dict[str, Any] | None:
    return w.server.envoy_filters.get((NAMESPACE, FILTER))


def filter_lua(w: World) -> str:
    found = envoy_filter(w)
    assert found is not None
    return str(found["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["inlineCode"])


def test_the_bucket_filter_is_written_before_the_bucket_routes_and_once() -> None:
    w = world(experiment=BY_USER)
    w.tick()
    status = w.server.status()
    assert status.bucket_filter == FILTER
    assert w.server.write_log == ["filter apply", "vs"]
    found = envoy_filter(w)
    assert found is not None
    assert found["metadata"]["ownerReferences"][0]["name"] == "chat"
    assert found["metadata"]["labels"]["modelrollout.io/rollout"] == "chat"
    lua = filter_lua(w)
    # The id is hashed into the buckets; the filter acts on the VirtualService's hosts only.
    assert f'"{status.experiment_id}"' in lua
    assert '["llm"] = true' in lua
    assert '["llm.llm.svc.cluster.local"] = true' in lua
    # The routes match the default bucket header the filter writes.
    canary_route = next(
        r for r in w.server.vs()["spec"]["http"] if r["name"] == "primary--mro-buckets-canary"
    )
    assert "x-modelrollout-bucket" in canary_route["match"][0]["headers"]

    w.tick(timedelta(seconds=10))
    w.tick(timedelta(seconds=10))
    assert w.server.filter_writes == [f"apply {FILTER}"]  # unchanged: never written again


def test_the_bucket_filter_leaves_after_the_routes_on_abort_rollback_and_promotion() -> None:
    expected_phase = {
        "abort": api.Phase.ABORTED,
        "rollback": api.Phase.ROLLED_BACK,
        "promote": api.Phase.PROMOTED,
    }
    for finish in ("abort", "rollback", "promote"):
        w = world(experiment=BY_USER)
        w.tick()
        w.server.write_log.clear()
        if finish == "abort":
            w.server.annotate("abort")
            w.tick(timedelta(seconds=1))
        elif finish == "rollback":
            w.measurer.verdict, w.measurer.value = F, 0.3
            w.tick(timedelta(seconds=10))
        else:  # to 100% (the filter stays while the rollout is under way), then Promoted
            w.server.annotate("promote-full")
            w.tick(timedelta(seconds=1))
            assert envoy_filter(w) is not None
            w.tick(timedelta(seconds=30))
        status = w.server.status()
        assert status.phase == expected_phase[finish], finish
        assert envoy_filter(w) is None, finish
        assert status.bucket_filter is None, finish
        assert w.server.write_log[-2:] == ["vs", "filter delete"], finish
        assert w.server.write_log.count("filter delete") == 1, finish
        assert not [n for n in route_names(w) if "--mro-" in n], finish


def test_a_filter_that_cannot_be_written_holds_the_routes_back_and_says_why() -> None:
    w = world(experiment=BY_USER)
    w.server.refuse_filter_writes = 1
    w.tick()
    status = w.server.status()
    assert status.canary_weight == 0
    assert weights(w) == [100]
    assert w.server.write_log == []
    assert "the bucket EnvoyFilter llm/chat-modelrollout-buckets: HTTP 403" in status.message
    assert status.bucket_filter == FILTER  # recorded before the attempt: ours to remove whatever happens
    w.tick(timedelta(seconds=10))
    assert w.server.write_log == ["filter apply", "vs"]
    assert w.server.status().canary_weight == 10


def test_a_filter_that_cannot_be_removed_is_removed_on_a_later_tick() -> None:
    w = world(experiment=BY_USER)
    w.tick()
    w.server.refuse_filter_writes = 1
    w.server.annotate("abort")
    w.tick(timedelta(seconds=1))
    status = w.server.status()
    assert status.phase == api.Phase.ABORTED
    assert weights(w) == [100, 0]
    assert status.bucket_filter == FILTER
    assert envoy_filter(w) is not None
    assert "BucketFilterNotRemoved" in w.reasons()
    w.tick(timedelta(seconds=10))
    assert envoy_filter(w) is None
    assert w.server.status().bucket_filter is None


def test_a_filter_edited_by_someone_else_is_put_back() -> None:
    w = world(experiment=BY_USER)
    w.tick()
    found = envoy_filter(w)
    assert found is not None
    found["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["inlineCode"] = "-- emptied"
    w.tick(timedelta(seconds=10))
    assert "assign.bucket" in filter_lua(w)


def test_the_filter_follows_the_spec_dropping_or_adding_the_user_header_mid_rollout() -> None:
    w = world(experiment=BY_USER)
    w.tick()
    w.server.edit_rollout(lambda obj: obj["spec"]["experiment"].update(stickiness={"bucketHeader": "x-b"}))
    w.tick(timedelta(seconds=10))
    assert envoy_filter(w) is None
    assert w.server.status().bucket_filter is None
    w.server.edit_rollout(lambda obj: obj["spec"]["experiment"].update(stickiness={"userHeader": "x-u"}))
    w.tick(timedelta(seconds=10))
    assert '"x-u"' in filter_lua(w)


def test_deleting_the_rollout_removes_the_filter_after_the_routes() -> None:
    w = world(experiment=BY_USER)
    w.tick()
    w.server.write_log.clear()
    w.delete()
    assert w.server.write_log[-1] == "filter delete"
    assert "vs" in w.server.write_log
    assert envoy_filter(w) is None


def test_a_restart_between_the_filter_and_the_routes_finishes_the_rollout_start() -> None:
    w = world(experiment=BY_USER)
    w.server.refuse_vs_writes = 1  # the filter is written, the VirtualService write is refused
    w.tick()
    assert envoy_filter(w) is not None
    assert weights(w) == [100]
    w.reconciler = w.new_operator()
    w.tick(timedelta(seconds=10))
    assert weights(w) == [90, 10]
    assert w.server.status().bucket_filter == FILTER


def test_a_refused_filter_removal_does_not_hold_the_deletion_up() -> None:
    w = world(experiment=BY_USER)
    w.tick()
    w.server.refuse_filter_writes = 1
    w.delete()  # returns: the finalizer is not blocked
    assert weights(w) == [100, 0]
    assert envoy_filter(w) is not None  # left to the garbage collector (its ownerReference)
