"""Sending to DICOMweb destinations: derived instances posted with STOW-RS (PS3.18 10.5).

A route destination is either a DIMSE peer or ``dicomweb: {url: ...}`` (both
models in :mod:`scp_server.destinations`); both go through the same outbox,
retries and status. Files are posted as they are on disk, a bounded
number per request, to ``{url}/studies`` as ``multipart/related;
type="application/dicom"``. Each instance ends in the states C-STORE uses
(see :mod:`scp_server.sender`):

- delivered: listed in the answer's Referenced SOP Sequence;
- refused: listed in the Failed SOP Sequence with a failure reason other than
  "out of resources" (0xA7xx), or the request answered with a 4xx (a wrong URL,
  bad credentials) or a redirect (not followed): the destination has said no,
  so it is not retried;
- undelivered: no connection, a timeout (of a wait, or of the whole request), a
  TLS failure, 408, 429, a 5xx; the outbox tries again later. A 2xx that does not
  list the instance as stored (an empty ``{}``, a proxy's page) is tried again
  within the send's attempts and then refused with that reason, never taken as
  delivered (retention would delete the files).

The client is our own rather than dicomweb-client's ``store_instances``: that
reads the whole answer with one timeout per read (a trickling server holds it
for ever) and takes any 200 as stored, while a 200 that does not list an
instance is here no delivery (see above).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pydicom
import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from n2d_dicom.uids import printable
from scp_server.deadlines import cut_off_after, shut_down
from scp_server.destinations import CredentialsMissing, DicomWebDestination, DicomWebTarget
from scp_server.sender import DELIVERED, SendResult, log_outcome, with_backoff

log = logging.getLogger(__name__)

#: HTTP answers that say "not now" rather than "no": the request is tried again later.
TRANSIENT_HTTP = frozenset({408, 429})
#: Ends the error of an instance a 2xx answer did not list as stored: tried again, then refused.
NOT_LISTED = "the answer does not list the instance as stored"
#: Longest STOW-RS answer read: it lists instances, a few hundred bytes each.
MAX_ANSWER_BYTES = 16 << 20


class _CuttableAdapter(HTTPAdapter):
    """requests' adapter whose open connections can be shut down from another thread: the whole
    request's deadline (requests and urllib3 bound each read and write, never the request)."""

    def __init__(self) -> None:
        self._opened: list[HTTPConnection] = []
        self._lock = threading.Lock()
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        remember = self._remember

        class Plain(HTTPConnection):
            def connect(self) -> None:
                super().connect()
                remember(self)

        class Secure(HTTPSConnection):
            def connect(self) -> None:
                super().connect()
                remember(self)

        self.poolmanager.pool_classes_by_scheme = {
            "http": type("PlainPool", (HTTPConnectionPool,), {"ConnectionCls": Plain}),
            "https": type("SecurePool", (HTTPSConnectionPool,), {"ConnectionCls": Secure}),
        }

    def _remember(self, connection: HTTPConnection) -> None:
        with self._lock:
            self._opened.append(connection)

    def cut_off(self) -> None:
        """Shut every connection this adapter opened: a read or write blocked on one fails at once."""
        with self._lock:
            opened = list(self._opened)
        for connection in opened:
            shut_down(connection.sock)


class _NotNow(Exception):
    """A request that failed as a whole for now (no connection, a timeout, a 5xx): tried again later."""


def stow_files(
    paths: list[Path],
    destination: DicomWebDestination,
    attempts: int = 3,
    backoff_s: float = 2.0,
    timeout_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    on_result: Callable[[SendResult], None] | None = None,
    deadline_s: float = 300.0,
) -> list[SendResult]:
    """Post ``paths`` with STOW-RS; retry what was not answered, with exponential backoff.

    The contract of :func:`scp_server.sender.send_files`: ``on_result`` hears each
    instance's outcome as it comes, and each failed attempt for every instance it
    left unsent. ``timeout_s`` bounds each wait where the destination sets none;
    ``deadline_s`` each request as a whole (a destination trickling its answer).
    An instance a 2xx answer does not list as stored, after the last attempt, is
    refused with that reason: only an explicit answer makes it delivered.
    """
    target = destination.dicomweb
    uids = {path: _sop_instance_uid(path) for path in paths}
    results: dict[Path, SendResult] = {}

    def note(result: SendResult) -> None:
        results[result.path] = result
        if on_result is not None:
            on_result(result)

    try:
        session = target.session()
    except CredentialsMissing as exc:  # nothing can be sent until the configuration is fixed
        log.error("send to %s: credentials: %s", destination.key, exc)
        for path in paths:
            note(SendResult(path, uids[path], None, f"credentials: {exc}", refused_outright=True))
        return [results[path] for path in paths]
    adapter = _CuttableAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    pending = list(paths)
    with session:
        for attempt in with_backoff(attempts, backoff_s, sleep):
            limits = (target.timeout_s or timeout_s, deadline_s)
            pending = _attempt(session, adapter, target, pending, uids, limits, note)
            if not pending:
                break
            log.warning(
                "send to %s: %d instance(s) not stored (attempt %d of %d): %s",
                destination.key,
                len(pending),
                attempt + 1,
                attempts,
                results[pending[0]].error,
            )
    for path in pending:
        last = results[path]
        if last.error is not None and last.error.endswith(NOT_LISTED):
            note(replace(last, error=f"{last.error} ({attempts} attempts)", refused_outright=True))
    return log_outcome(destination.key, paths, results)


def _attempt(
    session: requests.Session,
    adapter: _CuttableAdapter,
    target: DicomWebTarget,
    paths: list[Path],
    uids: dict[Path, str],
    limits: tuple[float, float],
    note: Callable[[SendResult], None],
) -> list[Path]:
    """Post ``paths`` in chunks; returns those to try again. A chunk failing as a whole ends the attempt."""
    still_pending: list[Path] = []
    for start in range(0, len(paths), target.instances_per_request):
        chunk = paths[start : start + target.instances_per_request]
        try:
            answers = _post(session, adapter, target, chunk, uids, limits)
        except _NotNow as exc:
            for path in paths[start:]:
                note(SendResult(path, uids[path], None, str(exc)))
            return still_pending + paths[start:]
        for result in answers:
            note(result)
            if not (result.delivered or result.refused):
                still_pending.append(result.path)
    return still_pending


def _post(
    session: requests.Session,
    adapter: _CuttableAdapter,
    target: DicomWebTarget,
    paths: list[Path],
    uids: dict[Path, str],
    limits: tuple[float, float],
) -> list[SendResult]:
    """One STOW-RS request, answered within ``limits`` (each wait, the whole: past it the connection
    is shut down, whatever the request is doing); each instance's outcome, or :class:`_NotNow`."""
    timeout_s, deadline_s = limits
    parts = [path.read_bytes() for path in paths]
    boundary = _boundary(parts)
    late = f"no complete answer within {deadline_s:g} s"
    with cut_off_after(deadline_s, adapter.cut_off) as expired:
        try:
            response = session.post(
                f"{target.url}/studies",
                data=_multipart(parts, boundary),
                headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
                timeout=timeout_s,
                verify=target.verification(),
                allow_redirects=False,  # a redirected POST comes back as a GET: a login page would "succeed"
                stream=True,  # the body is read under the deadline too
            )
            with response:
                body = _read_body(response)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:  # OSError: ca_file
            raise _NotNow(late if expired.is_set() else printable(_why(exc, timeout_s), 300)) from exc
    if expired.is_set():  # cut off where the end of the connection passed for the end of the body
        raise _NotNow(late)
    answer = f"HTTP {response.status_code} {printable(response.reason or '', 60)}".rstrip()
    if response.status_code >= 500 or response.status_code in TRANSIENT_HTTP:
        raise _NotNow(answer)
    listed = _listed(body)
    return [_outcome(path, uids[path], response.status_code, answer, listed) for path in paths]


def _read_body(response: requests.Response) -> bytes:
    """The answer's body, read as it comes (a STOW-RS answer is small: at most :data:`MAX_ANSWER_BYTES`)."""
    body = bytearray()
    while True:
        chunk = response.raw.read1(65536, decode_content=True)
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise _NotNow(f"an answer over {MAX_ANSWER_BYTES} bytes")


def _why(exc: Exception, timeout_s: float) -> str:
    """What went wrong with a request that got no answer, without urllib3's wrapping."""
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout_s:g} s"
    reason = exc.args[0] if exc.args else exc
    reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError says why in .reason
    kind = "TLS" if isinstance(exc, requests.exceptions.SSLError) else "no connection"
    return f"{kind}: {reason}"


def _outcome(
    path: Path,
    uid: str,
    http_status: int,
    answer: str,
    listed: tuple[dict[str, int | None], dict[str, int | None]] | None,
) -> SendResult:
    """What the answer says of one instance: listed as failed, listed as stored, or only the HTTP status.

    A 200 counts as stored only with a STOW-RS answer (DICOM JSON) in its body: a proxy's or a login
    page's 200 must not mark instances delivered (retention would then delete their files).
    """
    failed, stored = listed or ({}, {})
    if uid in failed:
        reason = failed[uid]
        if reason is None:
            return SendResult(path, uid, None, f"{answer}: failed, no reason given", refused_outright=True)
        return SendResult(path, uid, reason, f"{answer}: failure reason 0x{reason:04X}")
    if uid in stored:
        warning = stored[uid]
        return SendResult(path, uid, warning if warning in DELIVERED else 0x0000)
    if http_status == 200 and listed is None:
        return SendResult(
            path, uid, None, f"{answer} without a STOW-RS answer (DICOM JSON) in its body: {NOT_LISTED}"
        )
    if 200 <= http_status < 300:
        return SendResult(path, uid, None, f"{answer}: {NOT_LISTED}")
    return SendResult(path, uid, None, answer, refused_outright=True)


def _listed(raw: bytes) -> tuple[dict[str, int | None], dict[str, int | None]] | None:
    """SOP Instance UIDs of the answer's Failed SOP Sequence (with failure reasons) and Referenced
    SOP Sequence (with warning reasons); None when the body is not a DICOM JSON answer."""
    try:
        body = json.loads(raw)
        if isinstance(body, list) and len(body) == 1:
            body = body[0]
        if not isinstance(body, dict):
            return None
        answer = pydicom.Dataset.from_json(body)
    except (ValueError, TypeError, KeyError, AttributeError):  # no body, HTML, XML, or JSON of another shape
        return None

    def by_uid(sequence: str, reason: str) -> dict[str, int | None]:
        items = answer.get(sequence) or []
        return {
            str(item.ReferencedSOPInstanceUID): _int_or_none(item.get(reason))
            for item in items
            if "ReferencedSOPInstanceUID" in item
        }

    return by_uid("FailedSOPSequence", "FailureReason"), by_uid("ReferencedSOPSequence", "WarningReason")


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def _boundary(parts: list[bytes]) -> str:
    """A random boundary that occurs in none of the parts."""
    while True:
        boundary = f"n2d-{secrets.token_hex(16)}"
        if not any(boundary.encode() in part for part in parts):
            return boundary


def _multipart(parts: list[bytes], boundary: str) -> bytes:
    """A ``multipart/related`` body (RFC 2387) of ``application/dicom`` parts, with its length known
    (some servers take no chunked request bodies)."""
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    return b"".join(head + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()


def _sop_instance_uid(path: Path) -> str:
    header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    return str(header.SOPInstanceUID)
