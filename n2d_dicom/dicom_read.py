"""DICOM series in: check, group, sort by geometry, decode to a :class:`Volume`.

A folder (or a list of files) may hold several series, in any order and with any
file names. Files are grouped by Series Instance UID; the frames of every object
(one for single-frame images, many for Enhanced CT/MR) are sorted by their
position along the slice normal, not by file name or Instance Number. Problems
a radiologist should know about (uneven spacing, missing slices, mixed
orientations, duplicates, header values pydicom could not parse) are reported
and the series is still processed slice by slice, since N2D never looks across
slices.

Files that cannot be used are listed with the reason and skipped; they never
stop the other files, and reading never raises on a file's content. A file is
skipped when it is not DICOM, when a Study, Series or SOP Instance UID or its
SOP Class UID is missing or invalid (:mod:`n2d_dicom.uids`), when its SOP class
is not one we denoise (:mod:`n2d_dicom.sop_classes`), when it is not grayscale,
and when a header attribute that this module, :mod:`n2d_dicom.derive` or a
viewer of the derived image relies on is malformed: the pixel description
(Rows, Columns, Bits Allocated/Stored, Pixel Representation, Samples per Pixel,
Photometric Interpretation, Number of Frames), the geometry (Image Position and
Orientation (Patient), Pixel Spacing, Slice Thickness, also in functional
groups), Rescale Slope/Intercept, Window Center/Width, Instance and Series
Number. A derived copy of such a file would carry the same broken value, so it
is better not written. A file whose geometry is absent or empty is kept, and
its series is ordered by Instance Number with a note saying which files lack it.

Pixel data is decoded by pydicom with the pylibjpeg plugins (JPEG baseline,
extended and lossless, JPEG-LS, JPEG 2000, RLE); deflate and big endian are
pydicom's own. Only grayscale (MONOCHROME1/2, one sample per pixel) is denoised.

pydicom's warnings (values it cannot parse, encoding slips) are caught while a
file is read and decoded and become notes in the series' problems, naming the
attribute; nothing reaches the user's terminal, and pydicom's logger, which
repeats each warning, is held at ERROR meanwhile. UI-value warnings are dropped:
the UIDs are checked here with the project's own rule, which accepts leading
zeros that pydicom complains about. Catching warnings changes process-wide
state, so files are read from one thread at a time.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from n2d_dicom.dicom_checks import (
    Unusable,
    attribute_label,
    attribute_name,
    check_identifiers,
    check_integer_labels,
    check_pixel_description,
    check_values,
    first_line,
)
from n2d_dicom.dicom_geometry import (
    ORIENTATION_TOLERANCE,
    frame_attribute,
    frame_geometry,
    frame_item,
    orientation_of,
    position_of,
    slice_gaps,
    spacing_problems,
)
from n2d_dicom.pydicom_warnings import recorded
from n2d_dicom.sop_classes import is_denoisable
from n2d_dicom.uids import printable
from n2d_dicom.volume import SliceSource, Volume

#: Distinct header notes listed per series; the rest are counted.
MAX_NOTES = 5


@dataclass(frozen=True)
class Rejected:
    """A file that was skipped, and why (in words a user can act on)."""

    path: Path
    reason: str
    forwardable: bool = False
    """True exactly when the file is a readable DICOM object with valid identifiers whose SOP class
    is not one we denoise (:func:`n2d_dicom.sop_classes.is_denoisable`): the node may forward it
    unchanged. Broken files, invalid UIDs and images we could not read are never forwardable."""


@dataclass(frozen=True)
class Frame:
    """One 2-D image: a frame of a dataset, with its geometry if the object has any."""

    dataset: Dataset
    path: Path
    index: int | None  # 0-based frame index for multi-frame objects
    pixels: np.ndarray  # stored values of this frame, (rows, columns)
    position: np.ndarray | None
    orientation: np.ndarray | None

    @property
    def source(self) -> SliceSource:
        frame = None if self.index is None else self.index + 1
        return SliceSource(str(self.dataset.SOPClassUID), str(self.dataset.SOPInstanceUID), frame)

    @property
    def instance_order(self) -> tuple[int, int]:
        """Instance Number then frame: the fallback order where geometry is missing."""
        return int(self.dataset.get("InstanceNumber") or 0), self.index or 0


@dataclass
class DicomSeries:
    """The frames of one series in slice order, and what was noticed while ordering them."""

    series_uid: str
    frames: list[Frame]
    problems: list[str] = field(default_factory=list)

    @property
    def datasets(self) -> list[Dataset]:
        """Each source object once, in slice order of its first frame."""
        unique: dict[str, Dataset] = {}
        for frame in self.frames:
            unique.setdefault(str(frame.dataset.SOPInstanceUID), frame.dataset)
        return list(unique.values())

    def volume(self) -> Volume:
        """Every frame stacked into one ``(slices, rows, columns)`` array of stored values."""
        return Volume(
            array=np.stack([f.pixels for f in self.frames]),
            spacing=self._spacing(),
            origin=self._origin(),
            direction=self._direction(),
            sources=tuple(f.source for f in self.frames),
            rescale=tuple(_rescale(f) for f in self.frames),
        )

    def _pixel_spacing(self) -> tuple[float, float]:
        first = self.frames[0]
        spacing = frame_attribute(first, "PixelMeasuresSequence", "PixelSpacing")
        if not spacing:
            spacing = first.dataset.get("PixelSpacing") or first.dataset.get("ImagerPixelSpacing")
        if not spacing or min(float(spacing[0]), float(spacing[1])) <= 0:
            return (1.0, 1.0)
        return (float(spacing[0]), float(spacing[1]))

    def _spacing(self) -> tuple[float, float, float]:
        gaps = slice_gaps(self.frames)
        between = float(np.median(gaps)) if gaps is not None and len(gaps) else 0.0
        if between <= 0:
            between = float(self.frames[0].dataset.get("SliceThickness") or 1.0) or 1.0
        return (between, *self._pixel_spacing())

    def _origin(self) -> tuple[float, float, float]:
        position = self.frames[0].position
        return (
            (0.0, 0.0, 0.0)
            if position is None
            else (float(position[0]), float(position[1]), float(position[2]))
        )

    def _direction(self) -> np.ndarray:
        orientation = self.frames[0].orientation
        if orientation is None:
            return np.eye(3)
        row, col = orientation[:3], orientation[3:]
        return np.stack([row, col, np.cross(row, col)])


def _rescale(frame: Frame) -> tuple[float, float]:
    """A frame's (Rescale Slope, Rescale Intercept): its functional groups first, then the object's."""
    group = None
    if frame.index is not None:
        group = frame_item(frame.dataset, frame.index, "PixelValueTransformationSequence", "RescaleSlope")
    item = frame.dataset if group is None else group
    slope, intercept = item.get("RescaleSlope"), item.get("RescaleIntercept")
    try:
        return float(1.0 if slope in (None, "") else slope), float(
            0.0 if intercept in (None, "") else intercept
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{frame.path.name}: Rescale Slope {slope!r} or Intercept {intercept!r} is not a number"
        ) from exc


def read_dicom_files(paths: Iterable[Path]) -> tuple[list[DicomSeries], list[Rejected]]:
    """Read, check and group files into series sorted by geometry; list the files skipped.

    Never raises on what a file holds: every file that cannot be used becomes a
    :class:`Rejected` with the reason, and the others are read. A second file with
    the SOP Instance UID of one already read is a quiet duplicate when it holds the
    same series and decoded pixels, and is skipped by name otherwise.
    """
    by_series: dict[str, list[Frame]] = defaultdict(list)
    notes: dict[str, list[tuple[Path, str]]] = defaultdict(list)
    duplicates: dict[str, int] = defaultdict(int)
    seen: dict[str, tuple[Path, str, str]] = {}
    rejected: list[Rejected] = []
    for path in sorted(paths):
        try:
            frames, file_notes = _frames_of(path)
        except Unusable as exc:
            rejected.append(Rejected(path, str(exc), exc.forwardable))
            continue
        except Exception as exc:  # a file must never stop the others (the node loses no series to one)
            rejected.append(Rejected(path, f"cannot be read ({first_line(exc)})"))
            continue
        dataset = frames[0].dataset
        series_uid, instance_uid = str(dataset.SeriesInstanceUID), str(dataset.SOPInstanceUID)
        digest = _pixel_digest(frames)
        if instance_uid in seen:
            first, first_series, first_digest = seen[instance_uid]
            if (first_series, first_digest) == (series_uid, digest):
                duplicates[series_uid] += 1
            else:
                differs = "pixel data" if first_series == series_uid else "Series Instance UID"
                reason = f"same SOP Instance UID as {first.name} but different {differs}; {first.name} kept"
                rejected.append(Rejected(path, reason))
            continue
        seen[instance_uid] = (path, series_uid, digest)
        by_series[series_uid].extend(frames)
        notes[series_uid].extend((path, note) for note in file_notes)
    series = [_ordered_series(uid, frames, duplicates[uid], notes[uid]) for uid, frames in by_series.items()]
    return sorted(series, key=lambda s: s.series_uid), rejected


def read_dicom_folder(folder: Path) -> tuple[list[DicomSeries], list[Rejected]]:
    """:func:`read_dicom_files` on every file below ``folder`` (DICOMDIR files excepted)."""
    files = (p for p in folder.rglob("*") if p.is_file() and p.name.upper() != "DICOMDIR")
    return read_dicom_files(files)


def _frames_of(path: Path) -> tuple[list[Frame], list[str]]:
    """The frames of one file and the notes on its header, or :class:`Unusable` with the reason."""
    with recorded() as caught:
        dataset = _read(path)
        notes = _parse_all(dataset, caught)
        notes.extend(_notes(caught, ""))
        del caught[:]
        frames = _checked_frames(dataset, path)
        notes.extend(_notes(caught, "Pixel Data: "))
    return frames, notes


def _read(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError as exc:
        if "DICM" in str(exc):
            raise Unusable("not a readable DICOM file (no DICM preamble: not a DICOM file)") from exc
        raise Unusable(f"not a readable DICOM file ({first_line(exc)})") from exc
    except OSError as exc:
        raise Unusable(f"cannot be opened ({exc.strerror or first_line(exc)})") from exc
    except Exception as exc:  # pydicom's parser raises many types on damaged files
        raise Unusable(f"not a readable DICOM file (damaged or cut short: {first_line(exc)})") from exc


def _parse_all(dataset: Dataset, caught: list[warnings.WarningMessage]) -> list[str]:
    """Parse every value now, so that a value pydicom cannot parse is found here, named.

    pydicom parses values on first use; parsed here, its warnings are caught and
    attributed to their attribute, and later uses (deriving, writing) are quiet.
    """
    notes: list[str] = []
    for tag in list(dataset.keys()):
        before = len(caught)
        try:
            element = dataset[tag]
        except Exception as exc:  # the value's bytes do not fit its VR
            raise Unusable(f"{attribute_label(tag)} cannot be read ({first_line(exc)})") from exc
        notes.extend(_notes(caught[before:], f"{attribute_label(tag)}: "))
        del caught[before:]
        if element.VR == "SQ":
            for item in element.value or []:
                notes.extend(_parse_all(item, caught))
    return notes


def _notes(caught: Sequence[warnings.WarningMessage], prefix: str) -> list[str]:
    """pydicom's warnings in plain words; UI complaints are left to :mod:`n2d_dicom.uids`."""
    notes = []
    for message in caught:
        if not issubclass(message.category, UserWarning):
            warnings.warn_explicit(message.message, message.category, message.filename, message.lineno)
            continue
        text = str(message.message).split(" Please see <", 1)[0].strip().rstrip(".")
        if "for VR UI" in text:
            continue
        notes.append(prefix + printable(text[:1].lower() + text[1:], 160))
    return notes


def _checked_frames(dataset: Dataset, path: Path) -> list[Frame]:
    """Check identifiers, SOP class and header of a parsed dataset, then decode its frames."""
    check_identifiers(dataset)
    denoisable = is_denoisable(str(dataset.SOPClassUID))
    if "PixelData" not in dataset:
        raise Unusable("no pixel data (not an image)", forwardable=not denoisable)
    if not denoisable:
        name = printable(UID(str(dataset.SOPClassUID)).name)
        raise Unusable(f"{name} objects are not denoised (not an image to denoise)", forwardable=True)
    rows, columns, frames = check_pixel_description(dataset)
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) != frames:
        raise Unusable(
            f"{attribute_name('PerFrameFunctionalGroupsSequence')} has {len(per_frame)} item(s) "
            f"for {frames} frame(s) (Number of Frames)"
        )
    check_values(dataset, "")
    check_integer_labels(dataset)
    for sequence, where in (
        ("SharedFunctionalGroupsSequence", " in the shared functional groups"),
        ("PerFrameFunctionalGroupsSequence", " in the functional groups of frame {}"),
    ):
        for number, group in enumerate(dataset.get(sequence) or [], start=1):
            for element in group:
                if element.VR == "SQ":
                    for item in element.value or []:
                        check_values(item, where.format(number))

    pixels = _stored_pixels(dataset)
    if pixels.size != frames * rows * columns:
        raise Unusable(
            f"decoded pixel data holds {pixels.size} values, but Rows {rows}, Columns {columns} "
            f"and Number of Frames {frames} make {frames * rows * columns}"
        )
    if per_frame is not None or frames > 1:
        stack = pixels.reshape(frames, rows, columns)
        return [
            Frame(dataset, path, index, image, *frame_geometry(dataset, index))
            for index, image in enumerate(stack)
        ]
    position = position_of(dataset, "")
    orientation = orientation_of(dataset, "")
    return [Frame(dataset, path, None, pixels.reshape(rows, columns), position, orientation)]


def _pixel_digest(frames: list[Frame]) -> str:
    """A hash of the decoded pixels of a file's frames: equal files, equal digests."""
    digest = hashlib.sha256()
    for frame in frames:
        digest.update(f"{frame.pixels.dtype.str}{frame.pixels.shape}".encode())
        digest.update(np.ascontiguousarray(frame.pixels).tobytes())
    return digest.hexdigest()


def _ordered_series(
    series_uid: str, frames: list[Frame], duplicates: int, notes: list[tuple[Path, str]]
) -> DicomSeries:
    """Sort frames by position along the normal, and note problems."""
    problems: list[str] = []
    if duplicates:
        problems.append(f"{duplicates} duplicate instance(s) ignored")

    shapes = {(int(f.dataset.Rows), int(f.dataset.Columns)) for f in frames}
    if len(shapes) > 1:
        problems.append(f"slices of different sizes {sorted(shapes)}")
    problems.extend(_header_notes(notes))

    without = sorted({f.path.name for f in frames if f.position is None or f.orientation is None})
    if without:
        frames.sort(key=lambda f: f.instance_order)
        if len(without) == len({f.path for f in frames}):
            if len(frames) > 1:
                problems.append("no patient geometry; slices ordered by Instance Number")
        else:
            problems.append(
                f"{len(without)} file(s) without Image Position (Patient) or Image Orientation (Patient) "
                f"({_some(without)}); slices ordered by Instance Number"
            )
        return DicomSeries(series_uid, frames, problems)

    reference = frames[0].orientation
    assert reference is not None
    if any(np.abs(f.orientation - reference).max() > ORIENTATION_TOLERANCE for f in frames):  # type: ignore[operator]
        frames.sort(key=lambda f: f.instance_order)
        problems.append("mixed orientations; slices ordered by Instance Number")
        return DicomSeries(series_uid, frames, problems)

    normal = np.cross(reference[:3], reference[3:])
    frames.sort(key=lambda f: (float(np.dot(f.position, normal)), f.instance_order))  # type: ignore[arg-type]
    problems.extend(spacing_problems(frames))
    return DicomSeries(series_uid, frames, problems)


def _some(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _header_notes(notes: list[tuple[Path, str]]) -> list[str]:
    """Each distinct note on the series' headers once, with the files it concerns."""
    files: dict[str, list[str]] = {}
    for path, note in notes:
        files.setdefault(note, []).append(path.name)
    lines = [f"header: {note} ({_some(names, 1)})" for note, names in files.items()]
    if len(lines) > MAX_NOTES:
        lines = [*lines[:MAX_NOTES], f"header: {len(lines) - MAX_NOTES} more note(s)"]
    return lines


def _stored_pixels(dataset: Dataset) -> np.ndarray:
    """Stored values of the whole object in native byte order (frames first for multi-frame)."""
    try:
        pixels = dataset.pixel_array
    except Exception as exc:  # decoders raise many types
        syntax = dataset.file_meta.TransferSyntaxUID.name
        raise Unusable(f"cannot decode pixel data ({syntax}): {first_line(exc)}") from exc
    return pixels.astype(pixels.dtype.newbyteorder("="), copy=False)
