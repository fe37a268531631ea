"""The rollout state machine. Pure: `decide(spec, status, observation) -> Plan`; the shell executes the plan.

model     what the engine reads (Observation, RoutingView) and returns (Plan, Event)
decide    the decision: retire a superseded pair, start, act, check, advance, settle; write failures,
          invalid specs and deletion
stages    start, soak, advance, promote; what an edit of spec.stages means
checks    when gates are due, and what a check's verdict does
actions   which human actions fit (shared with the kubectl plugin), and what they do
returns   rollbacks and aborts
drift     weights changed by someone else, or by our own unrecorded write
experiment  the routes and headers an experiment adds while its rollout is under way
bucket_filter  the EnvoyFilter that computes users' buckets in the mesh, and when it exists
settle    phase, reason, message and conditions
history   the record of each finished stage, for the decision report
"""

from modelrollout.engine.actions import action_refusal, recorded_action_refusal
from modelrollout.engine.bucket_filter import filter_removal_failed, observed_filter_name, wants_filter
from modelrollout.engine.checks import analysis_due
from modelrollout.engine.decide import decide, deletion_pair, deletion_write, invalid_spec, write_failed
from modelrollout.engine.experiment import live_experiment
from modelrollout.engine.model import (
    DRIFT_LIMIT,
    DRIFT_WINDOW,
    FIELD_MANAGER,
    INVALID_SPEC,
    NOTIFIED_REASONS,
    TERMINAL,
    UNUSABLE_ROUTING_REASONS,
    WRITE_FAILED,
    Action,
    Event,
    FilterStep,
    Observation,
    Plan,
    RoutingView,
    pair_hash,
)
from modelrollout.engine.returns import route_return
from modelrollout.engine.wake import ONLY_EVENTS, look_after

__all__ = [
    "DRIFT_LIMIT",
    "DRIFT_WINDOW",
    "FIELD_MANAGER",
    "INVALID_SPEC",
    "NOTIFIED_REASONS",
    "ONLY_EVENTS",
    "TERMINAL",
    "UNUSABLE_ROUTING_REASONS",
    "WRITE_FAILED",
    "Action",
    "Event",
    "FilterStep",
    "Observation",
    "Plan",
    "RoutingView",
    "action_refusal",
    "analysis_due",
    "decide",
    "deletion_pair",
    "deletion_write",
    "filter_removal_failed",
    "invalid_spec",
    "live_experiment",
    "look_after",
    "observed_filter_name",
    "pair_hash",
    "recorded_action_refusal",
    "route_return",
    "wants_filter",
    "write_failed",
]
