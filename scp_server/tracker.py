"""Decide when a received series is complete, and hand each complete series over exactly once.

DICOM has no "end of series" message. Like Orthanc's stable-series rule and
MONAI Deploy's timeouts, a series counts as complete when the association that
brought it has been released and no instance has arrived for a quiet period,
or, whatever the associations do, when it has been receiving for a maximum wait.
State lives in SQLite beside the spool index, so a restart picks up where it was.

A series moves ``receiving -> queued`` in one conditional UPDATE, so two callers
can never both claim it. An instance that arrives for a series already queued
or done starts a new *run* of that series (``run + 1``): it is processed again
as a whole, never patched into a run that is already being processed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scp_server.sqlite import open_database

SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    series_instance_uid TEXT PRIMARY KEY,
    run INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    open_associations TEXT NOT NULL DEFAULT ''
);
"""


@dataclass(frozen=True)
class DueSeries:
    """A series that is complete and now belongs to the queue."""

    series_instance_uid: str
    run: int


class SeriesTracker:
    """Series completion, persisted in ``database`` (an SQLite file)."""

    def __init__(
        self,
        database: Path,
        quiet_period_s: float,
        max_wait_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.quiet_period_s = quiet_period_s
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._lock = threading.Lock()
        self._db = open_database(database, SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def instance_received(self, series_instance_uid: str, association: str) -> None:
        """Note an instance stored for ``series_instance_uid`` over ``association``."""
        now = self._clock()
        with self._lock:
            row = self._db.execute(
                "SELECT state, open_associations FROM series WHERE series_instance_uid = ?",
                (series_instance_uid,),
            ).fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO series VALUES (?, 1, 'receiving', ?, ?, ?)",
                    (series_instance_uid, now, now, association),
                )
                return
            state, open_associations = row
            associations = set(filter(None, open_associations.split(","))) | {association}
            if state == "receiving":
                self._db.execute(
                    "UPDATE series SET last_received = ?, open_associations = ? "
                    "WHERE series_instance_uid = ?",
                    (now, ",".join(sorted(associations)), series_instance_uid),
                )
            else:  # late instance: a new run of the whole series
                self._db.execute(
                    "UPDATE series SET run = run + 1, state = 'receiving', first_received = ?, "
                    "last_received = ?, open_associations = ? WHERE series_instance_uid = ?",
                    (now, now, association, series_instance_uid),
                )

    def association_released(self, association: str) -> None:
        """The association ended (released or aborted): its series may now become complete."""
        with self._lock:
            rows = self._db.execute(
                "SELECT series_instance_uid, open_associations FROM series WHERE state = 'receiving'"
            ).fetchall()
            for uid, open_associations in rows:
                associations = set(filter(None, open_associations.split(",")))
                if association in associations:
                    self._db.execute(
                        "UPDATE series SET open_associations = ? WHERE series_instance_uid = ?",
                        (",".join(sorted(associations - {association})), uid),
                    )

    def claim_due(self) -> list[DueSeries]:
        """Series that are complete now, each moved to ``queued`` and returned exactly once."""
        now = self._clock()
        with self._lock:
            rows = self._db.execute(
                "SELECT series_instance_uid, run FROM series WHERE state = 'receiving' AND ("
                "(open_associations = '' AND last_received <= ?) OR first_received <= ?)",
                (now - self.quiet_period_s, now - self.max_wait_s),
            ).fetchall()
            claimed = []
            for uid, run in rows:
                cursor = self._db.execute(
                    "UPDATE series SET state = 'queued' WHERE series_instance_uid = ? AND run = ? "
                    "AND state = 'receiving'",
                    (uid, run),
                )
                if cursor.rowcount == 1:
                    claimed.append(DueSeries(uid, run))
        return claimed

    def mark_done(self, series_instance_uid: str, run: int) -> None:
        """The run was processed; a later instance will start a new run."""
        with self._lock:
            self._db.execute(
                "UPDATE series SET state = 'done' "
                "WHERE series_instance_uid = ? AND run = ? AND state = 'queued'",
                (series_instance_uid, run),
            )

    def queued(self) -> list[DueSeries]:
        """Series claimed but not finished: what a restart must process again."""
        with self._lock:
            rows = self._db.execute(
                "SELECT series_instance_uid, run FROM series WHERE state = 'queued'"
            ).fetchall()
        return [DueSeries(str(uid), int(run)) for uid, run in rows]

    def state(self, series_instance_uid: str) -> tuple[str, int] | None:
        """``(state, run)`` of a series, or ``None`` if it was never seen."""
        with self._lock:
            row = self._db.execute(
                "SELECT state, run FROM series WHERE series_instance_uid = ?", (series_instance_uid,)
            ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))
