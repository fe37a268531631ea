"""Grouped queries shared between rollouts: who asks Prometheus, who shares, and what each one gets back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Hashable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelrollout import api
from modelrollout.measure import _fresh_after
from modelrollout.metrics.batching import QueryBatcher
from modelrollout.metrics.prometheus import QueryDeferred, rows_from_result
from modelrollout.metrics.provider import MetricsError, Sample
from modelrollout.metrics.templates import GroupedQuery

LABELS = ("destination_service_name", "destination_service_namespace")


def series(value: float, **labels: str) -> dict[str, Any]:
    """One series of an instant vector as Prometheus' JSON has it."""
    return {"metric": labels, "value": [1700000000.5, repr(value)]}


ANSWER = [
    series(0.1, destination_service_name="a", destination_service_namespace="ns"),
    series(0.2, destination_service_name="b", destination_service_namespace="ns"),
    series(0.3, destination_service_name="a", destination_service_namespace="other"),
]


def grouped(service: str, namespace: str = "ns", promql: str = "q") -> GroupedQuery:
    return GroupedQuery(promql, LABELS, (service, namespace))


class FakePrometheus:
    """Answers every query with `answer` (`data.result` as Prometheus sends it, read by the provider's own
    reader) or raises `error`, after `gate` is set."""

    def __init__(self, answer: list[dict[str, Any]] | None = None, error: Exception | None = None) -> None:
        self.answer = ANSWER if answer is None else answer
        self.error = error
        self.asked: list[tuple[str, Hashable, float | None]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def query_rows(
        self,
        promql: str,
        labels: tuple[str, ...],
        *,
        owner: Hashable = None,
        not_after: float | None = None,
    ) -> dict[tuple[str, ...], list[Sample]]:
        self.asked.append((promql, owner, not_after))
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return rows_from_result(promql, self.answer, labels)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def synchronously(scenario: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """A test that runs `scenario` on its own event loop."""

    def test() -> None:
        asyncio.run(scenario())

    test.__name__ = scenario.__name__
    return test


def told_batcher(max_age: float) -> tuple[QueryBatcher, list[str]]:
    """A batcher, and the list it tells how each answer came ("asked", "shared", "waited", "renewed")."""
    came: list[str] = []
    return QueryBatcher(max_age=max_age, on_answer=came.append), came


def test_rows_are_split_by_the_group_labels_which_they_then_lose() -> None:
    rows = rows_from_result(
        "q",
        [
            *ANSWER,
            series(4, destination_service_name="a", destination_service_namespace="ns", pod="p1"),
            series(5, destination_service_name="c"),  # a label Prometheus left out is empty
        ],
        LABELS,
    )
    assert rows[("a", "ns")] == [Sample({}, 0.1), Sample({"pod": "p1"}, 4)]
    assert rows[("b", "ns")] == [Sample({}, 0.2)]
    assert rows[("a", "other")] == [Sample({}, 0.3)]
    assert rows[("c", "")] == [Sample({}, 5)]


@synchronously
async def test_checks_at_once_share_one_query_and_each_gets_its_own_row() -> None:
    prometheus = FakePrometheus()
    prometheus.gate.clear()
    batcher, answers_came = told_batcher(max_age=5)
    asking = [
        asyncio.ensure_future(batcher.query(prometheus, grouped(service, namespace), not_after=50.0))
        for service, namespace in (("a", "ns"), ("b", "ns"), ("a", "other"), ("gone", "ns"))
    ]
    await asyncio.sleep(0)
    prometheus.gate.set()
    answers = await asyncio.gather(*asking)
    assert answers == [[Sample({}, 0.1)], [Sample({}, 0.2)], [Sample({}, 0.3)], []]
    # One query, as an owner of its own, with the first asker's deadline.
    assert prometheus.asked == [("q", ("grouped", "q"), 50.0)]
    # The three came while it was under way: each waited for Prometheus.
    assert answers_came == ["asked", "waited", "waited", "waited"]
    await batcher.query(prometheus, grouped("a", "ns"))
    assert answers_came[-1] == "shared"  # answered already: no wait


@synchronously
async def test_an_answer_is_shared_for_max_age_seconds_after_it_was_asked() -> None:
    prometheus, clock = FakePrometheus(), Clock()
    batcher = QueryBatcher(max_age=5, clock=clock)
    await batcher.query(prometheus, grouped("a"))
    clock.now += 5
    await batcher.query(prometheus, grouped("b"))
    assert len(prometheus.asked) == 1
    clock.now += 0.01
    assert await batcher.query(prometheus, grouped("b")) == [Sample({}, 0.2)]
    assert len(prometheus.asked) == 2


@synchronously
async def test_a_check_that_needs_newer_data_asks_again() -> None:
    prometheus, clock = FakePrometheus(), Clock()
    batcher = QueryBatcher(max_age=5, clock=clock)
    await batcher.query(prometheus, grouped("a"))
    clock.now += 1
    # Its stage started (or an alert asked for it) after the shared answer was asked.
    await batcher.query(prometheus, grouped("a"), fresh_after=clock.now - 0.5)
    assert len(prometheus.asked) == 2
    await batcher.query(prometheus, grouped("b"), fresh_after=clock.now - 0.5)
    assert len(prometheus.asked) == 2


@synchronously
async def test_different_queries_and_providers_do_not_share() -> None:
    one, other = FakePrometheus(), FakePrometheus()
    batcher = QueryBatcher(max_age=5)
    await batcher.query(one, grouped("a"))
    await batcher.query(one, grouped("a", promql="q2"))
    await batcher.query(other, grouped("a"))
    await batcher.query(one, GroupedQuery("q", ("model_name",), ("m",)))
    assert [len(one.asked), len(other.asked)] == [3, 1]


@synchronously
async def test_max_age_zero_shares_only_an_answer_still_coming() -> None:
    prometheus, clock = FakePrometheus(), Clock()
    prometheus.gate.clear()
    batcher = QueryBatcher(max_age=0, clock=clock)
    first = asyncio.ensure_future(batcher.query(prometheus, grouped("a")))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(batcher.query(prometheus, grouped("b")))
    await asyncio.sleep(0)
    prometheus.gate.set()
    await asyncio.gather(first, second)
    assert len(prometheus.asked) == 1
    clock.now += 0.001
    await batcher.query(prometheus, grouped("a"))
    assert len(prometheus.asked) == 2


@synchronously
async def test_a_failed_query_fails_every_sharer_and_is_shared_like_an_answer() -> None:
    prometheus = FakePrometheus(error=MetricsError("q", "Prometheus answered HTTP 503"))
    batcher = QueryBatcher(max_age=5)
    for service in ("a", "b"):
        with pytest.raises(MetricsError, match="HTTP 503"):
            await batcher.query(prometheus, grouped(service))
    assert len(prometheus.asked) == 1


@synchronously
async def test_a_deferred_query_defers_its_sharers_and_is_never_kept() -> None:
    prometheus = FakePrometheus(error=QueryDeferred())
    prometheus.gate.clear()
    batcher = QueryBatcher(max_age=5)
    asking = [asyncio.ensure_future(batcher.query(prometheus, grouped(s))) for s in ("a", "b")]
    await asyncio.sleep(0)
    prometheus.gate.set()
    for outcome in await asyncio.gather(*asking, return_exceptions=True):
        assert isinstance(outcome, QueryDeferred)
    prometheus.error = None
    assert await batcher.query(prometheus, grouped("a")) == [Sample({}, 0.1)]
    assert len(prometheus.asked) == 2


@synchronously
async def test_a_check_that_gives_up_leaves_the_query_to_the_others() -> None:
    prometheus = FakePrometheus()
    prometheus.gate.clear()
    batcher = QueryBatcher(max_age=5)
    leaving = asyncio.ensure_future(batcher.query(prometheus, grouped("a")))
    staying = asyncio.ensure_future(batcher.query(prometheus, grouped("b")))
    await asyncio.sleep(0)
    leaving.cancel()
    await asyncio.sleep(0)
    prometheus.gate.set()
    assert await staying == [Sample({}, 0.2)]
    assert leaving.cancelled()
    assert len(prometheus.asked) == 1


@synchronously
async def test_old_answers_are_dropped() -> None:
    prometheus, clock = FakePrometheus(), Clock()
    batcher = QueryBatcher(max_age=5, clock=clock)
    for promql in ("q1", "q2", "q3"):
        await batcher.query(prometheus, grouped("a", promql=promql))
    assert len(batcher) == 3
    clock.now += 6
    await batcher.query(prometheus, grouped("a", promql="q4"))
    assert len(batcher) == 1


async def answered_in(seconds: float, batcher: QueryBatcher, prometheus: FakePrometheus) -> None:
    """One check's query that takes `seconds` (real time: renewals run on the event loop's timers)."""
    prometheus.gate.clear()
    asking = asyncio.ensure_future(batcher.query(prometheus, grouped("a")))
    await asyncio.sleep(seconds)
    prometheus.gate.set()
    await asking


async def until(predicate: Callable[[], bool], within: float) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - a count the fake bumps, no event to wait on
            await asyncio.sleep(0.01)


@synchronously
async def test_an_answer_in_use_is_renewed_before_its_age_runs_out_and_one_nobody_took_is_let_go() -> None:
    prometheus = FakePrometheus()
    batcher, answers_came = told_batcher(max_age=2.0)
    await answered_in(0.3, batcher, prometheus)  # renewed 2 x 0.3 s before its 2 s run out: at 1.4 s
    await asyncio.sleep(0.5)
    assert len(prometheus.asked) == 1
    await until(lambda: len(prometheus.asked) == 2, within=2.0)  # the renewal, answered at once
    prometheus.gate.clear()  # from here, a check that waited for Prometheus would not finish
    await asyncio.sleep(0.7)  # past the first answer's age: the renewal serves, nobody waits
    assert await asyncio.wait_for(batcher.query(prometheus, grouped("b")), 0.1) == [Sample({}, 0.2)]
    prometheus.gate.set()
    await until(lambda: len(prometheus.asked) == 3, within=3.0)  # the renewal was taken: renewed in its turn
    await asyncio.sleep(2.5)  # the third answer nobody took is let go
    assert len(prometheus.asked) == 3
    assert answers_came == ["asked", "renewed", "shared", "renewed"]


@synchronously
async def test_a_renewal_is_asked_ahead_by_the_slowest_of_the_latest_answers_not_the_last() -> None:
    prometheus = FakePrometheus()
    batcher = QueryBatcher(max_age=2.0)
    await answered_in(0.4, batcher, prometheus)  # renewed 2 x 0.4 s before its 2 s run out: at 1.2 s
    await until(lambda: len(prometheus.asked) == 2, within=2.0)  # the renewal, answered at once
    await asyncio.sleep(0.05)
    await batcher.query(prometheus, grouped("b"))  # a check takes it: worth renewing in its turn
    await until(lambda: len(prometheus.asked) == 3, within=3.0)
    # A renewal's deadline is one max_age after it was asked (loop time): when each was asked.
    deadlines = [not_after for _, _, not_after in prometheus.asked[1:]]
    assert None not in deadlines
    first, second = (deadline - 2.0 for deadline in deadlines if deadline is not None)
    # The second answer came at once, the first took 0.4 s: renewed 0.8 s ahead of its age, not 0 s.
    assert second - first == pytest.approx(1.2, abs=0.15)


@synchronously
async def test_a_renewal_still_coming_when_the_age_runs_out_holds_no_check_up_for_one_more_age() -> None:
    prometheus = FakePrometheus()
    batcher, answers_came = told_batcher(max_age=1.0)
    await answered_in(0.1, batcher, prometheus)  # renewed 2 x 0.1 s before its 1 s run out: at 0.8 s
    prometheus.gate.clear()  # the renewal will not come until the gate opens
    await until(lambda: len(prometheus.asked) == 2, within=2.0)
    await asyncio.sleep(0.4)  # past the first answer's age, within one more
    assert await asyncio.wait_for(batcher.query(prometheus, grouped("b")), 0.1) == [Sample({}, 0.2)]
    # Not from before a check's own previous check, though: that one waits for the renewal.
    waiting = asyncio.ensure_future(batcher.query(prometheus, grouped("b"), fresh_after=time.time() - 0.5))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    # Two ages after the first answer it serves no more, and the renewal, asked over an age ago, neither.
    await asyncio.sleep(0.8)
    late = asyncio.ensure_future(batcher.query(prometheus, grouped("a")))
    await asyncio.sleep(0.1)
    assert not late.done()
    prometheus.gate.set()
    assert await waiting == [Sample({}, 0.2)]
    assert await late == [Sample({}, 0.1)]
    assert len(prometheus.asked) == 3
    assert answers_came == ["asked", "renewed", "shared", "waited", "asked"]


@synchronously
async def test_a_failed_renewal_is_dropped_and_the_old_answer_serves_out_its_age() -> None:
    prometheus = FakePrometheus()
    batcher = QueryBatcher(max_age=2.0)
    await answered_in(0.3, batcher, prometheus)
    prometheus.error = MetricsError("q", "Prometheus answered HTTP 503")
    await until(lambda: len(prometheus.asked) == 2, within=2.0)  # the renewal was asked (at 1.4 s) and failed
    await asyncio.sleep(0.05)
    assert await batcher.query(prometheus, grouped("b")) == [Sample({}, 0.2)]  # the old answer, in its age
    assert len(prometheus.asked) == 2
    await asyncio.sleep(0.7)  # its age is over: the next check asks and meets the failure itself
    with pytest.raises(MetricsError, match="HTTP 503"):
        await batcher.query(prometheus, grouped("a"))
    assert len(prometheus.asked) == 3


def test_max_age_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="max_age"):
        QueryBatcher(max_age=-1)


def test_a_check_takes_no_shared_answer_from_before_its_stage_or_its_last_check() -> None:
    stage_started = datetime(2026, 12, 2, 11, 59, 57, tzinfo=UTC)
    checked = stage_started + timedelta(seconds=2)
    window, early = timedelta(seconds=30), stage_started + timedelta(seconds=10)
    status = api.ModelRolloutStatus(stage_started_at=stage_started)
    assert _fresh_after(None, window, early) == 0.0
    assert _fresh_after(status, window, early) == stage_started.timestamp()
    last = api.AnalysisResult(at=checked, stage=1, verdict=api.Verdict.PASS)
    checked_status = status.model_copy(update={"last_analysis": last})
    assert _fresh_after(checked_status, window, early) == checked.timestamp()


def test_a_check_that_may_end_its_stage_takes_no_shared_answer_whose_window_reaches_before_the_stage() -> (
    None
):
    """A check made a whole window after its stage began may advance it: an answer asked a few seconds
    earlier would read a few seconds of the previous stage."""
    stage_started = datetime(2026, 12, 2, 11, 59, 57, tzinfo=UTC)
    window = timedelta(seconds=30)
    status = api.ModelRolloutStatus(stage_started_at=stage_started)
    for after in (30, 32, 90):
        now = stage_started + timedelta(seconds=after)
        assert _fresh_after(status, window, now) == (stage_started + window).timestamp()
