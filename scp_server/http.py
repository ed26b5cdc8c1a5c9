"""The node's HTTP port: ``/healthz``, ``/metrics``, ``/status`` and the dashboard, bounded.

Anyone who can reach the port can open connections to it, with no credentials,
so it must never take from DICOM reception what reception needs (descriptors,
threads): at most ``http_max_connections`` are served at once (more are closed
as soon as they are accepted), and a connection is closed ``http_timeout_s``
after it was accepted, whatever it is doing.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from scp_server.dashboard import Dashboard
from scp_server.deadlines import cut_off_after, shut_down

log = logging.getLogger(__name__)


class BoundedHTTPServer(ThreadingHTTPServer):
    """The standard threading HTTP server with a cap on connections served at once.

    Its failures (a client gone mid-answer) go to the log: socketserver would print
    a traceback to stderr itself, around the log's one-line format.
    """

    daemon_threads = True
    #: The listen backlog: socketserver's 5 makes a burst of clients wait a second for SYN retries.
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        max_connections: int,
    ) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self.max_connections = max_connections
        self._refused = 0
        super().__init__(address, handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """On the accepting thread: False closes a connection over the cap before anything is read."""
        if self._slots.acquire(blocking=False):
            return True
        self._refused += 1
        if self._refused == 1:
            log.warning(
                "http: connection from %s closed: %d connections are being served "
                "(http_max_connections); further ones are counted until one ends",
                client_address[0],
                self.max_connections,
            )
        return False

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve on a thread of its own; the slot is given back whether the thread starts or not."""
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._free_slot()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._free_slot()

    def _free_slot(self) -> None:
        refused, self._refused = self._refused, 0
        if refused > 1:
            log.warning("http: %d connections were closed while the cap was reached", refused)
        self._slots.release()

    def handle_error(self, request: object, client_address: Any) -> None:
        log.warning("http: answering %s failed: %s", client_address[0], sys.exc_info()[1])


def endpoints(
    registry: CollectorRegistry,
    status_json: Callable[[], str],
    problems: Callable[[], list[str]],
    dashboard: Dashboard | None,
    timeout_s: float,
) -> type[BaseHTTPRequestHandler]:
    """The request handler: the node's endpoints, each connection closed ``timeout_s`` after its accept."""

    class Handler(BaseHTTPRequestHandler):
        timeout = timeout_s  # on each read and write too, so a silent client ends its thread at once

        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            code, headers = 200, {}
            if self.path == "/healthz":
                found = problems()
                code = 503 if found else 200
                body, content_type = ("\n".join(found or ["ok"]) + "\n").encode(), "text/plain"
            elif self.path == "/metrics":
                body, content_type = generate_latest(registry), CONTENT_TYPE_LATEST
            elif self.path == "/status":
                body, content_type = status_json().encode(), "application/json"
            elif dashboard is not None and (answer := dashboard.answer(self.path)) is not None:
                code, headers = answer.code, answer.headers
                body, content_type = answer.body, answer.content_type
            else:
                self.send_error(404)
                return
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def handle(self) -> None:
            """Requests until the client closes, all within ``timeout_s`` of the accept: a client that
            trickles its request a byte at a time is cut off at the deadline, not at each read's."""
            with cut_off_after(timeout_s, self._cut_off):
                super().handle()

        def _cut_off(self) -> None:
            log.debug("http: %s cut off after %g s", self.client_address[0], timeout_s)
            shut_down(self.connection)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug("http: " + format, *args)

    return Handler
