"""Sending what the outbox holds: claim, send, record; each destination on a sending thread of its own.

Jobs only queue their derived files in the outbox (:mod:`scp_server.outbox`);
the node's :class:`Courier` sends them, so that a destination that is down, slow
or trickling its answers never holds a denoising worker, and never holds another
destination either: each destination with pending rows is sent to on a thread of
its own, at most one at a time per destination, however many others hang. Rows never tried go out within a
poll; rows whose send failed are tried again every ``outbox_retry_s``, with
``send_attempts`` and backoff. Destinations are resolved against the
configuration as it is now (see :mod:`scp_server.outbox`).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from scp_server.config import NodeSettings
from scp_server.destinations import AnyDestination, DicomWebDestination
from scp_server.dicomweb import stow_files
from scp_server.leases import new_owner
from scp_server.outbox import MISSING, Outbox
from scp_server.sender import SendResult, send_files

log = logging.getLogger(__name__)

#: How long a delivery may hold its outbox rows before another sender may send them.
SEND_CLAIM_S = 900.0
Guard = Callable[[str, Callable[[], object]], bool]


def configured_destinations(settings: NodeSettings) -> dict[str, AnyDestination]:
    """Every destination the configuration names now, by outbox key."""
    destinations = [d for route in settings.routes for d in route.destinations] + list(
        settings.forward_unmatched
    )
    return {d.key: d for d in destinations}


def deliver(
    settings: NodeSettings,
    outbox: Outbox,
    attempts: int,
    series_instance_uid: str | None = None,
    destination: str | None = None,
    on_result: Callable[[SendResult], None] | None = None,
) -> list[SendResult]:
    """Claim what is pending (of one source series or destination key, or all) that nobody else is
    sending, send it, record each answer as it comes; log what is left."""
    owner = new_owner()
    results: list[SendResult] = []
    try:
        claimed = outbox.claim(
            owner, SEND_CLAIM_S, configured_destinations(settings), series_instance_uid, destination
        )
        for target, paths in claimed.items():
            results.extend(_send(settings, outbox, target, paths, attempts, on_result))
    finally:
        outbox.release(owner)
    _log_undelivered(results)
    return results


def _send(
    settings: NodeSettings,
    outbox: Outbox,
    destination: AnyDestination,
    paths: list[Path],
    attempts: int,
    on_result: Callable[[SendResult], None] | None,
) -> list[SendResult]:
    """Send claimed files to one destination; a file gone from the spool is refused, never sent."""
    missing = [path for path in paths if not path.is_file()]
    outbox.refuse_missing(missing, destination)
    results = [SendResult(path, path.stem, None, MISSING) for path in missing]  # files are <uid>.dcm
    present = [path for path in paths if path not in missing]
    if not present:
        return results

    def record(result: SendResult) -> None:
        outbox.record_one(destination, result)
        if on_result is not None:
            on_result(result)

    if isinstance(destination, DicomWebDestination):
        sent = stow_files(
            present,
            destination,
            attempts,
            settings.send_backoff_s,
            settings.send_timeout_s,
            on_result=record,
            deadline_s=settings.send_deadline_s,
        )
    else:
        sent = send_files(
            present,
            destination,
            settings.ae_title,
            attempts,
            settings.send_backoff_s,
            settings.send_timeout_s,
            on_result=record,
            deadline_s=settings.send_deadline_s,
        )
    return results + sent


def _log_undelivered(results: list[SendResult]) -> None:
    undelivered = Counter(
        (result.error or f"status 0x{result.status:04X}", result.refused)
        for result in results
        if not result.delivered
    )
    for (error, refused), count in undelivered.items():
        log.error(
            "%d instance(s) not delivered (%s): %s",
            count,
            error,
            "refused, kept in the outbox as refused" if refused else "kept for the next outbox round",
        )


class Courier:
    """The node's sending threads: one delivery per destination with pending rows, at most one each,
    and no cap across destinations (each thread mostly waits on its peer; a cap let destinations
    that hang hold up those that work).

    ``guard(name, step)`` runs each delivery (the node's :meth:`scp_server.health.Health.guarded`:
    an error is logged, counted and shown on ``/healthz`` until a delivery to that destination succeeds).
    """

    def __init__(self, settings: NodeSettings, outbox: Outbox, guard: Guard) -> None:
        self.settings = settings
        self.outbox = outbox
        self.guard = guard
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._heard: dict[str, float] = {}  # destination key -> when it last answered (or the send began)

    def dispatch(self, unattempted_only: bool = False) -> list[str]:
        """Start a delivery for each destination with pending rows that none is running for; their keys."""
        started = []
        for key in self.outbox.pending_destinations(unattempted_only):
            with self._lock:
                if key in self._heard:
                    continue
                self._heard[key] = time.monotonic()
            # daemon threads: a destination trickling its answer must not hold up the node's exit
            threading.Thread(target=self._deliver_to, args=(key,), name=f"send {key}", daemon=True).start()
            started.append(key)
        return started

    def _deliver_to(self, key: str) -> None:
        def heard(result: SendResult) -> None:
            with self._lock:
                self._heard[key] = time.monotonic()

        try:
            if not self._stopping.is_set():
                self.guard(
                    f"sending to {key}",
                    functools.partial(
                        deliver, self.settings, self.outbox, self.settings.send_attempts, None, key, heard
                    ),
                )
        finally:
            with self._lock:
                del self._heard[key]

    def stuck(self) -> list[str]:
        """Destinations that have not answered for longer than a send may wait (``/healthz``'s words)."""
        limit = (
            max(self.settings.send_timeout_s, self.settings.send_deadline_s) + self.settings.send_timeout_s
        )
        now = time.monotonic()
        with self._lock:
            silent = {key: now - heard for key, heard in self._heard.items() if now - heard > limit}
        return [f"sending to {key}: no answer for {seconds:.0f} s" for key, seconds in sorted(silent.items())]

    def shutdown(self) -> None:
        """Start no more deliveries; those in progress end with their own timeouts (not waited on: a
        claim left by a process that exits runs out, see :mod:`scp_server.leases`)."""
        self._stopping.set()
