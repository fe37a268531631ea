"""Which decisions are worth a status write. Pure.

Every check refreshes the numbers in status (the last check's time and values, the sequential counts, the
message that quotes them). Written at every check, they cost one API write per rollout and interval, and
every watcher of the object (the operator's own watch, Argo CD, Flux, dashboards) a wake-up, while nothing a
person or a GitOps tool acts on has changed. So a decision is *quiet*, kept in the operator's memory
instead of written, when it changes nothing but those numbers, and the numbers in status are younger than
the refresh period. Each refresh is a write that nothing asked for, so a fleet's refreshes share a budget
(writes per second, the shell's): a refresh the budget cannot afford now waits for a later check, and the
idle write rate of a large fleet stays that budget, not rollouts / refresh period. What is essential is
always written at once: phase, stage, weights, holds, counters toward a limit, every condition's status and
reason, the last check's verdict and each gate's verdict (and whether a sequential gate has evidence yet),
actions, rollbacks, history. A check an alert asked for is written too: someone is waiting for it.

The operator decides from what it holds in memory, so nothing is lost between writes; a restart or a new
leader starts from the status as written, whose last check is then older (one refresh period, longer when
the budget is short), so its next check comes sooner, never later.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import Enum
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


class StatusWrite(Enum):
    QUIET = "quiet"  # kept in memory, not written
    REFRESH = "refresh"  # written only because the numbers written are due for a refresh: spends the budget
    WRITE = "write"  # written: something essential changed, or every change is written


def status_write(
    before: api.ModelRolloutStatus,
    after: api.ModelRolloutStatus,
    *,
    now: datetime,
    recorded_check_at: datetime | None,
    refresh: timedelta | None,
    requested: bool = False,
    refresh_affordable: bool = True,
) -> StatusWrite:
    """Whether `after` is written. It stays unwritten (QUIET) when it changes nothing essential from
    `before` (the status decided on, itself written or quiet), no alert asked for this check, and either the
    last check written (`recorded_check_at`) is younger than `refresh` or the fleet's refresh budget cannot
    afford a write now. `refresh` None: every change is written."""
    if refresh is None or requested:
        return StatusWrite.WRITE
    if before != after and essential(before) != essential(after):
        return StatusWrite.WRITE
    if recorded_check_at is not None and now - recorded_check_at >= refresh:
        return StatusWrite.REFRESH if refresh_affordable else StatusWrite.QUIET
    return StatusWrite.QUIET
