"""The request headers and authority a destination receives, after a VirtualService's header operations: what
Istio writes into Envoy for `http[].headers.request` and `http[].route[].headers.request`, applied the way
Envoy applies it.

Pure: plain dicts in, read-only mappings out, no I/O.

How Istio translates an Istio `Headers.request` (pilot's route translation) and Envoy applies it:
- `set` becomes OVERWRITE_IF_EXISTS_OR_ADD (every earlier value of the name is replaced), `add` becomes
  APPEND_IF_EXISTS_OR_ADD (one more value), `remove` removes every value of the name. Names are
  case-insensitive (Envoy lower-cases them).
- One set of operations is applied as: all removals, then all `set`s, then all `add`s (Envoy's
  HeaderParser). A value that is the empty string is not written at all (Istio leaves Envoy's
  `keep_empty_value` off).
- `host` and `:authority` in `set`/`add` rewrite the authority instead of adding a header (`set` wins over
  `add`); other `:`-prefixed names, and removing `host` or a `:` name, are dropped.
- A route with a lone destination: Istio appends the destination's operations to the route's, so they form
  one set (removals of both, then `set`s of the route then of the destination, then `add`s likewise): on a
  name both `set`, the destination's value wins.
- A route with several destinations: the picked destination's operations sit on Envoy's weighted cluster,
  which applies them first, and the route's after them: on a name both `set`, the route's value wins, and a
  route-level `remove` takes away what the destination set.
- The authority: the route's rewrite (`rewrite.authority`, else the route's `host`/`:authority` header
  operation) wins over the destination's, which wins over the authority the client sent.
- A mirrored copy is made from the request after all of this (Envoy's router copies the finalized headers,
  so it carries the route's and the picked destination's operations). Envoy's shadow writer appends
  `-shadow` to the host part of the copy's authority (`llm` -> `llm-shadow`, `llm:8080` ->
  `llm-shadow:8080`) unless the mirror policy sets `disable_shadow_host_suffix_append`; Istio sets it from
  istiod's DISABLE_SHADOW_HOST_SUFFIX, true (no suffix) since Istio 1.28 and false before it (and in the
  compatibility profiles up to 1.27).

Several values of one name are kept as one value joined with ", ", the combined form RFC 9110 (5.3) lets a
recipient use. Values are taken literally: Envoy's `%COMMAND%` substitutions are not evaluated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

SHADOW_SUFFIX = "-shadow"


def _is_authority(name: str) -> bool:
    return name.lower() in {":authority", "host"}


def _is_internal(name: str) -> bool:
    return name.startswith(":") or name.lower() == "host"


@dataclass(frozen=True)
class HeaderOperations:
    """One Istio `Headers.request`, ready to apply. `authority` is the rewrite it asks for, if any."""

    removals: tuple[str, ...] = ()
    sets: tuple[tuple[str, str], ...] = ()
    adds: tuple[tuple[str, str], ...] = ()
    authority: str | None = None

    @classmethod
    def of(cls, headers: Mapping[str, Any] | None) -> HeaderOperations:
        """The request operations of an Istio `Headers` ({request: {set, add, remove}, response: ...})."""
        request = (headers or {}).get("request") or {}
        sets, set_authority = _writes(request.get("set"))
        adds, add_authority = _writes(request.get("add"))
        removals = tuple(
            str(name).lower() for name in request.get("remove") or [] if not _is_internal(str(name))
        )
        return cls(removals, sets, adds, set_authority or add_authority)

    def then(self, later: HeaderOperations) -> HeaderOperations:
        """These operations and `later`'s as one set, as Istio merges a lone destination's into its route's.
        The authority is this set's if it has one."""
        return HeaderOperations(
            self.removals + later.removals,
            self.sets + later.sets,
            self.adds + later.adds,
            self.authority or later.authority,
        )

    def apply(self, headers: Mapping[str, str]) -> dict[str, str]:
        """`headers` (names lower-case) after these operations."""
        result = dict(headers)
        for name in self.removals:
            result.pop(name, None)
        for name, value in self.sets:
            result[name] = value
        for name, value in self.adds:
            result[name] = f"{result[name]}, {value}" if name in result else value
        return result


def _writes(entries: Any) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """The header writes of a `set` or `add` map (sorted by name, as Istio emits them, without the empty
    values Envoy would skip), and the authority it rewrites to, if it names one."""
    writes: list[tuple[str, str]] = []
    authority: str | None = None
    for written_name, written_value in sorted((entries or {}).items()):
        name, value = str(written_name), str(written_value)
        if _is_authority(name):
            authority = value or authority
        if _is_internal(name) or not value:
            continue
        writes.append((name.lower(), value))
    return tuple(writes), authority


@dataclass(frozen=True)
class Forwarded:
    """What a destination receives: the request's headers (lower-case names) and its authority."""

    headers: Mapping[str, str]
    authority: str


def forwarded(
    headers: Mapping[str, str],
    authority: str,
    route_operations: HeaderOperations,
    destination_operations: HeaderOperations,
    *,
    lone_destination: bool,
) -> Forwarded:
    """The request as the picked destination receives it (see the module's docstring for the order)."""
    if lone_destination:
        final = route_operations.then(destination_operations).apply(headers)
    else:
        final = route_operations.apply(destination_operations.apply(headers))
    rewritten = route_operations.authority or destination_operations.authority or authority
    return Forwarded(MappingProxyType(final), rewritten)


def shadow_authority(authority: str) -> str:
    """`authority` with Envoy's shadow suffix: before the port if there is one (the last colon, unless it is
    inside a bracketed IPv6 literal, as Envoy's HeaderUtility::getPortStart reads it), else at the end."""
    colon = authority.rfind(":")
    if colon < 0 or authority.rfind("]") > colon:
        return f"{authority}{SHADOW_SUFFIX}"
    return f"{authority[:colon]}{SHADOW_SUFFIX}{authority[colon:]}"
