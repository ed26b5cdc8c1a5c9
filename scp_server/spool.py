"""Durable storage of received instances, and the SQLite index of what is stored.

The C-STORE handler may answer success only once :meth:`Spool.store` has
returned: by then the encoded file is fsynced under its final name and its row
is committed. A crash between the two leaves a file with no row, which
:meth:`Spool.recover` indexes on the next start, so an acknowledged instance is
never lost. A partly written file only ever exists under a temporary name and is
removed on failure (or by :meth:`Spool.recover`).
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from n2d_dicom.atomic import atomic_path
from scp_server.sqlite import Journal, open_database

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    series_instance_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    calling_aet TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_by_series ON instances (series_instance_uid);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    reason TEXT NOT NULL,
    calling_aet TEXT NOT NULL,
    received_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class StoredInstance:
    """Identifiers of one received instance (no patient data)."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str


class Spool:
    """Instances under ``root/instances/<series>/<sop>.dcm``; refused ones under ``root/quarantine``."""

    def __init__(self, root: Path, journal: Journal = "wal") -> None:
        self.root = root
        self.instances_dir = root / "instances"
        self.quarantine_dir = root / "quarantine"
        for folder in (self.instances_dir, self.quarantine_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = open_database(root / "index.sqlite3", SCHEMA, journal)

    def close(self) -> None:
        """Close the index (the files need no closing)."""
        with self._lock:
            self._db.close()

    def store(self, encoded: bytes, instance: StoredInstance, calling_aet: str) -> bool:
        """Keep ``encoded`` (a complete DICOM file) durably; ``False`` if it was already stored.

        A second copy of a SOP Instance UID is acknowledged and not stored again.
        Raises ``OSError`` (e.g. ENOSPC) with nothing half-written left behind.
        """
        if self.contains(instance.sop_instance_uid):
            return False
        path = (
            self.instances_dir
            / _safe(instance.series_instance_uid)
            / f"{_safe(instance.sop_instance_uid)}.dcm"
        )
        with atomic_path(path) as tmp:
            tmp.write_bytes(encoded)
        try:
            self._index(instance, path, calling_aet, time.time())
        except sqlite3.Error as exc:  # e.g. the disk filled between file and row: keep neither
            path.unlink(missing_ok=True)
            code = errno.ENOSPC if "full" in str(exc) else errno.EIO
            raise OSError(code, f"spool index: {exc}") from exc
        return True

    def _index(self, instance: StoredInstance, path: Path, calling_aet: str, received_at: float) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    instance.sop_instance_uid,
                    instance.series_instance_uid,
                    instance.study_instance_uid,
                    instance.sop_class_uid,
                    str(path.relative_to(self.root)),
                    calling_aet,
                    received_at,
                ),
            )

    def quarantine(self, encoded: bytes, reason: str, calling_aet: str) -> Path:
        """Keep a rejected instance and why, for a person to look at; returns where it went."""
        path = self.quarantine_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.dcm"
        with atomic_path(path) as tmp:
            tmp.write_bytes(encoded)
        with self._lock:
            self._db.execute(
                "INSERT INTO quarantine (path, reason, calling_aet, received_at) VALUES (?, ?, ?, ?)",
                (str(path.relative_to(self.root)), reason, calling_aet, time.time()),
            )
        return path

    def contains(self, sop_instance_uid: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
            ).fetchone()
        return row is not None

    def series_files(self, series_instance_uid: str) -> list[Path]:
        """The stored files of one series."""
        return [path for _, path in self.series_instances(series_instance_uid)]

    def series_instances(self, series_instance_uid: str) -> list[tuple[str, Path]]:
        """``(SOP Instance UID, file)`` of each stored instance of one series, in order of arrival."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sop_instance_uid, path FROM instances WHERE series_instance_uid = ? "
                "ORDER BY received_at",
                (series_instance_uid,),
            ).fetchall()
        return [(str(uid), self.root / path) for uid, path in rows]

    def calling_aet(self, series_instance_uid: str) -> str:
        """The AE title that sent the first instance of a series ("" if unknown)."""
        with self._lock:
            row = self._db.execute(
                "SELECT calling_aet FROM instances WHERE series_instance_uid = ? "
                "ORDER BY received_at LIMIT 1",
                (series_instance_uid,),
            ).fetchone()
        return "" if row is None else str(row[0])

    def quarantined(self) -> list[tuple[Path, str]]:
        """Quarantined files and the reason each was refused."""
        with self._lock:
            rows = self._db.execute("SELECT path, reason FROM quarantine ORDER BY id").fetchall()
        return [(self.root / path, reason) for path, reason in rows]

    def quarantine_count(self) -> int:
        """How many instances are quarantined (what ``/metrics`` and ``n2d status`` report)."""
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM quarantine").fetchone()
        return int(count)

    def remove_series(self, series_instance_uid: str) -> int:
        """Delete a series' files and index rows (retention); returns how many instances went."""
        files = self.series_files(series_instance_uid)
        for path in files:
            path.unlink(missing_ok=True)
        with self._lock:
            self._db.execute("DELETE FROM instances WHERE series_instance_uid = ?", (series_instance_uid,))
        remove_empty_folder(self.instances_dir / _safe(series_instance_uid))
        return len(files)

    def purge_quarantine(self, received_before: float) -> int:
        """Delete quarantined files received before ``received_before`` (epoch s); returns how many."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, path FROM quarantine WHERE received_at < ?", (received_before,)
            ).fetchall()
            for row_id, path in rows:
                (self.root / path).unlink(missing_ok=True)
                self._db.execute("DELETE FROM quarantine WHERE id = ?", (row_id,))
        return len(rows)

    def recover(self) -> int:
        """Index files a crash left stored but unindexed, drop temporary files; returns files indexed."""
        indexed = 0
        for path in self.instances_dir.rglob("*"):
            if not path.is_file():
                continue
            if path.name.startswith("."):
                path.unlink()  # an interrupted atomic write: never acknowledged
                continue
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                instance = instance_of(ds)
            except (InvalidDicomError, OSError, AttributeError, ValueError):
                log.warning("spool: unreadable file %s left in place", path)
                continue
            if not self.contains(instance.sop_instance_uid):
                self._index(instance, path, "", path.stat().st_mtime)
                indexed += 1
        return indexed


def instance_of(dataset: pydicom.Dataset) -> StoredInstance:
    """The identifiers the spool needs; ``AttributeError`` names the first one missing."""
    values = {}
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID"):
        value = dataset.get(keyword)
        if not value:
            raise AttributeError(f"missing {keyword}")
        values[keyword] = str(value)
    return StoredInstance(
        values["SOPInstanceUID"],
        values["SeriesInstanceUID"],
        values["StudyInstanceUID"],
        values["SOPClassUID"],
    )


def remove_empty_folder(folder: Path) -> None:
    """Remove ``folder`` if it exists and is empty (a series' last file went)."""
    try:
        folder.rmdir()
    except OSError:  # absent, or not empty (a late instance arrived meanwhile)
        pass


def _safe(uid: str) -> str:
    """A UID as a file name: UIDs are digits and dots; anything else is refused."""
    if not uid or any(c not in "0123456789." for c in uid):
        raise ValueError(f"not a valid UID: {uid!r}")
    return uid
