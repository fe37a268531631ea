"""The EnvoyFilter that computes users' buckets in the mesh (`experiment.stickiness.userHeader`): when it
should exist, and the step that makes the cluster agree. Pure.

The filter exists while the spec's pair is under way on a usable VirtualService, like the experiment's routes;
a finished, superseded or retired rollout has none. It is written *before* the VirtualService (bucket routes
never wait for a filter that is not there yet: until it exists, requests without a bucket follow the weighted
route) and removed *after* it (the kill switch's one VirtualService write comes first). Its name is recorded
in status before it is created, so a restart between the two never leaves a filter nobody knows of.
"""

from __future__ import annotations

from dataclasses import replace

from modelrollout import api
from modelrollout.engine.experiment import experiment_id, under_way
from modelrollout.engine.model import Event, FilterStep, Observation, Plan
from modelrollout.routing.envoy_filter import BucketFilter, bucket_filter, filter_name


def wants_filter(spec: api.ModelRolloutSpec) -> bool:
    stickiness = spec.experiment.stickiness if spec.experiment else None
    return stickiness is not None and stickiness.user_header is not None


def observed_filter_name(
    spec: api.ModelRolloutSpec, status: api.ModelRolloutStatus, rollout: str
) -> str | None:
    """The EnvoyFilter the shell reads for the tick: the one the status records, or the one the spec wants."""
    if status.bucket_filter:
        return status.bucket_filter
    return filter_name(rollout.partition("/")[2]) if wants_filter(spec) else None


def desired_filter(
    spec: api.ModelRolloutSpec, status: api.ModelRolloutStatus, obs: Observation
) -> BucketFilter | bool | None:
    """The filter the decided status calls for; None for none; False when it cannot be told this tick (the
    VirtualService, whose hosts scope the filter, could not be read): then nothing changes."""
    stickiness = spec.experiment.stickiness if spec.experiment else None
    if stickiness is None or stickiness.user_header is None or not under_way(spec, status):
        return None
    if not obs.routing.usable:
        return False
    namespace, _, name = obs.rollout.partition("/")
    identity = experiment_id(spec, obs.rollout)
    vs_namespace = status.routing.virtual_service.partition("/")[0] if status.routing else namespace
    return bucket_filter(
        namespace=namespace,
        rollout=name,
        rollout_uid=obs.rollout_uid,
        bucket_header=stickiness.header,
        user_header=stickiness.user_header,
        experiment_id=identity or obs.rollout,
        hosts=obs.routing.hosts,
        vs_namespace=vs_namespace,
    )


def with_filter(
    plan: Plan, spec: api.ModelRolloutSpec, before: api.ModelRolloutStatus, obs: Observation
) -> Plan:
    """The plan with the step that brings the EnvoyFilter to what its decided status calls for."""
    desired = desired_filter(spec, plan.status, obs)
    if desired is False:
        return plan
    live = obs.bucket_filter
    if isinstance(desired, BucketFilter):
        status = plan.status.model_copy(update={"bucket_filter": desired.name})
        if desired.matches(live):
            return replace(plan, status=status)
        # Recorded before it is created: a restart in between still knows the filter is ours to remove.
        base = plan.intent if plan.intent is not None else before
        intent = plan.intent
        if base.bucket_filter != desired.name:
            intent = base.model_copy(update={"bucket_filter": desired.name})
        return replace(plan, status=status, intent=intent, bucket_filter=FilterStep(apply=desired))
    status = plan.status.model_copy(update={"bucket_filter": None})
    if live is None:
        return replace(plan, status=status)
    return replace(plan, status=status, bucket_filter=FilterStep(remove=str(live["metadata"]["name"])))


def filter_removal_failed(plan: Plan, name: str, error: str) -> Plan:
    """The VirtualService write went through but the EnvoyFilter could not be removed: record the rest, keep
    the filter's name (the next tick removes it), and say so. Its Lua only sets a header no route reads
    now."""
    status = plan.status.model_copy(update={"bucket_filter": name})
    message = f"the bucket EnvoyFilter {name} could not be removed (tried again every tick): {error}"
    return replace(
        plan, status=status, events=(*plan.events, Event("Warning", "BucketFilterNotRemoved", message[:1024]))
    )
