"""A steady load generator: for each client host, requests at a fixed rate, each from one of `users` user ids
(in a header, so VirtualService header matches can pin users), with optional fixed headers.

A flow with a `bucket_header` and an `experiment_id` also sends each request's sticky bucket in that header,
`modelrollout.assign.bucket(experiment_id, user_id)` of the user id the request carries: what an app that
assigns users itself sends, and what the bucket routes of an experiment match.

Requests are evenly spaced (1/rps apart), not Poisson: a test then sees the same number of requests in every
second, and shares vary only by the weighted pick. One thread serves every flow; a flow that falls behind
(a paused process, a busy machine) catches up at most one second of backlog, then drops the rest, as a client
with a bounded queue would.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from modelrollout.assign import bucket
from modelrollout_dev.sim.routing import Request

MAX_BACKLOG_SECONDS = 1.0
USER_HEADER = "x-user-id"  # where a flow sends its user ids, unless told otherwise

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Flow:
    host: str
    rps: float
    headers: Mapping[str, str] = field(default_factory=dict)
    users: int = 100  # distinct user ids; 0 sends no user header
    user_header: str = USER_HEADER
    path: str = "/v1/chat/completions"
    source_workload: str = "loadgen"
    source_namespace: str = "default"
    bucket_header: str | None = None  # with experiment_id: each user's sticky bucket, in this header
    experiment_id: str | None = None

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("a flow needs a host")
        if not self.rps >= 0:
            raise ValueError(f"rps must be >= 0, got {self.rps}")
        if self.users < 0:
            raise ValueError(f"users must be >= 0, got {self.users}")
        if not self.path.startswith("/"):
            raise ValueError(f"path must start with '/', got {self.path!r}")
        if (self.bucket_header is None) != (self.experiment_id is None):
            raise ValueError(
                "bucket_header and experiment_id go together: the bucket is computed from the experiment id "
                "and the user id"
            )
        if self.bucket_header is not None and not self.bucket_header:
            raise ValueError("bucket_header must be a header name, got ''")
        if self.experiment_id is not None and not self.experiment_id:
            raise ValueError("experiment_id must not be empty")
        if self.bucket_header is not None and self.bucket_header.lower() == self.user_header.lower():
            raise ValueError(f"bucket_header must differ from user_header ({self.user_header!r})")
        object.__setattr__(self, "headers", MappingProxyType(dict(self.headers)))

    def request(self, rng: random.Random) -> Request:
        headers = dict(self.headers)
        if self.users:
            user_id = f"user-{rng.randrange(self.users)}"
            headers[self.user_header] = user_id
            if self.bucket_header is not None and self.experiment_id is not None:
                headers[self.bucket_header] = str(bucket(self.experiment_id, user_id))
        return Request(
            host=self.host, path=self.path, headers=headers, source_namespace=self.source_namespace
        )

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies, and a read-only mapping cannot be copied.
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "headers": dict(self.headers)}


Send = Callable[[Flow, Request, random.Random], object]


class LoadGenerator:
    def __init__(self, send: Send, seed: int | None = None) -> None:
        self._send = send
        self._rng = random.Random(seed)  # noqa: S311  (simulated traffic, not secrets)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._flows: dict[str, Flow] = {}
        self._due: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.failed = 0

    def set_flow(self, flow: Flow) -> None:
        """Start, change or (rps 0) end the flow of `flow.host`."""
        with self._lock:
            if flow.rps > 0:
                if self._flows.get(flow.host, flow).rps != flow.rps or flow.host not in self._due:
                    self._due[flow.host] = time.monotonic()
                self._flows[flow.host] = flow
            else:
                self._flows.pop(flow.host, None)
                self._due.pop(flow.host, None)
        self._wake.set()

    def flows(self) -> list[Flow]:
        with self._lock:
            return [self._flows[host] for host in sorted(self._flows)]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sim-load", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            # Cleared before reading the flows: a change made from here on wakes the wait below at once.
            self._wake.clear()
            now = time.monotonic()
            with self._lock:
                due = [(host, self._flows[host], self._due[host]) for host in self._flows]
            next_wake: float | None = None
            for host, flow, was_due in due:
                interval = 1.0 / flow.rps
                at = max(was_due, now - MAX_BACKLOG_SECONDS)
                while at <= now and not self._stopping.is_set():
                    try:
                        self._send(flow, flow.request(self._rng), self._rng)
                        self.sent += 1
                    except Exception:
                        # One bad request (a VirtualService the router cannot read, say) must not end the
                        # load for good; it is logged once and counted.
                        if not self.failed:
                            log.exception(
                                "load request to %s failed; further failures are only counted", host
                            )
                        self.failed += 1
                    at += interval
                with self._lock:
                    if self._flows.get(host) is flow:  # not changed meanwhile
                        self._due[host] = at
                next_wake = at if next_wake is None else min(next_wake, at)
            timeout = None if next_wake is None else max(0.0, next_wake - time.monotonic())
            self._wake.wait(timeout)
