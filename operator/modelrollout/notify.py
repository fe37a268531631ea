"""Notifications on rollback, abort, promotion and awaiting approval: a generic JSON webhook and a
Slack-compatible one (incoming-webhook `text`), URLs from a Secret.

Sending never blocks or fails a rollout: `submit` only puts the message on a bounded queue (dropping it, with
a warning, when the queue is full), and a background task posts it with retries and exponential backoff.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

log = logging.getLogger(__name__)

WEBHOOK_KEY, SLACK_KEY = "webhook-url", "slack-webhook-url"


@dataclass(frozen=True)
class Notification:
    event: str  # one of engine.NOTIFIED_REASONS
    namespace: str
    name: str
    message: str
    stage: str | None = None
    canary: str | None = None
    stable: str | None = None
    gate: str | None = None
    value: float | None = None
    threshold: str | None = None
    window: str | None = None
    at: str = ""
    # The decision report's rows of the stages finished so far (report.StageRow as dicts, gates included).
    stages: tuple[dict[str, Any], ...] = ()

    def payload(self) -> dict[str, Any]:
        return {"source": "modelrollout", **asdict(self)}

    def slack_payload(self) -> dict[str, Any]:
        icon = {
            "RolledBack": ":rotating_light:",
            "Aborted": ":octagonal_sign:",
            "Promoted": ":white_check_mark:",
            "AwaitingApproval": ":raised_hand:",
        }.get(self.event, "")
        text = f"{icon} *{self.event}* `{self.namespace}/{self.name}`: {self.message}"
        if self.gate:
            text += (
                f"\n> gate `{self.gate}` = {self.value} (threshold {self.threshold}, window {self.window})"
            )
        for row in self.stages:
            text += (
                f"\n• stage {row['stage']} at {row['traffic']} for {row['ran']}: {row['outcome']}, "
                f"last check {row['last_check']}"
            )
        if self.stages:  # the deciding stage's gates: control against treatment, and the decision
            for gate in self.stages[-1].get("gates") or ():
                text += (
                    f"\n    ◦ `{gate['gate']}` control {gate['control']}, treatment {gate['treatment']}"
                    f" ({gate['delta']}): {gate['decision']}"
                )
        return {"text": text}


@dataclass(frozen=True)
class NotifyTargets:
    webhook_url: str | None = None
    slack_url: str | None = None

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str]) -> NotifyTargets:
        """The Secret's `data` (base64) with `webhook-url` and/or `slack-webhook-url`."""

        def decoded(key: str) -> str | None:
            raw = data.get(key)
            return base64.b64decode(raw).decode().strip() if raw else None

        targets = cls(webhook_url=decoded(WEBHOOK_KEY), slack_url=decoded(SLACK_KEY))
        if not targets.webhook_url and not targets.slack_url:
            raise ValueError(f"the notification Secret holds neither {WEBHOOK_KEY!r} nor {SLACK_KEY!r}")
        return targets


class Notifier:
    def __init__(
        self,
        targets: NotifyTargets,
        *,
        attempts: int = 4,
        first_backoff: float = 1.0,
        timeout: float = 5.0,
        queue_size: int = 256,
    ) -> None:
        self.targets = targets
        self.attempts = attempts
        self.first_backoff = first_backoff
        self.timeout = timeout
        self._queue: asyncio.Queue[Notification] = asyncio.Queue(maxsize=queue_size)
        self.sent = 0
        self.failed = 0

    def submit(self, notification: Notification) -> None:
        try:
            self._queue.put_nowait(notification)
        except asyncio.QueueFull:
            log.warning(
                "notification queue full; dropped %s for %s/%s",
                notification.event,
                notification.namespace,
                notification.name,
            )

    async def run(self) -> None:
        """The background sender: one message at a time, each retried with backoff."""
        async with httpx.AsyncClient(timeout=self.timeout) as http:
            while True:
                notification = await self._queue.get()
                deliveries = []
                if self.targets.webhook_url:
                    deliveries.append(self._deliver(http, self.targets.webhook_url, notification.payload()))
                if self.targets.slack_url:
                    deliveries.append(
                        self._deliver(http, self.targets.slack_url, notification.slack_payload())
                    )
                await asyncio.gather(*deliveries)
                self._queue.task_done()

    async def _deliver(self, http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> None:
        delay = self.first_backoff
        for attempt in range(1, self.attempts + 1):
            try:
                response = await http.post(url, json=body)
                if response.status_code < 300:
                    self.sent += 1
                    return
                reason = f"HTTP {response.status_code}"
            except httpx.HTTPError as error:
                reason = f"{type(error).__name__}: {error}"
            if attempt < self.attempts:
                await asyncio.sleep(delay)
                delay *= 2
        self.failed += 1
        log.warning(
            "notification %s to %s failed after %d attempts: %s",
            body.get("event", ""),
            httpx.URL(url).host,
            self.attempts,
            reason,
        )

    async def drain(self, seconds: float) -> None:
        """Wait (bounded) until everything queued has been tried; for shutdown and tests."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._queue.join()


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
