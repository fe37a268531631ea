"""The operator's own Prometheus metrics: where every rollout stands, what its gates read against their
thresholds, how checks come out, and how long reconciliations take. Served on /metrics (`--metrics-port`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from modelrollout.loop_stalls import Lateness
from modelrollout.rollout_metrics import RolloutMetrics
from modelrollout.slots import ReconcileSlots


class Telemetry:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        # Every per-rollout series (record, count, forget a rollout there): one small record per rollout,
        # not a metric object per label set.
        self.rollouts = RolloutMetrics()
        self.registry.register(self.rollouts)
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
            "answered), shared (taken from a query another check had asked, answered already) or waited "
            "(shared while still under way: the check waited for it); renewed: a query asked in the "
            "background before a shared answer's age ran out",
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
        self.status_refreshes = Counter(
            "modelrollout_status_refreshes_total",
            "Status writes made only to bring a rollout's check numbers up to date (--status-refresh), "
            "within the fleet's budget (--status-refreshes-per-second)",
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "modelrollout_reconcile_duration_seconds",
            "Time of one reconciliation (gate queries included)",
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

        self.gc_pause_seconds = Histogram(
            "modelrollout_gc_pause_seconds",
            "Time Python's cyclic garbage collector held the interpreter (and so the event loop) per "
            "collection, by generation (2 is a full collection over every tracked object)",
            ("generation",),
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self._gc_pauses = [self.gc_pause_seconds.labels(str(generation)) for generation in range(3)]
        self.event_loop_lateness = Histogram(
            "modelrollout_event_loop_lateness_seconds",
            "How late a timer due every 0.1 s woke the event loop (every check, write and alert waits on it)",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        late_by_cause = Counter(
            "modelrollout_event_loop_late_seconds",
            "The event loop's lateness by cause, estimated from CPU time: the loop's own thread running (its "
            "callbacks, garbage collections), other threads of the operator holding the interpreter, or no "
            "CPU for the operator",
            ("cause",),
            registry=self.registry,
        )
        self._late_by_cause = tuple(
            late_by_cause.labels(cause).inc for cause in ("loop-thread", "other-threads", "no-cpu")
        )

    def watch_slots(self, slots: ReconcileSlots) -> None:
        """Export how many rollouts reconcile and how many wait for a slot (read at each scrape)."""
        busy = Gauge(
            "modelrollout_reconcile_slots_busy",
            "Rollouts reconciling now (at most --max-concurrent-reconciles)",
            registry=self.registry,
        )
        busy.set_function(lambda: slots.busy)
        waiting = Gauge(
            "modelrollout_reconcile_slots_waiting",
            "Rollouts due for a reconciliation and waiting for a slot: above 0 for long, the operator "
            "cannot keep up with its rollouts",
            registry=self.registry,
        )
        waiting.set_function(lambda: slots.waiting)

    def observe_gc_pause(self, generation: int, seconds: float) -> None:
        self._gc_pauses[generation].observe(seconds)

    def observe_lateness(self, late: Lateness) -> None:
        self.event_loop_lateness.observe(late.seconds)
        loop_thread, other_threads, no_cpu = self._late_by_cause
        loop_thread(late.loop_thread)
        other_threads(late.other_threads)
        no_cpu(late.no_cpu)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from inside the pod network
        start_http_server(port, addr=address, registry=self.registry)
