"""Derived instances waiting to be delivered, per destination, in SQLite: survives restarts.

A job adds its derived files, then delivers what is pending. Rows are keyed by
SOP Instance UID and destination and added with INSERT OR IGNORE, so a job run
again after a crash (which writes the same UIDs, see
:func:`n2d_dicom.derive.new_uid`) never resends what was already delivered.
What is still pending after a job is retried later by :meth:`Outbox.deliver`.
"""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path

from scp_server.sender import Destination, SendResult, send_files
from scp_server.sqlite import open_database

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    sop_instance_uid TEXT NOT NULL,
    destination TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    status INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (sop_instance_uid, destination)
);
"""


class Outbox:
    """What must go where, and what happened when it was tried."""

    def __init__(self, database: Path) -> None:
        self._lock = threading.Lock()
        self._db = open_database(database, SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, items: list[tuple[str, Path]], destination: Destination) -> None:
        """Queue ``(sop_instance_uid, path)`` items for ``destination`` (known items keep their state)."""
        now = time.time()
        with self._lock:
            self._db.executemany(
                "INSERT OR IGNORE INTO outbox (sop_instance_uid, destination, path, updated_at) "
                "VALUES (?, ?, ?, ?)",
                [(uid, destination.model_dump_json(), str(path), now) for uid, path in items],
            )

    def pending(self) -> dict[Destination, list[Path]]:
        """Undelivered files, by destination."""
        with self._lock:
            rows = self._db.execute("SELECT destination, path FROM outbox WHERE state = 'pending'").fetchall()
        by_destination: dict[Destination, list[Path]] = {}
        for destination, path in rows:
            by_destination.setdefault(Destination.model_validate_json(destination), []).append(Path(path))
        return by_destination

    def record(self, results: list[SendResult], destination: Destination) -> None:
        """Store the outcome of a send: delivered, refused (final), or still pending.

        Called per instance as answers arrive: after a crash at most the instance in
        flight is sent again (with the same SOP Instance UID).
        """
        now = time.time()
        key = destination.model_dump_json()
        with self._lock:
            for result in results:
                state = "delivered" if result.delivered else "refused" if result.refused else "pending"
                self._db.execute(
                    "UPDATE outbox SET state = ?, status = ?, attempts = attempts + 1, last_error = ?, "
                    "updated_at = ? WHERE sop_instance_uid = ? AND destination = ?",
                    (state, result.status, result.error, now, result.sop_instance_uid, key),
                )

    def record_one(self, destination: Destination, result: SendResult) -> None:
        """:meth:`record` for one answer, as it arrives."""
        self.record([result], destination)

    def deliver(self, calling_ae: str, attempts: int, backoff_s: float) -> list[SendResult]:
        """Try every pending file once more (with ``attempts`` associations per destination)."""
        results: list[SendResult] = []
        for destination, paths in self.pending().items():
            present = [p for p in paths if p.is_file()]
            sent = send_files(
                present,
                destination,
                calling_ae,
                attempts=attempts,
                backoff_s=backoff_s,
                on_result=functools.partial(self.record_one, destination),
            )
            results.extend(sent)
        return results
