"""Prometheus metrics of one node, in a registry of its own (no process-wide globals).

Counters of what this process received; everything about jobs and deliveries is
read from the stores at scrape time, because the jobs may run in other
processes (``n2d worker``) whose counters this process would never see.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from scp_server.operations import NodeStatus


class NodeMetrics:
    """Counters an operator watches, and gauges from :func:`scp_server.operations.node_status`."""

    def __init__(self, status: Callable[[], NodeStatus]) -> None:
        self.registry = CollectorRegistry()
        self.instances_received = Counter(
            "n2d_instances_received", "Instances stored from C-STORE", registry=self.registry
        )
        self.series_completed = Counter(
            "n2d_series_completed", "Series found complete and queued", registry=self.registry
        )
        self.background_errors = Counter(
            "n2d_background_errors",
            "Failed steps of the node's background loops (each is retried with backoff)",
            ["loop"],
            registry=self.registry,
        )
        self.registry.register(StatusCollector(status))


class StatusCollector(Collector):
    """Gauges from the node's status, computed at each scrape."""

    def __init__(self, status: Callable[[], NodeStatus]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        yield GaugeMetricFamily("n2d_queue_depth", "Jobs waiting in the queue", value=status.queue_depth)
        yield GaugeMetricFamily(
            "n2d_jobs_in_flight", "Series being processed now", value=len(status.in_flight)
        )
        yield GaugeMetricFamily(
            "n2d_quarantined", "Instances refused and kept for a person", value=status.quarantined
        )
        series = GaugeMetricFamily("n2d_series", "Series by state", labels=["state"])
        for state, count in status.series.items():
            series.add_metric([state], count)
        yield series
        outbox = GaugeMetricFamily(
            "n2d_outbox", "Derived instances by destination and state", labels=["destination", "state"]
        )
        for destination, states in status.outbox.items():
            for state, count in states.items():
                outbox.add_metric([destination, state], count)
        yield outbox
        runs = GaugeMetricFamily(
            "n2d_recent_run_seconds",
            "Queue wait, processing and receive-to-delivered seconds over recent runs",
            labels=["phase", "stat"],
        )
        for phase in ("queue_wait_s", "processing_s", "end_to_end_s"):
            figures = getattr(status.recent_runs, phase)
            for stat, seconds in ({} if figures is None else figures.model_dump()).items():
                runs.add_metric([phase.removesuffix("_s"), stat], seconds)
        yield runs
