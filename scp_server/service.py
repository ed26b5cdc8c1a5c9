"""Wires the node together and owns start-up and shutdown; serves ``/healthz``, ``/metrics`` and ``/``.

Start-up order matters for "nothing acknowledged is lost": the spool first
indexes any file a crash left unindexed, the queue is emptied and every series
the tracker holds as queued is queued again (the tracker, not the queue, is the
source of truth; a job queued twice runs once), associations the previous
process held are closed as aborted, and only then does the SCP accept
associations. Runs whose worker died are found by the poller (expired
lease, or a dead process of this host) and queued again, and so are runs queued
for longer than ``job_lease_s`` whose job is no longer in the queue (a worker
that died between taking the job from the queue and starting it).

The background loops (poller, outbox rounds) run every step guarded
(:mod:`scp_server.health`): an error is logged, counted and retried with
backoff, and ``/healthz`` answers 503 with the reasons until it clears.
"""

from __future__ import annotations

import functools
import logging
import queue
import resource
import signal
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import TypeVar

import torch

from n2d_dicom.devices import resolve_device
from scp_server.config import NodeSettings
from scp_server.dashboard import Dashboard
from scp_server.delivery import Courier
from scp_server.health import Backoff, Health
from scp_server.http import BoundedHTTPServer, endpoints
from scp_server.metrics import NodeMetrics
from scp_server.operations import NodeStatus, apply_retention, node_status
from scp_server.scp import start_scp
from scp_server.spool import Outcome
from scp_server.stores import Stores
from scp_server.tasks import Jobs, SeriesProcessor, make_queue, plan_run
from scp_server.tracker import DueSeries

log = logging.getLogger(__name__)

Listener = TypeVar("Listener")

#: How often complete series and abandoned jobs are looked for, in seconds.
POLL_INTERVAL_S = 0.5
#: How often spool data past its retention is looked for, in seconds.
RETENTION_SWEEP_S = 300.0


class Node:
    """One node: SCP, stores, queue producer, outbox rounds and HTTP endpoints (workers run apart)."""

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.stores = Stores.open(settings)
        self.jobs = Jobs(make_queue(settings))
        self.metrics = NodeMetrics(self.status)
        self.health = Health(self.metrics.background_errors, settings.spool_dir)
        self.courier = Courier(settings, self.stores.outbox, self.health.guarded)
        self.health.checks.append(self.courier.stuck)
        self._stop = threading.Event()
        self._ended: queue.SimpleQueue[tuple[str, bool]] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._servers: list[object] = []

    def status(self) -> NodeStatus:
        return node_status(self.stores, self.jobs.queue)

    def start(self) -> None:
        """Recover, re-queue unfinished work, then listen."""
        recovered = self.stores.spool.recover()
        if recovered:
            log.warning("spool: %d stored but unindexed instance(s) recovered", recovered)
        closed = self.stores.tracker.close_dead_associations()
        if closed:
            log.warning("%d association(s) of a process that died closed as aborted", closed)
        for due in self.stores.tracker.queued():  # a copy still in the queue is skipped by the worker
            log.info("series %s run %d: queued again after restart", due.series_instance_uid, due.run)
            self.jobs.process_series(due.series_instance_uid, due.run)
        settings = self.settings
        scp = listening(
            "DICOM",
            settings.port,
            lambda: start_scp(settings, self.stores.spool, self._stored, self._association_ended),
        )
        self._servers.append(scp)
        self._spawn(self._poll, "series-poller")
        self._spawn(self._deliver, "outbox")
        if settings.http_port:
            http = listening(
                "HTTP",
                settings.http_port,
                lambda: BoundedHTTPServer(
                    (settings.bind_address, settings.http_port),
                    self._http_endpoints(),
                    settings.http_max_connections,
                ),
            )
            self._servers.append(http)
            self._spawn(http.serve_forever, "http")

    def _http_endpoints(self) -> type[BaseHTTPRequestHandler]:
        dashboard = (
            Dashboard(self.settings, self.stores, self.status, self.health.problems)
            if self.settings.dashboard
            else None
        )
        return endpoints(
            self.metrics.registry,
            lambda: self.status().model_dump_json(indent=2),
            self.health.problems,
            dashboard,
            self.settings.http_timeout_s,
        )

    def stop(self) -> None:
        """Stop accepting, close associations, stop the loops; the files and indexes stay consistent."""
        self._stop.set()
        self.courier.shutdown()
        for server in self._servers:
            server.shutdown()  # type: ignore[attr-defined]
        for thread in self._threads:
            thread.join(timeout=10)
        self.stores.close()

    def _spawn(self, target: object, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _stored(self, series_uid: str, association: str, outcome: Outcome) -> None:
        self.stores.tracker.instance_received(series_uid, association, outcome.starts_run)
        self.metrics.instances_received.inc()

    def _association_ended(self, association: str, aborted: bool) -> None:
        """Every association that ends, recorded at once (a release before it is answered, see
        :mod:`scp_server.transport`); one the tracker cannot record now is left to the poller."""
        tracker = self.stores.tracker
        try:
            (tracker.association_aborted if aborted else tracker.association_released)(association)
        except Exception as exc:
            log.warning("association end not recorded yet (%s); the series poller retries", exc)
            self._ended.put((association, aborted))

    def _poll(self) -> None:
        """Queue complete series and abandoned runs as they appear; apply retention. Never dies."""
        backoff = Backoff(POLL_INTERVAL_S)
        next_sweep = next_lost_check = time.monotonic()
        while not self._stop.wait(backoff.wait_s):
            succeeded = self.health.guarded("series poller", self.poll_once)
            if succeeded and time.monotonic() >= next_lost_check:
                next_lost_check = time.monotonic() + self.settings.job_lease_s
                succeeded = self.health.guarded("lost job check", self.requeue_lost_jobs)
            if succeeded and self.settings.retention_hours is not None and time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + RETENTION_SWEEP_S
                succeeded = self.health.guarded("retention", self._apply_retention)
            backoff.after(succeeded)

    def poll_once(self) -> None:
        """Record ended associations; one look for complete series and for runs whose worker is gone."""
        tracker = self.stores.tracker
        self._record_ended_associations()
        for due in tracker.claim_due():
            self.metrics.series_completed.inc()
            self._plan(due)
            log.info("series %s run %d: complete, queued", due.series_instance_uid, due.run)
            self.jobs.process_series(due.series_instance_uid, due.run)
        for due in tracker.reclaim():
            log.warning(
                "series %s run %d: its worker is gone, queued again", due.series_instance_uid, due.run
            )
            self.jobs.process_series(due.series_instance_uid, due.run)

    def _record_ended_associations(self) -> None:
        """Tell the tracker of associations that ended; one it could not record is kept for the next poll."""
        tracker = self.stores.tracker
        while True:
            try:
                association, aborted = self._ended.get_nowait()
            except queue.Empty:
                return
            try:
                (tracker.association_aborted if aborted else tracker.association_released)(association)
            except Exception:
                self._ended.put((association, aborted))
                raise

    def _plan(self, due: DueSeries) -> None:
        """Record the route and settings the run was claimed with; the worker plans it if this fails."""
        try:
            plan = plan_run(self.settings, self.stores.spool, due.series_instance_uid)
        except Exception as exc:  # an unreadable first instance: the worker fails the run with why
            log.warning("series %s run %d: not planned (%s)", due.series_instance_uid, due.run, exc)
            return
        self.stores.tracker.record_plan(due.series_instance_uid, due.run, plan.model_dump_json())

    def _apply_retention(self) -> None:
        assert self.settings.retention_hours is not None
        purged = apply_retention(self.stores, self.settings.retention_hours * 3600)
        if purged:
            log.info("retention: spool data of %d delivered series deleted", purged)

    def _deliver(self) -> None:
        """Hand the outbox to the sending threads: rows never tried within a poll, every pending row every
        ``outbox_retry_s`` (and at start, for what a previous run of the node left). Never dies."""
        backoff = Backoff(POLL_INTERVAL_S)
        next_round = time.monotonic()
        while not self._stop.wait(backoff.wait_s):
            full_round = time.monotonic() >= next_round
            dispatch = functools.partial(self.courier.dispatch, unattempted_only=not full_round)
            succeeded = self.health.guarded("outbox", dispatch)
            if succeeded and full_round:
                next_round = time.monotonic() + self.settings.outbox_retry_s
            backoff.after(succeeded)

    def requeue_lost_jobs(self) -> list[DueSeries]:
        """Queue again the runs queued ``job_lease_s`` ago or earlier whose job the queue no longer holds.

        A job taken from the queue by a worker that died before it started the run is in
        neither the queue nor the tracker's ``processing`` state. A job that is merely
        waiting behind others is left alone; one queued twice runs once.
        """
        stale = self.stores.tracker.queued_longer_than(self.settings.job_lease_s)
        if not stale:
            return []
        waiting = self.jobs.waiting_runs()
        lost = [due for due in stale if (due.series_instance_uid, due.run) not in waiting]
        for due in lost:
            log.warning(
                "series %s run %d: its job left the queue unstarted, queued again",
                due.series_instance_uid,
                due.run,
            )
            self.jobs.process_series(due.series_instance_uid, due.run)
        return lost


def listening(what: str, port: int, start: Callable[[], Listener]) -> Listener:
    """``start()``, whose failure to bind (port in use, say) says which port it was, in one line."""
    try:
        return start()
    except OSError as exc:
        raise OSError(f"cannot listen for {what} on port {port}: {exc.strerror or exc}") from exc


def run_workers(settings: NodeSettings, stores: Stores, jobs: Jobs, count: int) -> None:
    """Run ``count`` worker threads on the queue, on the configured device and threads, until a signal.

    huey handles SIGINT (the jobs in hand finish) and SIGTERM. Two processes that
    each spin up a thread per core on the same cores slow each other down many
    times over, so workers sharing a machine set ``threads``.
    """
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    jobs.processor = SeriesProcessor(settings, stores, resolve_device(settings.device))
    jobs.queue.create_consumer(workers=count, worker_type="thread", periodic=False).run()


def serve(settings: NodeSettings) -> None:
    """Run the node, and ``settings.workers`` worker threads, until SIGINT or SIGTERM.

    With workers, huey handles the signals (SIGINT lets the jobs in hand finish);
    with none, the node only receives, and ``n2d worker`` processes do the jobs.
    """
    raise_open_file_limit()
    node = Node(settings)
    node.start()
    try:
        if settings.workers:
            run_workers(settings, node.stores, node.jobs, settings.workers)
        else:
            wait_for_signal()
    finally:
        node.stop()
        log.info("node stopped")


def work(settings: NodeSettings) -> None:
    """Run ``settings.workers`` (at least one) worker threads on the queue until SIGINT or SIGTERM."""
    stores = Stores.open(settings)
    jobs = Jobs(make_queue(settings))
    try:
        run_workers(settings, stores, jobs, max(1, settings.workers))
    finally:
        stores.close()
        log.info("worker stopped")


def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (at most 65536); the new soft limit.

    Every association, HTTP client, spool file and SQLite handle takes a
    descriptor; distributions start services at a soft limit of 1024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        return wanted
    return soft
