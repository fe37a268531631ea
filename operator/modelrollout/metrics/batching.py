"""Grouped queries shared between rollouts: the answer of one query is every rollout's answer.

A built-in gate's query comes in a grouped form (`templates.GroupedQuery`) that answers for every target at
once, one row per target. Rollouts that ask the same grouped query of the same Prometheus (same address,
timeout and credentials) share one answer: a rollout whose check starts while that query is running waits for
it, and one that starts shortly after takes the answer already there, as long as that answer was asked for no
earlier than `max_age` seconds ago and no earlier than the check's own `fresh_after` (the start of its stage,
or a whole window after it for a check that may end the stage, so no stage is judged on data from before
it; and its previous check). A check an alert asked for does not
come here: it asks its own queries at once. Prometheus then answers each grouped query about once per
`max_age` whatever the number of rollouts: queries per interval depend on the templates in use, not on the
rollouts.

An answer in use is renewed ahead of its end: once it has come, a timer asks the same query again twice the
longest time one of the query's last `RECENT_ANSWERS` answers took (at most half of `max_age`; the longest,
not the last: a Prometheus under load answers the same query in 0.2 s and then in 0.8 s, and a renewal
that comes after the age ran out makes every check meanwhile wait) before its age runs out, if a check took
it meanwhile, and the new
answer replaces it once it has come. So checks that keep coming never queue behind a grouped query, and one
that nobody took is let go (a burst of checks costs one renewal). A renewal still coming when the age runs
out (Prometheus slower than ever before) does not hold checks up either: the answer it renews serves until it
has come, for at most one more age (and never from before a check's `fresh_after`). Measured at 5,000
rollouts (the scale benchmark): 109-512 checks a minute waited for a renewal under way, for up to the
query's time (0.4-0.7 s on average there). A renewal that failed is dropped: the old answer serves out its
age, and the next check after that asks and meets the failure itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

from modelrollout.metrics.provider import Rows, Sample
from modelrollout.metrics.scheduler import Deferred
from modelrollout.metrics.templates import GroupedQuery


class Querying(Protocol):
    async def query_rows(
        self,
        promql: str,
        labels: tuple[str, ...],
        *,
        owner: Hashable = None,
        not_after: float | None = None,
    ) -> Rows: ...


@dataclass
class _Answer:
    asked_at: float  # wall clock, seconds
    rows: asyncio.Future[Rows]
    took: float | None = None  # seconds from asking to the answer, once it came
    used: bool = False  # a check took it: worth renewing

    def usable(self, since: float) -> bool:
        if self.asked_at < since or self.rows.cancelled():
            return False
        if not self.rows.done():
            return True
        return not isinstance(self.rows.exception(), Deferred)

    def succeeded(self) -> bool:
        return self.rows.done() and not self.rows.cancelled() and self.rows.exception() is None


_Key = tuple["Querying", str, tuple[str, ...]]  # a Prometheus, a grouped query, its group labels

RECENT_ANSWERS = 4  # how many of a query's latest answer times set how early it is renewed


class QueryBatcher:
    def __init__(
        self,
        *,
        max_age: float,
        clock: Callable[[], float] = time.time,
        on_answer: Callable[[str], None] | None = None,
    ) -> None:
        """`on_answer` is told how each answer came ("asked"; "shared", ready; "waited", shared while still
        under way) and of each renewal asked in the background ("renewed")."""
        if max_age < 0:
            raise ValueError(f"max_age must not be negative, got {max_age}")
        self.max_age = max_age
        self._clock = clock
        self._on_answer = on_answer
        self._answers: dict[_Key, _Answer] = {}
        self._renewals: dict[_Key, _Answer] = {}  # the next answers, asked while the current ones serve
        self._took: dict[_Key, tuple[float, ...]] = {}  # seconds each of the latest answers took, per query
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
        if current is not None and current.usable(since):
            answer, how = current, "shared"
        elif renewal is not None and renewal.usable(since):
            answer, how = renewal, "shared"
            if (
                not renewal.rows.done()
                and current is not None
                and current.succeeded()
                and current.asked_at >= max(now - 2 * self.max_age, fresh_after)
            ):
                answer = current  # its renewal is still coming: it serves meanwhile, for at most one more age
        else:
            answer, how = self._asked(key, provider, grouped, not_after, now, renewing=False), "asked"
            self._answers[key] = answer
        answer.used = True
        if how == "shared" and not answer.rows.done():
            how = "waited"  # shared, but still under way: this check waits for Prometheus
        if self._on_answer is not None:
            self._on_answer(how)
        # Shielded: a check that gives up (deferred, or its rollout deleted) leaves the query to the others.
        rows = await asyncio.shield(answer.rows)
        return rows.get(grouped.key, [])

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
        loop = asyncio.get_running_loop()

        def renew() -> None:
            if self._answers.get(key) is not answer or not answer.used or key in self._renewals:
                return  # replaced, taken by no check, or a renewal already under way
            # Nobody waits for a renewal: it must get a worker within an age, or it is dropped.
            deadline = loop.time() + self.max_age
            self._renewals[key] = self._asked(key, provider, grouped, deadline, self._clock(), renewing=True)
            if self._on_answer is not None:
                self._on_answer("renewed")

        def came(rows: asyncio.Future[Rows]) -> None:
            _retrieve(rows)
            answer.took = self._clock() - answer.asked_at
            if renewing:
                if self._renewals.get(key) is not answer:
                    return
                del self._renewals[key]
                current = self._answers.get(key)
                if not answer.succeeded() or (current is not None and current.asked_at > answer.asked_at):
                    return
                self._answers[key] = answer
            if not answer.succeeded() or self.max_age <= 0:
                return
            recent = (*self._took.get(key, ())[1 - RECENT_ANSWERS :], answer.took)
            self._took[key] = recent
            lead = min(2 * max(recent), self.max_age / 2)
            loop.call_later(max(0.0, answer.asked_at + self.max_age - lead - self._clock()), renew)

        answer.rows.add_done_callback(came)
        return answer

    async def _ask(self, provider: Querying, grouped: GroupedQuery, not_after: float | None) -> Rows:
        # The query is nobody's in particular: it takes its turn at the workers as an owner of its own.
        owner = ("grouped", grouped.promql)
        return await provider.query_rows(grouped.promql, grouped.labels, owner=owner, not_after=not_after)

    def _sweep(self, now: float) -> None:
        """Drop answers too old for anyone to take (kept at most one max_age, or two while their renewal is
        under way; checked once per max_age)."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + max(self.max_age, 1.0)
        self._answers = {
            key: answer
            for key, answer in self._answers.items()
            if not answer.rows.done()
            or answer.asked_at >= now - self.max_age * (2 if key in self._renewals else 1)
        }
        self._took = {key: took for key, took in self._took.items() if key in self._answers}

    def __len__(self) -> int:
        return len(self._answers)


def _retrieve(future: asyncio.Future[Rows]) -> None:
    # An answer nobody waits for any more (every sharer gave up) must not log "exception never retrieved".
    if not future.cancelled():
        future.exception()
