"""The operator's own settings, from its command line (`modelrollout run`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta


@dataclass
class OperatorConfig:
    prometheus_url: str | None = None
    metrics_port: int = 0  # 0: no /metrics endpoint
    notify_secret: str | None = None  # "namespace/name" of the Secret with the webhook URLs
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    request_timeout: float = 10.0
    # Prometheus queries run in threads of their own, taken in turn by the rollouts.
    prometheus_workers: int = 16
    prometheus_queries_per_rollout: int = 4
    # Addresses a credentials Secret's token or password may be sent to, besides prometheus_url and the
    # address a Secret names itself (key `address`).
    prometheus_credentials_allow: tuple[str, ...] = ()
    # A Prometheus connection (address, timeout, credentials) unused this long is closed.
    prometheus_idle_seconds: float = 600.0
    # VirtualServices come from a watch (one for all namespaces when the operator watches all of them, else
    # one per namespace as rollouts need them); False: every tick reads them from the API server.
    watch_virtual_services: bool = True
    # Built-in gates ask grouped queries whose answers rollouts share, each taken at most this many seconds
    # after it was asked (metrics.batching); None: every rollout asks its own queries.
    batch_max_age: float | None = 5.0
    # A decision that changes only the numbers of checks stays unwritten while the last check written is
    # younger than this (engine.quiet); None: every change is written at once.
    status_refresh: timedelta | None = timedelta(minutes=5)
    # Those refresh writes, for all rollouts together, at most this many per second (a token bucket,
    # modelrollout.refresh_budget); None: no limit.
    status_refreshes_per_second: float | None = 2.0
    cluster_wide: bool = True
    # Rollouts reconciling at once (modelrollout.slots): the others wait, holding nothing, urgent ones first.
    max_concurrent_reconciles: int = 128
    # Memory freed after a burst is given back to the system this often (modelrollout.memory); None: never.
    return_memory_seconds: float | None = 60.0
    # Objects alive this long are frozen out of the garbage collector's walks (modelrollout.gc_pauses); None:
    # never.
    gc_freeze_seconds: float | None = 600.0
    # A reconciliation this long is logged with where its time went (the
    # `modelrollout_reconcile_duration_seconds` histogram says how many there are, not why); None: none is.
    slow_reconcile_seconds: float | None = 5.0
