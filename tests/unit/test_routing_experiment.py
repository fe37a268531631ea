"""The VirtualService transform for experiments: the shadow mirror, dimension headers, override and sticky
bucket routes, and the kill switch (a write without them) giving back the user's route exactly."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelrollout.routing.buckets import bucket_regex
from modelrollout.routing.istio import managed_route_indexes, route_key, split_view, with_split
from modelrollout.routing.router import (
    Backend,
    ExperimentRoutes,
    HeaderOverride,
    RouteWrite,
    RoutingProblem,
)

NS = "llm"
STABLE, CANARY = Backend("llm-stable"), Backend("llm-canary")
EXPERIMENT = ExperimentRoutes(
    overrides=(
        HeaderOverride("x-experiment", "canary", "canary"),
        HeaderOverride("x-support", "pin", "stable"),
    ),
    bucket_header="x-user-bucket",
    stable_headers=(("x-model", "gpt-4o"), ("x-experiment-id", "exp-1"), ("x-variant", "stable")),
    canary_headers=(("x-model", "claude"), ("x-experiment-id", "exp-1"), ("x-variant", "canary")),
)


def vs(*http: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "llm", "namespace": NS}, "spec": {"hosts": ["llm"], "http": list(http)}}


def primary(**extra: Any) -> dict[str, Any]:
    return {"name": "primary", "route": [{"destination": {"host": "llm-stable"}, "weight": 100}], **extra}


def write(weight: int, mirror: int = 0, experiment: ExperimentRoutes | None = None) -> RouteWrite:
    return RouteWrite(STABLE, CANARY, weight, mirror=mirror, experiment=experiment)


def apply(service: dict[str, Any], desired: RouteWrite, routes: list[str] | None = None) -> dict[str, Any]:
    updated, _ = with_split(service, managed_route_indexes(service, routes or ["primary"]), desired)
    return updated


def names(service: dict[str, Any]) -> list[str]:
    return [route.get("name", "") for route in service["spec"]["http"]]


# ---- the shadow mirror ----


def test_a_shadow_stage_keeps_all_traffic_on_stable_and_mirrors_a_share_to_the_canary() -> None:
    shadowed = apply(vs(primary(timeout="30s")), write(0, mirror=25))
    route = shadowed["spec"]["http"][0]
    assert [e["weight"] for e in route["route"]] == [100, 0]
    assert route["mirror"] == {"host": "llm-canary"}
    assert route["mirrorPercentage"] == {"value": 25}
    assert route["timeout"] == "30s"
    view = split_view(shadowed, [0], STABLE, CANARY)
    assert (view.canary_weight, view.mirror, view.consistent) == (0, 25, True)


def test_leaving_the_shadow_stage_removes_the_mirror() -> None:
    shadowed = apply(vs(primary()), write(0, mirror=100))
    weighted = apply(shadowed, write(5))
    assert "mirror" not in weighted["spec"]["http"][0]
    assert "mirrorPercentage" not in weighted["spec"]["http"][0]
    assert split_view(weighted, [0], STABLE, CANARY).mirror == 0


def test_a_route_with_a_mirrors_list_gets_one_entry_more_and_keeps_the_users() -> None:
    theirs = {"destination": {"host": "analytics"}, "percentage": {"value": 1}}
    shadowed = apply(vs(primary(mirrors=[theirs])), write(0, mirror=50))
    assert shadowed["spec"]["http"][0]["mirrors"] == [
        theirs,
        {"destination": {"host": "llm-canary"}, "percentage": {"value": 50}},
    ]
    assert apply(shadowed, write(10))["spec"]["http"][0]["mirrors"] == [theirs]


def test_a_route_that_already_mirrors_with_the_single_field_cannot_take_a_shadow() -> None:
    with pytest.raises(RoutingProblem) as problem:
        apply(vs(primary(mirror={"host": "analytics"})), write(0, mirror=50))
    assert problem.value.reason == "ExperimentConflict"
    assert "`mirrors` list" in problem.value.message
    # ... while a weighted stage leaves the user's mirror alone
    assert apply(vs(primary(mirror={"host": "analytics"})), write(10))["spec"]["http"][0]["mirror"] == {
        "host": "analytics"
    }


def test_a_mirror_set_by_someone_else_reads_as_its_percent() -> None:
    shadowed = apply(vs(primary()), write(0, mirror=50))
    shadowed["spec"]["http"][0]["mirrorPercentage"] = {"value": 12.4}
    assert split_view(shadowed, [0], STABLE, CANARY).mirror == 12
    del shadowed["spec"]["http"][0]["mirrorPercentage"]
    assert split_view(shadowed, [0], STABLE, CANARY).mirror == 100  # Istio: no percentage mirrors all


# ---- experiment routes and headers ----


def test_overrides_and_bucket_routes_stand_in_front_of_the_weighted_route_in_order() -> None:
    service = vs({"name": "health", "route": [{"destination": {"host": "ok"}}]}, primary(timeout="30s"))
    updated = apply(service, write(25, experiment=EXPERIMENT))
    assert names(updated) == [
        "health",
        "primary--mro-override-0",
        "primary--mro-override-1",
        "primary--mro-buckets-canary",
        "primary--mro-buckets-stable",
        "primary",
    ]
    override, support, canary_buckets, stable_buckets = updated["spec"]["http"][1:5]
    assert override["match"] == [{"headers": {"x-experiment": {"exact": "canary"}}}]
    assert override["route"][0]["destination"] == {"host": "llm-canary"}
    assert support["route"][0]["destination"] == {"host": "llm-stable"}
    assert canary_buckets["match"] == [{"headers": {"x-user-bucket": {"regex": bucket_regex(25)}}}]
    assert stable_buckets["route"][0]["destination"] == {"host": "llm-stable"}
    for generated in updated["spec"]["http"][1:5]:
        assert generated["timeout"] == "30s"  # the managed route's own settings come along
        assert generated["route"][0]["weight"] == 100
    variants = [g["route"][0]["headers"]["request"]["set"]["x-variant"] for g in updated["spec"]["http"][1:5]]
    assert variants == ["canary", "stable", "canary", "stable"]
    managed = updated["spec"]["http"][5]["route"]
    assert managed[0]["headers"]["request"]["set"] == dict(EXPERIMENT.stable_headers)
    assert managed[1]["headers"]["request"]["set"] == dict(EXPERIMENT.canary_headers)
    assert split_view(updated, [5], STABLE, CANARY, experiment=EXPERIMENT).experiment_in_place


@pytest.mark.parametrize("weight", [0, 100])
def test_at_0_and_100_no_bucket_route_is_needed(weight: int) -> None:
    updated = apply(vs(primary()), write(weight, experiment=EXPERIMENT))
    assert names(updated) == ["primary--mro-override-0", "primary--mro-override-1", "primary"]


def test_bucket_routes_follow_the_weight() -> None:
    at_5 = apply(vs(primary()), write(5, experiment=EXPERIMENT))
    at_50 = apply(at_5, write(50, experiment=EXPERIMENT))
    regexes = [
        r["match"][0]["headers"]["x-user-bucket"]["regex"]
        for r in at_50["spec"]["http"]
        if "buckets" in r["name"]
    ]
    assert [re.fullmatch(regexes[0], str(b)) is not None for b in (0, 49, 50, 99)] == [
        True,
        True,
        False,
        False,
    ]
    assert [re.fullmatch(regexes[1], str(b)) is not None for b in (0, 49, 50, 99)] == [
        False,
        False,
        True,
        True,
    ]
    # each is in place at its own live weight, and their bucket routes differ
    assert split_view(at_5, [4], STABLE, CANARY, experiment=EXPERIMENT).experiment_in_place
    assert split_view(at_50, [4], STABLE, CANARY, experiment=EXPERIMENT).experiment_in_place
    assert at_5["spec"]["http"][2]["match"] != at_50["spec"]["http"][2]["match"]


def test_the_managed_routes_own_match_is_kept_in_every_generated_route() -> None:
    service = vs(primary(match=[{"uri": {"prefix": "/v1"}}, {"uri": {"prefix": "/v2"}}]))
    updated = apply(service, write(10, experiment=EXPERIMENT))
    assert updated["spec"]["http"][0]["match"] == [
        {"uri": {"prefix": "/v1"}, "headers": {"x-experiment": {"exact": "canary"}}},
        {"uri": {"prefix": "/v2"}, "headers": {"x-experiment": {"exact": "canary"}}},
    ]


def test_a_managed_route_matching_on_the_experiment_header_is_refused_with_why() -> None:
    service = vs(primary(match=[{"headers": {"x-user-bucket": {"exact": "7"}}}]))
    with pytest.raises(RoutingProblem) as problem:
        apply(service, write(10, experiment=EXPERIMENT))
    assert problem.value.reason == "ExperimentConflict"
    assert "already matches on header 'x-user-bucket'" in problem.value.message


def test_an_edited_experiment_is_not_in_place_until_written() -> None:
    updated = apply(vs(primary()), write(10, experiment=EXPERIMENT))
    fewer = ExperimentRoutes(bucket_header="x-user-bucket")
    index = names(updated).index("primary")
    assert not split_view(updated, [index], STABLE, CANARY, experiment=fewer).experiment_in_place
    assert not split_view(updated, [index], STABLE, CANARY).experiment_in_place  # none expected, some there
    rewritten = apply(updated, write(10, experiment=fewer))
    assert names(rewritten) == ["primary--mro-buckets-canary", "primary--mro-buckets-stable", "primary"]
    assert "headers" not in rewritten["spec"]["http"][2]["route"][0]


def test_an_unnamed_route_keeps_its_key_while_generated_routes_come_and_go() -> None:
    service = vs({"route": [{"destination": {"host": "llm-stable"}}]})
    updated, _ = with_split(service, managed_route_indexes(service, None), write(10, experiment=EXPERIMENT))
    indexes = managed_route_indexes(updated, None)
    assert indexes == [4]
    assert route_key(updated, indexes[0]) == "http[0]"
    assert names(updated)[0] == "http[0]--mro-override-0"


def test_the_kill_switch_removes_every_addition_in_one_write() -> None:
    original = vs(primary(timeout="30s", headers={"request": {"set": {"x-team": "ml"}}}))
    live = apply(original, write(0, mirror=100, experiment=EXPERIMENT))
    live = apply(live, write(25, experiment=EXPERIMENT))
    killed = apply(live, write(0))
    assert killed == apply(original, write(0))
    assert names(killed) == ["primary"]


def test_the_kill_switch_also_removes_a_mirror_of_a_superseded_canary() -> None:
    live = apply(vs(primary()), write(0, mirror=50, experiment=EXPERIMENT))
    cleared, _ = with_split(
        live,
        managed_route_indexes(live, ["primary"]),
        RouteWrite(STABLE, CANARY, 0, drop=(CANARY,)),
    )
    assert "mirror" not in cleared["spec"]["http"][-1]
    assert names(cleared) == ["primary"]
    assert [e["destination"]["host"] for e in cleared["spec"]["http"][0]["route"]] == ["llm-stable"]


# ---- the property: any stage list, any VirtualService shape ----

user_extras = st.fixed_dictionaries(
    {},
    optional={
        "timeout": st.sampled_from(["5s", "30s"]),
        "retries": st.fixed_dictionaries({"attempts": st.integers(0, 5)}),
        "match": st.lists(
            st.fixed_dictionaries(
                {"uri": st.fixed_dictionaries({"prefix": st.sampled_from(["/v1", "/chat"])})},
                optional={
                    "headers": st.fixed_dictionaries(
                        {"x-user": st.fixed_dictionaries({"exact": st.text("abc", min_size=1, max_size=3)})}
                    )
                },
            ),
            min_size=1,
            max_size=2,
        ),
        "headers": st.fixed_dictionaries({"request": st.fixed_dictionaries({"set": st.just({"x-a": "1"})})}),
        "mirrors": st.just([{"destination": {"host": "analytics"}, "percentage": {"value": 5}}]),
    },
)

experiments = st.one_of(
    st.none(),
    st.builds(
        ExperimentRoutes,
        overrides=st.lists(
            st.builds(
                HeaderOverride,
                header=st.sampled_from(["x-experiment", "x-tester"]),
                value=st.sampled_from(["canary", "on"]),
                variant=st.sampled_from(["stable", "canary"]),
            ),
            max_size=2,
        ).map(tuple),
        bucket_header=st.sampled_from([None, "x-user-bucket"]),
        stable_headers=st.sampled_from([(), EXPERIMENT.stable_headers]),
        canary_headers=st.sampled_from([(), EXPERIMENT.canary_headers]),
    ),
)


@st.composite
def stage_lists(draw: st.DrawFn) -> list[tuple[int, int]]:
    shadows = [(0, s) for s in draw(st.lists(st.integers(1, 100), max_size=3))]
    weights = [(w, 0) for w in [*sorted(draw(st.sets(st.integers(1, 99), max_size=4))), 100]]
    return shadows + weights


@settings(max_examples=300, deadline=None)
@given(
    st.lists(user_extras, min_size=1, max_size=3),
    st.integers(0, 2),
    stage_lists(),
    experiments,
    st.booleans(),
)
def test_any_stage_list_on_any_route_shape_keeps_the_user_route_and_the_kill_switch_restores_it(
    shapes: list[dict[str, Any]],
    managed_at: int,
    stages: list[tuple[int, int]],
    experiment: ExperimentRoutes | None,
    with_canary: bool,
) -> None:
    http = []
    for number, extra in enumerate(shapes):
        route: dict[str, Any] = {"name": f"r{number}", **copy.deepcopy(extra)}
        route["route"] = [
            {"destination": {"host": "llm-stable" if number == managed_at % len(shapes) else "other"}}
        ]
        if with_canary and number == managed_at % len(shapes):
            route["route"].append({"destination": {"host": "llm-canary"}, "weight": 0})
        http.append(route)
    original = vs(*http)
    snapshot = copy.deepcopy(original)
    name = f"r{managed_at % len(shapes)}"
    live = original
    for weight, mirror in stages:
        desired = write(weight, mirror, experiment)
        live = apply(live, desired, [name])
        indexes = managed_route_indexes(live, [name])
        managed = live["spec"]["http"][indexes[0]]
        assert sum(entry["weight"] for entry in managed["route"]) == 100
        view = split_view(live, indexes, STABLE, CANARY, experiment=experiment)
        assert (view.canary_weight, view.mirror, view.consistent, view.experiment_in_place) == (
            weight,
            mirror,
            True,
            True,
        )
        again, changed = with_split(live, indexes, desired)
        assert not changed
        assert again == live
        # the user's other routes are untouched, in their order
        others = [r for r in live["spec"]["http"] if "--mro-" not in r["name"] and r["name"] != name]
        assert others == [r for r in original["spec"]["http"] if r["name"] != name]
        # generated routes stand right before the managed route
        before = [r["name"] for r in live["spec"]["http"][: indexes[0]] if "--mro-" in r["name"]]
        assert all(n.startswith(f"{name}--mro-") for n in before)
    killed = apply(live, write(0), [name])
    assert killed == apply(original, write(0), [name])
    assert original == snapshot


def test_two_user_routes_written_alike_are_told_apart() -> None:
    twin = {"name": "twin", "route": [{"destination": {"host": "llm-stable"}, "weight": 100}]}
    service = vs(copy.deepcopy(twin), {**copy.deepcopy(twin), "name": "primary"})
    service["spec"]["http"][0].pop("name")
    service["spec"]["http"][1].pop("name")
    updated, _ = with_split(service, [1], write(10, experiment=EXPERIMENT))
    http = updated["spec"]["http"]
    assert http[0] == service["spec"]["http"][0]  # the first twin is the user's, untouched
    assert [r.get("name") for r in http[1:]] == [
        "http[1]--mro-override-0",
        "http[1]--mro-override-1",
        "http[1]--mro-buckets-canary",
        "http[1]--mro-buckets-stable",
        None,
    ]
    assert [e["weight"] for e in http[-1]["route"]] == [90, 10]
