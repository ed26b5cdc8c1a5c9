"""Whether the node can do its work: background loops that never die, and what ``/healthz`` reports.

A node left alone on a hospital network meets full disks, locked databases and
peers that vanish. Its background loops (series poller, outbox rounds, lease
renewal) must outlive every such error: each step runs guarded, a failure is
logged and counted, the loop backs off and tries again, and the node recovers by
itself once the cause is gone. While a loop is failing, or the spool cannot be
written, ``/healthz`` says so (HTTP 503 with the reasons) so that an operator or
an orchestrator notices.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from prometheus_client import Counter

from n2d_dicom.uids import printable

log = logging.getLogger(__name__)

#: Bytes the spool probe writes: enough to fail on a full disk, small enough to cost nothing.
PROBE_BYTES = 4096
#: Longest wait between retries of a failing loop, in seconds.
MAX_BACKOFF_S = 30.0


class Health:
    """The loops failing now and why; ``errors`` counts every failure by loop."""

    def __init__(self, errors: Counter, spool_dir: Path) -> None:
        self.errors = errors
        self.spool_dir = spool_dir
        self._failing: dict[str, str] = {}
        self._lock = threading.Lock()
        #: More problems to report, each a callable (a sending thread that no destination answers, say).
        self.checks: list[Callable[[], list[str]]] = []

    def guarded(self, loop: str, step: Callable[[], object]) -> bool:
        """Run one step of ``loop``; on an exception log it, count it, note the loop as failing.

        Returns whether the step succeeded. The first failure in a row is logged
        with its traceback, later ones in one line, so a lasting fault does not
        flood the log.
        """
        try:
            step()
        except Exception as exc:  # a background loop must outlive every error
            self.errors.labels(loop).inc()
            reason = printable(f"{type(exc).__name__}: {exc}", 200)
            with self._lock:
                first = loop not in self._failing
                self._failing[loop] = reason
            if first:
                log.exception("%s failed; retrying with backoff until it succeeds", loop)
            else:
                log.error("%s still failing: %s", loop, reason)
            return False
        with self._lock:
            recovered = self._failing.pop(loop, None) is not None
        if recovered:
            log.warning("%s recovered", loop)
        return True

    def problems(self) -> list[str]:
        """What is wrong now, in an operator's words; empty when the node is healthy."""
        with self._lock:
            problems = [f"{loop} failing: {reason}" for loop, reason in sorted(self._failing.items())]
        for check in self.checks:
            problems.extend(check())
        unwritable = spool_write_problem(self.spool_dir)
        if unwritable is not None:
            problems.insert(0, f"spool not writable: {unwritable}")
        return problems


def spool_write_problem(spool_dir: Path) -> str | None:
    """Why ``spool_dir`` cannot take a small durable write now (full, read-only, gone), or ``None``."""
    probe = spool_dir / ".health-probe.tmp"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"\0" * PROBE_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
    return None


class Backoff:
    """Waits of a loop: ``base_s`` while it works, doubling up to :data:`MAX_BACKOFF_S` while it fails."""

    def __init__(self, base_s: float) -> None:
        self.base_s = base_s
        self.wait_s = base_s

    def after(self, succeeded: bool) -> float:
        """How long to wait before the next step."""
        self.wait_s = self.base_s if succeeded else min(max(self.wait_s * 2, 1.0), MAX_BACKOFF_S)
        return self.wait_s
