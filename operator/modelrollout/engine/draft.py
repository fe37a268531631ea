"""The decision being built: a status that changes step by step, the Events that say why, and the write."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from modelrollout import api
from modelrollout.conditions import set_condition, summary_conditions
from modelrollout.engine.model import TERMINAL, Event
from modelrollout.routing.router import ExperimentRoutes, RouteWrite, backend_of


def describe(target: api.Target) -> str:
    label = target.model or target.host
    return f"{label} ({target.host}{'/' + target.subset if target.subset else ''})"


@dataclass
class Draft:
    status: api.ModelRolloutStatus
    now: datetime
    generation: int | None
    events: list[Event] = field(default_factory=list)
    early_events: list[Event] = field(default_factory=list)
    write: RouteWrite | None = None
    rollback_reason: str | None = None
    experiment: ExperimentRoutes | None = None  # the spec's, while the rollout is under way

    def set_traffic(self, weight: int, mirror: int = 0) -> None:
        """Write the status' own pair at `weight` (stable gets the rest) with `mirror` percent copied to the
        canary, and the experiment's routes while the rollout is under way (none once it finished)."""
        stable, canary = self.status.stable, self.status.canary
        if stable is None or canary is None:  # a rollout always records its pair before it writes
            raise ValueError("no stable/canary pair recorded to write")
        self.write = RouteWrite(
            stable=backend_of(stable),
            canary=backend_of(canary),
            canary_weight=weight,
            mirror=mirror,
            experiment=self.experiment if self.status.phase not in TERMINAL else None,
        )

    def update(self, **changes: object) -> None:
        self.status = self.status.model_copy(update=changes)

    def event(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    def warn_first(self, reason: str, message: str) -> None:
        """A Warning posted before traffic moves."""
        self.early_events.append(Event("Warning", reason, message))

    def keep_traffic(self) -> None:
        """Write what the status says (weight and mirror) again."""
        self.set_traffic(self.status.canary_weight, self.status.shadow)

    def condition(self, type_: str, status: Literal["True", "False"], reason: str, message: str = "") -> None:
        before = self.status.conditions
        conditions = set_condition(
            before, type_, status, reason=reason, message=message, now=self.now, generation=self.generation
        )
        if len(conditions) != len(before) or any(a is not b for a, b in zip(conditions, before, strict=True)):
            self.update(conditions=conditions)

    def condition_flip(self, type_: str, active: bool, reason: str, message: str) -> bool:
        """Set a trouble condition; True when it became active on this tick (worth an Event)."""
        was = any(c.type == type_ and c.status == "True" for c in self.status.conditions)
        self.condition(
            type_, "True" if active else "False", reason if active else "Resolved", message if active else ""
        )
        return active and not was

    def summarize(self, phase: api.Phase, reason: str, message: str) -> None:
        """Set phase, reason and message, and the kstatus conditions that follow from them."""
        message = message[:1024]
        # Every condition was evaluated against this generation, also the ones that did not change.
        current = [
            c
            if c.observed_generation == self.generation
            else c.model_copy(update={"observed_generation": self.generation})
            for c in self.status.conditions
        ]
        conditions = summary_conditions(
            current, phase, reason=reason, message=message, now=self.now, generation=self.generation
        )
        self.update(phase=phase, reason=reason, message=message, conditions=conditions)
