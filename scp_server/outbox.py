"""Derived instances waiting to be delivered, per destination, in SQLite: survives restarts.

A store only: a job adds its derived files; :mod:`scp_server.delivery` claims,
sends and records. Rows are keyed by SOP Instance UID and destination and added
with INSERT OR IGNORE, so a job run again after a crash (which writes the same
UIDs, see :func:`n2d_dicom.derive.new_uid`) never resends what was already delivered.

Several senders may deliver at once, so rows are claimed before they are sent
(owner and expiry, see :mod:`scp_server.leases`): a row is sent by one sender at
a time, and a claim left by a dead process runs out.

A row names its destination by a stable key, ``AE@host:port`` (a DICOMweb
destination: its URL), and keeps the
destination as configured when the row was added; delivery uses the
destination as configured *now* under that key where there is one, so editing a
destination's other fields (TLS, say) applies to rows already waiting.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scp_server.destinations import AnyDestination, parse_destination
from scp_server.leases import owner_is_dead
from scp_server.sender import SendResult
from scp_server.sqlite import Database, Journal

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    sop_instance_uid TEXT NOT NULL,
    destination TEXT NOT NULL,
    path TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    status INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    updated_at REAL NOT NULL,
    owner TEXT,
    claimed_until REAL,
    destination_json TEXT,
    PRIMARY KEY (sop_instance_uid, destination)
);
CREATE INDEX IF NOT EXISTS outbox_by_series ON outbox (series_instance_uid);
"""
#: The schema's version (PRAGMA user_version): a file of another version is refused.
SCHEMA_VERSION = 1

#: A missing derived file cannot be sent by anyone; recorded as refused with this error.
MISSING = "derived file missing from the spool"


@dataclass(frozen=True)
class OutboxRow:
    """One derived instance for one destination, and what happened to it so far."""

    sop_instance_uid: str
    destination: str
    series_instance_uid: str
    state: str
    attempts: int
    last_error: str | None


class Outbox:
    """What must go where, and what happened when it was tried."""

    def __init__(self, database: Path, journal: Journal = "wal") -> None:
        self._db = Database(database, SCHEMA, journal, SCHEMA_VERSION)

    def close(self) -> None:
        self._db.close()

    def add(
        self, items: list[tuple[str, Path]], destination: AnyDestination, series_instance_uid: str
    ) -> None:
        """Queue ``(sop_instance_uid, path)`` items derived from a received series for ``destination``.

        Items already known keep their state (a re-run never resends what was delivered).
        """
        now, key, stored = time.time(), destination.key, destination.model_dump_json()
        self._db.execute_many(
            "INSERT OR IGNORE INTO outbox (sop_instance_uid, destination, path, series_instance_uid, "
            "updated_at, destination_json) VALUES (?, ?, ?, ?, ?, ?)",
            [(uid, key, str(path), series_instance_uid, now, stored) for uid, path in items],
        )

    def pending_count(self) -> int:
        """Rows not yet delivered or refused."""
        return self._db.count("outbox", "state = 'pending'")

    def claim(
        self,
        owner: str,
        claim_s: float,
        current: Mapping[str, AnyDestination] | None = None,
        series_instance_uid: str | None = None,
        destination: str | None = None,
    ) -> dict[AnyDestination, list[Path]]:
        """Pending rows nobody else is sending, now claimed by ``owner`` for ``claim_s``; by destination.

        ``current`` maps keys to destinations as configured now (they win over the
        stored ones); ``series_instance_uid`` limits the claim to one source series,
        ``destination`` to one destination key.
        """
        now, current = time.time(), current or {}

        def claim_of(row: tuple[Any, ...]) -> tuple[Any, ...] | None:
            uid, key, _, _, holder, until = row
            if holder is not None and until >= now and not owner_is_dead(holder):
                return None  # another worker, alive, is sending it
            return (owner, now + claim_s, uid, key, holder)

        claimed = self._db.update_each(
            "SELECT sop_instance_uid, destination, destination_json, path, owner, claimed_until "
            "FROM outbox WHERE state = 'pending' AND (? IS NULL OR series_instance_uid = ?) "
            "AND (? IS NULL OR destination = ?)",
            (series_instance_uid, series_instance_uid, destination, destination),
            "UPDATE outbox SET owner = ?, claimed_until = ? WHERE sop_instance_uid = ? "
            "AND destination = ? AND state = 'pending' AND owner IS ?",
            claim_of,
        )
        by_destination: dict[AnyDestination, list[Path]] = {}
        for _, key, stored, path, _, _ in claimed:
            target = current.get(key) or parse_destination(stored)
            by_destination.setdefault(target, []).append(Path(path))
        return by_destination

    def record(self, results: list[SendResult], destination: AnyDestination) -> None:
        """Store the outcome of a send (delivered, refused, or still pending) and release the claim.

        Called per instance as answers arrive: after a crash at most the instance in
        flight is sent again (with the same SOP Instance UID).
        """
        now = time.time()
        key = destination.key
        self._db.execute_many(
            "UPDATE outbox SET state = ?, status = ?, attempts = attempts + 1, last_error = ?, "
            "updated_at = ?, owner = NULL, claimed_until = NULL "
            "WHERE sop_instance_uid = ? AND destination = ?",
            [
                (_state_of(result), result.status, result.error, now, result.sop_instance_uid, key)
                for result in results
            ],
        )

    def record_one(self, destination: AnyDestination, result: SendResult) -> None:
        """:meth:`record` for one answer, as it arrives."""
        self.record([result], destination)

    def refuse_missing(self, paths: list[Path], destination: AnyDestination) -> None:
        """Rows whose derived file is gone: nobody can send them; refused with :data:`MISSING`."""
        self._db.execute_many(
            "UPDATE outbox SET state = 'refused', last_error = ?, owner = NULL, claimed_until = NULL "
            "WHERE path = ? AND destination = ?",
            [(MISSING, str(path), destination.key) for path in paths],
        )

    def release(self, owner: str) -> None:
        """Drop ``owner``'s claims on rows it did not get an answer for (they stay pending)."""
        self._db.execute("UPDATE outbox SET owner = NULL, claimed_until = NULL WHERE owner = ?", (owner,))

    def pending_destinations(self, unattempted_only: bool = False) -> list[str]:
        """Keys of destinations with pending rows (only rows never tried, if ``unattempted_only``)."""
        rows = self._db.query(
            "SELECT DISTINCT destination FROM outbox WHERE state = 'pending' AND (? = 0 OR attempts = 0)",
            (int(unattempted_only),),
        )
        return [str(key) for (key,) in rows]

    def counts(self) -> dict[str, dict[str, int]]:
        """Rows per destination AE title and state."""
        rows = self._db.query("SELECT destination, state, COUNT(*) FROM outbox GROUP BY destination, state")
        counts: dict[str, dict[str, int]] = {}
        for destination, state, count in rows:
            counts.setdefault(str(destination), {})[str(state)] = int(count)
        return counts

    def rows(self, series_instance_uid: str | None = None) -> list[OutboxRow]:
        """Every row (of one source series), oldest first: what ``n2d status`` and the tests look at."""
        rows = self._db.query(
            "SELECT sop_instance_uid, destination, series_instance_uid, state, attempts, last_error "
            "FROM outbox WHERE ? IS NULL OR series_instance_uid = ? ORDER BY updated_at",
            (series_instance_uid, series_instance_uid),
        )
        return [OutboxRow(*row) for row in rows]

    def delivered_at(self) -> dict[str, float]:
        """When each source series' last derived instance was delivered, for series delivered everywhere."""
        rows = self._db.query(
            "SELECT series_instance_uid, MAX(updated_at) FROM outbox GROUP BY series_instance_uid "
            "HAVING SUM(state != 'delivered') = 0"
        )
        return {str(uid): float(when) for uid, when in rows}

    def errors(self, limit: int = 10) -> list[tuple[str, str, float, str]]:
        """``(sop_instance_uid, destination, when, error)`` of rows that failed, newest first."""
        rows = self._db.query(
            "SELECT sop_instance_uid, destination, updated_at, "
            "CASE WHEN status IS NULL THEN last_error "
            "ELSE printf('status 0x%04X', status) || COALESCE(' (' || last_error || ')', '') END "
            "FROM outbox "
            "WHERE state != 'delivered' AND (last_error IS NOT NULL OR status IS NOT NULL) "
            "ORDER BY updated_at DESC LIMIT ?",
            (limit,),
        )
        return [(str(uid), str(dest), float(when), str(error)) for uid, dest, when, error in rows]

    def retry_refused(self, series_instance_uid: str | None = None) -> int:
        """Refused rows (all, or one source series') pending again, e.g. after the destination was fixed."""
        return self._db.execute(
            "UPDATE outbox SET state = 'pending', attempts = 0, updated_at = ? WHERE state = 'refused' "
            "AND (? IS NULL OR series_instance_uid = ?)",
            (time.time(), series_instance_uid, series_instance_uid),
        )

    def settled(self, series_instance_uid: str) -> bool:
        """Whether every derived instance of a received series was delivered (or it has none)."""
        row = self._db.query_one(
            "SELECT 1 FROM outbox WHERE series_instance_uid = ? AND state != 'delivered' LIMIT 1",
            (series_instance_uid,),
        )
        return row is None

    def forget(
        self,
        series_instance_uid: str | None = None,
        state: str | None = None,
        updated_before: float | None = None,
    ) -> list[Path]:
        """Delete rows (of a source series, in a state, untouched since a time); returns their files."""
        where = (
            "(? IS NULL OR series_instance_uid = ?) AND (? IS NULL OR state = ?) "
            "AND (? IS NULL OR updated_at < ?)"
        )
        params = (series_instance_uid, series_instance_uid, state, state, updated_before, updated_before)
        with self._db.locked() as db:
            rows = db.execute(f"SELECT DISTINCT path FROM outbox WHERE {where}", params).fetchall()
            db.execute(f"DELETE FROM outbox WHERE {where}", params)
        return [Path(path) for (path,) in rows]


def _state_of(result: SendResult) -> str:
    """The row state a send's outcome leaves: delivered, refused, or still pending."""
    return "delivered" if result.delivered else "refused" if result.refused else "pending"
