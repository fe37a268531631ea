"""The simulated sidecar's routing: tables for host selection, match rules, weights, mirroring, and what the
destination and its mirrors receive after the VirtualService's header operations.

Shares are measured over 10,000 seeded picks and must land within 0.02 of the configured share: the standard
deviation of a share p over n picks is sqrt(p(1-p)/n) <= 0.005 here, so 0.02 is four of them, and the seed
makes every run draw the same sequence anyway.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from modelrollout_dev.sim.headers import shadow_authority
from modelrollout_dev.sim.routing import (
    Destination,
    Request,
    RouteResult,
    destination_of,
    route,
    select_virtual_service,
    service_fqdn,
)

NS = "llm"
PICKS = 10_000
SHARE_TOLERANCE = 0.02


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


def vs(
    *http: dict[str, Any],
    hosts: tuple[str, ...] = ("llm",),
    name: str = "chat",
    namespace: str = NS,
    created: str = "2026-01-01T00:00:00Z",
    gateways: list[str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"hosts": list(hosts), "http": list(http)}
    if gateways is not None:
        spec["gateways"] = gateways
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created},
        "spec": spec,
    }


def seeded(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311  (simulated traffic: repeatable draws, not secrets)


def one(virtual_services: list[dict[str, Any]], request: Request, seed: int = 1) -> RouteResult:
    return route(virtual_services, request, seeded(seed))


def shares(virtual_services: list[dict[str, Any]], request: Request, seed: int = 7) -> dict[str, float]:
    rng = seeded(seed)
    counts: Counter[str] = Counter()
    for _ in range(PICKS):
        result = route(virtual_services, request, rng)
        counts[result.destination.service if result.destination else str(result.status)] += 1
    return {key: count / PICKS for key, count in counts.items()}


# ---- match order and conditions ----

ORDERED = [
    vs(
        {
            "name": "eval-pinned",
            "match": [{"headers": {"x-llm-eval": {"exact": "canary"}}}],
            "route": [dest("llm-claude")],
        },
        {
            "name": "beta-users",
            "match": [{"headers": {"x-user-id": {"prefix": "beta-"}}}],
            "route": [dest("llm-beta")],
        },
        {
            "name": "admin-ids",
            "match": [{"headers": {"x-user-id": {"regex": "admin-[0-9]+"}}}],
            "route": [dest("llm-admin")],
        },
        {"name": "v2-api", "match": [{"uri": {"prefix": "/v2/"}}], "route": [dest("llm-v2")]},
        {"name": "exact-health", "match": [{"uri": {"exact": "/healthz"}}], "route": [dest("llm-health")]},
        {
            "name": "embeddings",
            "match": [{"uri": {"regex": "/v1/embed(dings)?"}}],
            "route": [dest("llm-embed")],
        },
        {"name": "primary", "route": [dest("llm-gpt4o")]},
    )
]


@pytest.mark.parametrize(
    ("headers", "path", "expected_route", "expected_service"),
    [
        ({}, "/v1/chat/completions", "primary", "llm-gpt4o"),
        ({"x-llm-eval": "canary"}, "/v1/chat/completions", "eval-pinned", "llm-claude"),
        # Header names are case-insensitive; values are not.
        ({"X-LLM-Eval": "canary"}, "/", "eval-pinned", "llm-claude"),
        ({"x-llm-eval": "Canary"}, "/", "primary", "llm-gpt4o"),
        ({"x-llm-eval": "canary-2"}, "/", "primary", "llm-gpt4o"),
        # The first fitting route wins, even when a later one fits too.
        ({"x-llm-eval": "canary"}, "/v2/chat", "eval-pinned", "llm-claude"),
        ({"x-user-id": "beta-42"}, "/v2/chat", "beta-users", "llm-beta"),
        ({"x-user-id": "user-beta-42"}, "/", "primary", "llm-gpt4o"),
        ({"x-user-id": "admin-7"}, "/", "admin-ids", "llm-admin"),
        # A regex must match the whole value (RE2 semantics in Istio), not a part of it.
        ({"x-user-id": "admin-7x"}, "/", "primary", "llm-gpt4o"),
        ({"x-user-id": "xadmin-7"}, "/", "primary", "llm-gpt4o"),
        ({}, "/v2/", "v2-api", "llm-v2"),
        ({}, "/v2", "primary", "llm-gpt4o"),
        ({}, "/healthz", "exact-health", "llm-health"),
        ({}, "/healthz/deep", "primary", "llm-gpt4o"),
        # The query string is not part of the uri a match sees.
        ({}, "/healthz?verbose=1", "exact-health", "llm-health"),
        ({}, "/v1/embed", "embeddings", "llm-embed"),
        ({}, "/v1/embeddings", "embeddings", "llm-embed"),
        ({}, "/v1/embeddingsx", "primary", "llm-gpt4o"),
    ],
)
def test_first_fitting_route_wins(
    headers: dict[str, str], path: str, expected_route: str, expected_service: str
) -> None:
    result = one(ORDERED, Request("llm", path=path, headers=headers))
    assert result.status == 200
    assert result.route == expected_route
    assert result.destination is not None
    assert result.destination.service == expected_service
    assert result.virtual_service == "llm/chat"


def routed_by(match: list[dict[str, Any]], request: Request) -> bool:
    table = [
        vs(
            {"name": "matched", "match": match, "route": [dest("hit")]},
            {"name": "rest", "route": [dest("miss")]},
        )
    ]
    result = one(table, request)
    assert result.destination is not None
    return result.destination.service == "hit"


@pytest.mark.parametrize(
    ("match", "request_", "fits"),
    [
        # Within one block every condition must hold ...
        (
            [{"headers": {"x-a": {"exact": "1"}}, "uri": {"prefix": "/v1"}}],
            Request("llm", path="/v1/x", headers={"x-a": "1"}),
            True,
        ),
        (
            [{"headers": {"x-a": {"exact": "1"}}, "uri": {"prefix": "/v1"}}],
            Request("llm", path="/v2/x", headers={"x-a": "1"}),
            False,
        ),
        (
            [{"headers": {"x-a": {"exact": "1"}, "x-b": {"exact": "2"}}}],
            Request("llm", headers={"x-a": "1"}),
            False,
        ),
        (
            [{"headers": {"x-a": {"exact": "1"}, "x-b": {"exact": "2"}}}],
            Request("llm", headers={"x-a": "1", "x-b": "2"}),
            True,
        ),
        # ... and any block of the list may fit.
        (
            [{"headers": {"x-a": {"exact": "1"}}}, {"uri": {"prefix": "/v1"}}],
            Request("llm", path="/v1/x"),
            True,
        ),
        (
            [{"headers": {"x-a": {"exact": "1"}}}, {"uri": {"prefix": "/v1"}}],
            Request("llm", headers={"x-a": "1"}),
            True,
        ),
        (
            [{"headers": {"x-a": {"exact": "1"}}}, {"uri": {"prefix": "/v1"}}],
            Request("llm", path="/v2"),
            False,
        ),
        # An empty string match only asks for the header to be present.
        ([{"headers": {"x-a": {}}}], Request("llm", headers={"x-a": ""}), True),
        ([{"headers": {"x-a": {}}}], Request("llm"), False),
        ([{"withoutHeaders": {"x-a": {}}}], Request("llm"), True),
        ([{"withoutHeaders": {"x-a": {"exact": "1"}}}], Request("llm", headers={"x-a": "1"}), False),
        ([{"uri": {"prefix": "/V1"}, "ignoreUriCase": True}], Request("llm", path="/v1/x"), True),
        ([{"uri": {"prefix": "/V1"}}], Request("llm", path="/v1/x"), False),
        ([{"method": {"exact": "GET"}}], Request("llm", method="GET"), True),
        ([{"method": {"exact": "GET"}}], Request("llm"), False),
        ([{"queryParams": {"model": {"exact": "gpt"}}}], Request("llm", path="/v1?model=gpt"), True),
        ([{"queryParams": {"model": {"exact": "gpt"}}}], Request("llm", path="/v1?model=claude"), False),
        ([{"port": 8000}], Request("llm", port=8000), True),
        ([{"port": 8000}], Request("llm", port=9000), False),
        ([{"sourceNamespace": "team-a"}], Request("llm", source_namespace="team-a"), True),
        ([{"sourceNamespace": "team-a"}], Request("llm", source_namespace="team-b"), False),
        ([{"gateways": ["mesh"], "uri": {"prefix": "/"}}], Request("llm"), True),
        ([{"gateways": ["istio-system/ingress"]}], Request("llm"), False),
        # A broken regex (Istio's validation would refuse it) never fits.
        ([{"headers": {"x-a": {"regex": "("}}}], Request("llm", headers={"x-a": "("}), False),
        # A condition the simulator cannot evaluate never fits rather than fitting by accident.
        ([{"sourceLabels": {"app": "web"}}], Request("llm"), False),
    ],
)
def test_match_blocks(match: list[dict[str, Any]], request_: Request, fits: bool) -> None:
    assert routed_by(match, request_) is fits


def test_no_route_fits_is_404_and_no_virtual_service_is_404() -> None:
    table = [vs({"name": "pinned", "match": [{"headers": {"x-a": {"exact": "1"}}}], "route": [dest("a")]})]
    assert one(table, Request("llm")) == RouteResult(404, virtual_service="llm/chat")
    assert one(table, Request("other")) == RouteResult(404)
    assert one([], Request("llm")) == RouteResult(404)
    # A VirtualService without http routes fits nothing either.
    assert one([vs()], Request("llm")).status == 404


# ---- hosts ----


@pytest.mark.parametrize(
    ("request_host", "vs_host", "routed"),
    [
        ("llm", "llm", True),
        ("llm.llm", "llm", True),
        ("llm.llm.svc", "llm", True),
        ("llm.llm.svc.cluster.local", "llm", True),
        ("LLM.llm.svc.cluster.local.", "llm", True),
        ("llm:8080", "llm", True),
        ("llm.llm.svc.cluster.local:80", "llm", True),
        ("llm", "llm.llm.svc.cluster.local", True),
        ("llm", "llm.llm", True),
        ("llm.llm", "llm.llm.svc", True),
        # The same Service name in another namespace is another Service.
        ("llm.other", "llm", False),
        ("llm.other.svc.cluster.local", "llm", False),
        ("llm-2", "llm", False),
        ("api.openai.com", "api.openai.com", True),
        ("api.openai.com", "openai.com", False),
        ("api.openai.com", "*.openai.com", True),
        ("openai.com", "*.openai.com", False),
        ("anything.example", "*", True),
    ],
)
def test_host_forms(request_host: str, vs_host: str, routed: bool) -> None:
    table = [vs({"route": [dest("llm-gpt4o")]}, hosts=(vs_host,))]
    assert (one(table, Request(request_host)).status == 200) is routed


def test_virtual_service_selection() -> None:
    older = vs({"route": [dest("old")]}, name="a-old", created="2026-01-01T00:00:00Z")
    newer = vs({"route": [dest("new")]}, name="b-new", created="2026-02-01T00:00:00Z")
    wildcard = vs({"route": [dest("wild")]}, name="wild", hosts=("*.llm.svc.cluster.local",))
    catch_all = vs({"route": [dest("any")]}, name="any", hosts=("*",))
    elsewhere = vs({"route": [dest("there")]}, name="chat", namespace="team-b")
    gateway_only = vs({"route": [dest("edge")]}, name="edge", gateways=["istio-system/ingress"])
    both = vs(
        {"route": [dest("both")]}, name="both", hosts=("both",), gateways=["mesh", "istio-system/ingress"]
    )
    table = [catch_all, wildcard, newer, older, elsewhere, gateway_only, both]

    def service(host: str) -> str:
        result = one(table, Request(host))
        assert result.destination is not None
        return result.destination.service

    # An exact host beats a wildcard; among exact ones the oldest VirtualService wins, whatever the order.
    assert service("llm") == "old"
    assert service("llm.llm.svc.cluster.local") == "old"
    # A longer wildcard beats `*`.
    assert service("embed.llm.svc.cluster.local") == "wild"
    assert service("embed") == "wild"  # short name, read in the VirtualService's namespace
    assert service("unknown.example.com") == "any"
    # Another namespace's `llm` is addressed with its namespace.
    assert service("llm.team-b") == "there"
    # A VirtualService bound only to a gateway does not route mesh traffic; one that includes mesh does.
    assert select_virtual_service([gateway_only], "llm") is None
    assert service("both") == "both"


@pytest.mark.parametrize(
    ("host", "namespace", "fqdn"),
    [
        ("llm", "ns", "llm.ns.svc.cluster.local"),
        ("llm.other", "ns", "llm.other.svc.cluster.local"),
        ("llm.other.svc", "ns", "llm.other.svc.cluster.local"),
        ("llm.other.svc.cluster.local", "ns", "llm.other.svc.cluster.local"),
        ("api.openai.com", "ns", "api.openai.com"),
        ("*.example.com", "ns", "*.example.com"),
    ],
)
def test_service_fqdn(host: str, namespace: str, fqdn: str) -> None:
    assert service_fqdn(host, namespace) == fqdn


def test_destinations_carry_what_the_metrics_label() -> None:
    assert destination_of(
        {"host": "llm-claude", "subset": "v2", "port": {"number": 8000}}, "llm"
    ) == Destination(
        service="llm-claude", namespace="llm", fqdn="llm-claude.llm.svc.cluster.local", subset="v2", port=8000
    )
    # A Service of another namespace keeps its own namespace; an external host is its own name.
    assert destination_of({"host": "llm-claude.models.svc.cluster.local"}, "llm").namespace == "models"
    external = destination_of({"host": "api.openai.com"}, "llm")
    assert (external.service, external.namespace, external.fqdn) == (
        "api.openai.com",
        "llm",
        "api.openai.com",
    )
    assert Destination("a", "ns", "a.ns.svc.cluster.local", "v1", 80).key == "ns/a/v1:80"


# ---- weights ----


def weighted(*destinations: dict[str, Any], **route_fields: Any) -> list[dict[str, Any]]:
    return [vs({"name": "primary", "route": list(destinations), **route_fields})]


@pytest.mark.parametrize(
    ("destinations", "expected"),
    [
        ([dest("stable", 80), dest("canary", 20)], {"stable": 0.8, "canary": 0.2}),
        ([dest("stable", 99), dest("canary", 1)], {"stable": 0.99, "canary": 0.01}),
        ([dest("a", 50), dest("b", 30), dest("c", 20)], {"a": 0.5, "b": 0.3, "c": 0.2}),
        # Weights need not sum to 100: they are relative.
        ([dest("a", 1), dest("b", 3)], {"a": 0.25, "b": 0.75}),
        # A lone destination takes everything, with no weight or any weight.
        ([dest("only")], {"only": 1.0}),
        ([dest("only", 0)], {"only": 1.0}),
        ([dest("only", 30)], {"only": 1.0}),
        # Among several, a missing weight is 0.
        ([dest("old"), dest("new", 100)], {"new": 1.0}),
        ([dest("stable", 100), dest("canary", 0)], {"stable": 1.0}),
        # Nothing carries weight: the mesh answers 503 itself.
        ([dest("stable", 0), dest("canary", 0)], {"503": 1.0}),
        ([dest("stable"), dest("canary")], {"503": 1.0}),
    ],
)
def test_weights(destinations: list[dict[str, Any]], expected: dict[str, float]) -> None:
    observed = shares(weighted(*destinations), Request("llm"))
    assert set(observed) == {key for key, share in expected.items() if share > 0}
    for key, share in expected.items():
        assert observed.get(key, 0.0) == pytest.approx(share, abs=SHARE_TOLERANCE), observed


def test_zero_weights_answer_503_without_destination_or_mirror() -> None:
    table = weighted(dest("stable", 0), dest("canary", 0), mirror={"host": "shadow"})
    assert one(table, Request("llm")) == RouteResult(503, route="primary", virtual_service="llm/chat")
    assert one([vs({"name": "empty", "route": []})], Request("llm")).status == 503


def test_same_seed_same_picks() -> None:
    table = weighted(
        dest("stable", 50), dest("canary", 50), mirror={"host": "shadow"}, mirrorPercentage={"value": 50}
    )
    rng_a, rng_b = seeded(42), seeded(42)
    assert [route(table, Request("llm"), rng_a) for _ in range(200)] == [
        route(table, Request("llm"), rng_b) for _ in range(200)
    ]


# ---- mirror ----


@pytest.mark.parametrize(
    ("route_fields", "expected_share"),
    [
        ({"mirror": {"host": "shadow"}, "mirrorPercentage": {"value": 25}}, 0.25),
        ({"mirror": {"host": "shadow"}, "mirrorPercentage": {"value": 0.5}}, 0.005),
        ({"mirror": {"host": "shadow"}}, 1.0),  # no percentage: every request
        ({"mirror": {"host": "shadow"}, "mirrorPercentage": {"value": 100}}, 1.0),
        ({"mirror": {"host": "shadow"}, "mirrorPercentage": {"value": 0}}, 0.0),
        ({"mirror": {"host": "shadow"}, "mirrorPercentage": {}}, 0.0),
        ({"mirrors": [{"destination": {"host": "shadow"}, "percentage": {"value": 40}}]}, 0.4),
        ({"mirrors": [{"destination": {"host": "shadow"}}]}, 1.0),
        ({}, 0.0),
    ],
)
def test_mirror_share(route_fields: dict[str, Any], expected_share: float) -> None:
    table = weighted(dest("stable", 90), dest("canary", 10), **route_fields)
    rng = seeded(3)
    served: Counter[str] = Counter()
    mirrored = 0
    for _ in range(PICKS):
        result = route(table, Request("llm"), rng)
        assert result.destination is not None
        served[result.destination.service] += 1
        if result.mirror is not None:
            assert result.mirror.fqdn == "shadow.llm.svc.cluster.local"
            mirrored += 1
    assert mirrored / PICKS == pytest.approx(expected_share, abs=SHARE_TOLERANCE)
    # Mirroring never takes traffic from the weighted destinations.
    assert served["stable"] / PICKS == pytest.approx(0.9, abs=SHARE_TOLERANCE)


def test_mirror_keeps_subset_and_port() -> None:
    table = weighted(dest("stable"), mirror={"host": "llm-claude", "subset": "v2", "port": {"number": 8000}})
    result = one(table, Request("llm"))
    assert result.mirror == Destination("llm-claude", "llm", "llm-claude.llm.svc.cluster.local", "v2", 8000)
    assert result.mirrors == (result.mirror,)


# ---- routes that answer themselves ----


def test_direct_response_and_redirect() -> None:
    table = [
        vs(
            {"name": "gone", "match": [{"uri": {"prefix": "/v0"}}], "directResponse": {"status": 410}},
            {"name": "moved", "match": [{"uri": {"prefix": "/old"}}], "redirect": {"uri": "/v1"}},
            {
                "name": "found",
                "match": [{"uri": {"prefix": "/preview"}}],
                "redirect": {"uri": "/v1", "redirectCode": 302},
            },
        )
    ]
    assert one(table, Request("llm", path="/v0/x")) == RouteResult(
        410, route="gone", virtual_service="llm/chat"
    )
    assert one(table, Request("llm", path="/old")).status == 301
    assert one(table, Request("llm", path="/preview")).status == 302


def test_unnamed_routes_are_named_by_index() -> None:
    table = [vs({"match": [{"uri": {"prefix": "/a"}}], "route": [dest("a")]}, {"route": [dest("b")]})]
    assert one(table, Request("llm", path="/b")).route == "http[1]"


# ---- what the destination receives: header operations and authority ----

LONE, WEIGHTED = "lone", "weighted"
SHAPES = (LONE, WEIGHTED)


def picked_route(
    route_headers: dict[str, Any] | None,
    destination_headers: dict[str, Any] | None,
    shape: str,
    **route_fields: Any,
) -> dict[str, Any]:
    """A route to `picked`: alone (Istio merges the operations into one set), or at weight 100 beside `other`
    at 0 (the picked one's operations go on Envoy's weighted cluster). `other` sets x-other, which the
    request must never carry: only the picked destination's operations apply."""
    picked: dict[str, Any] = dest("picked", None if shape == LONE else 100)
    if destination_headers is not None:
        picked["headers"] = destination_headers
    destinations = [picked]
    if shape == WEIGHTED:
        destinations.append({**dest("other", 0), "headers": {"request": {"set": {"x-other": "1"}}}})
    http: dict[str, Any] = {"name": "primary", "route": destinations, **route_fields}
    if route_headers is not None:
        http["headers"] = route_headers
    return http


def received(
    route_headers: dict[str, Any] | None,
    destination_headers: dict[str, Any] | None,
    client_headers: dict[str, str],
    shape: str,
) -> dict[str, str]:
    result = one(
        [vs(picked_route(route_headers, destination_headers, shape))], Request("llm", headers=client_headers)
    )
    assert result.destination is not None
    assert result.destination.service == "picked"
    assert "x-other" not in result.headers
    return dict(result.headers)


def request_ops(**operations: Any) -> dict[str, Any]:
    return {"request": operations}


# One set of operations behaves the same at either level and in either shape: (operations, client, received).
SINGLE_LEVEL = [
    ({"set": {"x-model": "gpt-4o"}}, {}, {"x-model": "gpt-4o"}),
    # `set` replaces what the client sent; names are case-insensitive and received lower-case.
    ({"set": {"X-Variant": "stable"}}, {"x-variant": "canary"}, {"x-variant": "stable"}),
    ({"add": {"x-tag": "b"}}, {"x-tag": "a"}, {"x-tag": "a, b"}),
    ({"add": {"x-tag": "b"}}, {}, {"x-tag": "b"}),
    ({"remove": ["x-debug"]}, {"x-debug": "1", "x-keep": "2"}, {"x-keep": "2"}),
    ({"remove": ["X-Debug"]}, {"x-debug": "1"}, {}),
    ({"remove": ["x-absent"]}, {"x-keep": "2"}, {"x-keep": "2"}),
    # Removals come first, then sets, then adds, whatever the order they are written in.
    ({"set": {"x-a": "new"}, "remove": ["x-a"]}, {"x-a": "old"}, {"x-a": "new"}),
    ({"add": {"x-a": "2"}, "set": {"x-a": "1"}}, {"x-a": "0"}, {"x-a": "1, 2"}),
    # An empty value is never written (Envoy's keep_empty_value is off).
    ({"set": {"x-a": ""}}, {"x-a": "kept"}, {"x-a": "kept"}),
    ({"add": {"x-b": ""}}, {}, {}),
    # The authority is rewritten, never sent as a header; `:`-names and removing `host` are dropped.
    ({"set": {"host": "elsewhere", ":authority": "other"}}, {"x-a": "1"}, {"x-a": "1"}),
    ({"set": {":path": "/x"}, "remove": ["host", ":path"]}, {"x-a": "1"}, {"x-a": "1"}),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("operations", "client", "expected"), SINGLE_LEVEL)
def test_route_level_operations(
    shape: str, operations: dict[str, Any], client: dict[str, str], expected: dict[str, str]
) -> None:
    assert received(request_ops(**operations), None, client, shape) == expected


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("operations", "client", "expected"), SINGLE_LEVEL)
def test_destination_level_operations(
    shape: str, operations: dict[str, Any], client: dict[str, str], expected: dict[str, str]
) -> None:
    assert received(None, request_ops(**operations), client, shape) == expected


@pytest.mark.parametrize(
    ("route_level", "destination_level", "client", "lone_receives", "weighted_receives"),
    [
        # Both set one name: a lone destination's set comes later in the merged set; a weighted cluster's
        # operations are applied before the route's.
        ({"set": {"x-v": "route"}}, {"set": {"x-v": "dest"}}, {}, {"x-v": "dest"}, {"x-v": "route"}),
        # A route-level removal: before every set when merged, after the weighted cluster's set otherwise.
        ({"remove": ["x-v"]}, {"set": {"x-v": "dest"}}, {"x-v": "c"}, {"x-v": "dest"}, {}),
        ({"set": {"x-v": "route"}}, {"remove": ["x-v"]}, {"x-v": "c"}, {"x-v": "route"}, {"x-v": "route"}),
        ({"add": {"x-t": "r"}}, {"add": {"x-t": "d"}}, {"x-t": "c"}, {"x-t": "c, r, d"}, {"x-t": "c, d, r"}),
        # Different names simply add up.
        (
            {"set": {"x-experiment-id": "exp-1"}},
            {"set": {"x-variant": "stable"}},
            {"x-user-id": "u1"},
            {"x-user-id": "u1", "x-experiment-id": "exp-1", "x-variant": "stable"},
            {"x-user-id": "u1", "x-experiment-id": "exp-1", "x-variant": "stable"},
        ),
    ],
)
def test_route_and_destination_operations_together(
    route_level: dict[str, Any],
    destination_level: dict[str, Any],
    client: dict[str, str],
    lone_receives: dict[str, str],
    weighted_receives: dict[str, str],
) -> None:
    route_ops, destination_ops = request_ops(**route_level), request_ops(**destination_level)
    assert received(route_ops, destination_ops, client, LONE) == lone_receives
    assert received(route_ops, destination_ops, client, WEIGHTED) == weighted_receives


def test_matches_read_the_client_headers_not_the_rewritten_ones() -> None:
    table = [
        vs(
            {
                "name": "override",
                "match": [{"headers": {"x-experiment": {"exact": "canary"}}}],
                "headers": request_ops(remove=["x-experiment"], set={"x-variant": "canary"}),
                "route": [dest("canary")],
            },
            {
                "name": "primary",
                "headers": request_ops(set={"x-experiment": "canary"}),
                "route": [dest("stable")],
            },
        )
    ]
    pinned = one(table, Request("llm", headers={"x-experiment": "canary"}))
    assert (pinned.route, dict(pinned.headers)) == ("override", {"x-variant": "canary"})
    # The primary route sets the header the override matches; the request it receives was routed already.
    plain = one(table, Request("llm"))
    assert (plain.route, dict(plain.headers)) == ("primary", {"x-experiment": "canary"})


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("route_fields", "destination_headers", "host", "authority"),
    [
        ({}, None, "llm", "llm"),
        ({}, None, "llm.llm.svc.cluster.local:80", "llm.llm.svc.cluster.local:80"),
        ({"headers": request_ops(set={"host": "gpt.internal"})}, None, "llm", "gpt.internal"),
        ({"headers": request_ops(add={":authority": "gpt.internal"})}, None, "llm", "gpt.internal"),
        # `set` wins over `add`; `rewrite.authority` wins over both.
        ({"headers": request_ops(set={"host": "a"}, add={"host": "b"})}, None, "llm", "a"),
        ({"headers": request_ops(set={"host": "a"}), "rewrite": {"authority": "r"}}, None, "llm", "r"),
        # A destination's rewrite applies unless the route has one.
        ({}, request_ops(set={"host": "d"}), "llm", "d"),
        ({"headers": request_ops(set={"host": "a"})}, request_ops(set={"host": "d"}), "llm", "a"),
        ({"rewrite": {"authority": "r"}}, request_ops(set={"host": "d"}), "llm", "r"),
    ],
)
def test_authority_received(
    shape: str,
    route_fields: dict[str, Any],
    destination_headers: dict[str, Any] | None,
    host: str,
    authority: str,
) -> None:
    fields = dict(route_fields)
    http = picked_route(fields.pop("headers", None), destination_headers, shape, **fields)
    assert one([vs(http)], Request(host)).authority == authority


def test_the_mesh_own_answers_carry_nothing_received() -> None:
    gone = one(
        [vs({"directResponse": {"status": 410}, "headers": request_ops(set={"x-a": "1"})})], Request("llm")
    )
    unrouted = one([], Request("llm", headers={"x-a": "1"}))
    for result in (gone, unrouted):
        assert (dict(result.headers), result.authority, result.mirror_authority) == ({}, None, None)


# ---- what a mirror copy receives ----


@pytest.mark.parametrize("shape", SHAPES)
def test_mirror_copies_carry_the_route_and_picked_destination_operations(shape: str) -> None:
    """Envoy copies the request for its mirrors after the route's (and the picked weighted cluster's) header
    operations: a copy carries what the destination receives."""
    http = picked_route(
        request_ops(set={"x-experiment-id": "exp-1"}, remove=["x-debug"]),
        request_ops(set={"x-variant": "stable"}),
        shape,
        mirrors=[{"destination": {"host": "shadow"}}],
    )
    result = one([vs(http)], Request("llm:8080", headers={"x-user-id": "u1", "x-debug": "1"}))
    assert result.mirrors == (destination_of({"host": "shadow"}, NS),)
    assert dict(result.headers) == {"x-user-id": "u1", "x-experiment-id": "exp-1", "x-variant": "stable"}
    # Istio since 1.28 leaves the copy's authority as it is.
    assert (result.authority, result.mirror_authority) == ("llm:8080", "llm:8080")


@pytest.mark.parametrize(
    ("route_fields", "host", "with_suffix", "without_suffix"),
    [
        ({"mirror": {"host": "shadow"}}, "llm", "llm-shadow", "llm"),
        (
            {"mirror": {"host": "shadow"}},
            "llm.llm.svc.cluster.local",
            "llm.llm.svc.cluster.local-shadow",
            "llm.llm.svc.cluster.local",
        ),
        ({"mirror": {"host": "shadow"}}, "llm.llm:80", "llm.llm-shadow:80", "llm.llm:80"),
        # The suffix goes on the authority after its rewrite, not on the mirror's host.
        (
            {"mirror": {"host": "shadow"}, "rewrite": {"authority": "gpt.internal"}},
            "llm",
            "gpt.internal-shadow",
            "gpt.internal",
        ),
        ({"mirror": {"host": "shadow"}, "mirrorPercentage": {"value": 0}}, "llm", None, None),
        ({}, "llm", None, None),
    ],
)
def test_mirror_authority(
    route_fields: dict[str, Any], host: str, with_suffix: str | None, without_suffix: str | None
) -> None:
    table = weighted(dest("stable"), **route_fields)
    suffixed = route(table, Request(host), seeded(1), shadow_host_suffix=True)
    assert (suffixed.mirror_authority, one(table, Request(host)).mirror_authority) == (
        with_suffix,
        without_suffix,
    )
    # The destination itself never sees the suffix.
    assert suffixed.authority == route_fields.get("rewrite", {}).get("authority", host)


@pytest.mark.parametrize(
    ("authority", "shadow"),
    [
        ("llm", "llm-shadow"),
        ("llm:8080", "llm-shadow:8080"),
        ("10.0.0.7:80", "10.0.0.7-shadow:80"),
        # The port starts at the last colon outside a bracketed IPv6 literal.
        ("[fd00::1]:8080", "[fd00::1]-shadow:8080"),
        ("[fd00::1]", "[fd00::1]-shadow"),
    ],
)
def test_shadow_authority(authority: str, shadow: str) -> None:
    assert shadow_authority(authority) == shadow
