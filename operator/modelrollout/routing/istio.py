"""Pure transforms of an Istio VirtualService, as the plain dict the Kubernetes API returns.

The VirtualService belongs to the user: these functions change only the weights of the managed routes (and
add the canary destination where it is missing), what an experiment adds (a shadow mirror, dimension
headers, override and bucket routes: see `routing.experiment`) and the ownership annotation. Every function
that returns a VirtualService returns a new dict and leaves its input untouched, so the caller can compare and
skip no-op writes. No I/O, no Kubernetes client: the import-linter contract keeps it that way.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelrollout.routing import experiment as extras
from modelrollout.routing.router import (
    Backend,
    ExperimentRoutes,
    RouteView,
    RouteWrite,
    RoutingConflict,
    RoutingProblem,
)

MANAGED_BY = "modelrollout.io/managed-by"
# Owner -> the return to stable its latest write made (see api.RouteReturn); gone with its next write.
RETURNING = "modelrollout.io/returning"

_CLUSTER_SUFFIX = "svc.cluster.local"
_NEVER = datetime.min.replace(tzinfo=UTC)

VirtualService = dict[str, Any]


def virtual_service_ref(vs: VirtualService) -> str:
    metadata = vs.get("metadata") or {}
    name = metadata.get("name", "?")
    namespace = metadata.get("namespace")
    return f"{namespace}/{name}" if namespace else str(name)


def _http_routes(vs: VirtualService) -> list[dict[str, Any]]:
    return list((vs.get("spec") or {}).get("http") or [])


def _route_label(vs: VirtualService, index: int) -> str:
    name = _http_routes(vs)[index].get("name")
    return f"route {name!r}" if name else f"route {route_key(vs, index)}"


# ---- route selection ----


def managed_route_indexes(vs: VirtualService, routes: list[str] | None) -> list[int]:
    """Indexes into spec.http of the routes to manage, in ascending order.

    Without names the VirtualService must have exactly one http route: guessing among several could move
    traffic the user meant to pin (a header route to the canary, say)."""
    # Routes generated for an experiment stand in front of the managed ones and are never managed themselves.
    every = _http_routes(vs)
    user = [index for index, route in enumerate(every) if not extras.is_generated(route)]
    http = [every[index] for index in user]
    where = f"VirtualService {virtual_service_ref(vs)}"
    if not routes:
        if len(http) == 1:
            return [user[0]]
        if not http:
            raise RoutingProblem("RouteNotFound", f"{where} has no http route")
        raise RoutingProblem(
            "AmbiguousRoute",
            f"{where} has {len(http)} http routes; set spec.trafficRouting.istio.routes to name the ones "
            "this rollout manages",
        )
    indexes: list[int] = []
    missing: list[str] = []
    for wanted in dict.fromkeys(routes):
        found = [user[i] for i, route in enumerate(http) if route.get("name") == wanted]
        if not found:
            missing.append(wanted)
        elif len(found) > 1:
            raise RoutingProblem("AmbiguousRoute", f"{where} has {len(found)} http routes named {wanted!r}")
        else:
            indexes.append(found[0])
    if missing:
        names = [route["name"] for route in http if route.get("name")]
        present = f"its named http routes are {', '.join(map(repr, names))}" if names else "it names no route"
        raise RoutingProblem(
            "RouteNotFound",
            f"{where} has no http route named {', '.join(map(repr, missing))} ({present})",
        )
    return sorted(indexes)


# ---- host matching ----


def canonical_host(host: str, namespace: str | None) -> str:
    """The FQDN a Service host stands for, as seen from the VirtualService's namespace.

    `llm`, `llm.NS`, `llm.NS.svc` and `llm.NS.svc.cluster.local` all name the same Service; any other name
    (another namespace, an external host) stands for itself."""
    host = host.lower().rstrip(".")
    if not namespace:
        return host
    if "." not in host:
        return f"{host}.{namespace}.{_CLUSTER_SUFFIX}"
    for suffix in (f".{namespace}", f".{namespace}.svc"):
        short = host.removesuffix(suffix)
        if short != host and short and "." not in short:
            return f"{short}.{namespace}.{_CLUSTER_SUFFIX}"
    return host


def hosts_match(a: str, b: str, namespace: str | None) -> bool:
    return canonical_host(a, namespace) == canonical_host(b, namespace)


def destination_matches(backend: Backend, destination: dict[str, Any], namespace: str | None) -> bool:
    """Whether a route destination is this backend: same Service, same subset, and the backend's port if
    it names one."""
    if not hosts_match(backend.host, str(destination.get("host", "")), namespace):
        return False
    if backend.subset != (destination.get("subset") or None):
        return False
    if backend.port is None:
        return True
    port = destination.get("port") or {}
    return bool(port.get("number") == backend.port)


def _describe_destination(destination: dict[str, Any]) -> str:
    text = str(destination.get("host", "<no host>"))
    if destination.get("subset"):
        text += f" subset {destination['subset']}"
    port = (destination.get("port") or {}).get("number")
    if port is not None:
        text += f" port {port}"
    return text


def _describe_backend(backend: Backend) -> str:
    return _describe_destination(_destination_of(backend))


def _destination_of(backend: Backend) -> dict[str, Any]:
    destination: dict[str, Any] = {"host": backend.host}
    if backend.subset is not None:
        destination["subset"] = backend.subset
    if backend.port is not None:
        destination["port"] = {"number": backend.port}
    return destination


# ---- weights ----


@dataclass(frozen=True)
class _Split:
    """Where the stable and canary destinations sit in one managed route's destination list."""

    destinations: list[dict[str, Any]]
    stable: int
    canary: int | None


def _split(
    vs: VirtualService,
    index: int,
    stable: Backend,
    canary: Backend,
    retiring: tuple[Backend, ...] = (),
) -> _Split:
    namespace = (vs.get("metadata") or {}).get("namespace")
    route = _http_routes(vs)[index]
    destinations: list[dict[str, Any]] = route.get("route") or []
    where = f"{_route_label(vs, index)} of VirtualService {virtual_service_ref(vs)}"
    stable_at: int | None = None
    canary_at: int | None = None
    unexpected: list[str] = []
    for position, entry in enumerate(destinations):
        destination = entry.get("destination") or {}
        is_stable = destination_matches(stable, destination, namespace)
        is_canary = destination_matches(canary, destination, namespace)
        if is_stable and is_canary:
            raise RoutingProblem(
                "UnexpectedDestination",
                f"{where}: destination {_describe_destination(destination)} matches both the stable "
                f"{_describe_backend(stable)} and the canary {_describe_backend(canary)}",
            )
        if is_stable and stable_at is None:
            stable_at = position
        elif is_canary and canary_at is None:
            canary_at = position
        elif any(destination_matches(old, destination, namespace) for old in retiring):
            continue  # a destination of a superseded pair, on its way out
        elif len(destinations) > 1 and not entry.get("weight"):
            # A destination at weight 0 carries no traffic: typically the previous stable, left in the route
            # after the promoted model became the new stable. It stays as the user wrote it.
            continue
        else:
            unexpected.append(_describe_destination(destination))
    if stable_at is None:
        routed = [_describe_destination(entry.get("destination") or {}) for entry in destinations]
        raise RoutingProblem(
            "HostNotInRoute",
            f"{where} has no destination for the stable host {_describe_backend(stable)} "
            f"(it routes to: {', '.join(routed) or 'nothing'})",
        )
    if unexpected:
        raise RoutingProblem(
            "UnexpectedDestination",
            f"{where} also routes to {', '.join(unexpected)}, which is neither the stable "
            f"{_describe_backend(stable)} nor the canary {_describe_backend(canary)} "
            "(or is one of them a second time)",
        )
    return _Split(destinations, stable_at, canary_at)


def _weight(destinations: list[dict[str, Any]], position: int | None) -> int:
    if position is None:
        return 0
    # Istio: a lone destination receives all traffic whatever its weight; among several, no weight is 0.
    if len(destinations) == 1:
        return 100
    weight = destinations[position].get("weight")
    return int(weight) if weight is not None else 0


def split_view(
    vs: VirtualService,
    indexes: list[int],
    stable: Backend,
    canary: Backend,
    retiring: tuple[Backend, ...] = (),
    *,
    experiment: ExperimentRoutes | None = None,
) -> RouteView:
    """The split between `stable` and `canary` in the managed routes. Not consistent when the routes
    disagree (in weights or mirror) or a route's stable and canary weights do not sum to 100 (a retiring
    destination that still carries traffic makes it so); the weight is then the largest canary weight seen,
    the mirror the largest share mirrored to the canary. `experiment_in_place` compares the routes and
    headers an experiment owns with those `experiment` adds at that weight (None: none at all)."""
    if not indexes:
        raise ValueError("no managed route to read")
    namespace = (vs.get("metadata") or {}).get("namespace")
    canary_weights: list[int] = []
    mirrors: list[int] = []
    consistent = True
    present = False
    http = _http_routes(vs)
    for index in indexes:
        split = _split(vs, index, stable, canary, retiring)
        stable_weight = _weight(split.destinations, split.stable)
        canary_weight = _weight(split.destinations, split.canary)
        consistent = consistent and stable_weight + canary_weight == 100
        present = present or split.canary is not None
        canary_weights.append(canary_weight)
        mirrors.append(
            extras.mirror_percent(http[index], lambda found: destination_matches(canary, found, namespace))
        )
    consistent = consistent and len(set(canary_weights)) == 1 and len(set(mirrors)) == 1
    desired = RouteWrite(
        stable=stable,
        canary=canary,
        canary_weight=max(canary_weights),
        mirror=max(mirrors),
        retire=retiring,
        experiment=experiment,
    )
    try:
        in_place = experiment_in_place(vs, indexes, desired)
    except RoutingProblem:
        # The experiment cannot be placed on this route (ExperimentConflict): not in place. Writing it fails
        # with the reason (WriteFailed), while a return to stable, which writes no experiment, still can.
        in_place = False
    return RouteView(
        canary_weight=max(canary_weights),
        consistent=consistent,
        canary_present=present,
        mirror=max(mirrors),
        experiment_in_place=in_place,
    )


def with_split(vs: VirtualService, indexes: list[int], desired: RouteWrite) -> tuple[VirtualService, bool]:
    """A copy of the VirtualService with stable at 100 - canary_weight and canary at canary_weight in every
    managed route, the `drop` destinations removed and the `retire` ones at weight 0, the canary mirrored at
    `desired.mirror` percent (or not at all), the experiment's routes and headers as `desired.experiment`
    says (or none), and whether that differs from the input. A missing canary destination is added right
    after the stable one; weights are always written explicitly so the split never depends on Istio's
    implicit single-destination rule."""
    weight = desired.canary_weight
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
        raise ValueError(f"canary weight must be an integer in 0..100, not {weight!r}")
    if isinstance(desired.mirror, bool) or not 0 <= desired.mirror <= 100:
        raise ValueError(f"mirror percent must be an integer in 0..100, not {desired.mirror!r}")
    # Dropping the pair's own canary: the return of a superseded pair, which leaves the route altogether.
    if desired.canary in desired.drop and (weight != 0 or desired.mirror or desired.experiment is not None):
        raise ValueError("a canary that leaves the route cannot keep weight, mirror or experiment routes")
    result = copy.deepcopy(vs)
    keys = [route_key(vs, index) for index in indexes]
    http: list[dict[str, Any]] = (result.get("spec") or {}).get("http") or []
    managed = [http[index] for index in indexes]
    if http:
        result["spec"]["http"] = http = extras.without_generated(http, keys)
    generated = [
        (route, _rewrite_route(result, _position(http, route), key, desired))
        for route, key in zip(managed, keys, strict=True)
    ]
    for route, routes in generated:
        index = _position(http, route)
        http[index:index] = routes
    return result, result != vs


def _position(http: list[dict[str, Any]], route: dict[str, Any]) -> int:
    """Where this very route object is (not an equal one: two user routes may be written alike)."""
    return next(index for index, candidate in enumerate(http) if candidate is route)


def _rewrite_route(vs: VirtualService, index: int, key: str, desired: RouteWrite) -> list[dict[str, Any]]:
    """Set one managed route (in place) as `desired` says; the experiment routes to put before it."""
    namespace = (vs.get("metadata") or {}).get("namespace")
    drop_canary = desired.canary in desired.drop
    retiring = (*desired.drop, *desired.retire)

    def role(destination: dict[str, Any]) -> str:
        if destination_matches(desired.stable, destination, namespace):
            return "pair"
        if destination_matches(desired.canary, destination, namespace):
            return "drop" if drop_canary else "pair"
        if any(destination_matches(b, destination, namespace) for b in desired.drop):
            return "drop"
        if any(destination_matches(b, destination, namespace) for b in desired.retire):
            return "retire"
        return "other"

    route = _http_routes(vs)[index]
    kept = []
    for entry in route.get("route") or []:
        kind = role(entry.get("destination") or {})
        if kind == "drop":
            continue
        if kind == "retire":
            entry["weight"] = 0
        extras.strip_dimensions(entry)
        kept.append(entry)
    route["route"] = kept
    extras.strip_mirror(
        route,
        lambda found: any(destination_matches(b, found, namespace) for b in (desired.canary, *retiring)),
    )
    split = _split(vs, index, desired.stable, desired.canary, retiring)
    split.destinations[split.stable]["weight"] = 100 - desired.canary_weight
    if split.canary is None and drop_canary:
        return []
    if split.canary is None:
        canary_at = split.stable + 1
        split.destinations.insert(
            canary_at, {"destination": _destination_of(desired.canary), "weight": desired.canary_weight}
        )
    else:
        canary_at = split.canary
        split.destinations[canary_at]["weight"] = desired.canary_weight
    where = f"{_route_label(vs, index)} of VirtualService {virtual_service_ref(vs)}"
    if desired.mirror:
        extras.add_mirror(route, _destination_of(desired.canary), desired.mirror, where)
    experiment = desired.experiment
    if experiment is None:
        return []
    stable_entry, canary_entry = split.destinations[split.stable], split.destinations[canary_at]
    extras.set_dimensions(stable_entry, experiment.stable_headers)
    extras.set_dimensions(canary_entry, experiment.canary_headers)
    return extras.experiment_routes(
        route,
        key,
        experiment,
        entries={"stable": stable_entry, "canary": canary_entry},
        weight=desired.canary_weight,
        where=where,
    )


def _experiment_part(vs: VirtualService, indexes: list[int]) -> tuple[list[Any], list[Any]]:
    """What an experiment owns in the managed routes: its generated routes and the dimension headers of the
    managed destinations."""
    http = _http_routes(vs)
    keys = [route_key(vs, index) for index in indexes]
    headers = [
        [
            (entry.get("destination"), dimensions)
            for entry in http[index].get("route") or []
            if (dimensions := extras.dimensions_of(entry))
        ]
        for index in indexes
    ]
    return extras.generated_of(http, keys), headers


def experiment_in_place(vs: VirtualService, indexes: list[int], desired: RouteWrite) -> bool:
    """Whether the VirtualService holds exactly the routes and headers `desired.experiment` adds at
    `desired.canary_weight` (mirror and weights aside: they are read as numbers)."""
    found = _experiment_part(vs, indexes)
    if desired.experiment is None:
        # Nothing expected: in place when nothing is there, without computing a whole new VirtualService on
        # every view of every rollout.
        return not found[0] and not any(found[1])
    expected, _ = with_split(vs, indexes, desired)
    return found == _experiment_part(expected, _same_routes(vs, indexes, expected))


def _same_routes(vs: VirtualService, indexes: list[int], other: VirtualService) -> list[int]:
    """Indexes into `other` of the routes at `indexes` in `vs`, the two differing only in generated routes
    (the user's routes keep their order)."""

    def user_indexes(service: VirtualService) -> list[int]:
        return [i for i, route in enumerate(_http_routes(service)) if not extras.is_generated(route)]

    position = {index: n for n, index in enumerate(user_indexes(vs))}
    theirs = user_indexes(other)
    return [theirs[position[index]] for index in indexes]


# ---- claims: which ModelRollout manages which route ----


def route_key(vs: VirtualService, index: int) -> str:
    """How a claim names a route: its name, or `http[i]` for an unnamed one, i counting the user's routes
    only (routes generated for an experiment come and go in front of it)."""
    http = _http_routes(vs)
    name = http[index].get("name")
    if name:
        return str(name)
    return f"http[{sum(1 for route in http[:index] if not extras.is_generated(route))}]"


def claims_of(vs: VirtualService) -> dict[str, str]:
    """Route key -> owner (`namespace/name`) from the managed-by annotation.

    The annotation holds a JSON object; a plain `namespace/name` (what older versions wrote) claims every
    http route of the VirtualService."""
    annotations = (vs.get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(MANAGED_BY)
    if not raw:
        return {}
    text = str(raw).strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and all(isinstance(v, str) for v in parsed.values()):
            return {str(k): v for k, v in parsed.items() if v}
    http = _http_routes(vs)
    return {route_key(vs, i): text for i in range(len(http)) if not extras.is_generated(http[i])}


def owner_of(vs: VirtualService) -> str | None:
    """An owner of any route of the VirtualService, or None when no route is claimed."""
    return next(iter(claims_of(vs).values()), None)


def _with_annotation(vs: VirtualService, key: str, value: str | None) -> VirtualService:
    """A copy with annotation `key` set to `value` (None: removed, and the annotations map with it when
    nothing else is left in it)."""
    result = copy.deepcopy(vs)
    metadata = result.setdefault("metadata", {})
    annotations = dict(metadata.get("annotations") or {})
    if value is not None:
        annotations[key] = value
    else:
        annotations.pop(key, None)
    if annotations:
        metadata["annotations"] = annotations
    else:
        metadata.pop("annotations", None)
    return result


def _as_json_map(entries: dict[str, Any]) -> str | None:
    """An annotation's text for a map (sorted, compact), or None for an empty one."""
    return json.dumps(dict(sorted(entries.items())), separators=(",", ":")) if entries else None


def _with_claim_annotation(vs: VirtualService, claims: dict[str, str]) -> VirtualService:
    return _with_annotation(vs, MANAGED_BY, _as_json_map(claims))


def conflicting_owner(vs: VirtualService, keys: list[str], owner: str) -> str | None:
    """Another owner of one of `keys`, if any."""
    claims = claims_of(vs)
    return next((claims[k] for k in keys if claims.get(k) not in (None, owner)), None)


def with_claims(
    vs: VirtualService, keys: list[str], owner: str, take_over_from: str | None = None
) -> tuple[VirtualService, bool]:
    """A copy where `owner` claims the routes `keys`. Never takes a route from another owner, except from
    `take_over_from` (a claim whose owner no longer exists)."""
    claims = claims_of(vs)
    for key in keys:
        current = claims.get(key)
        if current is not None and current not in (owner, take_over_from):
            raise RoutingConflict(
                current,
                f"route {key!r} of VirtualService {virtual_service_ref(vs)} is managed by ModelRollout "
                f"{current}, not {owner}",
            )
        claims[key] = owner
    result = _with_claim_annotation(vs, claims)
    return result, result != vs


def without_claims(vs: VirtualService, owner: str) -> tuple[VirtualService, bool]:
    """A copy without `owner`'s claims; other owners' claims stay."""
    claims = claims_of(vs)
    kept = {key: who for key, who in claims.items() if who != owner}
    if kept == claims:
        return copy.deepcopy(vs), False
    result = _with_claim_annotation(vs, kept)
    return result, True


# ---- returns to stable recorded with the write that makes them ----


def returns_of(vs: VirtualService) -> dict[str, dict[str, Any]]:
    """Owner -> the return to stable recorded by that owner's latest write (a JSON object each). An
    annotation that is not such an object records nothing: the engine then sees no return, as before it."""
    annotations = (vs.get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(RETURNING)
    if not raw:
        return {}
    try:
        parsed = json.loads(str(raw))
    except ValueError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    return {str(owner): record for owner, record in parsed.items() if isinstance(record, dict)}


def with_return(
    vs: VirtualService, owner: str, record: dict[str, Any] | None, drop: tuple[str, ...] = ()
) -> VirtualService:
    """A copy where `owner`'s entry is `record` (None: no entry) and the owners `drop` have none. Every write
    of an owner sets its entry, so an entry always describes that owner's latest write."""
    returns = returns_of(vs)
    for gone in (owner, *drop):
        returns.pop(gone, None)
    if record is not None:
        returns[owner] = record
    text = _as_json_map(returns)
    if ((vs.get("metadata") or {}).get("annotations") or {}).get(RETURNING) == text:
        return vs
    return _with_annotation(vs, RETURNING, text)


# ---- who last wrote the spec ----


def _written_at(entry: dict[str, Any]) -> datetime:
    try:
        written = datetime.fromisoformat(str(entry["time"]))
    except (KeyError, ValueError):
        return _NEVER
    return written if written.tzinfo else written.replace(tzinfo=UTC)


def last_spec_writer(vs: VirtualService, own_field_manager: str) -> str | None:
    """The field manager, other than ours, that most recently wrote the spec: who to name when a weight
    drifted.

    managedFields times have one-second resolution, so on a tie the manager that owns spec.http wins: Istio's
    route lists are atomic, so whoever last changed a weight owns the whole of spec.http."""
    best: tuple[datetime, bool] | None = None
    writer: str | None = None
    for entry in (vs.get("metadata") or {}).get("managedFields") or []:
        manager = entry.get("manager")
        spec_fields = (entry.get("fieldsV1") or {}).get("f:spec")
        if not manager or manager == own_field_manager or spec_fields is None:
            continue
        key = (_written_at(entry), "f:http" in spec_fields)
        if best is None or key > best:
            best, writer = key, str(manager)
    return writer


def keeping_what_is_read(vs: VirtualService) -> VirtualService:
    """The VirtualService as the operator keeps it: of managedFields only what `last_spec_writer` reads (the
    manager, the time, and whether the entry owns spec and spec.http).

    The server's field sets describe every route, destination and weight again, several times over: most of
    what a cached VirtualService weighs. Nothing is lost for writes: they are full replaces that leave
    managedFields out (the server keeps its own)."""
    meta = vs.get("metadata")
    if not isinstance(meta, dict) or not meta.get("managedFields"):
        return vs
    kept: list[dict[str, Any]] = []
    for entry in meta["managedFields"]:
        spec_fields = (entry.get("fieldsV1") or {}).get("f:spec") if isinstance(entry, dict) else None
        if spec_fields is None or not entry.get("manager"):
            continue  # last_spec_writer passes over it
        compact: dict[str, Any] = {"manager": entry["manager"], "fieldsV1": {"f:spec": {}}}
        if "time" in entry:
            compact["time"] = entry["time"]
        if "f:http" in spec_fields:
            compact["fieldsV1"]["f:spec"]["f:http"] = {}
        kept.append(compact)
    return {**vs, "metadata": {**meta, "managedFields": kept}}
