"""The alert receiver over real HTTP on loopback (aiohttp's test server), the drivers' alarms in memory."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from modelrollout.alert_receiver import AlertReceiver
from modelrollout.telemetry import Telemetry
from modelrollout.wakeups import Wakeups

Post = Callable[..., Awaitable[tuple[int, Any]]]


def served(test: Callable[[Post, Wakeups, Telemetry], Awaitable[None]], token: str | None = None) -> None:
    async def scenario() -> None:
        wakeups, telemetry = Wakeups(), Telemetry()
        server = TestServer(AlertReceiver(wakeups, token=token, telemetry=telemetry).app(), host="127.0.0.1")
        await server.start_server()
        try:
            async with ClientSession() as session:

                async def post(
                    body: Any, *, raw: bytes | None = None, auth: str | None = None
                ) -> tuple[int, Any]:
                    headers = {"Authorization": auth} if auth else {}
                    async with session.post(
                        server.make_url("/alerts"), json=None if raw else body, data=raw, headers=headers
                    ) as answer:
                        return answer.status, await answer.json()

                await test(post, wakeups, telemetry)
        finally:
            await server.close()

    asyncio.run(scenario())


def alerts(*labels: dict[str, str], status: str = "firing") -> dict[str, Any]:
    return {"version": "4", "status": status, "alerts": [{"status": status, "labels": x} for x in labels]}


def count(telemetry: Telemetry, outcome: str) -> float:
    value = telemetry.registry.get_sample_value("modelrollout_alerts_total", {"outcome": outcome})
    return value or 0.0


def test_a_firing_alert_asks_the_rollouts_it_names_for_a_check() -> None:
    async def test(post: Post, wakeups: Wakeups, telemetry: Telemetry) -> None:
        chat, summarize = wakeups.alarm("llm/chat"), wakeups.alarm("llm/summarize")
        wakeups.route_canary("llm/summarize", ("llm", "llm-claude"))
        code, answer = await post(
            alerts(
                {"modelrollout": "chat", "namespace": "llm"},
                {"destination_service_name": "llm-claude", "destination_service_namespace": "llm"},
                {"modelrollout": "elsewhere", "namespace": "llm"},
            )
        )
        assert code == 200
        assert answer == {"checked": ["llm/chat", "llm/summarize"], "unmatched": 1, "resolved": 0}
        assert chat.is_set()
        assert summarize.is_set()
        assert wakeups.take_check_request("llm/chat")
        assert wakeups.take_check_request("llm/summarize")
        assert (count(telemetry, "checked"), count(telemetry, "unmatched")) == (2, 1)

    served(test)


def test_resolved_alerts_ask_for_nothing() -> None:
    async def test(post: Post, wakeups: Wakeups, telemetry: Telemetry) -> None:
        chat = wakeups.alarm("llm/chat")
        code, answer = await post(alerts({"modelrollout": "chat", "namespace": "llm"}, status="resolved"))
        assert (code, answer["checked"], answer["resolved"]) == (200, [], 1)
        assert not chat.is_set()
        assert count(telemetry, "resolved") == 1

    served(test)


def test_with_a_token_only_bearers_of_it_are_heard() -> None:
    async def test(post: Post, wakeups: Wakeups, telemetry: Telemetry) -> None:
        chat = wakeups.alarm("llm/chat")
        body = alerts({"modelrollout": "chat", "namespace": "llm"})
        for auth in (None, "Bearer wrong", "secret-token", "Basic c2VjcmV0LXRva2Vu"):
            code, _ = await post(body, auth=auth)
            assert code == 401, auth
        assert not chat.is_set()
        code, answer = await post(body, auth="Bearer secret-token")
        assert (code, answer["checked"]) == (200, ["llm/chat"])
        assert count(telemetry, "refused") == 4

    served(test, token="secret-token")


def test_what_is_not_an_alert_payload_is_refused_with_the_reason() -> None:
    async def test(post: Post, wakeups: Wakeups, telemetry: Telemetry) -> None:
        code, answer = await post(None, raw=b"{not json")
        assert code == 400
        assert "error" in answer
        code, answer = await post({"alerts": "x"})
        assert code == 400
        assert "list `alerts`" in answer["error"]

    served(test)
