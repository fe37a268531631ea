"""Pure edits of one managed VirtualService route for experiments: the shadow mirror, the dimension headers on
the variants' destinations, and the override and sticky-bucket routes placed ahead of the managed route.

Everything added here can be found again and taken away without touching the user's own fields:
- generated routes are named `<managed route key>--mro-<kind>` and are removed by that prefix;
- the dimension headers are the four names of `api.DIMENSION_HEADERS` in a destination's
  `headers.request.set` (reserved on managed destinations: a value the user set there is replaced, and
  removed with the experiment);
- our mirror is the one whose destination is the canary (in `mirror` or in the `mirrors` list).
So the kill switch (a write without experiment and without mirror) gives back the user's route exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

from modelrollout.api import DIMENSION_HEADERS
from modelrollout.routing.buckets import bucket_regex, stable_bucket_regex
from modelrollout.routing.router import ExperimentRoutes, RoutingProblem

GENERATED_MARK = "--mro-"
# Route fields that say where and how a request goes; a generated route sets its own and copies the rest
# (timeouts, retries, fault injection, CORS, header edits) from the managed route it stands in front of.
_ROUTING_FIELDS = ("name", "match", "route", "mirror", "mirrors", "mirrorPercentage")

Route = dict[str, Any]
Matches = Callable[[dict[str, Any]], bool]


def generated_prefix(key: str) -> str:
    return f"{key}{GENERATED_MARK}"


def is_generated(route: Route) -> bool:
    return GENERATED_MARK in str(route.get("name") or "")


def _generated_for(keys: Iterable[str]) -> Callable[[Route], bool]:
    prefixes = tuple(generated_prefix(key) for key in keys)
    return lambda route: str(route.get("name") or "").startswith(prefixes)


def without_generated(http: list[Route], keys: Iterable[str]) -> list[Route]:
    """The http routes without the routes generated for the managed routes `keys`."""
    generated = _generated_for(keys)
    return [route for route in http if not generated(route)]


def generated_of(http: list[Route], keys: Iterable[str]) -> list[Route]:
    """The routes generated for the managed routes `keys`, in order."""
    return list(filter(_generated_for(keys), http))


# ---- dimension headers ----


def _request_set(entry: dict[str, Any]) -> dict[str, Any]:
    return dict(((entry.get("headers") or {}).get("request") or {}).get("set") or {})


def strip_dimensions(entry: dict[str, Any]) -> None:
    """Remove the dimension headers from a destination's `headers.request.set`, and the containers that
    leaves empty."""
    headers = entry.get("headers")
    request = (headers or {}).get("request")
    present = (request or {}).get("set")
    if not present or not any(name in present for name in DIMENSION_HEADERS):
        return
    assert headers is not None  # noqa: S101 - present implies it
    assert request is not None  # noqa: S101 - present implies it
    kept = {name: value for name, value in present.items() if name not in DIMENSION_HEADERS}
    if kept:
        request["set"] = kept
        return
    del request["set"]
    if not request:
        del headers["request"]
    if not headers:
        del entry["headers"]


def set_dimensions(entry: dict[str, Any], values: tuple[tuple[str, str], ...]) -> None:
    if not values:
        return
    headers = entry.setdefault("headers", {})
    request = headers.setdefault("request", {})
    request["set"] = {**(request.get("set") or {}), **dict(values)}


def dimensions_of(entry: dict[str, Any]) -> dict[str, str]:
    return {name: str(value) for name, value in _request_set(entry).items() if name in DIMENSION_HEADERS}


# ---- the shadow mirror ----


def strip_mirror(route: Route, ours: Matches) -> None:
    """Remove the mirror to any destination `ours` recognises (the canary, or a superseded one)."""
    mirror = route.get("mirror")
    if isinstance(mirror, dict) and ours(mirror):
        del route["mirror"]
        route.pop("mirrorPercentage", None)
    mirrors = route.get("mirrors")
    if isinstance(mirrors, list):
        kept = [m for m in mirrors if not ours((m or {}).get("destination") or {})]
        if len(kept) != len(mirrors):
            if kept:
                route["mirrors"] = kept
            else:
                del route["mirrors"]


def _percent(value: Any) -> int:
    share = 100.0 if value is None else float((value or {}).get("value", 0.0))
    return max(0, min(100, round(share)))


def mirror_percent(route: Route, ours: Matches) -> int:
    """The percent of the route's traffic mirrored to a destination `ours` recognises."""
    found = 0
    mirror = route.get("mirror")
    if isinstance(mirror, dict) and ours(mirror):
        found = max(found, _percent(route.get("mirrorPercentage")))
    for entry in route.get("mirrors") or []:
        if ours((entry or {}).get("destination") or {}):
            found = max(found, _percent((entry or {}).get("percentage")))
    return found


def add_mirror(route: Route, destination: dict[str, Any], percent: int, where: str) -> None:
    """Mirror `percent` of the route's traffic to `destination`. A route that already mirrors with the
    `mirrors` list gets one entry more; one that mirrors with the single `mirror` field elsewhere cannot take
    a second mirror there (Istio allows one), and the user is told to switch to `mirrors`."""
    if not 1 <= percent <= 100:
        raise ValueError(f"mirror percent must be in 1..100, not {percent!r}")
    if isinstance(route.get("mirrors"), list):
        route["mirrors"].append({"destination": copy.deepcopy(destination), "percentage": {"value": percent}})
        return
    if route.get("mirror"):
        raise RoutingProblem(
            "ExperimentConflict",
            f"{where} already mirrors to {route['mirror'].get('host')} with the single `mirror` field, "
            "which takes no second mirror; a shadow stage needs the route to use the `mirrors` list",
        )
    route["mirror"] = copy.deepcopy(destination)
    route["mirrorPercentage"] = {"value": percent}


# ---- override and bucket routes ----


def _with_header(
    blocks: list[dict[str, Any]] | None, header: str, condition: dict[str, str], where: str
) -> list[dict[str, Any]]:
    """The managed route's match blocks, each also requiring `header` to fit `condition`: the generated route
    then fits exactly the requests the managed route fits that carry the header. A block that already matches
    on the header cannot be combined without changing what it means."""
    if not blocks:
        return [{"headers": {header: condition}}]
    combined = []
    for original in blocks:
        block = copy.deepcopy(original or {})
        if header in (block.get("headers") or {}):
            raise RoutingProblem(
                "ExperimentConflict",
                f"{where} already matches on header {header!r}: an experiment route on the same header "
                "ahead of it would change which requests it takes",
            )
        block["headers"] = {**(block.get("headers") or {}), header: condition}
        combined.append(block)
    return combined


def experiment_routes(
    managed: Route,
    key: str,
    experiment: ExperimentRoutes,
    *,
    entries: dict[str, dict[str, Any]],
    weight: int,
    where: str,
) -> list[Route]:
    """The routes to place right before `managed` (`entries`: its stable and canary destinations, with their
    dimension headers): overrides (in order), then at a weight strictly between 0
    and 100 the sticky bucket routes (buckets 0 .. weight-1 to the canary, the others to stable). At 0 and
    100 the weighted route already sends every request to one variant, so bucket routes would add nothing."""
    base = {name: copy.deepcopy(value) for name, value in managed.items() if name not in _ROUTING_FIELDS}

    def generated(kind: str, header: str, condition: dict[str, str], variant: str) -> Route:
        entry = copy.deepcopy(entries[variant])
        entry["weight"] = 100
        return {
            "name": f"{generated_prefix(key)}{kind}",
            "match": _with_header(managed.get("match"), header, condition, where),
            **base,
            "route": [entry],
        }

    routes = [
        generated(f"override-{number}", override.header, {"exact": override.value}, override.variant)
        for number, override in enumerate(experiment.overrides)
    ]
    if experiment.bucket_header and 0 < weight < 100:
        canary_buckets, stable_buckets = bucket_regex(weight), stable_bucket_regex(weight)
        assert canary_buckets is not None  # noqa: S101 - 0 < weight
        assert stable_buckets is not None  # noqa: S101 - weight < 100
        routes.append(
            generated("buckets-canary", experiment.bucket_header, {"regex": canary_buckets}, "canary")
        )
        routes.append(
            generated("buckets-stable", experiment.bucket_header, {"regex": stable_buckets}, "stable")
        )
    return routes
