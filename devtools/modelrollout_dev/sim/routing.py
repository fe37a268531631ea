"""Route one request the way an Istio sidecar applies VirtualServices: pick the VirtualService for the host,
the first http route whose match fits, then a destination by weight, and maybe a mirror copy; and say what
the destination receives once the route's and the destination's header operations are applied.

Pure: VirtualServices are the plain dicts the API server returns, randomness comes from the caller's
`random.Random`, and nothing here does I/O.

What it reads and how (Istio's documented behaviour unless noted):
- Hosts are read relative to the VirtualService's namespace: `llm`, `llm.ns`, `llm.ns.svc` and
  `llm.ns.svc.cluster.local` all name Service `llm` in `ns`. A two-label name is `service.namespace` (as
  Kubernetes DNS resolves it); names of three or more labels other than `*.svc` stand for themselves. `*` and
  `*.suffix` wildcards are honoured; an exact host wins over a wildcard, the longest wildcard over a shorter
  one, and among several VirtualServices for the same host the oldest (then namespace/name) wins.
- A VirtualService bound to gateways that do not include `mesh` does not apply to sidecar traffic.
- Match blocks: `headers`, `withoutHeaders`, `uri`, `method`, `authority`, `queryParams` (exact, prefix, regex
  as a full match; an empty match means "present"), `ignoreUriCase`, `port`, `sourceNamespace`, `gateways`.
  A block with a condition this module does not know (e.g. `sourceLabels`) never fits: guessing could send
  traffic somewhere the VirtualService did not say.
- A lone destination receives all traffic whatever its weight; among several, a missing weight is 0. A route
  whose weights sum to 0 (or that has no destination) answers 503. `directResponse` and `redirect` answer
  themselves.
- `mirror` + `mirrorPercentage` (100 when absent) and the newer `mirrors` list make a copy only when the
  request was forwarded (a 404/503 of the mesh itself is never mirrored).
- Matches read the request as the client sent it; `headers.request` (set, add, remove) of the route and of
  the picked destination, and `rewrite.authority`, change only what the destination and the mirrors receive
  (`headers` explains how and in which order). Other rewrites (`rewrite.uri`) are not applied: nothing here
  reads the path a backend receives.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl

from modelrollout_dev.sim.headers import HeaderOperations, forwarded, shadow_authority

CLUSTER_DOMAIN = "svc.cluster.local"

ROUTED = 200
NOT_FOUND = 404
NO_HEALTHY_UPSTREAM = 503

_KNOWN_MATCH_KEYS = frozenset(
    {
        "name",
        "headers",
        "withoutHeaders",
        "uri",
        "method",
        "authority",
        "queryParams",
        "ignoreUriCase",
        "port",
        "sourceNamespace",
        "gateways",
        "statPrefix",
    }
)


@dataclass(frozen=True)
class Request:
    """One HTTP request as a sidecar sees it. Header names are case-insensitive (stored lower-case); `path`
    may carry a query string, which `uri` matches ignore and `queryParams` matches read."""

    host: str
    path: str = "/"
    headers: Mapping[str, str] = field(default_factory=dict)
    method: str = "POST"  # LLM APIs are POSTs
    port: int | None = None
    source_namespace: str | None = None

    def __post_init__(self) -> None:
        lowered = {str(name).lower(): str(value) for name, value in self.headers.items()}
        object.__setattr__(self, "headers", MappingProxyType(lowered))


@dataclass(frozen=True)
class Destination:
    """A Service (or external host) a request is sent to, with the names Istio's metrics label it by."""

    service: str  # `destination_service_name`: the Service name, or the whole host for a non-Service host
    namespace: str  # `destination_service_namespace`: the Service's, or the VirtualService's
    fqdn: str  # `destination_service`
    subset: str | None = None
    port: int | None = None

    @property
    def key(self) -> str:
        """`namespace/service[/subset][:port]`, a stable name for reports and stats."""
        text = f"{self.namespace}/{self.service}"
        if self.subset:
            text += f"/{self.subset}"
        if self.port is not None:
            text += f":{self.port}"
        return text


def _no_headers() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class RouteResult:
    """`status` is 200 when the request was forwarded to `destination` (whose backend then answers), else the
    mesh's own answer: 404 (no VirtualService or no route fits), 503 (no destination carries weight), or a
    route's `directResponse` / `redirect` status.

    A forwarded request also says what the destination receives: `headers` (lower-case names) and
    `authority`. Every mirror copy carries the same headers, with `mirror_authority` as its authority (None
    when there is no copy)."""

    status: int
    destination: Destination | None = None
    route: str | None = None  # the http route's name, or `http[i]` for an unnamed one
    virtual_service: str | None = None  # `namespace/name`
    mirrors: tuple[Destination, ...] = ()
    # Left out of the hash (a mapping has none); results still compare by it.
    headers: Mapping[str, str] = field(default_factory=_no_headers, hash=False)
    authority: str | None = None
    mirror_authority: str | None = None

    @property
    def mirror(self) -> Destination | None:
        return self.mirrors[0] if self.mirrors else None


@functools.lru_cache(maxsize=4096)  # pure, and called for every host of every VirtualService per request
def service_fqdn(host: str, namespace: str) -> str:
    """The name `host` stands for when written in (or sent to a VirtualService of) `namespace`."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("*"):
        return host
    labels = host.split(".")
    if len(labels) == 1:
        return f"{host}.{namespace}.{CLUSTER_DOMAIN}"
    if len(labels) == 2:
        return f"{host}.{CLUSTER_DOMAIN}"
    if len(labels) == 3 and labels[2] == "svc":
        return f"{host}.cluster.local"
    return host


def destination_of(spec: Mapping[str, Any], namespace: str) -> Destination:
    """A VirtualService `destination` ({host, subset, port: {number}}) read from the VS's namespace."""
    fqdn = service_fqdn(str(spec.get("host", "")), namespace)
    labels = fqdn.split(".")
    if len(labels) == 5 and fqdn.endswith(f".{CLUSTER_DOMAIN}"):
        service, service_namespace = labels[0], labels[1]
    else:
        service, service_namespace = fqdn, namespace
    port = (spec.get("port") or {}).get("number")
    return Destination(
        service=service,
        namespace=service_namespace,
        fqdn=fqdn,
        subset=str(spec["subset"]) if spec.get("subset") else None,
        port=int(port) if port is not None else None,
    )


def _namespace(vs: Mapping[str, Any]) -> str:
    return str((vs.get("metadata") or {}).get("namespace") or "default")


def _ref(vs: Mapping[str, Any]) -> str:
    return f"{_namespace(vs)}/{(vs.get('metadata') or {}).get('name', '?')}"


def _applies_to_mesh(vs: Mapping[str, Any]) -> bool:
    gateways = (vs.get("spec") or {}).get("gateways") or []
    return not gateways or "mesh" in gateways


def _host_rank(request_host: str, vs: Mapping[str, Any]) -> int | None:
    """How well the VirtualService's hosts name the request's host: None if not at all, else higher is more
    specific (an exact host beats every wildcard; a longer wildcard beats a shorter one)."""
    namespace = _namespace(vs)
    wanted = service_fqdn(request_host, namespace)
    best: int | None = None
    for host in (vs.get("spec") or {}).get("hosts") or []:
        written = service_fqdn(str(host), namespace)
        if written == wanted:
            return 1_000_000
        if written.startswith("*"):
            suffix = written[1:]
            if wanted.endswith(suffix):
                rank = len(suffix)
                best = rank if best is None else max(best, rank)
    return best


def select_virtual_service(
    virtual_services: Iterable[Mapping[str, Any]], host: str
) -> Mapping[str, Any] | None:
    """The VirtualService that serves `host` for mesh traffic, or None."""
    request_host = _strip_port(host)
    candidates: list[tuple[int, str, str, Mapping[str, Any]]] = []
    for vs in virtual_services:
        if not _applies_to_mesh(vs):
            continue
        rank = _host_rank(request_host, vs)
        if rank is not None:
            created = str((vs.get("metadata") or {}).get("creationTimestamp") or "")
            candidates.append((-rank, created, _ref(vs), vs))
    if not candidates:
        return None
    candidates.sort(key=lambda item: item[:3])
    return candidates[0][3]


def _strip_port(host: str) -> str:
    # `llm:8080` names host `llm`; a bracketed IPv6 literal keeps its colons.
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def string_matches(spec: Mapping[str, Any], value: str | None, *, ignore_case: bool = False) -> bool:
    """Istio's StringMatch (exact | prefix | regex, regex as a full match); `{}` means "present"."""
    if value is None:
        return False
    if "exact" in spec:
        expected = str(spec["exact"])
        return value.lower() == expected.lower() if ignore_case else value == expected
    if "prefix" in spec:
        expected = str(spec["prefix"])
        return value.lower().startswith(expected.lower()) if ignore_case else value.startswith(expected)
    if "regex" in spec:
        try:
            return re.fullmatch(str(spec["regex"]), value) is not None
        except re.error:
            return False  # Istio refuses such a VirtualService; here it simply never fits
    return True


def block_fits(block: Mapping[str, Any], request: Request) -> bool:
    """Whether every condition of one match block holds for the request."""
    if set(block) - _KNOWN_MATCH_KEYS:
        return False
    for name, spec in (block.get("headers") or {}).items():
        if not string_matches(spec or {}, request.headers.get(str(name).lower())):
            return False
    for name, spec in (block.get("withoutHeaders") or {}).items():
        if string_matches(spec or {}, request.headers.get(str(name).lower())):
            return False
    path, _, query = request.path.partition("?")
    if "uri" in block and not string_matches(
        block["uri"] or {}, path, ignore_case=bool(block.get("ignoreUriCase"))
    ):
        return False
    if "method" in block and not string_matches(block["method"] or {}, request.method):
        return False
    if "authority" in block and not string_matches(block["authority"] or {}, request.host):
        return False
    if "queryParams" in block:
        params = dict(parse_qsl(query, keep_blank_values=True))
        for name, spec in (block["queryParams"] or {}).items():
            if not string_matches(spec or {}, params.get(str(name))):
                return False
    if "port" in block and block["port"] != request.port:
        return False
    if "sourceNamespace" in block and block["sourceNamespace"] != request.source_namespace:
        return False
    gateways = block.get("gateways")
    return not gateways or "mesh" in gateways


def route_fits(http_route: Mapping[str, Any], request: Request) -> bool:
    """A route without `match` fits every request; otherwise any one of its blocks must fit."""
    blocks = http_route.get("match")
    if not blocks:
        return True
    return any(block_fits(block or {}, request) for block in blocks)


def _weights(entries: list[Mapping[str, Any]]) -> list[int]:
    if len(entries) == 1:
        return [100]
    return [max(0, int(entry.get("weight") or 0)) for entry in entries]


def _pick(entries: list[Mapping[str, Any]], rng: random.Random) -> Mapping[str, Any] | None:
    weights = _weights(entries)
    total = sum(weights)
    if total <= 0:
        return None
    point = rng.randrange(total)
    for entry, weight in zip(entries, weights, strict=True):
        if point < weight:
            return entry
        point -= weight
    raise AssertionError("unreachable: point < total")


def _mirrored(percentage: Any, rng: random.Random) -> bool:
    share = 100.0 if percentage is None else float((percentage or {}).get("value", 0.0))
    if share >= 100.0:
        return True
    return share > 0.0 and rng.random() * 100.0 < share


def _mirrors(http_route: Mapping[str, Any], namespace: str, rng: random.Random) -> tuple[Destination, ...]:
    copies: list[Destination] = []
    if http_route.get("mirror") and _mirrored(http_route.get("mirrorPercentage"), rng):
        copies.append(destination_of(http_route["mirror"], namespace))
    for mirror in http_route.get("mirrors") or []:
        if mirror.get("destination") and _mirrored(mirror.get("percentage"), rng):
            copies.append(destination_of(mirror["destination"], namespace))
    return tuple(copies)


def _route_operations(http_route: Mapping[str, Any]) -> HeaderOperations:
    """The route's header operations, with `rewrite.authority` winning over a `host` header operation (as
    Istio translates them)."""
    operations = HeaderOperations.of(http_route.get("headers"))
    rewritten = (http_route.get("rewrite") or {}).get("authority")
    return replace(operations, authority=str(rewritten)) if rewritten else operations


def route(
    virtual_services: Iterable[Mapping[str, Any]],
    request: Request,
    rng: random.Random,
    *,
    shadow_host_suffix: bool = False,
) -> RouteResult:
    """Where the mesh sends `request`, given the VirtualServices in force. `shadow_host_suffix`: mirror
    copies carry `-shadow` on their authority, as with istiod's DISABLE_SHADOW_HOST_SUFFIX=false (the
    default before Istio 1.28); by default they carry the authority unchanged, as Istio does since."""
    vs = select_virtual_service(virtual_services, request.host)
    if vs is None:
        return RouteResult(NOT_FOUND)
    namespace = _namespace(vs)
    for index, http_route in enumerate((vs.get("spec") or {}).get("http") or []):
        if not route_fits(http_route, request):
            continue
        name = str(http_route.get("name") or f"http[{index}]")
        if http_route.get("directResponse"):
            status = int(http_route["directResponse"].get("status", 200))
            return RouteResult(status, route=name, virtual_service=_ref(vs))
        if http_route.get("redirect"):
            status = int(http_route["redirect"].get("redirectCode") or 301)
            return RouteResult(status, route=name, virtual_service=_ref(vs))
        entries = [entry for entry in http_route.get("route") or [] if entry.get("destination")]
        picked = _pick(entries, rng) if entries else None
        if picked is None:
            return RouteResult(NO_HEALTHY_UPSTREAM, route=name, virtual_service=_ref(vs))
        received = forwarded(
            request.headers,
            request.host,
            _route_operations(http_route),
            HeaderOperations.of(picked.get("headers")),
            lone_destination=len(entries) == 1,
        )
        mirrors = _mirrors(http_route, namespace, rng)
        mirror_authority = None
        if mirrors:
            mirror_authority = (
                shadow_authority(received.authority) if shadow_host_suffix else received.authority
            )
        return RouteResult(
            ROUTED,
            destination_of(picked["destination"], namespace),
            route=name,
            virtual_service=_ref(vs),
            mirrors=mirrors,
            headers=received.headers,
            authority=received.authority,
            mirror_authority=mirror_authority,
        )
    return RouteResult(NOT_FOUND, virtual_service=_ref(vs))
