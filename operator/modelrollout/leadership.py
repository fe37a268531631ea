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

The Kubernetes client is synchronous, so the elector runs in a thread of its own: a busy event loop never
delays a renewal.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from modelrollout.kube import describe_api_error

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


class LeaderElector:
    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        timing: LeaseTiming = LeaseTiming(),
        request_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = client.CoordinationV1Api(api_client)
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
        selector = f"metadata.name={self.name}"
        window = max(1, round(self.timing.duration))
        warned = False
        while standing_by.is_set() and not self._stop.is_set():
            lease_watch = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in lease_watch.stream(  # type: ignore[no-untyped-call]
                    self._api.list_namespaced_lease,
                    self.namespace,
                    field_selector=selector,
                    timeout_seconds=window,
                    _request_timeout=window + self._timeout,
                ):
                    if not standing_by.is_set():
                        lease_watch.stop()  # type: ignore[no-untyped-call]
                        break
                    raw = event.get("raw_object") or {}
                    if event.get("type") in ("ADDED", "MODIFIED") and isinstance(raw, dict):
                        spec = raw.get("spec") or {}
                        self._note(spec)
                        if not spec.get("holderIdentity"):  # released: anyone may take it now
                            self._wake.set()
            except ApiException as error:  # refused (RBAC): the periodic reads go on, said once
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
            except ApiException as error:
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
        except ApiException as error:
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
        except ApiException as error:
            if error.status != 409:  # 409: another replica wrote first; it holds the Lease this round
                log.warning("Lease %s not written: %s", self.lease, describe_api_error(error))
            return False
        except Exception as error:
            log.warning("Lease %s not written: %s: %s", self.lease, type(error).__name__, error)
            return False
        self._renewed_at = attempted_at
        return True

    def _read(self) -> dict[str, Any]:
        """The Lease as the API server wrote it (its own time strings, not the client's models)."""
        answer = self._api.read_namespaced_lease(
            self.name, self.namespace, _request_timeout=self._timeout, _preload_content=False
        )
        found: dict[str, Any] = json.loads(answer.data)  # type: ignore[attr-defined]  # the raw response
        return found

    def _replace(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Write the Lease back, conditionally on the resourceVersion it carries (409 if it changed); the
        Lease as written."""
        answer = self._api.replace_namespaced_lease(
            self.name,
            self.namespace,
            raw,  # type: ignore[arg-type]
            _request_timeout=self._timeout,
            _preload_content=False,
        )
        written: dict[str, Any] = json.loads(answer.data)  # type: ignore[attr-defined]  # the raw response
        return written

    def _create(self, now: datetime, attempted_at: float) -> bool:
        spec = claimed_spec(None, self.identity, now, True, self.timing)
        body = {"metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
        try:
            # The client serializes a plain dict as it is: the API server's own field names and time strings.
            self._api.create_namespaced_lease(
                self.namespace,
                body,  # type: ignore[arg-type]
                _request_timeout=self._timeout,
            )
        except ApiException as error:
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
