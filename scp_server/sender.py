"""C-STORE SCU: deliver stored files to a destination, with retries and a result per instance.

Files are sent as they are on disk (their own transfer syntax first, the
uncompressed ones as fall-backs), so nothing is decoded or re-encoded on the way
out. Each instance ends in one of three states, recorded in its
:class:`SendResult`:

- delivered: success or a warning status (0x0000, 0xB000, 0xB006, 0xB007);
- refused: a failure status other than "out of resources"; the destination
  has said no, sending again would not change that, so it is not retried;
- undelivered: no association, an abort, a timeout or 0xA7xx after every
  attempt; the caller keeps it for a later try.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

from scp_server.deadlines import cut_off_after, shut_down
from scp_server.destinations import Destination
from scp_server.pynetdicom_internals import poll_for_readiness

log = logging.getLogger(__name__)

DELIVERED = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
#: pynetdicom proposes at most this many presentation contexts in one association.
MAX_CONTEXTS = 128


@dataclass(frozen=True)
class SendResult:
    """What happened to one file."""

    path: Path
    sop_instance_uid: str
    status: int | None
    error: str | None = None
    #: Refused without a DIMSE status (a DICOMweb destination's 4xx answer): not retried either.
    refused_outright: bool = False

    @property
    def delivered(self) -> bool:
        return self.status in DELIVERED

    @property
    def refused(self) -> bool:
        if self.refused_outright:
            return True
        return self.status is not None and not self.delivered and self.status >> 8 != 0xA7


def _requested_contexts(ae: AE, paths: list[Path]) -> dict[Path, pydicom.FileDataset]:
    """Propose each file's SOP class with its own and the uncompressed transfer syntaxes."""
    headers = {path: pydicom.dcmread(path, stop_before_pixels=True) for path in paths}
    syntaxes: dict[str, list[str]] = {}
    for header in headers.values():
        wanted = syntaxes.setdefault(
            str(header.SOPClassUID), [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
        own = str(header.file_meta.TransferSyntaxUID)
        if own not in wanted:
            wanted.insert(0, own)
    if len(syntaxes) > MAX_CONTEXTS:
        raise ValueError(f"{len(syntaxes)} SOP classes in one batch; at most {MAX_CONTEXTS} can be proposed")
    for sop_class, transfer_syntaxes in syntaxes.items():
        ae.add_requested_context(sop_class, transfer_syntaxes)
    return headers


def send_files(
    paths: list[Path],
    destination: Destination,
    calling_ae: str,
    attempts: int = 3,
    backoff_s: float = 2.0,
    timeout_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    on_result: Callable[[SendResult], None] | None = None,
    deadline_s: float = 300.0,
) -> list[SendResult]:
    """Send ``paths`` to ``destination``; retry what was not answered, with exponential backoff.

    ``on_result`` hears each instance's answer as soon as it comes, so that a
    caller can record it durably before the next one is sent, and each failed
    attempt (no association, rejected, TLS set-up) for every instance it left unsent.
    ``timeout_s`` bounds each wait; ``deadline_s`` each C-STORE as a whole: a destination
    trickling its answer has its association aborted then.
    """
    poll_for_readiness()
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    headers = _requested_contexts(ae, paths)
    results: dict[Path, SendResult] = {}
    pending = list(paths)
    for attempt in with_backoff(attempts, backoff_s, sleep):
        try:
            assoc = ae.associate(
                destination.host,
                destination.port,
                ae_title=destination.ae_title,
                tls_args=destination.tls_args(),
            )
        except (OSError, ssl.SSLError) as exc:  # unreadable certificate files: kept for a later try
            log.error("send to %s: TLS set-up failed: %s", destination.ae_title, exc)
            failed = [
                SendResult(p, str(headers[p].SOPInstanceUID), None, f"TLS set-up: {exc}") for p in paths
            ]
            if on_result is not None:
                for result in failed:
                    on_result(result)
            return failed
        if not assoc.is_established:
            reason = "rejected" if assoc.is_rejected else "no association"
            log.warning(
                "send to %s: %s (attempt %d of %d)", destination.ae_title, reason, attempt + 1, attempts
            )
            for path in pending:
                results[path] = SendResult(path, str(headers[path].SOPInstanceUID), None, reason)
                if on_result is not None:  # every failed attempt is recorded, with why
                    on_result(results[path])
            continue
        still_pending = []
        for path in pending:
            result = _send_one(assoc, path, str(headers[path].SOPInstanceUID), deadline_s)
            results[path] = result
            if on_result is not None:
                on_result(result)
            if not (result.delivered or result.refused):
                still_pending.append(path)
        if assoc.is_established:
            assoc.release()
        pending = still_pending
        if not pending:
            break
    return log_outcome(destination.ae_title, paths, results)


def with_backoff(attempts: int, backoff_s: float, sleep: Callable[[float], None]) -> Iterator[int]:
    """Attempt numbers 0 .. ``attempts - 1``, sleeping ``backoff_s``, doubling, before each but the first
    (the C-STORE and STOW-RS senders' one retry schedule)."""
    for attempt in range(attempts):
        if attempt:
            sleep(backoff_s * 2 ** (attempt - 1))
        yield attempt


def log_outcome(destination: str, paths: list[Path], results: dict[Path, SendResult]) -> list[SendResult]:
    """Log one line for a send to ``destination`` (its AE title or URL) and return the results in
    the order of ``paths``: C-STORE and STOW-RS destinations are read the same way in the log."""
    log.info(
        "send to %s: %d delivered, %d refused, %d undelivered",
        destination,
        sum(r.delivered for r in results.values()),
        sum(r.refused for r in results.values()),
        sum(not (r.delivered or r.refused) for r in results.values()),
    )
    return [results[path] for path in paths]


def _send_one(assoc: Association, path: Path, sop_instance_uid: str, deadline_s: float) -> SendResult:
    """One C-STORE, aborted (and so unanswered) if its answer is not complete within ``deadline_s``."""

    def cut_off() -> None:
        # The connection is shut down under pynetdicom's reader, which may be inside a trickled PDU,
        # and send_c_store's wait for the response woken as a DIMSE timeout would wake it
        # (scp_server/pynetdicom_internals.py, item 7).
        shut_down(assoc.dul.socket.socket if assoc.dul.socket is not None else None)
        assoc.dimse.msg_queue.put((None, None))

    failure: Exception | None = None
    with cut_off_after(deadline_s, cut_off) as expired:
        try:
            response = assoc.send_c_store(path)
        except (RuntimeError, ValueError) as exc:  # association lost, no matching context
            response, failure = None, exc
    if expired.is_set():
        return SendResult(path, sop_instance_uid, None, f"no complete answer within {deadline_s:g} s")
    if failure is not None:
        return SendResult(path, sop_instance_uid, None, str(failure))
    status = response.get("Status") if response else None
    if status is None:
        return SendResult(path, sop_instance_uid, None, "no response (association aborted or timed out)")
    return SendResult(
        path, sop_instance_uid, int(status), None if int(status) in DELIVERED else "failure status"
    )
