"""Status conditions, kstatus-style: Ready, Reconciling and Stalled for GitOps health checks, plus the
conditions that name a specific trouble (Degraded, MetricsUnavailable, Conflict, InvalidSpec). Pure."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from modelrollout import api

ConditionStatus = Literal["True", "False", "Unknown"]


def set_condition(
    conditions: Sequence[api.Condition],
    type_: str,
    status: ConditionStatus,
    *,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> list[api.Condition]:
    """Replace or add one condition; lastTransitionTime moves only when the status really changes."""
    current = next((c for c in conditions if c.type == type_), None)
    others = [c for c in conditions if c.type != type_]
    if (
        current is not None
        and len(others) == len(conditions) - 1
        and (current.status, current.reason, current.message, current.observed_generation)
        == (status, reason, message, generation)
    ):
        # As it was: most ticks set every condition again to what it is (a new model each time was half of
        # a quiet tick's validations).
        return sorted(conditions, key=lambda c: c.type)
    changed_at = current.last_transition_time if current and current.status == status else now
    updated = api.Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=changed_at,
        observed_generation=generation,
    )
    return sorted([*others, updated], key=lambda c: c.type)


def is_true(conditions: Sequence[api.Condition], type_: str) -> bool:
    return any(c.type == type_ and c.status == "True" for c in conditions)


def summary_conditions(
    conditions: Sequence[api.Condition],
    phase: api.Phase,
    *,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> list[api.Condition]:
    """Ready / Reconciling / Stalled / Progressing from the phase, so Flux and Argo CD read the rollout right:
    Promoted is Ready; a rollout on its way (or waiting for a human) is Reconciling; one that needs a human to
    get going again (rolled back, aborted, degraded) is Stalled."""
    truth = {
        "Ready": phase == api.Phase.PROMOTED,
        "Reconciling": phase in (api.Phase.PENDING, api.Phase.PROGRESSING, api.Phase.PAUSED),
        "Stalled": phase in (api.Phase.ROLLED_BACK, api.Phase.ABORTED, api.Phase.DEGRADED),
        "Progressing": phase == api.Phase.PROGRESSING,
    }
    updated = list(conditions)
    for type_, true in truth.items():
        updated = set_condition(
            updated,
            type_,
            "True" if true else "False",
            reason=reason,
            message=message,
            now=now,
            generation=generation,
        )
    return updated
