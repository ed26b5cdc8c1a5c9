"""A STOW-RS receiver on loopback (http.server, optionally over TLS) whose answers a test chooses.

It splits each request's ``multipart/related`` body on the boundary its Content-Type names,
reads every part with pydicom, and records what came (path, headers, SOP Instance UIDs, the
parts' bytes); ``answer`` decides the HTTP status and the DICOM JSON body from the UIDs.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO

import pydicom

#: (HTTP status, DICOM JSON body, raw bytes or None) for the SOP Instance UIDs of one request.
Answer = Callable[[list[str]], tuple[int, dict | bytes | None]]


def stored(uids: list[str]) -> tuple[int, dict | bytes | None]:
    """200 with every instance in the Referenced SOP Sequence."""
    return 200, {"00081199": {"vr": "SQ", "Value": [referenced(uid) for uid in uids]}}


def referenced(uid: str, **reason: int) -> dict:
    """One item of a Referenced or Failed SOP Sequence; ``failure=0xC000`` or ``warning=0xB000``."""
    item = {
        "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
        "00081155": {"vr": "UI", "Value": [uid]},
    }
    for name, code in reason.items():
        item["00081197" if name == "failure" else "00081196"] = {"vr": "US", "Value": [code]}
    return item


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    uids: list[str]
    parts: list[bytes]


@dataclass
class StowPeer:
    """The server, what it received, and the answer it gives (replace ``answer`` to change it)."""

    answer: Answer = stored
    requests: list[Request] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    #: Seconds between the answer body's bytes (after the headers, sent at once); 0: all at once.
    trickle_s: float = 0.0
    #: With ``trickle_s``: the status line and headers trickle too.
    trickle_headers: bool = False

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.server_address[1]

    def start(self, tls: ssl.SSLContext | None = None) -> StowPeer:
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                parts = split_multipart(body, self.headers["Content-Type"])
                uids = [str(pydicom.dcmread(BytesIO(part)).SOPInstanceUID) for part in parts]
                peer.requests.append(Request(self.path, dict(self.headers), uids, parts))
                status, answer = peer.answer(uids)
                payload = (
                    answer if isinstance(answer, bytes) else json.dumps(answer).encode() if answer else b""
                )
                head = (
                    f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}\r\n"
                    f"Content-Type: application/dicom+json\r\nContent-Length: {len(payload)}\r\n\r\n"
                ).encode()
                if not peer.trickle_s:
                    self.wfile.write(head + payload)
                    return
                if not peer.trickle_headers:
                    self.wfile.write(head)
                    head = b""
                try:
                    for byte in head + payload:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(peer.trickle_s)
                except (BrokenPipeError, ConnectionResetError):
                    return  # the sender gave up waiting: what a trickling server meets

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True  # a trickling answer's thread must not hold up stop()
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def split_multipart(body: bytes, content_type: str) -> list[bytes]:
    """The parts' contents of a ``multipart/related; type="application/dicom"`` body (RFC 2046)."""
    params = dict(item.strip().split("=", 1) for item in content_type.split(";")[1:] if "=" in item)
    assert content_type.split(";")[0].strip() == "multipart/related", content_type
    assert params["type"].strip('"') == "application/dicom", content_type
    delimiter = b"--" + params["boundary"].strip('"').encode()
    assert body.rstrip(b"\r\n").endswith(delimiter + b"--"), "no closing delimiter"
    parts = []
    for chunk in body.split(b"\r\n" + delimiter)[:-1]:
        chunk = chunk.removeprefix(delimiter)
        headers, _, content = chunk.partition(b"\r\n\r\n")
        assert b"content-type: application/dicom" in headers.lower(), headers
        parts.append(content)
    return parts
