"""DICOM series in: group, sort by geometry, check, decode to a :class:`Volume`.

A folder (or a list of files) may hold several series, in any order and with any
file names. Files are grouped by Series Instance UID; the frames of every object
(one for single-frame images, many for Enhanced CT/MR) are sorted by their
position along the slice normal, not by file name or Instance Number. Problems
a radiologist should know about (uneven spacing, missing slices, mixed
orientations, duplicates) are reported and the series is still processed slice
by slice, since N2D never looks across slices. Files that cannot be used are
listed with the reason and skipped; they never stop the other files.

Pixel data is decoded by pydicom with the pylibjpeg plugins (JPEG baseline,
extended and lossless, JPEG-LS, JPEG 2000, RLE); deflate and big endian are
pydicom's own. Only grayscale (MONOCHROME1/2, one sample per pixel) is denoised.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from n2d_dicom.volume import SliceSource, Volume

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
#: Relative spread of slice gaps above which spacing is reported as uneven.
SPACING_TOLERANCE = 0.01
#: Largest difference between direction cosines still taken as the same orientation.
ORIENTATION_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Rejected:
    """A file that was skipped, and why (in words a user can act on)."""

    path: Path
    reason: str


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
        )

    def _pixel_spacing(self) -> tuple[float, float]:
        first = self.frames[0]
        spacing = _frame_attribute(first, "PixelMeasuresSequence", "PixelSpacing")
        if spacing is None:
            spacing = first.dataset.get("PixelSpacing") or first.dataset.get("ImagerPixelSpacing")
        return (float(spacing[0]), float(spacing[1])) if spacing else (1.0, 1.0)

    def _spacing(self) -> tuple[float, float, float]:
        gaps = _slice_gaps(self.frames)
        between = float(np.median(gaps)) if gaps is not None and len(gaps) else 0.0
        if between <= 0:
            between = float(self.frames[0].dataset.get("SliceThickness") or 1.0)
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


def read_dicom_files(paths: Iterable[Path]) -> tuple[list[DicomSeries], list[Rejected]]:
    """Read, check and group files into series sorted by geometry; list the files skipped."""
    by_series: dict[str, list[Frame]] = defaultdict(list)
    rejected: list[Rejected] = []
    for path in sorted(paths):
        try:
            frames = _frames_of(path)
        except _Unusable as exc:
            rejected.append(Rejected(path, str(exc)))
            continue
        by_series[str(frames[0].dataset.SeriesInstanceUID)].extend(frames)
    series = [_ordered_series(uid, frames) for uid, frames in by_series.items()]
    return sorted(series, key=lambda s: s.series_uid), rejected


def read_dicom_folder(folder: Path) -> tuple[list[DicomSeries], list[Rejected]]:
    """:func:`read_dicom_files` on every file below ``folder`` (DICOMDIR files excepted)."""
    files = (p for p in folder.rglob("*") if p.is_file() and p.name.upper() != "DICOMDIR")
    return read_dicom_files(files)


class _Unusable(Exception):
    """Internal: why a file cannot be denoised."""


def _frames_of(path: Path) -> list[Frame]:
    """The frames of one file, or :class:`_Unusable` with the reason."""
    try:
        dataset = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise _Unusable(f"not a readable DICOM file ({exc})") from exc
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "SOPClassUID"):
        if not dataset.get(keyword):
            raise _Unusable(f"no {keyword}")
    if "PixelData" not in dataset:
        raise _Unusable("no pixel data (not an image)")
    photometric = str(dataset.get("PhotometricInterpretation", ""))
    if photometric not in GRAYSCALE or int(dataset.get("SamplesPerPixel", 1)) != 1:
        raise _Unusable(f"{photometric or 'unknown'} images are not denoised (grayscale only)")
    pixels = _stored_pixels(dataset)
    if "PerFrameFunctionalGroupsSequence" in dataset or int(dataset.get("NumberOfFrames") or 1) > 1:
        pixels = pixels.reshape(-1, *pixels.shape[-2:])
        return [_frame(dataset, path, index, frame) for index, frame in enumerate(pixels)]
    return [_frame(dataset, path, None, pixels)]


def _frame(dataset: Dataset, path: Path, index: int | None, pixels: np.ndarray) -> Frame:
    if index is None:
        position, orientation = dataset.get("ImagePositionPatient"), dataset.get("ImageOrientationPatient")
    else:
        position = _frame_attribute_of(dataset, index, "PlanePositionSequence", "ImagePositionPatient")
        orientation = _frame_attribute_of(
            dataset, index, "PlaneOrientationSequence", "ImageOrientationPatient"
        )
    return Frame(
        dataset=dataset,
        path=path,
        index=index,
        pixels=pixels,
        position=None if position is None else np.array([float(v) for v in position]),
        orientation=None if orientation is None else np.array([float(v) for v in orientation]),
    )


def _frame_attribute(frame: Frame, group: str, keyword: str) -> Sequence[float] | None:
    if frame.index is None:
        return None
    return _frame_attribute_of(frame.dataset, frame.index, group, keyword)


def _frame_attribute_of(dataset: Dataset, index: int, group: str, keyword: str) -> Sequence[float] | None:
    """An attribute from a frame's functional group, per-frame first, then shared."""
    for sequence in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        items = dataset.get(sequence)
        if not items:
            continue
        item = items[index] if sequence.startswith("PerFrame") and index < len(items) else items[0]
        macro = item.get(group)
        if macro and keyword in macro[0]:
            return macro[0].get(keyword)
    return None


def _ordered_series(series_uid: str, frames: list[Frame]) -> DicomSeries:
    """Drop duplicate frames, sort by position along the normal, and note problems."""
    problems: list[str] = []
    unique: dict[tuple[str, int | None], Frame] = {}
    for frame in frames:
        unique.setdefault((str(frame.dataset.SOPInstanceUID), frame.index), frame)
    if len(unique) < len(frames):
        problems.append(f"{len(frames) - len(unique)} duplicate instance(s) ignored")
    frames = list(unique.values())

    shapes = {(int(f.dataset.Rows), int(f.dataset.Columns)) for f in frames}
    if len(shapes) > 1:
        problems.append(f"slices of different sizes {sorted(shapes)}")

    if any(f.position is None or f.orientation is None for f in frames):
        frames.sort(key=lambda f: f.instance_order)
        if len(frames) > 1:
            problems.append("no patient geometry; slices ordered by Instance Number")
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
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _Unusable(f"cannot decode pixel data ({syntax}): {first_line}") from exc
    return pixels.astype(pixels.dtype.newbyteorder("="), copy=False)
