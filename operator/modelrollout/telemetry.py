"""The operator's own Prometheus metrics: where every rollout stands, what its gates read against their
thresholds, how checks come out, and how long reconciliations take. Served on /metrics (`--metrics-port`)."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from modelrollout import api
from modelrollout.analysis import CheckResult


class Telemetry:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ("namespace", "name")
        self.phase = Gauge(
            "modelrollout_phase",
            "1 for the phase the rollout is in, 0 for the others",
            (*labels, "phase"),
            registry=self.registry,
        )
        self.canary_weight = Gauge(
            "modelrollout_canary_weight_percent", "Canary share of traffic", labels, registry=self.registry
        )
        self.shadow = Gauge(
            "modelrollout_shadow_percent",
            "Percent of live traffic mirrored to the canary (shadow stages)",
            labels,
            registry=self.registry,
        )
        self.stage = Gauge(
            "modelrollout_stage", "Index of the current stage (0-based)", labels, registry=self.registry
        )
        self.gate_value = Gauge(
            "modelrollout_gate_value", "Last value a gate read", (*labels, "gate"), registry=self.registry
        )
        self.gate_control = Gauge(
            "modelrollout_gate_control_value",
            "Last value a comparing gate read for the stable (the control)",
            (*labels, "gate"),
            registry=self.registry,
        )
        self.gate_p_value = Gauge(
            "modelrollout_gate_p_value",
            "Anytime-valid p-value that a sequential gate's canary is worse than its stable by the margin",
            (*labels, "gate"),
            registry=self.registry,
        )
        self.gate_threshold = Gauge(
            "modelrollout_gate_threshold",
            "A gate's bound",
            (*labels, "gate", "bound"),
            registry=self.registry,
        )
        self.checks = Counter(
            "modelrollout_checks_total", "Checks by verdict", (*labels, "verdict"), registry=self.registry
        )
        self.rollbacks = Counter(
            "modelrollout_rollbacks_total",
            "Returns to stable by reason",
            (*labels, "reason"),
            registry=self.registry,
        )
        self.write_failures = Counter(
            "modelrollout_write_failures_total",
            "VirtualService writes that failed (refused, forbidden, or not shown when read back)",
            labels,
            registry=self.registry,
        )
        self.checks_deferred = Counter(
            "modelrollout_checks_deferred_total",
            "Checks put off because their queries got no Prometheus worker within the analysis interval (the "
            "operator's own queueing; never counted as errors)",
            labels,
            registry=self.registry,
        )
        self.prometheus_queue_wait = Histogram(
            "modelrollout_prometheus_queue_wait_seconds",
            "Time a gate query waited for a Prometheus worker thread of the operator",
            registry=self.registry,
            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.prometheus_query_seconds = Histogram(
            "modelrollout_prometheus_query_duration_seconds",
            "Time of one gate query, from its start in a worker thread to its answer (or error)",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.grouped_queries = Counter(
            "modelrollout_grouped_queries_total",
            "Answers of built-in gates' grouped queries by how they came: asked (a query Prometheus "
            "answered) or shared (taken from a query another check had asked)",
            ("answer",),
            registry=self.registry,
        )
        self.prometheus_connections = Gauge(
            "modelrollout_prometheus_connections",
            "Prometheus clients held open (one per address, timeout and credentials in use)",
            registry=self.registry,
        )
        self.virtual_service_reads = Counter(
            "modelrollout_virtualservice_reads_total",
            "VirtualService reads by where the answer came from: the watch's cache or the API server",
            ("source",),
            registry=self.registry,
        )
        self.alerts = Counter(
            "modelrollout_alerts_total",
            "Alerts received on /alerts by outcome: checked (a rollout was asked for a check), unmatched "
            "(no rollout here), resolved (ignored), refused (bad token or payload)",
            ("outcome",),
            registry=self.registry,
        )
        self.memory_returned = Counter(
            "modelrollout_memory_returned_bytes",
            "Memory the operator freed and gave back to the system (glibc malloc_trim after bursts)",
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "modelrollout_reconcile_duration_seconds",
            "Time of one reconciliation (gate queries included)",
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

    def serve(self, port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from inside the pod network
        start_http_server(port, addr=address, registry=self.registry)

    def record(
        self,
        namespace: str,
        name: str,
        status: api.ModelRolloutStatus,
        check: CheckResult | None,
        rollback_reason: str | None,
    ) -> None:
        for phase in api.Phase:
            self.phase.labels(namespace, name, phase.value).set(1 if status.phase == phase else 0)
        self.canary_weight.labels(namespace, name).set(status.canary_weight)
        self.shadow.labels(namespace, name).set(status.shadow)
        self.stage.labels(namespace, name).set(status.stage)
        if check is not None:
            self.checks.labels(namespace, name, check.verdict.value).inc()
            for gate in check.gates:
                # No reading is NaN, not the last number: a dashboard must not show a stale value as current.
                value = gate.value if gate.value is not None else math.nan
                self.gate_value.labels(namespace, name, gate.name).set(value)
                if gate.control is not None:
                    self.gate_control.labels(namespace, name, gate.name).set(gate.control)
                if gate.evidence is not None:
                    self.gate_p_value.labels(namespace, name, gate.name).set(gate.evidence.p_value)
                for bound, threshold in (("min", gate.min), ("max", gate.max)):
                    if threshold is not None:
                        self.gate_threshold.labels(namespace, name, gate.name, bound).set(threshold)
        if rollback_reason is not None:
            self.rollbacks.labels(namespace, name, rollback_reason).inc()

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted rollout's series, so they do not linger as if it still existed."""
        for metric in (
            self.phase,
            self.canary_weight,
            self.shadow,
            self.stage,
            self.gate_value,
            self.gate_control,
            self.gate_p_value,
            self.gate_threshold,
            self.checks,
            self.checks_deferred,
            self.rollbacks,
            self.write_failures,
        ):
            for labels in list(metric._metrics):
                if labels[:2] == (namespace, name):
                    metric.remove(*labels)
