"""The simulator's request counts: answers per user and destination, in both windows, and what is left out
of them (the mesh's own answers, mirror copies, requests without a user id)."""

from __future__ import annotations

from modelrollout_dev.sim.stats import Stats

STABLE, CANARY, SHADOW = "llm/llm-gpt4o", "llm/llm-claude", "llm/llm-shadow"
ROUTE = "llm/chat#primary"


def test_answers_per_user_and_destination() -> None:
    stats = Stats()
    stats.count(STABLE, 200, ROUTE, user="user-1")
    stats.count(STABLE, 503, ROUTE, user="user-1")  # an error is still that destination's answer
    stats.count(CANARY, 200, ROUTE, (SHADOW,), user="user-1")
    stats.count(CANARY, 200, ROUTE, (SHADOW,), user="user-2")
    stats.count(STABLE, 200, ROUTE)  # no user id: counted, but nobody's
    stats.count(None, 404, None, user="user-3")  # the mesh answered: no destination to count
    stats.count(None, 503, ROUTE, user="user-2")
    expected = {
        "user-1": {CANARY: 1, STABLE: 2},
        "user-2": {CANARY: 1},
    }
    assert stats.users() == {"since_start": expected, "since_reset": expected}
    # The mirror answered too, but its answer went nowhere: it is in `mirrored`, never a user's.
    assert stats.snapshot()["since_start"]["mirrored"] == {SHADOW: 2}
    assert stats.snapshot()["since_start"]["requests"] == 7


def test_reset_starts_a_new_window_of_users() -> None:
    stats = Stats()
    stats.count(STABLE, 200, ROUTE, user="user-1")
    stats.reset()
    assert stats.users() == {"since_start": {"user-1": {STABLE: 1}}, "since_reset": {}}
    stats.count(CANARY, 200, ROUTE, user="user-1")
    assert stats.users() == {
        "since_start": {"user-1": {CANARY: 1, STABLE: 1}},
        "since_reset": {"user-1": {CANARY: 1}},
    }
