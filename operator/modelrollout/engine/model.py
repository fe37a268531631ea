"""What the engine reads (Observation) and what it returns (Plan). Pure data, no I/O."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal, get_args

from modelrollout import api
from modelrollout.analysis import CheckResult
from modelrollout.routing.envoy_filter import BucketFilter
from modelrollout.routing.router import RouteWrite, RoutingProblemReason

FIELD_MANAGER = "modelrollout-operator"
DRIFT_WINDOW = timedelta(minutes=10)
DRIFT_LIMIT = 5  # corrections per window before the rollout holds instead of fighting a person or a tool
TERMINAL = (api.Phase.PROMOTED, api.Phase.ROLLED_BACK, api.Phase.ABORTED)
# Degraded for one of these reasons: the VirtualService cannot be used, so nothing is written or acted on.
UNUSABLE_ROUTING_REASONS = frozenset({"Conflict", *get_args(RoutingProblemReason)})
WRITE_FAILED = "WriteFailed"  # Degraded reason while VirtualService writes fail
INVALID_SPEC = "InvalidSpec"
# Events a person is notified of (webhook, Slack), once the change they announce is live.
NOTIFIED_REASONS = ("RolledBack", "Aborted", "Promoted", "AwaitingApproval")
# A failed write is announced as an Event the first time and then at these counts, not on every tick.
WRITE_FAILURE_EVENT_COUNTS = frozenset({1, 10, 100, 1000})


class Action(StrEnum):
    PROMOTE = "promote"
    PROMOTE_FULL = "promote-full"
    ABORT = "abort"
    RETRY = "retry"
    RESUME = "resume"


@dataclass(frozen=True)
class RoutingView:
    """What the VirtualService looks like now for one stable/canary pair, or why it cannot be used."""

    canary_weight: int | None = None
    consistent: bool = True
    canary_present: bool = True  # the canary destination is in the managed routes, at any weight
    last_writer: str | None = None  # the field manager of the latest change to the spec
    problem_reason: str | None = None  # VirtualServiceNotFound, RouteNotFound, HostNotInRoute, ...
    problem: str | None = None
    conflict_owner: str | None = None
    stale_owner: str | None = None  # a claim left by a ModelRollout that no longer exists
    claimed: bool = True  # our claim is on the managed routes (unusable: on any route of the object)
    mirror: int = 0  # percent of the managed routes' traffic mirrored to the canary
    experiment_in_place: bool = True  # the experiment's routes and headers are as the status says
    hosts: tuple[str, ...] = ()  # the VirtualService's hosts (what the bucket filter acts on)
    # The return to stable our latest write there made, if it was one (recorded with that write).
    returning: api.RouteReturn | None = None

    @property
    def usable(self) -> bool:
        return self.problem is None and self.conflict_owner is None


@dataclass(frozen=True)
class Observation:
    now: datetime
    generation: int | None
    operator_started_at: datetime
    routing: RoutingView  # the spec's pair on the spec's VirtualService
    # Where the spec routes now; recorded in status before the first write there.
    target: api.RoutingRecord | None = None
    # The recorded pair on the recorded VirtualService, when the spec names another pair or VirtualService.
    previous: RoutingView | None = None
    check: CheckResult | None = None
    # A check was due and the operator's own queue put it off (no Prometheus worker within the interval).
    check_deferred: bool = False
    check_requested: bool = False  # an alert asked for this tick's check
    # The time of the last check in the status as written (the status decided on may be newer, from memory),
    # and how long the numbers of checks may stay unwritten when nothing essential changes (None: never).
    recorded_check_at: datetime | None = None
    status_refresh: timedelta | None = None
    # Whether the fleet's budget of refresh writes affords one now (the shell's token bucket); when it does
    # not, numbers due for a refresh stay unwritten until a later check.
    refresh_affordable: bool = True
    action: str | None = None  # the action annotation's value, as found on the object
    status_recorded: bool = True  # False: the object has no status at all yet
    rollout: str = ""  # namespace/name, for the default experiment id
    rollout_uid: str = ""  # the owner of what the rollout creates (its bucket EnvoyFilter)
    bucket_filter: dict[str, Any] | None = None  # the live bucket EnvoyFilter, if one was read and exists


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class FilterStep:
    """Create or update the bucket EnvoyFilter (before the VirtualService write), or remove it by name
    (after it)."""

    apply: BucketFilter | None = None
    remove: str | None = None


@dataclass(frozen=True)
class Plan:
    """What the shell does, in this order, and nothing else:

    1. post `early_events` (warnings about what is about to happen);
    2. record `intent` (what is about to happen, without claiming it: an accepted action, where the rollout
       routes), so that a restart or a failed write finishes it (a return to stable needs none: its record
       travels on the VirtualService write, `write.returning`);
    3. remove the action annotation if it still holds `consume_action` (it is in status by now);
    4. apply `bucket_filter.apply` (the EnvoyFilter); write `write` to the VirtualService (`write_on`: the
       spec's, or the one recorded in status) and check the stored object shows it; drop our claim from the
       recorded VirtualService if `release_recorded`; remove the EnvoyFilter `bucket_filter.remove`;
    5. record `status`, unless the plan is `quiet` (it changes only numbers a check refreshes: the shell keeps
       it in memory and decides from it until a plan that is not quiet records it); a `refresh` plan is
       written only because those numbers are due for a refresh: the shell counts it against the fleet's
       refresh budget;
    6. post `events`, send `notifications`, count `rollback_reason`;
    7. look again after `look_after` unless something happens first (None: at the next tick); with
       `keep_check_request`, keep the out-of-turn check request this tick could not serve yet (the spacing
       between checks), for the tick after `look_after`.

    A write that fails stops the plan after step 4: the shell records `write_failed(...)` instead. A conflict
    (409) on any write stops it too: the shell observes again and asks for a new plan. `again` asks for a new
    plan at once after this one: the next step of a transition that takes two writes."""

    status: api.ModelRolloutStatus
    intent: api.ModelRolloutStatus | None = None
    consume_action: str | None = None
    write: RouteWrite | None = None
    write_on: Literal["spec", "recorded"] = "spec"
    release_recorded: bool = False
    early_events: tuple[Event, ...] = ()
    events: tuple[Event, ...] = ()
    rollback_reason: str | None = None
    again: bool = False
    bucket_filter: FilterStep | None = None
    look_after: timedelta | None = None
    keep_check_request: bool = False
    quiet: bool = False
    refresh: bool = False

    @property
    def canary_weight(self) -> int | None:
        return self.write.canary_weight if self.write is not None else None

    @property
    def notifications(self) -> tuple[Event, ...]:
        return tuple(e for e in self.events if e.reason in NOTIFIED_REASONS)


def pair_hash(spec: api.ModelRolloutSpec) -> str:
    """Identity of a rollout: a change of stable or canary (host, subset, port, model, prompt) starts anew."""
    return _pair_hash(spec.stable, spec.canary)


# A tick asks for its spec's pair several times (observing, deciding, recording): the targets are frozen
# models, hashed and compared field by field, so a tick's repeated asks cost ~2 us instead of ~20 us each.
@functools.lru_cache(maxsize=256)
def _pair_hash(stable: api.Target, canary: api.Target) -> str:
    pair = [t.model_dump(mode="json", by_alias=True) for t in (stable, canary)]
    return hashlib.sha256(json.dumps(pair, sort_keys=True).encode()).hexdigest()[:16]
