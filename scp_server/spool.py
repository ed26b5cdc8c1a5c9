"""Durable storage of received instances, and the SQLite index of what is stored.

The C-STORE handler may answer success only once :meth:`Spool.store` has
returned: by then the encoded file is fsynced under its final name and its row
is committed. A crash between the two leaves a file with no row, which
:meth:`Spool.recover` indexes on the next start, so an acknowledged instance is
never lost. A partly written file only ever exists under a temporary name and is
removed on failure (or by :meth:`Spool.recover`).

File names come from UIDs only after :func:`instance_of` has validated them
(:mod:`n2d_dicom.uids`): a valid UID never starts with a dot nor ends in
``.tmp``, so no stored instance can ever be mistaken for a temporary file, and
no UID can name a path outside its series folder.

A SOP Instance UID is stored once. The same instance sent again (same UID, same
pixel data hash) is a duplicate: acknowledged, not stored again, and it starts
no new run. The same UID with other pixel data replaces the stored file: the
sender corrected the instance, and the series must be processed again.
"""

from __future__ import annotations

import enum
import errno
import logging
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels.utils import get_expected_length
from pydicom.tag import BaseTag
from pydicom.uid import UID

from n2d_dicom.atomic import TEMPORARY_SUFFIX, atomic_path
from n2d_dicom.identity import identifier_problem, pixel_hash
from n2d_dicom.uids import printable, uid_problem
from scp_server.sqlite import Database, Journal, is_full

log = logging.getLogger(__name__)

#: The schema's version (PRAGMA user_version): a file of another version is refused.
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    series_instance_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    calling_aet TEXT NOT NULL,
    received_at REAL NOT NULL,
    pixel_hash TEXT NOT NULL DEFAULT ''
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


#: Identifiers every stored instance must have, each a valid UID.


class InvalidIdentifiers(ValueError):
    """An instance whose identifiers are missing or not valid UIDs; the message names which and why."""


#: The length field's value for an undefined length (sequences, encapsulated data).
UNDEFINED_LENGTH = 0xFFFFFFFF
#: VRs whose value length is a 2-byte field in explicit VR encodings (PS3.5 7.1.2): at most 0xFFFF bytes.
SHORT_LENGTH_VRS = frozenset("AE AS AT CS DA DS DT FL FD IS LO LT PN SH SL SS ST TM UI UL US".split())


def content_problem(dataset: pydicom.Dataset, transfer_syntax: str) -> str | None:
    """Why an instance with valid identifiers still cannot be processed or sent on, or None.

    Checked at reception, so that a modality never takes for stored what no run
    could read: an element too long for its VR (:func:`unwritable_element`) or
    uncompressed Pixel Data shorter than its Rows, Columns, bits and frames say.
    """
    return unwritable_element(dataset) or short_pixel_data(dataset, transfer_syntax)


def short_pixel_data(dataset: pydicom.Dataset, transfer_syntax: str) -> str | None:
    """Uncompressed Pixel Data with fewer bytes than the image attributes need, or None.

    Compressed data is not judged here (its length says nothing; decoding does).
    """
    if "PixelData" not in dataset or UID(transfer_syntax).is_compressed:
        return None
    try:
        expected = int(get_expected_length(dataset, "bytes"))
    except (AttributeError, KeyError, TypeError, ValueError):  # not an image's attributes: not ours to judge
        return None
    received = len(dataset["PixelData"].value or b"")
    if received < expected:
        return f"Pixel Data of {received} bytes, {expected} expected from the image attributes"
    return None


def unwritable_element(dataset: pydicom.Dataset) -> str | None:
    """The first element (sequences included) too long for the VR its tag has, or None.

    Such an element arrives as UN, or in an implicit VR encoding, where lengths
    are 4 bytes: a 5 MB Series Description, say. Every object derived from it
    (written in an explicit VR encoding) would fail, so it is refused on arrival.
    Lengths are the bytes received (a UTF-8 character may take 3), read from the
    elements as they arrived, before decoding.
    """
    for tag in dataset.keys():
        element = dataset.get_item(tag)
        if element is None:
            continue
        vr = str(element.VR or "UN")
        if vr == "UN":
            vr = dictionary_vr_of(tag)
        if vr == "SQ":
            for item in dataset[tag].value or []:
                if (found := unwritable_element(item)) is not None:
                    return found
            continue
        length = element.length if isinstance(element, RawDataElement) else _encoded_length(element.value)
        if vr in SHORT_LENGTH_VRS and 0xFFFF < length < UNDEFINED_LENGTH:
            name = dictionary_keyword_of(tag) or f"({tag.group:04X},{tag.element:04X})"
            return f"{name} of {length} bytes, longer than its VR {vr} allows (65535)"
    return None


def _encoded_length(value: object) -> int:
    """Bytes of a value decoded already, at most (text as UTF-8, multiple values with backslashes)."""
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if isinstance(value, MultiValue) and all(isinstance(item, str) for item in value):
        return sum(len(item.encode("utf-8")) for item in value) + len(value) - 1
    return 0


def dictionary_keyword_of(tag: BaseTag) -> str:
    """The tag's keyword ("" for private and unknown tags)."""
    return str(keyword_for_tag(tag) or "")


def dictionary_vr_of(tag: BaseTag) -> str:
    """The tag's VR in the data dictionary ("UN" for private and unknown tags)."""
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


class Outcome(enum.Enum):
    """What :meth:`Spool.store` did with an instance."""

    NEW = "new"
    DUPLICATE = "duplicate"
    CHANGED = "changed"

    @property
    def starts_run(self) -> bool:
        """Whether the instance brings something the series' last run has not seen."""
        return self is not Outcome.DUPLICATE


@dataclass(frozen=True)
class StoredInstance:
    """Identifiers of one received instance (no patient data), and a hash of its pixel data."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str
    pixel_hash: str = ""


class Spool:
    """Instances under ``root/instances/<series>/<sop>.dcm``; refused ones under ``root/quarantine``."""

    def __init__(self, root: Path, journal: Journal = "wal") -> None:
        self.root = root
        self.instances_dir = root / "instances"
        self.quarantine_dir = root / "quarantine"
        for folder in (self.instances_dir, self.quarantine_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._db = Database(root / "index.sqlite3", SCHEMA, journal, SCHEMA_VERSION)

    def close(self) -> None:
        """Close the index (the files need no closing)."""
        self._db.close()

    def store(self, encoded: bytes, instance: StoredInstance, calling_aet: str) -> Outcome:
        """Keep ``encoded`` (a complete DICOM file) durably; says whether it was new, a duplicate or changed.

        Raises ``OSError`` (e.g. ENOSPC) with nothing half-written left behind:
        a new instance is then not kept, and a changed one keeps its old index row
        (its retry is taken as changed again); raises
        :class:`InvalidIdentifiers` for a SOP Instance UID stored in another series
        (a UID names one instance, and moving it would change a series already
        processed behind its back).
        """
        known = self._known(instance.sop_instance_uid)
        if known is not None and known[0] != instance.series_instance_uid:
            raise InvalidIdentifiers(
                f"SOPInstanceUID {instance.sop_instance_uid} is already stored in another series ({known[0]})"
            )
        if known is not None and known[1] == instance.pixel_hash:
            return Outcome.DUPLICATE
        path = self.instance_path(instance)
        with atomic_path(path, private=True) as tmp:
            tmp.write_bytes(encoded)
        try:
            self._index(instance, path, calling_aet, time.time())
        except sqlite3.Error as exc:  # e.g. the disk filled between file and row: keep neither
            if known is None:
                path.unlink(missing_ok=True)
            code = errno.ENOSPC if is_full(exc) else errno.EIO
            raise OSError(code, f"spool index: {exc}") from exc
        return Outcome.NEW if known is None else Outcome.CHANGED

    def instance_path(self, instance: StoredInstance) -> Path:
        """Where an instance is kept: ``instances/<series>/<sop>.dcm``, both names validated UIDs."""
        for uid in (instance.series_instance_uid, instance.sop_instance_uid):
            problem = uid_problem(uid)
            if problem is not None:
                raise InvalidIdentifiers(f"{printable(uid)} is not a valid UID ({problem})")
        return self.instances_dir / instance.series_instance_uid / f"{instance.sop_instance_uid}.dcm"

    def _known(self, sop_instance_uid: str) -> tuple[str, str] | None:
        """``(series UID, pixel hash)`` of a stored instance, or ``None``."""
        row = self._db.query_one(
            "SELECT series_instance_uid, pixel_hash FROM instances WHERE sop_instance_uid = ?",
            (sop_instance_uid,),
        )
        return None if row is None else (str(row[0]), str(row[1]))

    def _index(self, instance: StoredInstance, path: Path, calling_aet: str, received_at: float) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                instance.sop_instance_uid,
                instance.series_instance_uid,
                instance.study_instance_uid,
                instance.sop_class_uid,
                str(path.relative_to(self.root)),
                calling_aet,
                received_at,
                instance.pixel_hash,
            ),
        )

    def quarantine(self, encoded: bytes, reason: str, calling_aet: str) -> Path:
        """Keep a rejected instance and why, for a person to look at; returns where it went."""
        path = self.quarantine_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.dcm"
        with atomic_path(path, private=True) as tmp:
            tmp.write_bytes(encoded)
        self._db.execute(
            "INSERT INTO quarantine (path, reason, calling_aet, received_at) VALUES (?, ?, ?, ?)",
            (str(path.relative_to(self.root)), reason, calling_aet, time.time()),
        )
        return path

    def contains(self, sop_instance_uid: str) -> bool:
        return self._known(sop_instance_uid) is not None

    def series_files(self, series_instance_uid: str) -> list[Path]:
        """The stored files of one series."""
        return [path for _, path in self.series_instances(series_instance_uid)]

    def series_instances(self, series_instance_uid: str) -> list[tuple[str, Path]]:
        """``(SOP Instance UID, file)`` of each stored instance of one series, in order of arrival."""
        rows = self._db.query(
            "SELECT sop_instance_uid, path FROM instances WHERE series_instance_uid = ? ORDER BY received_at",
            (series_instance_uid,),
        )
        return [(str(uid), self.root / path) for uid, path in rows]

    def calling_aet(self, series_instance_uid: str) -> str:
        """The AE title that sent the first instance of a series ("" if unknown)."""
        row = self._db.query_one(
            "SELECT calling_aet FROM instances WHERE series_instance_uid = ? ORDER BY received_at LIMIT 1",
            (series_instance_uid,),
        )
        return "" if row is None else str(row[0])

    def quarantined(self) -> list[tuple[Path, str]]:
        """Quarantined files and the reason each was refused."""
        rows = self._db.query("SELECT path, reason FROM quarantine ORDER BY id")
        return [(self.root / path, reason) for path, reason in rows]

    def quarantine_count(self) -> int:
        """How many instances are quarantined (what ``/metrics`` and ``n2d status`` report)."""
        return self._db.count("quarantine")

    def remove_series(self, series_instance_uid: str) -> int:
        """Delete a series' files and index rows (retention); returns how many instances went."""
        files = self.series_files(series_instance_uid)
        for path in files:
            path.unlink(missing_ok=True)
        self._db.execute("DELETE FROM instances WHERE series_instance_uid = ?", (series_instance_uid,))
        for folder in {path.parent for path in files}:
            remove_empty_folder(folder)
        return len(files)

    def purge_quarantine(self, received_before: float) -> int:
        """Delete quarantined files received before ``received_before`` (epoch s); returns how many."""
        with self._db.locked() as db:
            rows = db.execute(
                "SELECT id, path FROM quarantine WHERE received_at < ?", (received_before,)
            ).fetchall()
            for row_id, path in rows:
                (self.root / path).unlink(missing_ok=True)
                db.execute("DELETE FROM quarantine WHERE id = ?", (row_id,))
        return len(rows)

    def recover(self) -> int:
        """Index files a crash left stored but unindexed, drop temporary files; returns files indexed.

        Only names :func:`n2d_dicom.atomic.atomic_path` gives its temporaries are
        deleted; a file that cannot be indexed (unreadable, or with invalid UIDs:
        put there by hand, say) is left in place and logged.
        """
        indexed = 0
        for path in self.instances_dir.rglob("*"):
            if not path.is_file():
                continue
            if path.name.startswith(".") and path.name.endswith(TEMPORARY_SUFFIX):
                path.unlink()  # an interrupted atomic write: never acknowledged
                continue
            try:
                instance = instance_of(pydicom.dcmread(path))
                expected = self.instance_path(instance)
            except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
                log.warning("spool: file %s left in place, not indexed: %s", printable(path.name), exc)
                continue
            if not self.contains(instance.sop_instance_uid) and expected == path:
                self._index(instance, path, "", path.stat().st_mtime)
                indexed += 1
        return indexed


def instance_of(dataset: pydicom.Dataset) -> StoredInstance:
    """The identifiers the spool needs, validated, and the pixel data's hash.

    Raises :class:`InvalidIdentifiers` naming the first identifier missing or invalid.
    """
    found = identifier_problem(dataset)
    if found is not None and found.value is None:
        raise InvalidIdentifiers(f"missing {found.keyword}")
    if found is not None:
        raise InvalidIdentifiers(
            f"{found.keyword} {printable(str(found.value))} is not a valid UID ({found.problem})"
        )
    return StoredInstance(
        str(dataset.SOPInstanceUID),
        str(dataset.SeriesInstanceUID),
        str(dataset.StudyInstanceUID),
        str(dataset.SOPClassUID),
        pixel_hash(dataset),
    )


def remove_empty_folder(folder: Path) -> None:
    """Remove ``folder`` if it exists and is empty (a series' last file went)."""
    try:
        folder.rmdir()
    except OSError:  # absent, or not empty (a late instance arrived meanwhile)
        pass
