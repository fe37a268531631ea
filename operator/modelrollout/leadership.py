"""Leader election over a `coordination.k8s.io/v1` Lease, the protocol client-go's leaderelection and
controller-runtime use, so that of several replicas at most one reconciles and writes.

A candidate holds the Lease by writing its identity and a renew time into it, conditionally on the version it
read; the leader then renews the record it wrote, conditionally on that version, without reading first.
Another holder's Lease counts as expired only when this candidate has seen it unchanged for the whole lease
duration on its own monotonic clock: clocks of different machines are never compared. The leader starts a
renewal every retry period and considers itself leader only while its last successful renewal is younger than
the renew deadline, which is shorter than the lease duration: a leader that cannot renew stops writing before
any standby can take over. A standby watches the Lease, so it sees each renewal the moment it is written and
tries to take over the moment the record it saw expires, not up to two retry periods later (one to notice the
last renewal, one to notice its expiry): a dead leader is replaced within the lease duration of its last
renewal. Losing the Lease ends the process (the kubelet restarts it as a standby), as controller-runtime does:
nothing half-led survives.

The elector runs in threads of its own, its requests on an event loop of its own with its own connections
(LeaseEndpoints): a busy operator loop never delays a renewal.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from modelrollout.kube import describe_api_error
from modelrollout.kubeclient import ApiError, Credentials, KubeClient, LoopThread, object_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseTiming:
    duration: float = 15.0  # a holder's Lease is valid this long after it was last seen renewed
    renew_deadline: float = 10.0  # a leader that has not renewed for this long stops leading
    retry_period: float = 2.0  # between two attempts to acquire or renew

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.duration:
            raise ValueError(
                "leader election needs 0 < retry period < renew deadline < lease duration, got "
                f"{self.retry_period:g} s, {self.renew_deadline:g} s, {self.duration:g} s"
            )


def _micro_time(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def claimed_spec(
    current: dict[str, Any] | None, identity: str, now: datetime, expired: bool, timing: LeaseTiming
) -> dict[str, Any] | None:
    """The Lease spec that makes `identity` the holder (renewed or newly acquired), or None while another
    holder's Lease is valid. `current`: the Lease's spec as read (None: no Lease yet); `expired`: whether the
    candidate has seen it unchanged for its whole duration. An empty holder is a released Lease."""
    stamp = _micro_time(now)
    seconds = max(1, round(timing.duration))
    if current is None:
        return {
            "holderIdentity": identity,
            "leaseDurationSeconds": seconds,
            "acquireTime": stamp,
            "renewTime": stamp,
            "leaseTransitions": 0,
        }
    holder = current.get("holderIdentity") or ""
    if holder and holder != identity and not expired:
        return None
    ours = holder == identity
    transitions = int(current.get("leaseTransitions") or 0)
    return {
        **current,
        "holderIdentity": identity,
        "leaseDurationSeconds": seconds,
        "acquireTime": current.get("acquireTime") if ours else stamp,
        "renewTime": stamp,
        "leaseTransitions": transitions if ours or not holder else transitions + 1,
    }


def released_spec(current: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The spec of a Lease its holder gives up on a clean stop: no holder, so a standby takes it at once."""
    stamp = _micro_time(now)
    return {**current, "holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": stamp}


OnLeaseEvent = Callable[[str, dict[str, Any]], bool]  # (event type, Lease) -> go on watching


class LeaseApi(Protocol):
    """The Lease requests the elector makes, blocking; ApiError for the API server's refusals."""

    def read(self, namespace: str, name: str, timeout: float) -> dict[str, Any]: ...

    def replace(self, namespace: str, name: str, body: dict[str, Any], timeout: float) -> dict[str, Any]: ...

    def create(self, namespace: str, body: dict[str, Any], timeout: float) -> dict[str, Any]: ...

    def watch(
        self, namespace: str, name: str, window: int, timeout: float, on_event: OnLeaseEvent
    ) -> None: ...


def _lease_path(namespace: str, name: str = "") -> str:
    return object_path("coordination.k8s.io", "v1", "leases", namespace, name)


class LeaseEndpoints:
    """LeaseApi over the API server, each request on an event loop of the elector's own (a thread, its own
    client and connections)."""

    def __init__(
        self, credentials: Credentials, *, user_agent: str, refresh: Callable[[], Credentials] | None
    ) -> None:
        self._runner = LoopThread("lease-requests")
        self._client = KubeClient(credentials, user_agent=user_agent, refresh=refresh, connections=4)

    def read(self, namespace: str, name: str, timeout: float) -> dict[str, Any]:
        found = self._runner.run(self._client.request("GET", _lease_path(namespace, name), timeout=timeout))
        return dict(found)

    def replace(self, namespace: str, name: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Conditional on the resourceVersion `body` carries (409 if the Lease changed since)."""
        call = self._client.request("PUT", _lease_path(namespace, name), body=body, timeout=timeout)
        return dict(self._runner.run(call))

    def create(self, namespace: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        call = self._client.request("POST", _lease_path(namespace), body=body, timeout=timeout)
        return dict(self._runner.run(call))

    def watch(self, namespace: str, name: str, window: int, timeout: float, on_event: OnLeaseEvent) -> None:
        """Follow the Lease for at most `window` seconds, calling `on_event` (on the elector's loop) until it
        returns False."""

        async def follow() -> None:
            events = self._client.watch(
                _lease_path(namespace),
                params={"fieldSelector": f"metadata.name={name}"},
                timeout_seconds=window,
                connect_timeout=timeout,
            )
            async with contextlib.aclosing(events):  # its connection closed when we stop early
                async for event in events:
                    if not on_event(str(event.get("type")), event.get("object") or {}):
                        break

        self._runner.run(follow(), timeout=window + timeout)

    def close(self) -> None:
        self._runner.stop(self._client.close())


class LeaderElector:
    def __init__(
        self,
        leases: LeaseApi,
        *,
        namespace: str,
        name: str,
        identity: str,
        timing: LeaseTiming = LeaseTiming(),
        request_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = leases
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing
        self._timeout = min(request_timeout, timing.retry_period * 2)
        self._clock = clock
        # The record seen, when this replica first saw it (its own clock) and how long it is valid; written
        # by the Lease watch and by reads, so under a lock.
        self._observed: tuple[str, float, float] | None = None
        self._observed_lock = threading.Lock()
        self._wake = threading.Event()  # a standby's wait cut short: the Lease released, or `stop()`
        self._renewed_at: float | None = None
        self._written: dict[str, Any] | None = None  # the Lease as this replica last wrote it, while leading
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lease(self) -> str:
        return f"{self.namespace}/{self.name}"

    def leading(self) -> bool:
        """Whether this replica may write: it holds the Lease and renewed it within the renew deadline."""
        renewed = self._renewed_at
        return (
            renewed is not None
            and not self._lost.is_set()
            and self._clock() - renewed < self.timing.renew_deadline
        )

    def acquire(self) -> bool:
        """Block until this replica holds the Lease (True), or until `stop()` (False)."""
        waiting_logged = False
        standing_by = threading.Event()
        standing_by.set()
        watcher: threading.Thread | None = None
        try:
            while not self._stop.is_set():
                self._wake.clear()
                if self.try_acquire_or_renew():
                    log.info("leading: Lease %s held by %s", self.lease, self.identity)
                    return True
                if not waiting_logged:
                    log.info("standing by: Lease %s is held by another replica", self.lease)
                    waiting_logged = True
                if watcher is None:
                    watcher = threading.Thread(
                        target=self._watch_lease, args=(standing_by,), name="lease-watch", daemon=True
                    )
                    watcher.start()
                self._wake.wait(self.next_attempt_in())
            return False
        finally:
            standing_by.clear()  # the watch ends with its current request (at most one lease duration)

    def next_attempt_in(self) -> float:
        """Seconds until a standby's next attempt: the next retry period, or sooner the moment the record it
        saw expires (a few milliseconds after, so that `_expired` holds when the attempt reads it). Once that
        moment has passed (an attempt made after it failed), the retry period again."""
        with self._observed_lock:
            observed = self._observed
        if observed is None:
            return self.timing.retry_period
        _, seen_at, duration = observed
        until_expiry = seen_at + duration - self._clock()
        if until_expiry < 0:
            return self.timing.retry_period
        return min(self.timing.retry_period, until_expiry + 0.005)

    def _watch_lease(self, standing_by: threading.Event) -> None:
        """Record each version of the Lease when it arrives, while standing by. A failed watch is restarted
        after a retry period; until then the periodic reads observe the Lease, as without a watch."""
        window = max(1, round(self.timing.duration))
        warned = False

        def seen(kind: str, raw: dict[str, Any]) -> bool:
            if not standing_by.is_set():
                return False
            if kind in ("ADDED", "MODIFIED"):
                spec = raw.get("spec") or {}
                self._note(spec)
                if not spec.get("holderIdentity"):  # released: anyone may take it now
                    self._wake.set()
            return True

        while standing_by.is_set() and not self._stop.is_set():
            try:
                self._api.watch(self.namespace, self.name, window, self._timeout, seen)
            except ApiError as error:  # refused (RBAC): the periodic reads go on, said once
                say = log.debug if warned else log.warning
                say("Lease %s not watched: %s", self.lease, describe_api_error(error))
                warned = True
                self._stop.wait(self.timing.retry_period)
            except Exception as error:  # the API server unreachable: the periodic reads go on meanwhile
                log.debug("Lease %s watch ended: %s: %s", self.lease, type(error).__name__, error)
                self._stop.wait(self.timing.retry_period)

    def keep_renewing(self) -> None:
        """Renew in a thread of its own until the renew deadline passes without a renewal (then `leading()`
        is False for good) or `stop()`."""

        def renew() -> None:
            # Attempts start every retry period, however long each took: under a slow API server, waiting a
            # full period after a slow answer as well would leave too few attempts inside the deadline.
            started = self._clock()
            while not self._stop.wait(max(0.0, started + self.timing.retry_period - self._clock())):
                started = self._clock()
                if self.try_acquire_or_renew():
                    continue
                renewed = self._renewed_at
                if renewed is None or self._clock() - renewed >= self.timing.renew_deadline:
                    self._lost.set()
                    log.error(
                        "lost the Lease %s: not renewed for %g s; stopping so that no other replica's "
                        "writes meet ours",
                        self.lease,
                        self.timing.renew_deadline,
                    )
                    return

        self._thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
        self._thread.start()

    def try_acquire_or_renew(self) -> bool:
        # The renewal counts from before the attempt, never from its answer: a slow answer cannot stretch
        # this replica's leadership past what a standby computes from the moment it saw the record.
        attempted_at = self._clock()
        now = datetime.now(UTC)
        written = self._written
        if written is not None:
            # The leader's fast path (as client-go's): renew the record it wrote last, conditionally on that
            # record's resourceVersion, without reading it first; one request instead of two. A 409 means
            # another replica wrote since: read and decide as below.
            self._written = None
            renewed = claimed_spec(written["spec"], self.identity, now, False, self.timing)
            renewal = {**written, "spec": renewed}
            try:
                self._written = self._replace(renewal)
            except ApiError as error:
                if error.status != 409:
                    log.warning("Lease %s not written: %s", self.lease, describe_api_error(error))
                    return False
            except Exception as error:
                log.warning("Lease %s not written: %s: %s", self.lease, type(error).__name__, error)
                return False
            else:
                self._renewed_at = attempted_at
                return True
        try:
            raw = self._read()
        except ApiError as error:
            if error.status != 404:
                log.warning("Lease %s unreadable: %s", self.lease, describe_api_error(error))
                return False
            return self._create(now, attempted_at)
        except Exception as error:  # an unreachable API server: try again at the next period
            log.warning("Lease %s unreadable: %s: %s", self.lease, type(error).__name__, error)
            return False
        spec: dict[str, Any] = raw.get("spec") or {}
        desired = claimed_spec(spec, self.identity, now, self._expired(spec), self.timing)
        if desired is None:
            return False
        raw["spec"] = desired
        try:
            self._written = self._replace(raw)
        except ApiError as error:
            if error.status != 409:  # 409: another replica wrote first; it holds the Lease this round
                log.warning("Lease %s not written: %s", self.lease, describe_api_error(error))
            return False
        except Exception as error:
            log.warning("Lease %s not written: %s: %s", self.lease, type(error).__name__, error)
            return False
        self._renewed_at = attempted_at
        return True

    def _read(self) -> dict[str, Any]:
        """The Lease as the API server wrote it."""
        return self._api.read(self.namespace, self.name, self._timeout)

    def _replace(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Write the Lease back, conditionally on the resourceVersion it carries (409 if it changed); the
        Lease as written."""
        return self._api.replace(self.namespace, self.name, raw, self._timeout)

    def _create(self, now: datetime, attempted_at: float) -> bool:
        spec = claimed_spec(None, self.identity, now, True, self.timing)
        body = {"metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
        try:
            self._api.create(self.namespace, body, self._timeout)
        except ApiError as error:
            if error.status != 409:  # 409: another replica created it first
                log.warning("Lease %s not created: %s", self.lease, describe_api_error(error))
            return False
        except Exception as error:
            log.warning("Lease %s not created: %s: %s", self.lease, type(error).__name__, error)
            return False
        self._renewed_at = attempted_at
        return True

    def _note(self, spec: dict[str, Any]) -> tuple[float, float]:
        """Record `spec` as seen now unless it is the record already seen; (when it was first seen, how long
        it is valid)."""
        record = f"{spec.get('holderIdentity')}|{spec.get('renewTime')}|{spec.get('leaseTransitions')}"
        duration = float(spec.get("leaseDurationSeconds") or self.timing.duration)
        with self._observed_lock:
            if self._observed is None or self._observed[0] != record:
                self._observed = (record, self._clock(), duration)
            return self._observed[1], self._observed[2]

    def _expired(self, spec: dict[str, Any]) -> bool:
        """Whether the record has stayed as it is for its whole duration, by this replica's own clock."""
        seen_at, duration = self._note(spec)
        return self._clock() - seen_at >= duration

    def stop(self, release: bool) -> None:
        """Stop renewing; with `release`, give the Lease up (if still held): a standby takes over at once."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timing.retry_period + self._timeout)
        if not release or not self.leading():
            return
        self._renewed_at = None
        self._written = None
        try:
            raw = self._read()
            if (raw.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            raw["spec"] = released_spec(raw["spec"], datetime.now(UTC))
            self._replace(raw)
            log.info("released the Lease %s", self.lease)
        except Exception as error:  # the standby then waits for the lease to expire
            log.warning("Lease %s not released: %s", self.lease, describe_api_error(error))
