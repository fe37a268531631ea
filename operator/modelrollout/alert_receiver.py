"""`POST /alerts`: an Alertmanager-compatible webhook receiver on the operator. A firing alert that names a
rollout (or the canary Service it routes to) makes that rollout check its gates at once rather than at its
next interval; the check decides as usual, so an alert alone never rolls anything back. With a token set,
requests must carry `Authorization: Bearer <token>` (Alertmanager's `http_config.authorization`).
Served by aiohttp (kopf's own HTTP stack) on the operator's event loop."""

from __future__ import annotations

import hmac
import json
import logging

from aiohttp import web

from modelrollout.alerts import NotAnAlertPayload, targets_of
from modelrollout.telemetry import Telemetry
from modelrollout.wakeups import Wakeups

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20


class AlertReceiver:
    def __init__(
        self, wakeups: Wakeups, *, token: str | None = None, telemetry: Telemetry | None = None
    ) -> None:
        self.wakeups = wakeups
        self.token = token
        self.telemetry = telemetry
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/alerts", self.receive)
        return app

    async def start(self, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 - Alertmanager is in-cluster
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        log.info("alert receiver on %s:%d/alerts%s", host, port, " (token required)" if self.token else "")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _count(self, outcome: str, amount: int = 1) -> None:
        if self.telemetry is not None and amount:
            self.telemetry.alerts.labels(outcome).inc(amount)  # per alert

    def _authorized(self, request: web.Request) -> bool:
        if not self.token:
            return True
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())

    async def receive(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            self._count("refused")
            return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        try:
            targets = targets_of(json.loads(await request.read()))
        except (ValueError, NotAnAlertPayload) as error:  # JSONDecodeError is a ValueError
            self._count("refused")
            return web.json_response({"error": str(error)}, status=400)
        checked: set[str] = set()
        unmatched = 0
        for target in targets.firing:
            named = {target.rollout} if target.rollout else set()
            if target.canary is not None:
                named = self.wakeups.rollouts_on_canary(*target.canary)
            asked = {rollout for rollout in named if self.wakeups.request_check(rollout)}
            checked |= asked
            unmatched += not asked
        self._count("checked", len(targets.firing) - unmatched)
        self._count("unmatched", unmatched)
        self._count("resolved", targets.resolved)
        if checked:
            log.info("alert: checking %s now", ", ".join(sorted(checked)))
        return web.json_response(
            {"checked": sorted(checked), "unmatched": unmatched, "resolved": targets.resolved}
        )
