"""The pure VirtualService transform: tables for each rule, and a property test over random shapes."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelrollout.routing.istio import (
    MANAGED_BY,
    RETURNING,
    claims_of,
    conflicting_owner,
    destination_matches,
    hosts_match,
    keeping_what_is_read,
    last_spec_writer,
    managed_route_indexes,
    owner_of,
    returns_of,
    split_view,
    with_claims,
    with_return,
    with_split,
    without_claims,
)
from modelrollout.routing.router import Backend, RouteWrite, RoutingConflict, RoutingProblem

NS = "llm"
STABLE = Backend("llm-gpt4o")
CANARY = Backend("llm-claude")


def read_canary_weight(
    service: dict[str, Any], indexes: list[int], stable: Backend, canary: Backend
) -> tuple[int, bool]:
    """(canary weight, consistent) of `split_view`."""
    view = split_view(service, indexes, stable, canary)
    return view.canary_weight, view.consistent


def with_canary_weight(
    service: dict[str, Any], indexes: list[int], stable: Backend, canary: Backend, canary_weight: int
) -> tuple[dict[str, Any], bool]:
    """`with_split` for one pair and nothing to retire."""
    return with_split(service, indexes, RouteWrite(stable=stable, canary=canary, canary_weight=canary_weight))


def dest(
    host: str, weight: int | None = None, subset: str | None = None, port: int | None = None
) -> dict[str, Any]:
    destination: dict[str, Any] = {"host": host}
    if subset is not None:
        destination["subset"] = subset
    if port is not None:
        destination["port"] = {"number": port}
    entry: dict[str, Any] = {"destination": destination}
    if weight is not None:
        entry["weight"] = weight
    return entry


def vs(*http: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "chat", "namespace": NS, "resourceVersion": "7"}
    if annotations is not None:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": metadata,
        "spec": {"hosts": ["llm"], "http": list(http)},
    }


def sample() -> dict[str, Any]:
    """The shape of manifests/samples/virtualservice.yaml: a header route pinned to the canary and a
    primary route with retries and a timeout."""
    return vs(
        {
            "name": "eval-pinned",
            "match": [{"headers": {"x-llm-eval": {"exact": "canary"}}}],
            "route": [dest("llm-claude")],
        },
        {
            "name": "primary",
            "timeout": "120s",
            "retries": {"attempts": 2, "perTryTimeout": "60s", "retryOn": "5xx,reset,connect-failure"},
            "route": [dest("llm-gpt4o", 100), dest("llm-claude", 0)],
        },
    )


# ---- route selection ----


def test_one_unnamed_route_is_managed_without_names() -> None:
    assert managed_route_indexes(vs({"route": [dest("llm-gpt4o")]}), None) == [0]


def test_several_routes_without_names_is_ambiguous() -> None:
    with pytest.raises(RoutingProblem) as problem:
        managed_route_indexes(sample(), None)
    assert problem.value.reason == "AmbiguousRoute"
    assert "llm/chat has 2 http routes" in str(problem.value)
    assert "spec.trafficRouting.istio.routes" in str(problem.value)


def test_no_http_route_at_all_is_not_found() -> None:
    with pytest.raises(RoutingProblem) as problem:
        managed_route_indexes(vs(), None)
    assert problem.value.reason == "RouteNotFound"


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        (["primary"], [1]),
        (["eval-pinned"], [0]),
        (["primary", "eval-pinned"], [0, 1]),
        (["primary", "primary"], [1]),
    ],
)
def test_named_routes_are_found_by_name(routes: list[str], expected: list[int]) -> None:
    assert managed_route_indexes(sample(), routes) == expected


def test_a_missing_route_name_is_reported_with_the_ones_that_exist() -> None:
    with pytest.raises(RoutingProblem) as problem:
        managed_route_indexes(sample(), ["primary", "shadow"])
    assert problem.value.reason == "RouteNotFound"
    message = str(problem.value)
    assert "VirtualService llm/chat has no http route named 'shadow'" in message
    assert "'eval-pinned', 'primary'" in message


def test_a_route_name_used_twice_is_ambiguous() -> None:
    twice = vs({"name": "a", "route": [dest("x")]}, {"name": "a", "route": [dest("y")]})
    with pytest.raises(RoutingProblem) as problem:
        managed_route_indexes(twice, ["a"])
    assert problem.value.reason == "AmbiguousRoute"


# ---- host matching ----


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("llm-gpt4o", "llm-gpt4o", True),
        ("llm-gpt4o", "llm-gpt4o.llm", True),
        ("llm-gpt4o", "llm-gpt4o.llm.svc", True),
        ("llm-gpt4o", "llm-gpt4o.llm.svc.cluster.local", True),
        ("llm-gpt4o.llm.svc.cluster.local", "llm-gpt4o", True),
        ("llm-gpt4o.llm", "llm-gpt4o.llm.svc.cluster.local", True),
        ("llm-gpt4o", "llm-gpt4o.other", False),
        ("llm-gpt4o", "llm-gpt4o.other.svc.cluster.local", False),
        ("llm-gpt4o", "llm-claude", False),
        ("llm-gpt4o", "llm-gpt4o.llm.svc.cluster", False),
        ("api.openai.com", "api.openai.com", True),
        ("api.openai.com", "api", False),
    ],
)
def test_hosts_match_in_short_and_qualified_forms(a: str, b: str, same: bool) -> None:
    assert hosts_match(a, b, NS) is same
    assert hosts_match(b, a, NS) is same


@pytest.mark.parametrize(
    ("backend", "destination", "same"),
    [
        (Backend("llm", "v1"), {"host": "llm", "subset": "v1"}, True),
        (Backend("llm", "v1"), {"host": "llm", "subset": "v2"}, False),
        (Backend("llm", "v1"), {"host": "llm"}, False),
        (Backend("llm"), {"host": "llm", "subset": "v1"}, False),
        (Backend("llm"), {"host": "llm"}, True),
        (Backend("llm", port=8080), {"host": "llm", "port": {"number": 8080}}, True),
        (Backend("llm", port=8080), {"host": "llm", "port": {"number": 9090}}, False),
        (Backend("llm", port=8080), {"host": "llm"}, False),
        (Backend("llm"), {"host": "llm", "port": {"number": 9090}}, True),
        (Backend("llm", "v1", 8080), {"host": "llm.llm.svc", "subset": "v1", "port": {"number": 8080}}, True),
    ],
)
def test_destination_matches_subset_and_port(
    backend: Backend, destination: dict[str, Any], same: bool
) -> None:
    assert destination_matches(backend, destination, NS) is same


# ---- reading the weight ----


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ([dest("llm-gpt4o")], (0, True)),  # a lone destination takes all traffic
        ([dest("llm-gpt4o", 100)], (0, True)),
        ([dest("llm-gpt4o", 90), dest("llm-claude", 10)], (10, True)),
        ([dest("llm-claude", 10), dest("llm-gpt4o", 90)], (10, True)),
        ([dest("llm-gpt4o.llm.svc.cluster.local", 75), dest("llm-claude.llm", 25)], (25, True)),
        ([dest("llm-gpt4o", 0), dest("llm-claude", 100)], (100, True)),
        ([dest("llm-gpt4o", 90), dest("llm-claude")], (0, False)),  # among several, no weight is 0
        ([dest("llm-gpt4o"), dest("llm-claude", 20)], (20, False)),
        ([dest("llm-gpt4o", 50), dest("llm-claude", 20)], (20, False)),
    ],
)
def test_read_canary_weight(route: list[dict[str, Any]], expected: tuple[int, bool]) -> None:
    assert read_canary_weight(vs({"route": route}), [0], STABLE, CANARY) == expected


def test_managed_routes_that_disagree_are_inconsistent_and_report_the_largest_weight() -> None:
    two = vs(
        {"name": "a", "route": [dest("llm-gpt4o", 95), dest("llm-claude", 5)]},
        {"name": "b", "route": [dest("llm-gpt4o", 75), dest("llm-claude", 25)]},
    )
    assert read_canary_weight(two, [0, 1], STABLE, CANARY) == (25, False)
    assert read_canary_weight(two, [0], STABLE, CANARY) == (5, True)


def test_a_route_without_the_stable_host_is_reported() -> None:
    with pytest.raises(RoutingProblem) as problem:
        read_canary_weight(sample(), [0], STABLE, CANARY)
    assert problem.value.reason == "HostNotInRoute"
    message = str(problem.value)
    assert "route 'eval-pinned' of VirtualService llm/chat" in message
    assert "stable host llm-gpt4o" in message


def test_a_third_destination_is_unexpected() -> None:
    three = vs({"route": [dest("llm-gpt4o", 80), dest("llm-claude", 10), dest("llm-mistral", 10)]})
    with pytest.raises(RoutingProblem) as problem:
        read_canary_weight(three, [0], STABLE, CANARY)
    assert problem.value.reason == "UnexpectedDestination"
    assert "llm-mistral" in str(problem.value)
    with pytest.raises(RoutingProblem):
        with_canary_weight(three, [0], STABLE, CANARY, 10)


def test_a_previous_stable_left_at_weight_zero_is_tolerated_and_untouched() -> None:
    """The GitOps cycle after a promotion: the promoted model becomes stable, the old one stays at 0."""
    after_promotion = vs({"route": [dest("llm-old", 0), dest("llm-gpt4o", 100)]})
    assert read_canary_weight(after_promotion, [0], STABLE, CANARY) == (0, True)
    written, changed = with_canary_weight(after_promotion, [0], STABLE, CANARY, 10)
    assert changed
    assert written["spec"]["http"][0]["route"] == [
        dest("llm-old", 0),
        dest("llm-gpt4o", 90),
        {"destination": {"host": "llm-claude"}, "weight": 10},
    ]


def test_a_destination_of_another_subset_is_unexpected() -> None:
    subsets = vs({"route": [dest("llm", 90, "v1"), dest("llm", 10, "v3")]})
    with pytest.raises(RoutingProblem) as problem:
        read_canary_weight(subsets, [0], Backend("llm", "v1"), Backend("llm", "v2"))
    assert problem.value.reason == "UnexpectedDestination"
    assert read_canary_weight(subsets, [0], Backend("llm", "v1"), Backend("llm", "v3")) == (10, True)


def test_the_stable_host_twice_is_unexpected() -> None:
    twice = vs({"route": [dest("llm-gpt4o", 50), dest("llm-gpt4o.llm.svc.cluster.local", 50)]})
    with pytest.raises(RoutingProblem) as problem:
        read_canary_weight(twice, [0], STABLE, CANARY)
    assert problem.value.reason == "UnexpectedDestination"


# ---- writing the weight ----


def test_write_sets_both_weights_and_keeps_the_rest() -> None:
    before = sample()
    snapshot = copy.deepcopy(before)
    after, changed = with_canary_weight(before, [1], STABLE, CANARY, 10)
    assert changed
    assert before == snapshot  # input untouched
    assert after["spec"]["http"][1]["route"] == [dest("llm-gpt4o", 90), dest("llm-claude", 10)]
    expected = copy.deepcopy(snapshot)
    expected["spec"]["http"][1]["route"] = [dest("llm-gpt4o", 90), dest("llm-claude", 10)]
    assert after == expected


def test_the_same_weight_again_is_no_change() -> None:
    once, _ = with_canary_weight(sample(), [1], STABLE, CANARY, 25)
    twice, changed = with_canary_weight(once, [1], STABLE, CANARY, 25)
    assert not changed
    assert twice == once
    assert twice is not once


def test_the_canary_destination_is_added_right_after_the_stable_one_in_its_own_shape() -> None:
    before = vs(
        {
            "route": [
                {
                    "destination": {"host": "llm-gpt4o", "subset": "v1", "port": {"number": 8080}},
                    "headers": {"x": 1},
                }
            ]
        }
    )
    canary = Backend("llm-gpt4o", "v2", 8080)
    after, changed = with_canary_weight(before, [0], Backend("llm-gpt4o", "v1", 8080), canary, 5)
    assert changed
    assert after["spec"]["http"][0]["route"] == [
        {
            "destination": {"host": "llm-gpt4o", "subset": "v1", "port": {"number": 8080}},
            "headers": {"x": 1},
            "weight": 95,
        },
        {"destination": {"host": "llm-gpt4o", "subset": "v2", "port": {"number": 8080}}, "weight": 5},
    ]


def test_a_missing_canary_is_added_after_stable_even_when_stable_is_not_first() -> None:
    before = vs({"route": [dest("llm-gpt4o", 100)]})
    after, _ = with_canary_weight(before, [0], STABLE, CANARY, 0)
    assert after["spec"]["http"][0]["route"] == [dest("llm-gpt4o", 100), dest("llm-claude", 0)]
    reordered = vs({"route": [dest("llm-claude", 0), dest("llm-gpt4o", 100)]})
    after, _ = with_canary_weight(reordered, [0], STABLE, CANARY, 50)
    assert after["spec"]["http"][0]["route"] == [dest("llm-claude", 50), dest("llm-gpt4o", 50)]


def test_implicit_full_weight_is_made_explicit() -> None:
    # Same traffic, different object: the write makes the split explicit so later reads need no inference.
    after, changed = with_canary_weight(vs({"route": [dest("llm-gpt4o")]}), [0], STABLE, CANARY, 0)
    assert changed
    assert read_canary_weight(after, [0], STABLE, CANARY) == (0, True)


def test_the_host_form_the_user_wrote_is_kept() -> None:
    before = vs({"route": [dest("llm-gpt4o.llm.svc.cluster.local", 100), dest("llm-claude.llm", 0)]})
    after, _ = with_canary_weight(before, [0], STABLE, CANARY, 1)
    assert after["spec"]["http"][0]["route"] == [
        dest("llm-gpt4o.llm.svc.cluster.local", 99),
        dest("llm-claude.llm", 1),
    ]


def test_every_managed_route_gets_the_weight_and_others_are_left_alone() -> None:
    before = vs(
        {"name": "a", "route": [dest("llm-gpt4o", 100)]},
        {"name": "b", "route": [dest("llm-gpt4o", 70), dest("llm-claude", 30)]},
        {"name": "c", "route": [dest("llm-gpt4o", 60), dest("llm-claude", 40)]},
    )
    after, _ = with_canary_weight(before, [0, 2], STABLE, CANARY, 5)
    http = after["spec"]["http"]
    assert http[0]["route"] == [dest("llm-gpt4o", 95), dest("llm-claude", 5)]
    assert http[1] == before["spec"]["http"][1]
    assert http[2]["route"] == [dest("llm-gpt4o", 95), dest("llm-claude", 5)]


@pytest.mark.parametrize("weight", [-1, 101, True, 10.0])
def test_weights_outside_0_to_100_are_refused(weight: Any) -> None:
    before = sample()
    with pytest.raises(ValueError, match=r"0\.\.100"):
        with_canary_weight(before, [1], STABLE, CANARY, weight)
    assert before == sample()


# ---- claims: which rollout manages which route ----


def test_a_route_is_claimed_kept_and_released() -> None:
    before = sample()
    assert owner_of(before) is None
    claimed, changed = with_claims(before, ["primary"], "llm/chat")
    assert changed
    assert claimed["metadata"]["annotations"] == {MANAGED_BY: '{"primary":"llm/chat"}'}
    assert claims_of(claimed) == {"primary": "llm/chat"}
    assert "annotations" not in before["metadata"]
    again, changed = with_claims(claimed, ["primary"], "llm/chat")
    assert not changed
    assert again == claimed
    released, changed = without_claims(claimed, "llm/chat")
    assert changed
    assert released == before  # an annotations map we created is removed with our key


def test_other_annotations_survive_claim_and_release() -> None:
    before = vs({"route": [dest("llm-gpt4o")]}, annotations={"team": "ml-platform"})
    claimed, _ = with_claims(before, ["http[0]"], "llm/chat")
    assert claimed["metadata"]["annotations"] == {"team": "ml-platform", MANAGED_BY: '{"http[0]":"llm/chat"}'}
    assert before["metadata"]["annotations"] == {"team": "ml-platform"}
    released, _ = without_claims(claimed, "llm/chat")
    assert released == before


def test_two_rollouts_on_two_routes_of_one_virtual_service_each_keep_their_own() -> None:
    both, _ = with_claims(sample(), ["primary"], "llm/chat")
    both, _ = with_claims(both, ["eval-pinned"], "llm/eval")
    assert claims_of(both) == {"primary": "llm/chat", "eval-pinned": "llm/eval"}
    assert conflicting_owner(both, ["primary"], "llm/chat") is None
    assert conflicting_owner(both, ["eval-pinned"], "llm/chat") == "llm/eval"
    with pytest.raises(RoutingConflict) as conflict:
        with_claims(both, ["eval-pinned"], "llm/chat")
    assert conflict.value.owner == "llm/eval"
    released, _ = without_claims(both, "llm/chat")
    assert claims_of(released) == {"eval-pinned": "llm/eval"}


def test_another_owner_is_neither_overwritten_nor_released_unless_it_is_gone() -> None:
    theirs = vs({"route": [dest("llm-gpt4o")]}, annotations={MANAGED_BY: '{"http[0]":"llm/other"}'})
    with pytest.raises(RoutingConflict) as conflict:
        with_claims(theirs, ["http[0]"], "llm/chat")
    assert conflict.value.owner == "llm/other"
    assert "llm/chat" in str(conflict.value)
    assert without_claims(theirs, "llm/chat") == (theirs, False)
    taken, changed = with_claims(theirs, ["http[0]"], "llm/chat", take_over_from="llm/other")
    assert changed
    assert claims_of(taken) == {"http[0]": "llm/chat"}


# ---- returns to stable recorded by the write that makes them ----


def test_each_owner_keeps_the_record_of_its_latest_write_only() -> None:
    before = vs({"route": [dest("llm-gpt4o")]}, annotations={"team": "ml-platform"})
    record = {"rollback": {"at": "2026-11-23T10:00:00Z", "reason": "AnalysisFailed"}, "stage": 1}
    returned = with_return(before, "llm/chat", record)
    assert returns_of(returned) == {"llm/chat": record}
    assert before["metadata"]["annotations"] == {"team": "ml-platform"}  # a copy
    both = with_return(returned, "llm/eval", {**record, "stage": 0})
    assert set(returns_of(both)) == {"llm/chat", "llm/eval"}
    next_write = with_return(both, "llm/chat", None)  # chat's next write is not a return
    assert set(returns_of(next_write)) == {"llm/eval"}
    taken_over = with_return(next_write, "llm/chat", None, drop=("llm/eval",))
    assert taken_over == before  # no record left: the annotation goes, the others stay
    assert with_return(before, "llm/chat", None) is before  # nothing to change: no copy, no write


@pytest.mark.parametrize("raw", ["{not json", '["llm/chat"]', '{"llm/chat": "text"}', ""])
def test_an_unreadable_record_of_returns_records_none(raw: str) -> None:
    assert returns_of(vs({"route": [dest("llm-gpt4o")]}, annotations={RETURNING: raw})) == {}


@pytest.mark.parametrize("legacy", ["llm/other", "{not json", '["llm/other"]'])
def test_a_plain_annotation_claims_every_route(legacy: str) -> None:
    """What earlier versions wrote (one owner for the whole VirtualService) is honoured, and so is anything
    unreadable: the operator never takes a route it cannot prove to be free."""
    theirs = sample()
    theirs["metadata"]["annotations"] = {MANAGED_BY: legacy}
    assert claims_of(theirs) == {"eval-pinned": legacy, "primary": legacy}
    with pytest.raises(RoutingConflict):
        with_claims(theirs, ["primary"], "llm/chat")


# ---- superseded pairs ----


def test_a_superseded_canary_is_dropped_and_a_superseded_stable_retired() -> None:
    old_canary, new_canary = Backend("llm-claude"), Backend("llm-next")
    live = vs({"name": "primary", "route": [dest("llm-gpt4o", 60), dest("llm-claude", 40)]})
    # The old canary still carries traffic: the new pair's view tolerates it and says it is not whole.
    view = split_view(live, [0], STABLE, new_canary, retiring=(old_canary,))
    assert (view.canary_weight, view.consistent, view.canary_present) == (0, False, False)
    with pytest.raises(RoutingProblem):
        split_view(live, [0], STABLE, new_canary)  # without it, the old canary is unexpected
    started, changed = with_split(
        live, [0], RouteWrite(stable=STABLE, canary=new_canary, canary_weight=1, drop=(old_canary,))
    )
    assert changed
    assert started["spec"]["http"][0]["route"] == [dest("llm-gpt4o", 99), dest("llm-next", 1)]
    # The promoted canary becomes the stable of the next pair; the old stable stays, at weight 0.
    promoted = vs({"name": "primary", "route": [dest("llm-gpt4o", 40), dest("llm-claude", 60)]})
    next_pair, _ = with_split(
        promoted,
        [0],
        RouteWrite(stable=old_canary, canary=new_canary, canary_weight=1, retire=(STABLE,)),
    )
    assert next_pair["spec"]["http"][0]["route"] == [
        dest("llm-gpt4o", 0),
        dest("llm-claude", 99),
        dest("llm-next", 1),
    ]
    assert read_canary_weight(next_pair, [0], old_canary, new_canary) == (1, True)


# ---- who last wrote the spec ----


def entry(manager: str, time: str | None, *, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    fields: dict[str, Any] = {"f:metadata": {"f:annotations": {}}}
    if spec is not None:
        fields["f:spec"] = spec
    managed: dict[str, Any] = {
        "manager": manager,
        "operation": "Update",
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    }
    if time is not None:
        managed["time"] = time
    return managed


@pytest.mark.parametrize(
    ("entries", "writer"),
    [
        ([], None),
        ([entry("modelrollout-operator", "2026-01-01T10:00:00Z", spec={"f:http": {}})], None),
        (
            [
                entry("kubectl-client-side-apply", "2026-01-01T09:00:00Z", spec={"f:hosts": {}}),
                entry("kubectl-patch", "2026-01-01T10:00:00Z", spec={"f:http": {}}),
                entry("modelrollout-operator", "2026-01-01T11:00:00Z", spec={"f:http": {}}),
            ],
            "kubectl-patch",
        ),
        (
            [
                entry("argocd-controller", "2026-01-01T12:00:00Z", spec={"f:hosts": {}}),
                entry("kubectl-patch", "2026-01-01T10:00:00Z", spec={"f:http": {}}),
            ],
            "argocd-controller",
        ),
        (
            # one-second resolution: on a tie, whoever owns spec.http (the weights) is named
            [
                entry("kubectl-patch", "2026-01-01T10:00:00Z", spec={"f:http": {}}),
                entry("OpenAPI-Generator", "2026-01-01T10:00:00Z", spec={"f:hosts": {}}),
            ],
            "kubectl-patch",
        ),
        (
            [
                entry("OpenAPI-Generator", "2026-01-01T10:00:00Z", spec={"f:hosts": {}}),
                entry("kubectl-patch", "2026-01-01T10:00:00Z", spec={"f:http": {}}),
            ],
            "kubectl-patch",
        ),
        ([entry("labeler", "2026-01-01T12:00:00Z")], None),  # metadata only
        (
            [
                entry("old", None, spec={"f:http": {}}),
                entry("dated", "2020-01-01T00:00:00Z", spec={"f:hosts": {}}),
            ],
            "dated",
        ),
    ],
)
def test_last_spec_writer(entries: list[dict[str, Any]], writer: str | None) -> None:
    live = sample()
    live["metadata"]["managedFields"] = entries
    assert last_spec_writer(live, "modelrollout-operator") == writer
    # What the operator keeps of managedFields names the same writer, for any own manager.
    kept = keeping_what_is_read(live)
    for own in ("modelrollout-operator", "", "kubectl-patch"):
        assert last_spec_writer(kept, own) == last_spec_writer(live, own)
    assert {k: v for k, v in kept.items() if k != "metadata"} == {
        k: v for k, v in live.items() if k != "metadata"
    }
    assert {k: v for k, v in kept["metadata"].items() if k != "managedFields"} == {
        k: v for k, v in live["metadata"].items() if k != "managedFields"
    }


# ---- property: random VirtualService shapes, random rollouts ----

SHORT_STABLE = "model-a"
SHORT_CANARY = "model-b"


def host_forms(short: str) -> st.SearchStrategy[str]:
    return st.sampled_from([short, f"{short}.{NS}", f"{short}.{NS}.svc", f"{short}.{NS}.svc.cluster.local"])


weights = st.one_of(st.none(), st.integers(0, 100))
extras = st.fixed_dictionaries(
    {},
    optional={
        "timeout": st.sampled_from(["5s", "30s", "120s"]),
        "retries": st.fixed_dictionaries(
            {"attempts": st.integers(0, 5)},
            optional={"perTryTimeout": st.just("10s"), "retryOn": st.just("5xx")},
        ),
        "match": st.lists(
            st.fixed_dictionaries(
                {
                    "headers": st.fixed_dictionaries(
                        {"x-user": st.fixed_dictionaries({"exact": st.text("abc", min_size=1, max_size=3)})}
                    )
                }
            ),
            max_size=2,
        ),
        "headers": st.fixed_dictionaries(
            {
                "request": st.fixed_dictionaries(
                    {
                        "set": st.dictionaries(
                            st.sampled_from(["x-a", "x-b"]), st.text("xyz", max_size=3), max_size=2
                        )
                    }
                )
            }
        ),
        "mirror": st.fixed_dictionaries({"host": st.sampled_from(["shadow", "shadow.llm"])}),
        "mirrorPercentage": st.fixed_dictionaries({"value": st.floats(0, 100)}),
    },
)


@st.composite
def backends(draw: st.DrawFn) -> tuple[Backend, Backend]:
    subset = draw(st.sampled_from([None, "s"]))
    port = draw(st.sampled_from([None, 8080]))
    stable_host = draw(st.sampled_from([SHORT_STABLE, f"{SHORT_STABLE}.{NS}.svc.cluster.local"]))
    if draw(st.booleans()):
        return Backend(stable_host, subset, port), Backend(SHORT_CANARY, subset, port)
    # the same host, told apart by subset
    return Backend(stable_host, "v1", port), Backend(stable_host, "v2", port)


@st.composite
def destination_for(draw: st.DrawFn, backend: Backend) -> dict[str, Any]:
    short = backend.host.split(".")[0]
    host = draw(host_forms(short))
    destination: dict[str, Any] = {"host": host}
    if backend.subset is not None:
        destination["subset"] = backend.subset
    if backend.port is not None:
        destination["port"] = {"number": backend.port}
    entry: dict[str, Any] = {"destination": destination}
    weight = draw(weights)
    if weight is not None:
        entry["weight"] = weight
    if draw(st.booleans()):
        entry["headers"] = {"response": {"add": {"x-served-by": short}}}
    return entry


@st.composite
def rollouts(draw: st.DrawFn) -> tuple[dict[str, Any], list[int], Backend, Backend, list[int]]:
    stable, canary = draw(backends())
    count = draw(st.integers(1, 5))
    managed = sorted(draw(st.sets(st.integers(0, count - 1), min_size=1)))
    http: list[dict[str, Any]] = []
    for index in range(count):
        route: dict[str, Any] = {"name": f"r{index}", **draw(extras)}
        if index in managed:
            destinations = [draw(destination_for(stable))]
            if draw(st.booleans()):
                canary_entry = draw(destination_for(canary))
                destinations.insert(draw(st.integers(0, 1)), canary_entry)
        else:
            destinations = draw(st.lists(destination_for(Backend("elsewhere")), min_size=1, max_size=3))
        route["route"] = destinations
        http.append(route)
    live = vs(*http, annotations=draw(st.sampled_from([None, {"team": "ml"}])))
    stages = [*sorted(draw(st.sets(st.integers(1, 99), max_size=5))), 100]
    sequence = draw(st.lists(st.sampled_from([0, *stages]), min_size=1, max_size=8))
    return live, managed, stable, canary, sequence


def without_split(
    live: dict[str, Any], managed: list[int], stable: Backend, canary: Backend
) -> dict[str, Any]:
    """The VirtualService with the managed routes' canary destinations and stable weights removed: what the
    transform must never change."""
    stripped = copy.deepcopy(live)
    for index in managed:
        kept = []
        for entry in stripped["spec"]["http"][index]["route"]:
            if destination_matches(canary, entry["destination"], NS):
                continue
            entry.pop("weight", None)
            kept.append(entry)
        stripped["spec"]["http"][index]["route"] = kept
    return stripped


@settings(max_examples=200, deadline=None)
@given(rollouts())
def test_any_rollout_keeps_weights_whole_and_everything_else_as_it_was(
    example: tuple[dict[str, Any], list[int], Backend, Backend, list[int]],
) -> None:
    original, managed, stable, canary, sequence = example
    assert managed_route_indexes(original, [f"r{i}" for i in managed]) == managed
    snapshot = copy.deepcopy(original)
    live = original
    for weight in sequence:
        updated, _ = with_canary_weight(live, managed, stable, canary, weight)
        for index in managed:
            route = updated["spec"]["http"][index]["route"]
            assert len(route) == 2
            route_weights = [entry["weight"] for entry in route]
            assert all(type(w) is int and 0 <= w <= 100 for w in route_weights)
            assert sum(route_weights) == 100
            by_role = {
                destination_matches(canary, entry["destination"], NS): entry["weight"] for entry in route
            }
            assert by_role == {True: weight, False: 100 - weight}
        assert read_canary_weight(updated, managed, stable, canary) == (weight, True)
        assert without_split(updated, managed, stable, canary) == without_split(
            original, managed, stable, canary
        )
        again, changed = with_canary_weight(updated, managed, stable, canary, weight)
        assert not changed
        assert again == updated
        live = updated
    assert original == snapshot
