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
import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import dictionary_description
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from n2d_dicom.identity import element_values, identifier_problem
from n2d_dicom.pydicom_warnings import recorded
from n2d_dicom.sop_classes import is_denoisable
from n2d_dicom.uids import printable
from n2d_dicom.volume import SliceSource, Volume

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
#: Defined colour terms of Photometric Interpretation: valid, but not images this denoiser reads.
COLOUR = (
    "RGB",
    "ARGB",
    "CMYK",
    "HSV",
    "PALETTE COLOR",
    "XYB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_ICT",
    "YBR_PARTIAL_420",
    "YBR_PARTIAL_422",
    "YBR_RCT",
)
#: Bits Allocated of the grayscale images read (1-bit objects are segmentations and overlays).
BITS_ALLOCATED = (8, 16, 32)
#: The identifiers every file needs, checked with :func:`n2d_dicom.uids.uid_problem`.
#: Largest decoded object read, in bytes: more is a broken header, not an image to denoise.
MAX_PIXEL_BYTES = 2**32
#: How far each direction cosine vector may be from unit length, and the two from perpendicular.
COSINE_TOLERANCE = 0.01
#: Largest Series Number read: the derived series adds up to 100000 and must stay a valid IS.
MAX_SERIES_NUMBER = 2**31 - 1 - 100_000
#: Distinct header notes listed per series; the rest are counted.
MAX_NOTES = 5
#: Relative spread of slice gaps above which spacing is reported as uneven.
SPACING_TOLERANCE = 0.01
#: Largest difference between direction cosines still taken as the same orientation.
ORIENTATION_TOLERANCE = 1e-4


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
        spacing = _frame_attribute(first, "PixelMeasuresSequence", "PixelSpacing")
        if not spacing:
            spacing = first.dataset.get("PixelSpacing") or first.dataset.get("ImagerPixelSpacing")
        if not spacing or min(float(spacing[0]), float(spacing[1])) <= 0:
            return (1.0, 1.0)
        return (float(spacing[0]), float(spacing[1]))

    def _spacing(self) -> tuple[float, float, float]:
        gaps = _slice_gaps(self.frames)
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
        group = _frame_item(frame.dataset, frame.index, "PixelValueTransformationSequence", "RescaleSlope")
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
        except _Unusable as exc:
            rejected.append(Rejected(path, str(exc), exc.forwardable))
            continue
        except Exception as exc:  # a file must never stop the others (the node loses no series to one)
            rejected.append(Rejected(path, f"cannot be read ({_first_line(exc)})"))
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


class _Unusable(Exception):
    """Internal: why a file cannot be denoised, and whether it may be forwarded unchanged."""

    def __init__(self, reason: str, forwardable: bool = False) -> None:
        super().__init__(reason)
        self.forwardable = forwardable


def _frames_of(path: Path) -> tuple[list[Frame], list[str]]:
    """The frames of one file and the notes on its header, or :class:`_Unusable` with the reason."""
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
            raise _Unusable("not a readable DICOM file (no DICM preamble: not a DICOM file)") from exc
        raise _Unusable(f"not a readable DICOM file ({_first_line(exc)})") from exc
    except OSError as exc:
        raise _Unusable(f"cannot be opened ({exc.strerror or _first_line(exc)})") from exc
    except Exception as exc:  # pydicom's parser raises many types on damaged files
        raise _Unusable(f"not a readable DICOM file (damaged or cut short: {_first_line(exc)})") from exc


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
            raise _Unusable(f"{_label(tag)} cannot be read ({_first_line(exc)})") from exc
        notes.extend(_notes(caught[before:], f"{_label(tag)}: "))
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
    _check_identifiers(dataset)
    denoisable = is_denoisable(str(dataset.SOPClassUID))
    if "PixelData" not in dataset:
        raise _Unusable("no pixel data (not an image)", forwardable=not denoisable)
    if not denoisable:
        name = printable(UID(str(dataset.SOPClassUID)).name)
        raise _Unusable(f"{name} objects are not denoised (not an image to denoise)", forwardable=True)
    rows, columns, frames = _check_pixel_description(dataset)
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) != frames:
        raise _Unusable(
            f"{_name('PerFrameFunctionalGroupsSequence')} has {len(per_frame)} item(s) "
            f"for {frames} frame(s) (Number of Frames)"
        )
    _check_values(dataset, "")
    _check_integer_labels(dataset)
    for sequence, where in (
        ("SharedFunctionalGroupsSequence", " in the shared functional groups"),
        ("PerFrameFunctionalGroupsSequence", " in the functional groups of frame {}"),
    ):
        for number, group in enumerate(dataset.get(sequence) or [], start=1):
            for element in group:
                if element.VR == "SQ":
                    for item in element.value or []:
                        _check_values(item, where.format(number))

    pixels = _stored_pixels(dataset)
    if pixels.size != frames * rows * columns:
        raise _Unusable(
            f"decoded pixel data holds {pixels.size} values, but Rows {rows}, Columns {columns} "
            f"and Number of Frames {frames} make {frames * rows * columns}"
        )
    if per_frame is not None or frames > 1:
        stack = pixels.reshape(frames, rows, columns)
        return [
            Frame(dataset, path, index, image, *_frame_geometry(dataset, index))
            for index, image in enumerate(stack)
        ]
    position = _position(dataset, "")
    orientation = _orientation(dataset, "")
    return [Frame(dataset, path, None, pixels.reshape(rows, columns), position, orientation)]


def _check_identifiers(dataset: Dataset) -> None:
    found = identifier_problem(dataset)
    if found is None:
        return
    if found.value is None:
        raise _Unusable(f"no {_name(found.keyword)}")
    raise _Unusable(f"{_name(found.keyword)} '{printable(found.value)}' is not a valid UID ({found.problem})")


def _check_pixel_description(dataset: Dataset) -> tuple[int, int, int]:
    """Rows, columns and frames, once the attributes that describe the pixel data make sense."""
    photometric = element_values(dataset.get("PhotometricInterpretation"))
    name = _name("PhotometricInterpretation")
    if "PhotometricInterpretation" not in dataset:
        raise _Unusable(f"no {name}")
    if not photometric:
        raise _Unusable(f"{name} is empty")
    if len(photometric) != 1:
        raise _Unusable(f"{name} has {len(photometric)} values, 1 expected")
    term = str(photometric[0]).strip()
    if term not in GRAYSCALE:
        if term in COLOUR:
            raise _Unusable(f"{term} images are not denoised (grayscale only)")
        raise _Unusable(f"{name} '{printable(term)}' is not a defined term")
    samples = _integer(dataset, "SamplesPerPixel", required=False)
    if samples is not None and samples != 1:
        raise _Unusable(f"{_name('SamplesPerPixel')} is {samples}; grayscale images have 1")
    rows = _integer(dataset, "Rows", low=1, high=65535)
    columns = _integer(dataset, "Columns", low=1, high=65535)
    bits = _integer(dataset, "BitsAllocated")
    if bits not in BITS_ALLOCATED:
        raise _Unusable(f"{_name('BitsAllocated')} is {bits}; images of 8, 16 or 32 bits are read")
    _integer(dataset, "BitsStored", low=1, high=bits)
    _integer(dataset, "PixelRepresentation", low=0, high=1)
    frames = _integer(dataset, "NumberOfFrames", required=False, low=1) or 1
    assert rows is not None and columns is not None
    expected = rows * columns * frames * bits // 8
    if expected > MAX_PIXEL_BYTES:
        raise _Unusable(
            f"Rows {rows}, Columns {columns}, Number of Frames {frames} and Bits Allocated {bits} "
            f"make {expected} bytes of pixels, more than the {MAX_PIXEL_BYTES} read"
        )
    syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    if syntax is not None and not UID(str(syntax)).is_compressed:
        actual = len(dataset.PixelData)
        if actual not in (expected, expected + 1):  # one byte of padding to an even length
            raise _Unusable(
                f"Pixel Data holds {actual} bytes, but Rows {rows}, Columns {columns}, "
                f"Number of Frames {frames} and Bits Allocated {bits} make {expected}"
            )
    return rows, columns, frames


def _check_values(item: Dataset, where: str) -> None:
    """Spacing, thickness, rescale and window values of one dataset or functional group item."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = _decimals(item, keyword, 2, where)  # 0\\0 is written for 'unknown' by some CR units
        if spacing is not None and min(spacing) < 0:
            raise _Unusable(f"{_name(keyword)}{where} is {_shown(spacing)}; spacings cannot be negative")
    thickness = _decimals(item, "SliceThickness", 1, where)
    if thickness is not None and thickness[0] < 0:
        raise _Unusable(f"{_name('SliceThickness')}{where} is {_shown(thickness)}; it cannot be negative")
    slope = _decimals(item, "RescaleSlope", 1, where)
    if slope is not None and slope[0] == 0:
        raise _Unusable(f"{_name('RescaleSlope')}{where} is 0; every pixel would mean the same value")
    _decimals(item, "RescaleIntercept", 1, where)
    centers = _decimals(item, "WindowCenter", None, where) or []
    widths = _decimals(item, "WindowWidth", None, where) or []
    if any(width <= 0 for width in widths):
        raise _Unusable(f"{_name('WindowWidth')}{where} is {_shown(widths)}; widths are positive")
    if len(centers) != len(widths):
        raise _Unusable(
            f"{_name('WindowCenter')}{where} has {len(centers)} value(s) "
            f"but {_name('WindowWidth')} has {len(widths)}"
        )


def _check_integer_labels(dataset: Dataset) -> None:
    """Instance Number (the fallback slice order) and Series Number (numbers the derived series)."""
    _integer(dataset, "InstanceNumber", required=False)
    _integer(dataset, "SeriesNumber", required=False, low=-(2**31), high=MAX_SERIES_NUMBER)


def _frame_geometry(dataset: Dataset, index: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Position and orientation of a frame from its functional groups (per-frame first, then shared)."""
    where = f" of frame {index + 1}"
    position = _frame_item(dataset, index, "PlanePositionSequence", "ImagePositionPatient")
    orientation = _frame_item(dataset, index, "PlaneOrientationSequence", "ImageOrientationPatient")
    return (
        None if position is None else _position(position, where),
        None if orientation is None else _orientation(orientation, where),
    )


def _position(item: Dataset, where: str) -> np.ndarray | None:
    values = _decimals(item, "ImagePositionPatient", 3, where)
    return None if values is None else np.array(values)


def _orientation(item: Dataset, where: str) -> np.ndarray | None:
    values = _decimals(item, "ImageOrientationPatient", 6, where)
    if values is None:
        return None
    cosines = np.array(values)
    row, column = cosines[:3], cosines[3:]
    if (
        abs(np.linalg.norm(row) - 1) > COSINE_TOLERANCE
        or abs(np.linalg.norm(column) - 1) > COSINE_TOLERANCE
        or abs(float(np.dot(row, column))) > COSINE_TOLERANCE
    ):
        raise _Unusable(
            f"{_name('ImageOrientationPatient')}{where} is {_shown(values)}: "
            "not two perpendicular unit vectors"
        )
    return cosines


def _frame_item(dataset: Dataset, index: int, group: str, keyword: str) -> Dataset | None:
    """The functional group macro item of a frame holding ``keyword``: per-frame first, then shared."""
    for sequence in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        items = dataset.get(sequence)
        if not items:
            continue
        if sequence.startswith("PerFrame"):
            if index >= len(items):
                continue
            item = items[index]
        else:
            item = items[0]
        macro = item.get(group)
        if macro and keyword in macro[0]:
            return macro[0]  # type: ignore[no-any-return]
    return None


def _frame_attribute(frame: Frame, group: str, keyword: str) -> Sequence[float] | None:
    if frame.index is None:
        return None
    item = _frame_item(frame.dataset, frame.index, group, keyword)
    return None if item is None else item.get(keyword)  # type: ignore[no-any-return]


def _integer(
    item: Dataset,
    keyword: str,
    *,
    required: bool = True,
    low: int | None = None,
    high: int | None = None,
) -> int | None:
    """One integer value of ``keyword`` within bounds; ``None`` where optional and absent or empty."""
    name = _name(keyword)
    if keyword not in item:
        if required:
            raise _Unusable(f"no {name}")
        return None
    values = element_values(item[keyword].value)
    if not values:
        if required:
            raise _Unusable(f"{name} is empty")
        return None
    if len(values) != 1:
        raise _Unusable(f"{name} has {len(values)} values, 1 expected")
    try:
        number = int(values[0])
        if number != float(values[0]):
            raise ValueError
    except (TypeError, ValueError):
        raise _Unusable(f"{name} is not an integer: '{printable(str(values[0]))}'") from None
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f"at least {low}" if high is None else f"{low} to {high}"
        raise _Unusable(f"{name} is {number}; {bounds} expected")
    return number


def _decimals(item: Dataset, keyword: str, count: int | None, where: str) -> list[float] | None:
    """The finite numbers of ``keyword`` (``count`` of them where given); ``None`` if absent or empty."""
    if keyword not in item:
        return None
    values = element_values(item[keyword].value)
    if not values:
        return None
    name = _name(keyword)
    if count is not None and len(values) != count:
        raise _Unusable(f"{name}{where} has {len(values)} value(s), {count} expected")
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise _Unusable(f"{name}{where} is not numeric: '{printable(_shown(values))}'") from None
    if not all(math.isfinite(n) for n in numbers):
        raise _Unusable(f"{name}{where} is not a finite number: '{printable(_shown(values))}'")
    return numbers


def _shown(values: Sequence[Any]) -> str:
    return "\\".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _name(keyword: str) -> str:
    """An attribute's name as the standard writes it (``Image Position (Patient)``)."""
    return dictionary_description(keyword)


def _label(tag: BaseTag | int) -> str:
    """An attribute's name and tag, for notes on any attribute (private ones included)."""
    tag = Tag(tag)
    try:
        name = dictionary_description(tag)
    except KeyError:
        name = "private attribute" if tag.is_private else "unknown attribute"
    return f"{name} ({tag.group:04X},{tag.element:04X})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return printable(text.splitlines()[0] if text else type(exc).__name__, 160)


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
    problems.extend(_spacing_problems(frames))
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


def _slice_gaps(frames: list[Frame]) -> np.ndarray | None:
    """Distances between consecutive slices along the normal, or ``None`` without geometry."""
    first = frames[0]
    if first.orientation is None or any(f.position is None for f in frames):
        return None
    normal = np.cross(first.orientation[:3], first.orientation[3:])
    return np.diff([float(np.dot(f.position, normal)) for f in frames])  # type: ignore[arg-type]


def _spacing_problems(frames: list[Frame]) -> list[str]:
    gaps = _slice_gaps(frames)
    if gaps is None or len(gaps) == 0:
        return []
    problems = []
    shared = int(np.sum(np.abs(gaps) < 1e-3))
    if shared:
        problems.append(f"{shared} slice(s) share a position with another slice")
    gaps = gaps[np.abs(gaps) >= 1e-3]
    if len(gaps) == 0:
        return problems
    step = float(np.min(gaps))
    missing = int(np.sum(np.round(gaps / step) - 1))
    if missing > 0:
        problems.append(
            f"about {missing} missing slice(s) (gaps up to {gaps.max():.2f} mm, step {step:.2f} mm)"
        )
    elif gaps.max() - gaps.min() > SPACING_TOLERANCE * step:
        problems.append(f"uneven spacing ({gaps.min():.2f} to {gaps.max():.2f} mm)")
    return problems


def _stored_pixels(dataset: Dataset) -> np.ndarray:
    """Stored values of the whole object in native byte order (frames first for multi-frame)."""
    try:
        pixels = dataset.pixel_array
    except Exception as exc:  # decoders raise many types
        syntax = dataset.file_meta.TransferSyntaxUID.name
        raise _Unusable(f"cannot decode pixel data ({syntax}): {_first_line(exc)}") from exc
    return pixels.astype(pixels.dtype.newbyteorder("="), copy=False)
