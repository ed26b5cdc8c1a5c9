"""The node's HTTP port under clients that hold connections: a cap on them, and a deadline for each."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest
from prometheus_client import CollectorRegistry

from scp_server.http import BoundedHTTPServer, endpoints


@pytest.fixture
def http_port() -> Iterator[int]:
    """An HTTP port with a cap of 4 connections and a 1 s deadline per connection."""
    handler = endpoints(CollectorRegistry(), lambda: "{}", lambda: [], None, timeout_s=1.0)
    server = BoundedHTTPServer(("127.0.0.1", 0), handler, max_connections=4)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def half_request(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")
    return sock


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_connections_over_the_cap_are_closed_at_once(http_port):
    held = [half_request(http_port) for _ in range(4)]
    extra = half_request(http_port)
    assert closed_within(extra, 0.5)
    for sock in [*held, extra]:
        sock.close()


def test_a_client_trickling_its_request_is_cut_off_at_the_deadline(http_port):
    sock = socket.create_connection(("127.0.0.1", http_port), timeout=10)
    started = time.monotonic()
    try:
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n":
            sock.sendall(bytes([byte]))
            time.sleep(0.1)  # each read well within the timeout: only a deadline stops it
    except OSError:
        pass
    assert closed_within(sock, 5)
    assert time.monotonic() - started < 4
    sock.close()


def test_the_port_answers_again_once_held_connections_are_cut_off(http_port):
    held = [half_request(http_port) for _ in range(4)]
    deadline = time.monotonic() + 10
    while True:
        try:
            answer = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5)
            break
        except OSError:
            assert time.monotonic() < deadline, "the port stayed full"
            time.sleep(0.1)
    assert answer.status == 200 and answer.read() == b"ok\n"
    for sock in held:
        sock.close()


def test_an_http_failure_is_one_log_line_not_a_traceback_around_the_log(caplog, capsys):
    """Found by an adversarial review: socketserver printed a raw multi-line traceback to stderr."""
    server = BoundedHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler, max_connections=1)
    try:
        try:
            raise BrokenPipeError("client gone")
        except BrokenPipeError:
            server.handle_error(None, ("127.0.0.1", 5))
    finally:
        server.server_close()
    assert capsys.readouterr().err == ""
    assert "http: answering 127.0.0.1 failed: client gone" in caplog.text
