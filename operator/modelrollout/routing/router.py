"""The Router protocol: how the operator reads and moves the canary's share of traffic. No I/O here.

A tick reads the routing object once (`read` -> Snapshot), looks at it for the pairs it cares about (`view`,
pure), and writes at most once, conditionally on the resourceVersion that read returned (`write`). The write's
answer is the read-back: it is the object as the API server stored it, and `write` checks that it shows the
split asked for before it returns it as the next Snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from modelrollout import api

RoutingProblemReason = Literal[
    "VirtualServiceNotFound",
    "RouteNotFound",
    "AmbiguousRoute",
    "HostNotInRoute",
    "UnexpectedDestination",
    "ExperimentConflict",
]


@dataclass(frozen=True)
class Backend:
    """One side of the traffic split, as a VirtualService destination names it."""

    host: str
    subset: str | None = None
    port: int | None = None


def backend_of(target: api.Target) -> Backend:
    """The destination a ModelRollout's stable or canary names."""
    return Backend(host=target.host, subset=target.subset, port=target.port)


@dataclass(frozen=True)
class HeaderOverride:
    """Requests whose `header` equals `value` always go to `variant`."""

    header: str
    value: str
    variant: Literal["stable", "canary"]


@dataclass(frozen=True)
class ExperimentRoutes:
    """What an experiment adds to the managed routes besides the weights: tester overrides and sticky bucket
    routes ahead of each managed route, and request headers set on each variant's destinations. Absent
    (None in a RouteWrite) means none of it: the kill switch."""

    overrides: tuple[HeaderOverride, ...] = ()
    bucket_header: str | None = None
    stable_headers: tuple[tuple[str, str], ...] = ()
    canary_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """The routing object as one read (or write) returned it.

    `claims` maps each managed route (by name, or `http[i]` for an unnamed one) to the ModelRollout that
    claimed it, if any. `last_writer` is the field manager of the latest change to the spec, ours included.
    `body` is the router's own copy of the object, for the next write."""

    resource_version: str
    last_writer: str | None
    claims: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    hosts: tuple[str, ...] = ()  # the routing object's hosts (spec.hosts of a VirtualService)
    # Owner -> the return to stable its latest write made (api.RouteReturn as JSON), if it was one.
    returns: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class RouteView:
    """The live split between one stable and one canary in the managed routes.

    When `consistent` is False the managed routes disagree or their weights do not sum to 100;
    `canary_weight` is then the largest canary weight seen, so acting on it never understates the canary's
    exposure. `canary_present` says whether any managed route still names the canary (at any weight);
    `claimed` whether our claim is on the managed routes. `mirror` is the largest percent of a managed
    route's traffic mirrored to the canary; `experiment_in_place` whether the experiment's routes and
    headers are exactly those the viewer asked about, at the live weight."""

    canary_weight: int
    consistent: bool
    canary_present: bool
    claimed: bool = False
    mirror: int = 0
    experiment_in_place: bool = True


@dataclass(frozen=True)
class RouteWrite:
    """The split to write: stable at 100 - canary_weight, canary at canary_weight in every managed route.

    `drop` names destinations to remove from the managed routes (the canary of a pair that was superseded);
    `retire` names destinations to keep at weight 0 (the stable of a superseded pair). `take_over_from` is a
    claim to replace: one left by a ModelRollout that no longer exists. `mirror` is the percent of each
    managed route's traffic mirrored to the canary (a shadow stage); `experiment` the routes and headers of
    an experiment, None for none (anything of an earlier one is removed). `returning` is the return to
    stable this write makes, recorded on the object in the same write (None: this write is not one)."""

    stable: Backend
    canary: Backend
    canary_weight: int
    mirror: int = 0
    experiment: ExperimentRoutes | None = None
    drop: tuple[Backend, ...] = ()
    retire: tuple[Backend, ...] = ()
    take_over_from: str | None = None
    returning: api.RouteReturn | None = None


class RoutingProblem(Exception):
    """A piece the rollout needs is missing or not as expected; the caller degrades and writes nothing."""

    def __init__(self, reason: RoutingProblemReason, message: str) -> None:
        super().__init__(message)
        self.reason: RoutingProblemReason = reason
        self.message = message


class RoutingConflict(Exception):
    """Another ModelRollout already manages a route this rollout would manage."""

    def __init__(self, owner: str, message: str) -> None:
        super().__init__(message)
        self.owner = owner
        self.message = message


class StaleWrite(Exception):
    """The object changed since it was read (HTTP 409): observe again and decide again, never write blind."""


class Router(Protocol):
    async def read(self) -> Snapshot:
        """The routing object now; RoutingProblem when it (or a managed route) is missing."""
        ...

    def view(
        self,
        snapshot: Snapshot,
        stable: Backend,
        canary: Backend,
        *,
        retiring: tuple[Backend, ...] = (),
        stale_owner: str | None = None,
        experiment: ExperimentRoutes | None = None,
    ) -> RouteView:
        """The split between `stable` and `canary`; destinations in `retiring` are tolerated at any weight.
        `experiment_in_place` compares the VirtualService with `experiment` at the live weight.
        RoutingProblem for a route that does not fit, RoutingConflict for a route another rollout claims
        (other than `stale_owner`, a claim the caller knows to be left by a rollout that is gone)."""
        ...

    async def write(self, snapshot: Snapshot, desired: RouteWrite) -> Snapshot:
        """Write `desired` (and our claim) over `snapshot`, conditionally on its resourceVersion; the
        snapshot itself when nothing had to change. StaleWrite on a conflict; RuntimeError when the stored
        object does not show the split."""
        ...

    async def release(self, snapshot: Snapshot) -> Snapshot:
        """Drop our claims (only ours) and the return our latest write recorded, conditionally on the
        snapshot's resourceVersion."""
        ...
