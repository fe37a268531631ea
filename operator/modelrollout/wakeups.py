"""Each rollout driver's alarm, by rollout (`namespace/name`): rung by a spec edit or an action, by a change
to a VirtualService the rollout claims (seen on the watch), and by an alert that asks for a check out of turn.
Pure asyncio, on the event loop."""

from __future__ import annotations

import asyncio

from modelrollout.routing.istio import VirtualService, claims_of


class Wakeups:
    def __init__(self) -> None:
        self._alarms: dict[str, asyncio.Event] = {}
        self._checks: set[str] = set()
        # Rollouts by the canary Service they route to ((namespace, name) of the Service), for alerts that
        # name the Service rather than the rollout.
        self._by_canary: dict[tuple[str, str], set[str]] = {}
        self._canary_of: dict[str, tuple[str, str]] = {}

    def alarm(self, rollout: str) -> asyncio.Event:
        return self._alarms.setdefault(rollout, asyncio.Event())

    def forget(self, rollout: str, alarm: asyncio.Event) -> None:
        """The driver that held `alarm` has stopped (a driver of a new object of that name keeps its own)."""
        if self._alarms.get(rollout) is not alarm:
            return
        del self._alarms[rollout]
        self._checks.discard(rollout)
        self.route_canary(rollout, None)

    def wake(self, rollout: str) -> bool:
        alarm = self._alarms.get(rollout)
        if alarm is None:
            return False
        alarm.set()
        return True

    def route_canary(self, rollout: str, service: tuple[str, str] | None) -> None:
        """Record the canary Service `rollout` routes to now (None: none)."""
        previous = self._canary_of.pop(rollout, None)
        if previous is not None:
            owners = self._by_canary.get(previous, set())
            owners.discard(rollout)
            if not owners:
                self._by_canary.pop(previous, None)
        if service is not None:
            self._canary_of[rollout] = service
            self._by_canary.setdefault(service, set()).add(rollout)

    def rollouts_on_canary(self, namespace: str, name: str) -> set[str]:
        return set(self._by_canary.get((namespace, name), ()))

    def request_check(self, rollout: str) -> bool:
        """Ask `rollout` for a check now; False if no driver of that name runs here."""
        if rollout not in self._alarms:
            return False
        self._checks.add(rollout)
        self.wake(rollout)
        return True

    def keep_check_request(self, rollout: str) -> None:
        """A check request the driver could not serve yet: it stays for the driver's next look, which the
        driver times itself (no wake)."""
        if rollout in self._alarms:
            self._checks.add(rollout)

    def take_check_request(self, rollout: str) -> bool:
        if rollout in self._checks:
            self._checks.discard(rollout)
            return True
        return False

    def on_virtual_service(self, old: VirtualService | None, new: VirtualService | None) -> None:
        """A VirtualService changed (or appeared, or went): wake every rollout that claims a route of it,
        before or after the change."""
        owners = set(claims_of(old).values()) if old is not None else set()
        if new is not None:
            owners |= set(claims_of(new).values())
        for owner in owners:
            self.wake(owner)
