"""Decide when a received series is complete, and hand each complete series over exactly once.

DICOM has no "end of series" message. Like Orthanc's stable-series rule and
MONAI Deploy's timeouts, a series counts as complete when the association that
brought it has been released and no instance has arrived for a quiet period,
or, whatever the associations do, when it has been receiving for a maximum wait
and then no instance arrived for a quiet period (a modality that keeps one
association open for hours is not cut in the middle of sending a series).
An association that was *aborted* (peer killed, network cut, node crashed) is
no sign that the sender is done: its series waits ``aborted_grace_s`` for the
sender to send again (a released association that brings the series ends the
wait) before it counts as complete with what it has. Associations are named
``host:pid:id`` (:func:`scp_server.scp.association_key`), so those of a node
that died are closed as aborted when the next one starts.
State lives in SQLite beside the spool index, so a restart picks up where it was.

A series moves ``receiving -> queued`` in one conditional UPDATE, so two callers
can never both claim it. An instance that brings something new for a series
already queued or done (a new SOP Instance UID, or a changed one) starts a new
*run* of that series (``run + 1``): it is processed again as a whole, never
patched into a run that is already being processed. An identical instance sent
again starts nothing.

A worker takes a queued run with :meth:`SeriesTracker.start` (``queued ->
processing``, again one conditional UPDATE, so a job delivered twice by the
queue is processed once) and holds it under a lease it renews while it works.
If the worker dies, the lease runs out and :meth:`SeriesTracker.reclaim`
queues the run again. A finished run is ``done`` (or ``failed``, with its
error, until ``n2d retry``), and ``purged`` once its files have gone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scp_server.leases import owner_is_dead
from scp_server.sqlite import Database, Journal

SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    series_instance_uid TEXT PRIMARY KEY,
    run INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    open_associations TEXT NOT NULL DEFAULT '',
    queued_at REAL,
    started_at REAL,
    finished_at REAL,
    owner TEXT,
    lease_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    interrupted INTEGER NOT NULL DEFAULT 0,
    plan TEXT,
    summary TEXT
);
"""
#: The schema's version (PRAGMA user_version): a file of another version is refused.
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class DueSeries:
    """A series that is complete and now belongs to the queue."""

    series_instance_uid: str
    run: int


@dataclass(frozen=True)
class RunTimes:
    """When a finished run was received, queued, started and finished (epoch seconds)."""

    first_received: float
    queued_at: float
    started_at: float
    finished_at: float
    series_instance_uid: str = ""


@dataclass(frozen=True)
class RunRecord:
    """A series' latest run as the tracker holds it, for the dashboard (times in epoch seconds)."""

    series_instance_uid: str
    run: int
    state: str
    first_received: float
    queued_at: float | None
    started_at: float | None
    finished_at: float | None
    error: str | None
    plan: str | None
    summary: str | None
    """What the run decided and measured (JSON, :class:`scp_server.run_summary.RunSummary`)."""


class SeriesTracker:
    """Series completion and job state, persisted in ``database`` (an SQLite file)."""

    def __init__(
        self,
        database: Path,
        quiet_period_s: float,
        max_wait_s: float,
        clock: Callable[[], float] = time.time,
        journal: Journal = "wal",
        aborted_grace_s: float = 600,
    ) -> None:
        self.quiet_period_s = quiet_period_s
        self.max_wait_s = max_wait_s
        self.aborted_grace_s = aborted_grace_s
        self._clock = clock
        self._db = Database(database, SCHEMA, journal, SCHEMA_VERSION)

    def close(self) -> None:
        self._db.close()

    def instance_received(self, series_instance_uid: str, association: str, starts_run: bool = True) -> None:
        """Note an instance stored for ``series_instance_uid`` over ``association``.

        ``starts_run`` is False for an identical copy of an instance already stored:
        it counts towards a series still receiving, and starts no new run of one
        that was already complete.
        """
        now = self._clock()
        with self._db.locked() as db:
            row = db.execute(
                "SELECT state, open_associations FROM series WHERE series_instance_uid = ?",
                (series_instance_uid,),
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO series (series_instance_uid, state, first_received, last_received, "
                    "open_associations) VALUES (?, 'receiving', ?, ?, ?)",
                    (series_instance_uid, now, now, association),
                )
                return
            state, open_associations = row
            associations = set(filter(None, open_associations.split(","))) | {association}
            if state == "receiving":
                db.execute(
                    "UPDATE series SET last_received = ?, open_associations = ? "
                    "WHERE series_instance_uid = ?",
                    (now, ",".join(sorted(associations)), series_instance_uid),
                )
            elif starts_run:  # late or changed instance: a new run of the whole series
                db.execute(
                    "UPDATE series SET run = run + 1, state = 'receiving', first_received = ?, "
                    "last_received = ?, open_associations = ?, queued_at = NULL, started_at = NULL, "
                    "finished_at = NULL, owner = NULL, lease_until = NULL, attempts = 0, error = NULL, "
                    "interrupted = 0, plan = NULL, summary = NULL WHERE series_instance_uid = ?",
                    (now, now, association, series_instance_uid),
                )

    def association_released(self, association: str) -> None:
        """The association was released: the sender is done with its series."""
        self._association_ended(association, aborted=False)

    def association_aborted(self, association: str) -> None:
        """The association ended without a release: its series wait for the sender to send again."""
        self._association_ended(association, aborted=True)

    def _association_ended(self, association: str, aborted: bool) -> None:
        with self._db.locked() as db:
            rows = db.execute(
                "SELECT series_instance_uid, open_associations FROM series WHERE state = 'receiving'"
            ).fetchall()
            for uid, open_associations in rows:
                associations = set(filter(None, open_associations.split(",")))
                if association in associations:
                    db.execute(
                        "UPDATE series SET open_associations = ?, interrupted = ? "
                        "WHERE series_instance_uid = ?",
                        (",".join(sorted(associations - {association})), int(aborted), uid),
                    )

    def close_dead_associations(self) -> int:
        """Close, as aborted, the open associations of processes of this host that no longer exist.

        Returns how many were closed.
        """
        rows = self._db.query(
            "SELECT open_associations FROM series WHERE state = 'receiving' AND open_associations != ''"
        )
        dead = {
            key
            for (open_associations,) in rows
            for key in open_associations.split(",")
            if key and owner_is_dead(key)
        }
        for key in dead:
            self.association_aborted(key)
        return len(dead)

    def claim_due(self) -> list[DueSeries]:
        """Series that are complete now, each moved to ``queued`` and returned exactly once."""
        now = self._clock()
        return self._queue(
            "SELECT series_instance_uid, run FROM series WHERE state = 'receiving' AND ("
            "(open_associations = '' AND last_received <= "
            "CASE interrupted WHEN 0 THEN ? ELSE ? END) OR (first_received <= ? AND last_received <= ?))",
            (
                now - self.quiet_period_s,
                now - self.aborted_grace_s,
                now - self.max_wait_s,
                now - self.quiet_period_s,
            ),
            "receiving",
            now,
        )

    def record_plan(self, series_instance_uid: str, run: int, plan: str) -> None:
        """Keep what a run was claimed to do (route and settings, as JSON), so config edits leave it be."""
        self._db.execute(
            "UPDATE series SET plan = ? WHERE series_instance_uid = ? AND run = ?",
            (plan, series_instance_uid, run),
        )

    def plan(self, series_instance_uid: str, run: int) -> str | None:
        """The plan recorded for a run, or ``None`` (not recorded yet, or another run now)."""
        row = self._db.query_one(
            "SELECT plan FROM series WHERE series_instance_uid = ? AND run = ?", (series_instance_uid, run)
        )
        return None if row is None or row[0] is None else str(row[0])

    def start(self, series_instance_uid: str, run: int, owner: str, lease_s: float) -> bool:
        """Take a queued run for ``owner``; ``False`` if it is not queued (done, taken, superseded)."""
        now = self._clock()
        changed = self._db.execute(
            "UPDATE series SET state = 'processing', owner = ?, lease_until = ?, started_at = ?, "
            "attempts = attempts + 1 WHERE series_instance_uid = ? AND run = ? AND state = 'queued'",
            (owner, now + lease_s, now, series_instance_uid, run),
        )
        return changed == 1

    def renew(self, series_instance_uid: str, run: int, owner: str, lease_s: float) -> bool:
        """Extend ``owner``'s lease; ``False`` if the run is no longer theirs."""
        changed = self._db.execute(
            "UPDATE series SET lease_until = ? WHERE series_instance_uid = ? AND run = ? "
            "AND state = 'processing' AND owner = ?",
            (self._clock() + lease_s, series_instance_uid, run, owner),
        )
        return changed == 1

    def finish(self, series_instance_uid: str, run: int, owner: str, error: str | None = None) -> bool:
        """``owner`` finished the run: ``done``, or ``failed`` with ``error``; ``False`` if not theirs."""
        changed = self._db.execute(
            "UPDATE series SET state = ?, finished_at = ?, error = ?, owner = NULL, lease_until = NULL "
            "WHERE series_instance_uid = ? AND run = ? AND state = 'processing' AND owner = ?",
            ("done" if error is None else "failed", self._clock(), error, series_instance_uid, run, owner),
        )
        return changed == 1

    def holds(self, series_uid: str, run: int, owner: str) -> bool:
        """Whether ``owner`` still holds the run (not superseded by a new run, not taken over)."""
        row = self._db.query_one(
            "SELECT 1 FROM series WHERE series_instance_uid = ? AND run = ? AND state = 'processing' "
            "AND owner = ?",
            (series_uid, run, owner),
        )
        return row is not None

    def put_back(self, series_uid: str, run: int, owner: str) -> bool:
        """``owner`` gives the run back unfinished (a transient error): ``queued`` again, job to be re-sent.

        The node's check for queued runs whose job left the queue enqueues it after
        ``job_lease_s``, which is the retry's backoff. ``False`` if the run is not theirs.
        """
        changed = self._db.execute(
            "UPDATE series SET state = 'queued', queued_at = ?, owner = NULL, lease_until = NULL "
            "WHERE series_instance_uid = ? AND run = ? AND state = 'processing' AND owner = ?",
            (self._clock(), series_uid, run, owner),
        )
        return changed == 1

    def reclaim(self) -> list[DueSeries]:
        """Runs whose worker is gone (lease expired, or a dead process of this host): queued again."""
        now = self._clock()
        return self._queue(
            "SELECT series_instance_uid, run, owner, lease_until FROM series WHERE state = 'processing'",
            (),
            "processing",
            now,
            lambda row: row[3] < now or owner_is_dead(row[2]),
        )

    def retry_failed(self, series_instance_uid: str | None = None) -> list[DueSeries]:
        """Failed runs (all, or one series') queued again, e.g. after the cause was fixed."""
        return self._queue(
            "SELECT series_instance_uid, run FROM series WHERE state = 'failed' "
            "AND (? IS NULL OR series_instance_uid = ?)",
            (series_instance_uid, series_instance_uid),
            "failed",
            self._clock(),
        )

    def _queue(
        self,
        select: str,
        params: tuple[Any, ...],
        state: str,
        now: float,
        gone: Callable[[tuple[Any, ...]], bool] = lambda row: True,
    ) -> list[DueSeries]:
        """Move the runs ``select`` finds in ``state`` (those ``gone`` accepts) to ``queued``; those moved.

        Each move is one conditional UPDATE on the state the run was found in, so
        no run is moved (and returned) twice, however many processes try at once.
        """
        moved = self._db.update_each(
            select,
            params,
            "UPDATE series SET state = 'queued', queued_at = ?, owner = NULL, lease_until = NULL "
            "WHERE series_instance_uid = ? AND run = ? AND state = ?",
            lambda row: (now, row[0], row[1], state) if gone(row) else None,
        )
        return [DueSeries(str(uid), int(run)) for uid, run, *_ in moved]

    def queued(self) -> list[DueSeries]:
        """Series claimed but not taken by a worker: what a restarted node queues again."""
        return [DueSeries(uid, run) for uid, run, *_ in self._select("queued")]

    def queued_longer_than(self, seconds: float) -> list[DueSeries]:
        """Runs queued ``seconds`` ago or earlier and still not taken by a worker."""
        rows = self._db.query(
            "SELECT series_instance_uid, run FROM series WHERE state = 'queued' AND queued_at <= ?",
            (self._clock() - seconds,),
        )
        return [DueSeries(str(uid), int(run)) for uid, run in rows]

    def in_flight(self) -> list[tuple[str, int, str, float]]:
        """``(series, run, owner, started_at)`` of every run a worker holds now."""
        return [(uid, run, owner, started) for uid, run, owner, started, *_ in self._select("processing")]

    def errors(self, limit: int = 10) -> list[tuple[str, int, float, str]]:
        """``(series, run, finished_at, error)`` of failed runs, newest first."""
        rows = [(uid, run, finished, error) for uid, run, _, _, finished, error in self._select("failed")]
        return sorted(rows, key=lambda row: -row[2])[:limit]

    def finished_before(self, cutoff: float) -> list[str]:
        """Series whose last run was done before ``cutoff`` (epoch seconds)."""
        return [uid for uid, _, _, _, finished, _ in self._select("done") if finished < cutoff]

    def mark_purged(self, series_instance_uid: str) -> None:
        """The series' files are gone; the row stays so a late instance still starts a new run."""
        self._db.execute(
            "UPDATE series SET state = 'purged' WHERE series_instance_uid = ? AND state = 'done'",
            (series_instance_uid,),
        )

    def _select(self, state: str) -> list[tuple[str, int, str, float, float, str]]:
        rows = self._db.query(
            "SELECT series_instance_uid, run, owner, started_at, finished_at, error FROM series "
            "WHERE state = ?",
            (state,),
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]

    def counts(self) -> dict[str, int]:
        """How many series are in each state."""
        rows = self._db.query("SELECT state, COUNT(*) FROM series GROUP BY state")
        return {str(state): int(count) for state, count in rows}

    def recent_runs(self, limit: int = 1000) -> list[RunTimes]:
        """Timings of the latest finished runs, for queue wait and latency figures."""
        return self._db.query_as(
            RunTimes,
            "SELECT first_received, queued_at, started_at, finished_at, series_instance_uid FROM series "
            "WHERE state IN ('done', 'purged') AND started_at IS NOT NULL ORDER BY finished_at DESC LIMIT ?",
            (limit,),
        )

    def state(self, series_instance_uid: str) -> tuple[str, int] | None:
        """``(state, run)`` of a series, or ``None`` if it was never seen."""
        row = self._db.query_one(
            "SELECT state, run FROM series WHERE series_instance_uid = ?", (series_instance_uid,)
        )
        return None if row is None else (str(row[0]), int(row[1]))

    def record_summary(self, series_instance_uid: str, run: int, summary: str) -> None:
        """Keep what a run decided and measured (JSON) with the run; a newer run's row is left be."""
        self._db.execute(
            "UPDATE series SET summary = ? WHERE series_instance_uid = ? AND run = ?",
            (summary, series_instance_uid, run),
        )

    def latest(self, limit: int = 50) -> list[RunRecord]:
        """The latest run of the ``limit`` series received most recently, newest first."""
        return self._db.query_as(
            RunRecord,
            "SELECT series_instance_uid, run, state, first_received, queued_at, started_at, finished_at, "
            "error, plan, summary FROM series ORDER BY first_received DESC LIMIT ?",
            (limit,),
        )
