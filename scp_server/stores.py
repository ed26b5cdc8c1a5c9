"""The node's durable state in the spool, opened the same way by every process that needs it.

The SCP process, each ``n2d worker`` and the ``n2d status``/``retry``/``purge``
commands all open the same three SQLite files; SQLite's locks order their writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from scp_server.config import NodeSettings
from scp_server.outbox import Outbox
from scp_server.spool import Spool
from scp_server.tracker import SeriesTracker


@dataclass
class Stores:
    """Received instances (spool), series and job state (tracker), deliveries (outbox)."""

    spool: Spool
    tracker: SeriesTracker
    outbox: Outbox

    @classmethod
    def open(cls, settings: NodeSettings) -> Stores:
        """Open (and create) the stores under ``settings.spool_dir``."""
        journal = settings.sqlite_journal
        spool = Spool(settings.spool_dir, journal)
        tracker = SeriesTracker(
            settings.spool_dir / "series.sqlite3",
            settings.quiet_period_s,
            settings.max_wait_s,
            journal=journal,
            aborted_grace_s=settings.aborted_grace_s,
        )
        return cls(spool, tracker, Outbox(settings.spool_dir / "outbox.sqlite3", journal))

    def close(self) -> None:
        self.tracker.close()
        self.outbox.close()
        self.spool.close()
