"""Leader election over a `coordination.k8s.io/v1` Lease, the protocol client-go's leaderelection and
controller-runtime use, so that of several replicas at most one reconciles and writes.

A candidate holds the Lease by writing its identity and a renew time into it, conditionally on the version it
read. Another holder's Lease counts as expired only when this candidate has seen it unchanged for the whole
lease duration on its own monotonic clock: clocks of different machines are never compared. The leader
renews every retry period and considers itself leader only while its last successful renewal is younger than
the renew deadline, which is shorter than the lease duration: a leader that cannot renew stops writing before
any standby can take over. Losing the Lease ends the process (the kubelet restarts it as a standby), as
controller-runtime does: nothing half-led survives.

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

from kubernetes import client
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
        self._observed: tuple[str, float] | None = None  # (the record seen, when it was first seen)
        self._renewed_at: float | None = None
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
        while not self._stop.is_set():
            if self.try_acquire_or_renew():
                log.info("leading: Lease %s held by %s", self.lease, self.identity)
                return True
            if not waiting_logged:
                log.info("standing by: Lease %s is held by another replica", self.lease)
                waiting_logged = True
            self._stop.wait(self.timing.retry_period)
        return False

    def keep_renewing(self) -> None:
        """Renew in a thread of its own until the renew deadline passes without a renewal (then `leading()`
        is False for good) or `stop()`."""

        def renew() -> None:
            while not self._stop.wait(self.timing.retry_period):
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
            self._replace(raw)
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

    def _replace(self, raw: dict[str, Any]) -> None:
        """Write the Lease back, conditionally on the resourceVersion it carries (409 if it changed)."""
        self._api.replace_namespaced_lease(
            self.name,
            self.namespace,
            raw,  # type: ignore[arg-type]
            _request_timeout=self._timeout,
        )

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

    def _expired(self, spec: dict[str, Any]) -> bool:
        """Whether the record has stayed as it is for its whole duration, by this replica's own clock."""
        record = f"{spec.get('holderIdentity')}|{spec.get('renewTime')}|{spec.get('leaseTransitions')}"
        now = self._clock()
        if self._observed is None or self._observed[0] != record:
            self._observed = (record, now)
        duration = float(spec.get("leaseDurationSeconds") or self.timing.duration)
        return now - self._observed[1] >= duration

    def stop(self, release: bool) -> None:
        """Stop renewing; with `release`, give the Lease up (if still held): a standby takes over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timing.retry_period + self._timeout)
        if not release or not self.leading():
            return
        self._renewed_at = None
        try:
            raw = self._read()
            if (raw.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            raw["spec"] = released_spec(raw["spec"], datetime.now(UTC))
            self._replace(raw)
            log.info("released the Lease %s", self.lease)
        except Exception as error:  # the standby then waits for the lease to expire
            log.warning("Lease %s not released: %s", self.lease, describe_api_error(error))
