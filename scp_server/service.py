"""Wires the node together and owns start-up and shutdown; serves ``/healthz`` and ``/metrics``.

Start-up order matters for "nothing acknowledged is lost": the spool first
indexes any file a crash left unindexed, the queue is emptied and every series
the tracker holds as queued-but-unfinished is queued again (the tracker, not the
queue, is the source of truth), and only then does the SCP accept associations.
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from n2d_dicom.devices import resolve_device
from scp_server.config import NodeSettings
from scp_server.metrics import NodeMetrics
from scp_server.outbox import Outbox
from scp_server.scp import start_scp
from scp_server.spool import Spool
from scp_server.tasks import SeriesProcessor, make_queue, register
from scp_server.tracker import SeriesTracker

log = logging.getLogger(__name__)

#: How often complete series are looked for, in seconds.
POLL_INTERVAL_S = 0.5


class Node:
    """One node: SCP, spool, tracker, queue producer and HTTP endpoints (the worker runs beside it)."""

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.spool = Spool(settings.spool_dir)
        self.tracker = SeriesTracker(
            settings.spool_dir / "series.sqlite3", settings.quiet_period_s, settings.max_wait_s
        )
        self.metrics = NodeMetrics()
        self.queue = make_queue(settings)
        self.metrics.queue_depth.set_function(lambda: float(self.queue.pending_count()))
        self.outbox = Outbox(settings.spool_dir / "outbox.sqlite3")
        processor = SeriesProcessor(
            settings, self.spool, self.tracker, self.metrics, self.outbox, resolve_device(settings.device)
        )
        self.process_series, self.deliver_outbox = register(self.queue, processor)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._servers: list[object] = []

    def start(self) -> None:
        """Recover, re-queue unfinished work, then listen."""
        recovered = self.spool.recover()
        if recovered:
            log.warning("spool: %d stored but unindexed instance(s) recovered", recovered)
        self.queue.flush()
        for due in self.tracker.queued():
            log.info("series %s run %d: queued again after restart", due.series_instance_uid, due.run)
            self.process_series(due.series_instance_uid, due.run)
        if self.outbox.pending():
            self.deliver_outbox()
        scp = start_scp(self.settings, self.spool, self._stored, self.tracker.association_released)
        self._servers.append(scp)
        self._spawn(self._poll_complete_series, "series-poller")
        if self.settings.http_port:
            http = ThreadingHTTPServer(
                (self.settings.bind_address, self.settings.http_port), self._http_handler()
            )
            self._servers.append(http)
            self._spawn(http.serve_forever, "http")

    def stop(self) -> None:
        """Stop accepting, close associations, stop the poller; the files and indexes stay consistent."""
        self._stop.set()
        for server in self._servers:
            server.shutdown()  # type: ignore[attr-defined]
        for thread in self._threads:
            thread.join(timeout=10)
        self.tracker.close()
        self.outbox.close()
        self.spool.close()

    def _spawn(self, target: object, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _stored(self, series_uid: str, association: str) -> None:
        self.metrics.instances_received.inc()
        self.tracker.instance_received(series_uid, association)

    def _poll_complete_series(self) -> None:
        """Queue complete series as they appear; every ``outbox_retry_s`` retry undelivered files."""
        next_retry = time.monotonic() + self.settings.outbox_retry_s
        while not self._stop.wait(POLL_INTERVAL_S):
            for due in self.tracker.claim_due():
                log.info("series %s run %d: complete, queued", due.series_instance_uid, due.run)
                self.metrics.series_completed.inc()
                self.process_series(due.series_instance_uid, due.run)
            if time.monotonic() >= next_retry:
                next_retry = time.monotonic() + self.settings.outbox_retry_s
                if self.outbox.pending():
                    self.deliver_outbox()

    def _http_handler(self) -> type[BaseHTTPRequestHandler]:
        metrics = self.metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server API)
                if self.path == "/healthz":
                    body, content_type = b"ok\n", "text/plain"
                elif self.path == "/metrics":
                    body, content_type = generate_latest(metrics.registry), CONTENT_TYPE_LATEST
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                log.debug("http: " + format, *args)

        return Handler


def serve(settings: NodeSettings) -> None:
    """Run the node and its worker until SIGINT (finish the job in hand) or SIGTERM."""
    node = Node(settings)
    node.start()
    consumer = node.queue.create_consumer(workers=1, worker_type="thread", periodic=False)
    try:
        consumer.run()  # blocks; huey handles the signals and stops its worker
    finally:
        node.stop()
        log.info("node stopped")
