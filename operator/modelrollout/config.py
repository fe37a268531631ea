"""The operator's own settings, from its command line (`modelrollout run`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass
class OperatorConfig:
    prometheus_url: str | None = None
    metrics_port: int = 0  # 0: no /metrics endpoint
    notify_secret: str | None = None  # "namespace/name" of the Secret with the webhook URLs
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    request_timeout: float = 10.0
