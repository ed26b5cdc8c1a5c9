"""Prometheus metrics of one node, in a registry of its own (no process-wide globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class NodeMetrics:
    """Counters an operator watches: what came in, what was finished, what could not be sent."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.instances_received = Counter(
            "n2d_instances_received", "Instances stored from C-STORE", registry=self.registry
        )
        self.series_completed = Counter(
            "n2d_series_completed", "Series found complete and queued", registry=self.registry
        )
        self.send_failures = Counter(
            "n2d_send_failures", "Derived instances not delivered to a destination", registry=self.registry
        )
        self.processing_seconds = Histogram(
            "n2d_processing_seconds",
            "Seconds per series job",
            registry=self.registry,
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
        )
        self.queue_depth = Gauge("n2d_queue_depth", "Jobs waiting in the queue", registry=self.registry)
