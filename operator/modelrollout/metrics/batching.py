"""Grouped queries shared between rollouts: the answer of one query is every rollout's answer.

A built-in gate's query comes in a grouped form (`templates.GroupedQuery`) that answers for every target at
once, one row per target. Rollouts that ask the same grouped query of the same Prometheus (same address,
timeout and credentials) share one answer: a rollout whose check starts while that query is running waits for
it, and one that starts shortly after takes the answer already there, as long as that answer was asked for no
earlier than `max_age` seconds ago and no earlier than the check's own `fresh_after` (the start of its stage,
so no stage is judged on data from before it, and its previous check). A check an alert asked for does not
come here: it asks its own queries at once. Prometheus then answers each grouped query about once per
`max_age` whatever the number of rollouts: queries per interval depend on the templates in use, not on the
rollouts.

An answer is renewed ahead of its end: a check that takes an answer close to `max_age` old (within twice the
time that query took, at most half of `max_age`) starts the next query in the background and goes on with the
answer it has, so checks do not queue behind a grouped query that every `max_age` seconds would otherwise make
them wait. The renewed answer replaces the old one once it has come; one that failed is dropped and not asked
again (the old one serves out its age, and the next check after that asks and meets the failure itself).

An answer that failed is every sharer's failure (it is the same Prometheus saying the same thing); one that
did not get a worker before the first asker's deadline (the operator's own queueing) is shared as such and
never kept, so the next check asks again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Protocol

from modelrollout.metrics.provider import Sample
from modelrollout.metrics.scheduler import Deferred
from modelrollout.metrics.templates import GroupedQuery

Rows = Mapping[tuple[str, ...], list[Sample]]


class Querying(Protocol):
    async def query(
        self, promql: str, *, owner: Hashable = None, not_after: float | None = None
    ) -> list[Sample]: ...


def rows_by_key(samples: list[Sample], labels: tuple[str, ...]) -> dict[tuple[str, ...], list[Sample]]:
    """A grouped answer split per target: each row under the values of `labels` it carries (a label
    Prometheus left out is empty), without those labels, so a target's rows read exactly as the answer of
    its own query would."""
    rows: dict[tuple[str, ...], list[Sample]] = {}
    for sample in samples:
        key = tuple(sample.labels.get(label, "") for label in labels)
        rest = {name: value for name, value in sample.labels.items() if name not in labels}
        rows.setdefault(key, []).append(Sample(labels=rest, value=sample.value))
    return rows


@dataclass
class _Answer:
    asked_at: float  # wall clock, seconds
    rows: asyncio.Future[Rows]
    took: float | None = None  # seconds from asking to the answer, once it came
    renewed: bool = False  # its renewal was asked (once: a failed one is not asked again)

    def usable(self, since: float) -> bool:
        if self.asked_at < since or self.rows.cancelled():
            return False
        if not self.rows.done():
            return True
        return not isinstance(self.rows.exception(), Deferred)

    def succeeded(self) -> bool:
        return self.rows.done() and not self.rows.cancelled() and self.rows.exception() is None


_Key = tuple["Querying", str, tuple[str, ...]]  # a Prometheus, a grouped query, its group labels


class QueryBatcher:
    def __init__(
        self,
        *,
        max_age: float,
        clock: Callable[[], float] = time.time,
        on_answer: Callable[[str], None] | None = None,
    ) -> None:
        """`on_answer` is told how each answer came ("asked" or "shared") and of each renewal asked in the
        background ("renewed")."""
        if max_age < 0:
            raise ValueError(f"max_age must not be negative, got {max_age}")
        self.max_age = max_age
        self._clock = clock
        self._on_answer = on_answer
        self._answers: dict[_Key, _Answer] = {}
        self._renewals: dict[_Key, _Answer] = {}  # the next answers, asked while the current ones serve
        self._next_sweep = 0.0

    async def query(
        self,
        provider: Querying,
        grouped: GroupedQuery,
        *,
        not_after: float | None = None,
        fresh_after: float = 0.0,
    ) -> list[Sample]:
        """This target's rows of `grouped`'s answer: a shared one asked no earlier than `max_age` seconds ago
        and than `fresh_after` (wall clock), or a new one. Raises what the query raised (MetricsError, or
        QueryDeferred when it got no worker by the first asker's `not_after`)."""
        now = self._clock()
        self._sweep(now)
        key: _Key = (provider, grouped.promql, grouped.labels)
        since = max(now - self.max_age, fresh_after)
        current, renewal = self._answers.get(key), self._renewals.get(key)
        if current is not None and current.rows.done() and current.usable(since):
            answer, how = current, "shared"  # come already: nobody waits
            if renewal is None and self._due_for_renewal(current, now):
                current.renewed = True
                self._renewals[key] = self._asked(key, provider, grouped, not_after, now, renewing=True)
                if self._on_answer is not None:
                    self._on_answer("renewed")  # a query Prometheus answers, beside the answer shared
        elif current is not None and current.usable(since):
            answer, how = current, "shared"  # still coming
        elif renewal is not None and renewal.usable(since):
            answer, how = renewal, "shared"
        else:
            answer, how = self._asked(key, provider, grouped, not_after, now, renewing=False), "asked"
            self._answers[key] = answer
        if self._on_answer is not None:
            self._on_answer(how)
        # Shielded: a check that gives up (deferred, or its rollout deleted) leaves the query to the others.
        rows = await asyncio.shield(answer.rows)
        return rows.get(grouped.key, [])

    def _due_for_renewal(self, answer: _Answer, now: float) -> bool:
        if answer.renewed or answer.took is None or not answer.succeeded():
            return False
        lead = min(2 * answer.took, self.max_age / 2)
        return lead > 0 and now >= answer.asked_at + self.max_age - lead

    def _asked(
        self,
        key: _Key,
        provider: Querying,
        grouped: GroupedQuery,
        not_after: float | None,
        now: float,
        *,
        renewing: bool,
    ) -> _Answer:
        answer = _Answer(now, asyncio.ensure_future(self._ask(provider, grouped, not_after)))

        def came(rows: asyncio.Future[Rows]) -> None:
            _retrieve(rows)
            answer.took = self._clock() - answer.asked_at
            if not renewing or self._renewals.get(key) is not answer:
                return
            del self._renewals[key]
            current = self._answers.get(key)
            if answer.succeeded() and (current is None or current.asked_at <= answer.asked_at):
                self._answers[key] = answer

        answer.rows.add_done_callback(came)
        return answer

    async def _ask(self, provider: Querying, grouped: GroupedQuery, not_after: float | None) -> Rows:
        # The query is nobody's in particular: it takes its turn at the workers as an owner of its own.
        samples = await provider.query(grouped.promql, owner=("grouped", grouped.promql), not_after=not_after)
        return rows_by_key(samples, grouped.labels)

    def _sweep(self, now: float) -> None:
        """Drop answers too old for anyone to take (kept at most one max_age, checked once per max_age)."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + max(self.max_age, 1.0)
        self._answers = {
            key: answer
            for key, answer in self._answers.items()
            if not answer.rows.done() or answer.asked_at >= now - self.max_age
        }

    def __len__(self) -> int:
        return len(self._answers)


def _retrieve(future: asyncio.Future[Rows]) -> None:
    # An answer nobody waits for any more (every sharer gave up) must not log "exception never retrieved".
    if not future.cancelled():
        future.exception()
