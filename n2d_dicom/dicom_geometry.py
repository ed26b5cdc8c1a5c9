"""Where each frame lies: Image Position and Orientation (Patient), per frame or shared, checked; the
gaps between slices and what they say (missing, shared, uneven)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset

from n2d_dicom.dicom_checks import Unusable, attribute_name, decimal_values, shown

if TYPE_CHECKING:  # pragma: no cover
    from n2d_dicom.dicom_read import Frame


#: How far each direction cosine vector may be from unit length, and the two from perpendicular.
COSINE_TOLERANCE = 0.01


#: Relative spread of slice gaps above which spacing is reported as uneven.
SPACING_TOLERANCE = 0.01


#: Largest difference between direction cosines still taken as the same orientation.
ORIENTATION_TOLERANCE = 1e-4


def frame_geometry(dataset: Dataset, index: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Position and orientation of a frame from its functional groups (per-frame first, then shared)."""
    where = f" of frame {index + 1}"
    position = frame_item(dataset, index, "PlanePositionSequence", "ImagePositionPatient")
    orientation = frame_item(dataset, index, "PlaneOrientationSequence", "ImageOrientationPatient")
    return (
        None if position is None else position_of(position, where),
        None if orientation is None else orientation_of(orientation, where),
    )


def position_of(item: Dataset, where: str) -> np.ndarray | None:
    values = decimal_values(item, "ImagePositionPatient", 3, where)
    return None if values is None else np.array(values)


def orientation_of(item: Dataset, where: str) -> np.ndarray | None:
    values = decimal_values(item, "ImageOrientationPatient", 6, where)
    if values is None:
        return None
    cosines = np.array(values)
    row, column = cosines[:3], cosines[3:]
    if (
        abs(np.linalg.norm(row) - 1) > COSINE_TOLERANCE
        or abs(np.linalg.norm(column) - 1) > COSINE_TOLERANCE
        or abs(float(np.dot(row, column))) > COSINE_TOLERANCE
    ):
        raise Unusable(
            f"{attribute_name('ImageOrientationPatient')}{where} is {shown(values)}: "
            "not two perpendicular unit vectors"
        )
    return cosines


def frame_item(dataset: Dataset, index: int, group: str, keyword: str) -> Dataset | None:
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


def frame_attribute(frame: Frame, group: str, keyword: str) -> Sequence[float] | None:
    if frame.index is None:
        return None
    item = frame_item(frame.dataset, frame.index, group, keyword)
    return None if item is None else item.get(keyword)  # type: ignore[no-any-return]


def slice_gaps(frames: list[Frame]) -> np.ndarray | None:
    """Distances between consecutive slices along the normal, or ``None`` without geometry."""
    first = frames[0]
    if first.orientation is None or any(f.position is None for f in frames):
        return None
    normal = np.cross(first.orientation[:3], first.orientation[3:])
    return np.diff([float(np.dot(f.position, normal)) for f in frames])  # type: ignore[arg-type]


def spacing_problems(frames: list[Frame]) -> list[str]:
    gaps = slice_gaps(frames)
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
