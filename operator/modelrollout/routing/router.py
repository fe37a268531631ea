"""The Router protocol: how the operator reads and moves the canary's share of traffic. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

RoutingProblemReason = Literal[
    "VirtualServiceNotFound",
    "RouteNotFound",
    "AmbiguousRoute",
    "HostNotInRoute",
    "UnexpectedDestination",
]


@dataclass(frozen=True)
class Backend:
    """One side of the traffic split, as a VirtualService destination names it."""

    host: str
    subset: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class RouteState:
    """The live split. When `consistent` is False the managed routes disagree or their weights do not sum
    to 100; `canary_weight` is then the largest canary weight seen, so acting on it never understates the
    canary's exposure. `last_writer` is the field manager of the latest change to the spec, ours included."""

    canary_weight: int
    consistent: bool
    resource_version: str
    last_writer: str | None


class RoutingProblem(Exception):
    """A piece the rollout needs is missing or not as expected; the caller degrades and writes nothing."""

    def __init__(self, reason: RoutingProblemReason, message: str) -> None:
        super().__init__(message)
        self.reason: RoutingProblemReason = reason
        self.message = message


class RoutingConflict(Exception):
    """Another ModelRollout already manages this VirtualService."""

    def __init__(self, owner: str, message: str) -> None:
        super().__init__(message)
        self.owner = owner
        self.message = message


class Router(Protocol):
    async def read(self) -> RouteState: ...

    async def write(self, canary_weight: int) -> bool:
        """Set the canary weight (stable gets the rest); True when the object had to change."""
        ...

    async def release(self) -> None:
        """Drop our ownership mark; nothing to do when the object is gone or not ours."""
        ...
