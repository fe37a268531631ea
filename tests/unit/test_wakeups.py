"""The drivers' alarms: woken by name, by canary Service, and by a change to a VirtualService they claim."""

from __future__ import annotations

import asyncio
import json

from fakes import sample_vs
from modelrollout.routing.istio import MANAGED_BY
from modelrollout.wakeups import Wakeups


def claimed_by(*owners: str) -> dict[str, object]:
    vs = sample_vs()
    claims = {f"route-{i}": owner for i, owner in enumerate(owners)}
    vs["metadata"]["annotations"] = {MANAGED_BY: json.dumps(claims)}
    return vs


def test_a_check_is_asked_only_of_a_driver_that_runs_here_and_taken_once() -> None:
    wakeups = Wakeups()
    assert not wakeups.request_check("llm/chat")  # no driver: nothing to ask
    alarm = wakeups.alarm("llm/chat")
    assert wakeups.request_check("llm/chat")
    assert alarm.is_set()
    assert wakeups.take_check_request("llm/chat")
    assert not wakeups.take_check_request("llm/chat")
    alarm.clear()
    wakeups.keep_check_request("llm/chat")  # not served yet: kept for the driver's next look, no wake
    assert not alarm.is_set()
    assert wakeups.take_check_request("llm/chat")
    wakeups.keep_check_request("llm/other")  # no driver: nothing kept
    assert not wakeups.take_check_request("llm/other")


def test_a_stopped_driver_forgets_only_its_own_alarm() -> None:
    wakeups = Wakeups()
    old = wakeups.alarm("llm/chat")
    wakeups.forget("llm/chat", old)
    new = wakeups.alarm("llm/chat")  # a new object of that name
    wakeups.forget("llm/chat", old)  # the old driver finishing late leaves the new one alone
    assert wakeups.alarm("llm/chat") is new
    assert new is not old


def test_rollouts_are_found_by_their_canary_service_as_it_changes() -> None:
    wakeups = Wakeups()
    wakeups.route_canary("llm/chat", ("llm", "llm-claude"))
    wakeups.route_canary("llm/summarize", ("llm", "llm-claude"))
    assert wakeups.rollouts_on_canary("llm", "llm-claude") == {"llm/chat", "llm/summarize"}
    wakeups.route_canary("llm/chat", ("llm", "llm-gemini"))
    assert wakeups.rollouts_on_canary("llm", "llm-claude") == {"llm/summarize"}
    assert wakeups.rollouts_on_canary("llm", "llm-gemini") == {"llm/chat"}
    summarize = wakeups.alarm("llm/summarize")
    wakeups.forget("llm/summarize", summarize)
    assert wakeups.rollouts_on_canary("llm", "llm-claude") == set()


def test_a_virtual_service_change_wakes_its_claimants_before_and_after() -> None:
    async def scenario() -> None:
        wakeups = Wakeups()
        chat, other, bystander = (wakeups.alarm(n) for n in ("llm/chat", "llm/other", "llm/bystander"))
        wakeups.on_virtual_service(claimed_by("llm/chat"), claimed_by("llm/other"))
        assert chat.is_set()
        assert other.is_set()
        assert not bystander.is_set()
        chat.clear()
        wakeups.on_virtual_service(claimed_by("llm/chat"), None)  # deleted
        assert chat.is_set()
        wakeups.on_virtual_service(None, sample_vs())  # unclaimed: nobody to wake
        assert not bystander.is_set()

    asyncio.run(scenario())
