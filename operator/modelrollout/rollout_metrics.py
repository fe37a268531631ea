"""The per-rollout series of the operator's metrics (phase, weights, stage, gate readings, counts of checks,
returns, failed writes and deferred checks), kept as one small record per rollout and turned into metric
families when Prometheus scrapes.

Why not prometheus_client's labelled Gauges and Counters: each label set is an object of its own with a lock
(a rollout has a dozen or more), about 10 KB per rollout, which at thousands of rollouts is most of what the
operator's metrics cost. A record here is well under 1 KB. The exposition is the same: names, help, labels,
types, and a `_created` sample per counter (the moment the rollout was first counted: its counters were 0 from
then on).

The event loop writes and the metrics server's thread reads, without a lock: a record is never changed once
stored, only replaced by a new one (an assignment to a dict entry), so a scrape sees each rollout either
before or after an update, never in between.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelrollout import api
from modelrollout.analysis import CheckResult

_NO_COUNTS: Mapping[str, float] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class GateReading:
    value: float  # NaN without a reading: a dashboard must not show a stale value as current
    control: float | None = None
    p_value: float | None = None
    min: float | None = None
    max: float | None = None


_NO_GATES: Mapping[str, GateReading] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RolloutSeries:
    created: float  # wall clock of the rollout's first count
    recorded: bool = False  # phase, weights and stage set (a failed write can be counted before)
    phase: str = ""
    canary_weight: float = 0.0
    shadow: float = 0.0
    stage: float = 0.0
    gates: Mapping[str, GateReading] = field(default_factory=lambda: _NO_GATES)
    checks: Mapping[str, float] = field(default_factory=lambda: _NO_COUNTS)  # by verdict
    rollbacks: Mapping[str, float] = field(default_factory=lambda: _NO_COUNTS)  # by reason
    write_failures: float | None = None
    checks_deferred: float | None = None


def _with_gates(previous: Mapping[str, GateReading], check: CheckResult) -> Mapping[str, GateReading]:
    """The gates' readings after `check`; a control, p-value or bound the check did not give keeps its last
    value, as a gauge that is not set again does."""
    gates = dict(previous)
    for gate in check.gates:
        before = gates.get(gate.name) or GateReading(value=math.nan)
        gates[gate.name] = GateReading(
            value=gate.value if gate.value is not None else math.nan,
            control=_kept(gate.control, before.control),
            p_value=_kept(gate.evidence.p_value if gate.evidence is not None else None, before.p_value),
            min=_kept(gate.min, before.min),
            max=_kept(gate.max, before.max),
        )
    return MappingProxyType(gates)


def _kept(given: float | None, before: float | None) -> float | None:
    return given if given is not None else before


def _plus(counts: Mapping[str, float], key: str) -> Mapping[str, float]:
    return MappingProxyType({**counts, key: _one_more(counts.get(key))})


def _one_more(count: float | None) -> float:
    return (count or 0.0) + 1


class RolloutMetrics(Collector):
    def __init__(self) -> None:
        self._series: dict[tuple[str, str], RolloutSeries] = {}

    def _get(self, namespace: str, name: str) -> RolloutSeries:
        return self._series.get((namespace, name)) or RolloutSeries(created=time.time())

    def record(
        self,
        namespace: str,
        name: str,
        status: api.ModelRolloutStatus,
        check: CheckResult | None,
        rollback_reason: str | None,
    ) -> None:
        series = self._get(namespace, name)
        series = replace(
            series,
            recorded=True,
            phase=status.phase.value,
            canary_weight=float(status.canary_weight),
            shadow=float(status.shadow),
            stage=float(status.stage),
        )
        if check is not None:
            series = replace(
                series,
                gates=_with_gates(series.gates, check),
                checks=_plus(series.checks, check.verdict.value),
            )
        if rollback_reason is not None:
            series = replace(series, rollbacks=_plus(series.rollbacks, rollback_reason))
        self._series[(namespace, name)] = series

    def count_write_failure(self, namespace: str, name: str) -> None:
        series = self._get(namespace, name)
        self._series[(namespace, name)] = replace(series, write_failures=_one_more(series.write_failures))

    def count_deferred(self, namespace: str, name: str) -> None:
        series = self._get(namespace, name)
        self._series[(namespace, name)] = replace(series, checks_deferred=_one_more(series.checks_deferred))

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted rollout's series, so they do not linger as if it still existed."""
        self._series.pop((namespace, name), None)

    def describe(self) -> Iterator[Metric]:
        return self._families({})

    def collect(self) -> Iterator[Metric]:
        return self._families(dict(self._series))  # one C-level copy: safe against the loop's writes

    def _families(self, everything: Mapping[tuple[str, str], RolloutSeries]) -> Iterator[Metric]:
        labels = ["namespace", "name"]
        phase = GaugeMetricFamily(
            "modelrollout_phase",
            "1 for the phase the rollout is in, 0 for the others",
            labels=[*labels, "phase"],
        )
        weight = GaugeMetricFamily(
            "modelrollout_canary_weight_percent", "Canary share of traffic", labels=labels
        )
        shadow = GaugeMetricFamily(
            "modelrollout_shadow_percent",
            "Percent of live traffic mirrored to the canary (shadow stages)",
            labels=labels,
        )
        stage = GaugeMetricFamily("modelrollout_stage", "Index of the current stage (0-based)", labels=labels)
        value = GaugeMetricFamily(
            "modelrollout_gate_value", "Last value a gate read", labels=[*labels, "gate"]
        )
        control = GaugeMetricFamily(
            "modelrollout_gate_control_value",
            "Last value a comparing gate read for the stable (the control)",
            labels=[*labels, "gate"],
        )
        p_value = GaugeMetricFamily(
            "modelrollout_gate_p_value",
            "Anytime-valid p-value that a sequential gate's canary is worse than its stable by the margin",
            labels=[*labels, "gate"],
        )
        threshold = GaugeMetricFamily(
            "modelrollout_gate_threshold", "A gate's bound", labels=[*labels, "gate", "bound"]
        )
        checks = CounterMetricFamily("modelrollout_checks", "Checks by verdict", labels=[*labels, "verdict"])
        rollbacks = CounterMetricFamily(
            "modelrollout_rollbacks", "Returns to stable by reason", labels=[*labels, "reason"]
        )
        write_failures = CounterMetricFamily(
            "modelrollout_write_failures",
            "VirtualService writes that failed (refused, forbidden, or not shown when read back)",
            labels=labels,
        )
        deferred = CounterMetricFamily(
            "modelrollout_checks_deferred",
            "Checks put off because their queries got no Prometheus worker within the analysis interval (the "
            "operator's own queueing; never counted as errors)",
            labels=labels,
        )
        phases = [p.value for p in api.Phase]
        for (namespace, name), series in everything.items():
            where = [namespace, name]
            if series.recorded:
                for one in phases:
                    phase.add_metric([*where, one], 1.0 if one == series.phase else 0.0)
                weight.add_metric(where, series.canary_weight)
                shadow.add_metric(where, series.shadow)
                stage.add_metric(where, series.stage)
            for gate, reading in series.gates.items():
                value.add_metric([*where, gate], reading.value)
                if reading.control is not None:
                    control.add_metric([*where, gate], reading.control)
                if reading.p_value is not None:
                    p_value.add_metric([*where, gate], reading.p_value)
                for bound, limit in (("min", reading.min), ("max", reading.max)):
                    if limit is not None:
                        threshold.add_metric([*where, gate, bound], limit)
            for verdict, count in series.checks.items():
                checks.add_metric([*where, verdict], count, created=series.created)
            for reason, count in series.rollbacks.items():
                rollbacks.add_metric([*where, reason], count, created=series.created)
            if series.write_failures is not None:
                write_failures.add_metric(where, series.write_failures, created=series.created)
            if series.checks_deferred is not None:
                deferred.add_metric(where, series.checks_deferred, created=series.created)
        yield from (
            phase, weight, shadow, stage, value, control, p_value, threshold, checks, rollbacks,
            write_failures, deferred,
        )  # fmt: skip
