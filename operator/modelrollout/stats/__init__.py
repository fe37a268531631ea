"""Pure statistics for gates: anytime-valid sequential tests of canary against stable (`sequential`) and
reset-aware accumulation of Prometheus counters (`counters`). No I/O."""

from __future__ import annotations

from modelrollout.stats.counters import accumulate, fingerprint
from modelrollout.stats.sequential import (
    RateRatioResult,
    Running,
    SampleRatioResult,
    Untestable,
    event_share,
    rate_ratio_interval,
    rate_ratio_log_bf,
    rate_ratio_test,
    sample_ratio_log_bf,
    sample_ratio_test,
)

__all__ = [
    "RateRatioResult",
    "Running",
    "SampleRatioResult",
    "Untestable",
    "accumulate",
    "event_share",
    "fingerprint",
    "rate_ratio_interval",
    "rate_ratio_log_bf",
    "rate_ratio_test",
    "sample_ratio_log_bf",
    "sample_ratio_test",
]
