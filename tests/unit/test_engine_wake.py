"""When the driver looks again if nothing wakes it: the engine names the next timed moment (a check due, the
end of a soak or of the check window), the next tick while something is unsettled, and nothing at all for a
finished rollout. The driver turns that into a wait within the resync period."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_engine import Rollout, make_spec

from modelrollout import api, engine, handlers
from modelrollout.engine import Plan, RoutingView

P = api.Verdict.PASS


def test_a_transition_under_way_is_looked_at_again_at_the_next_tick() -> None:
    r = Rollout()
    first = r.tick()  # writes stage 1
    assert first.write is not None
    assert first.look_after is None


def test_between_checks_the_driver_sleeps_until_the_next_one() -> None:
    r = Rollout()
    r.tick()
    settled = r.tick(timedelta(seconds=1), verdict=P)
    assert settled.write is None
    assert settled.look_after == timedelta(seconds=10)  # the interval; the soak (1 m) ends later
    assert r.tick(timedelta(seconds=4)).look_after == timedelta(seconds=6)


def test_a_long_soak_with_rare_checks_sleeps_until_the_earliest_of_check_soak_and_window() -> None:
    r = Rollout(spec=make_spec(interval="10m", window="2m"))
    r.tick()  # stage 1 (soak 1 m) starts at T0
    assert r.tick(timedelta(seconds=5), verdict=P).look_after == timedelta(seconds=55)  # the soak's end
    # Soaked at 65 s; the next moment is the end of the check window (2 m after the stage began)...
    assert r.tick(timedelta(seconds=60)).look_after == timedelta(seconds=55)
    # ... then only the next check, 10 m after the last one.
    assert r.tick(timedelta(seconds=55)).look_after == timedelta(seconds=605 - 120)


def test_a_finished_rollout_waits_for_events_only() -> None:
    r = Rollout(spec=make_spec(failureLimit=0))
    r.tick()
    rolled_back = r.tick(timedelta(seconds=10), verdict=api.Verdict.FAIL)
    assert rolled_back.write is not None  # the write back to stable: next tick
    done = r.tick(timedelta(seconds=1))
    assert done.status.phase == api.Phase.ROLLED_BACK
    assert done.look_after == engine.ONLY_EVENTS


def test_an_unusable_virtual_service_or_a_check_that_did_not_happen_keeps_the_tick() -> None:
    r = Rollout()
    r.tick()
    r.tick(timedelta(seconds=1), verdict=P)
    missing = r.tick(routing=RoutingView(problem_reason="VirtualServiceNotFound", problem="gone"))
    assert missing.status.phase == api.Phase.DEGRADED
    assert missing.look_after is None
    r = Rollout()
    r.tick()
    r.tick(timedelta(seconds=1), verdict=P)
    overdue = r.tick(timedelta(seconds=15))  # the check was due and none came (deferred)
    assert overdue.look_after == timedelta(0)


def test_an_accepted_action_or_a_failed_write_keeps_the_tick() -> None:
    r = Rollout()
    r.tick()
    failed = engine.write_failed(r.tick(action="abort"), r.status, "HTTP 403: forbidden", r.now)
    assert failed.look_after is None


@pytest.mark.parametrize(
    ("look", "expected"),
    [
        (None, 5.0),
        (timedelta(0), 5.0),
        (timedelta(seconds=2), 2.05),
        (timedelta(seconds=45), 45.05),
        (timedelta(hours=1), 60.0),
        (engine.ONLY_EVENTS, 60.0),
    ],
)
def test_the_driver_waits_until_the_engines_moment_within_the_resync_period(
    look: timedelta | None, expected: float
) -> None:
    handlers.Runtime.tick_seconds, handlers.Runtime.resync_seconds = 5.0, 60.0
    plan = Plan(status=api.ModelRolloutStatus(), look_after=look)
    assert handlers._wait_seconds(plan) == expected
    assert handlers._wait_seconds(None) == 5.0
