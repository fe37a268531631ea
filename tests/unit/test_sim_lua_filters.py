"""The simulated sidecar runs the operator's bucket EnvoyFilter the way Envoy would: the filter's own Lua,
for clients of its namespace, on requests to the VirtualService's hosts only."""

from __future__ import annotations

import copy
from typing import Any

from fakes import sample_bucket_filter
from modelrollout.assign import bucket
from modelrollout_dev.sim.lua_filters import LuaFilters

EXPERIMENT = "exp-1"


def manifest(experiment_id: str = EXPERIMENT, version: str = "1") -> dict[str, Any]:
    built = sample_bucket_filter(experiment_id).manifest()
    built["metadata"]["resourceVersion"] = version
    return built


def run(
    filters: list[dict[str, Any]], authority: str = "chat", namespace: str = "llm", **headers: str
) -> Any:
    return LuaFilters(lambda: filters).apply(headers, authority, namespace, "loadgen")


def test_the_bucket_filter_sets_the_users_bucket_on_requests_to_its_hosts() -> None:
    for user in ("alice", "bob", "user-17"):
        out = run([manifest()], **{"x-user-id": user, "x-modelrollout-bucket": "0", "x-other": "1"})
        assert out == {
            "x-user-id": user,
            "x-other": "1",
            "x-modelrollout-bucket": str(bucket(EXPERIMENT, user)),
        }


def test_other_hosts_other_namespaces_and_anonymous_requests() -> None:
    sent = {"x-user-id": "alice", "x-modelrollout-bucket": "3"}
    assert run([manifest()], authority="search", **sent) == sent
    assert (
        run([manifest()], namespace="apps", **sent) == sent
    )  # the filter is for the llm namespace's clients
    assert run([manifest()], **{"x-modelrollout-bucket": "3"}) == {}  # no user: the client's bucket goes too


def test_a_workload_selector_picks_the_clients() -> None:
    selected = manifest()
    selected["spec"]["workloadSelector"] = {"labels": {"app": "frontend"}}
    assert run([selected], **{"x-user-id": "alice"}) == {"x-user-id": "alice"}
    selected["spec"]["workloadSelector"] = {"labels": {"app": "loadgen"}}
    assert "x-modelrollout-bucket" in run([selected], **{"x-user-id": "alice"})


def test_a_filter_that_does_not_load_is_counted_and_skipped() -> None:
    broken = copy.deepcopy(manifest())
    broken["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["inlineCode"] = "this is not lua"
    filters = LuaFilters(lambda: [broken])
    assert filters.apply({"x-user-id": "alice"}, "chat", "llm", "loadgen") == {"x-user-id": "alice"}
    assert filters.errors == 1
    assert "does not load" in (filters.last_error or "")


def test_a_new_version_of_a_filter_replaces_the_old_one() -> None:
    current = [manifest()]
    filters = LuaFilters(lambda: current)
    assert filters.apply({"x-user-id": "a"}, "chat", "llm", "w")["x-modelrollout-bucket"] == str(
        bucket(EXPERIMENT, "a")
    )
    other = manifest("exp-2", version="2")
    current[:] = [other]
    assert filters.apply({"x-user-id": "a"}, "chat", "llm", "w")["x-modelrollout-bucket"] == str(
        bucket("exp-2", "a")
    )
