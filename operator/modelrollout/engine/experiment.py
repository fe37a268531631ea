"""What an experiment adds to the routes: pure, from the spec and the status.

The routes and headers exist while the rollout is under way; a finished rollout (promoted, rolled back,
aborted) has none, so every return to stable is also the kill switch."""

from __future__ import annotations

from modelrollout import api
from modelrollout.engine.model import TERMINAL, pair_hash
from modelrollout.routing.router import ExperimentRoutes, HeaderOverride


def experiment_id(spec: api.ModelRolloutSpec, rollout: str) -> str | None:
    """The id requests carry in x-experiment-id and users are bucketed by: the spec's, or
    `<namespace>/<name>/<pair hash>` (a new pair is a new experiment)."""
    if spec.experiment is None:
        return None
    return spec.experiment.id or f"{rollout}/{pair_hash(spec)}"


def _dimensions(target: api.Target, variant: str, experiment: str) -> tuple[tuple[str, str], ...]:
    values = [
        ("x-model", target.model),
        ("x-prompt-version", target.prompt_version),
        ("x-experiment-id", experiment),
        ("x-variant", variant),
    ]
    return tuple((name, value) for name, value in values if value)


def experiment_routes(spec: api.ModelRolloutSpec, rollout: str) -> ExperimentRoutes | None:
    """The routes and headers of the spec's experiment while its rollout is under way (None: none)."""
    experiment = spec.experiment
    identity = experiment_id(spec, rollout)
    if experiment is None or identity is None:
        return None
    return ExperimentRoutes(
        overrides=tuple(
            HeaderOverride(o.header, o.value, "canary" if o.variant == api.Variant.CANARY else "stable")
            for o in experiment.overrides
        ),
        bucket_header=experiment.stickiness.header if experiment.stickiness else None,
        stable_headers=_dimensions(spec.stable, "stable", identity) if experiment.dimensions else (),
        canary_headers=_dimensions(spec.canary, "canary", identity) if experiment.dimensions else (),
    )


def under_way(spec: api.ModelRolloutSpec, status: api.ModelRolloutStatus) -> bool:
    """The status is of the spec's pair, started and not finished: what an experiment's additions live by."""
    return (
        status.phase not in TERMINAL and status.pair_hash is not None and status.pair_hash == pair_hash(spec)
    )


def live_experiment(
    spec: api.ModelRolloutSpec, status: api.ModelRolloutStatus, rollout: str
) -> ExperimentRoutes | None:
    """What the VirtualService should hold now for the recorded rollout: the experiment while the spec's
    pair is under way, nothing once it finished (or before it started)."""
    return experiment_routes(spec, rollout) if under_way(spec, status) else None
