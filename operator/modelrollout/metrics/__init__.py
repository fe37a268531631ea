"""Metrics for gate checks: the MetricsProvider protocol, the built-in Istio gate templates and their safe
rendering, and the Prometheus implementation.

`provider` and `templates` are pure (no I/O); `prometheus` is the only module here that talks to a server.
"""

from __future__ import annotations

from modelrollout.metrics.provider import MetricsError, MetricsProvider, Sample

__all__ = ["MetricsError", "MetricsProvider", "Sample"]
