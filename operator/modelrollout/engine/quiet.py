"""Which decisions are worth a status write. Pure.

Every check refreshes the numbers in status (the last check's time and values, the sequential counts, the
message that quotes them). Written at every check, they cost one API write per rollout and interval, and
every watcher of the object (the operator's own watch, Argo CD, Flux, dashboards) a wake-up, while nothing a
person or a GitOps tool acts on has changed. So a decision is *quiet*, kept in the operator's memory
instead of written, when it changes nothing but those numbers, and the numbers in status are younger than
the refresh period. What is essential is always written at once: phase, stage, weights, holds, counters
toward a limit, every condition's status and reason, the last check's verdict and each gate's verdict (and
whether a sequential gate has evidence yet), actions, rollbacks, history. A check an alert asked for is
written too: someone is waiting for it.

The operator decides from what it holds in memory, so nothing is lost between writes; a restart or a new
leader starts from the status as written, whose last check then is at most one refresh period old (the
next check comes sooner, never later).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from modelrollout import api

# Refreshed at every check: excluded from what is compared.
_VOLATILE = {"message", "accumulations", "last_analysis", "conditions", "report"}


def essential(status: api.ModelRolloutStatus) -> dict[str, Any]:
    """What a person or a GitOps tool acts on: the status without the numbers every check refreshes."""
    kept = status.model_dump(exclude=_VOLATILE)
    kept["conditions"] = [(c.type, c.status, c.reason, c.observed_generation) for c in status.conditions]
    last = status.last_analysis
    kept["last_analysis"] = (
        None
        if last is None
        else (
            last.stage,
            last.verdict,
            tuple((g.name, g.verdict, g.advisory, g.evidence is not None) for g in last.gates),
        )
    )
    return kept


def is_quiet(
    before: api.ModelRolloutStatus,
    after: api.ModelRolloutStatus,
    *,
    now: datetime,
    recorded_check_at: datetime | None,
    refresh: timedelta | None,
    requested: bool = False,
) -> bool:
    """Whether `after` may stay unwritten: it changes nothing essential from `before` (the status decided on,
    itself written or quiet), the last check written (`recorded_check_at`) is younger than `refresh`, and no
    alert asked for this check. `refresh` None: every change is written."""
    if refresh is None or requested:
        return False
    if recorded_check_at is not None and now - recorded_check_at >= refresh:
        return False
    return before == after or essential(before) == essential(after)
