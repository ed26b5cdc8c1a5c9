"""A stack of 2-D slices with its patient geometry and where each slice came from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SliceSource:
    """The DICOM object (and frame, for multi-frame objects) a slice was read from."""

    sop_class_uid: str
    sop_instance_uid: str
    #: 1-based frame number within a multi-frame object, ``None`` for single-frame objects.
    frame: int | None = None


@dataclass(frozen=True)
class Volume:
    """Stored pixel values ``(slices, rows, columns)`` in patient space.

    ``spacing`` is (between slices, between rows, between columns) in mm;
    ``direction`` holds the row, column and slice-normal unit vectors as rows;
    ``origin`` is the centre of the first pixel of the first slice. Images with
    no patient geometry (CR, DX, SC) get spacing from Pixel Spacing where there is
    one, else 1 mm, an identity direction and a zero origin.
    ``rescale`` is each slice's (Rescale Slope, Rescale Intercept), which maps
    its stored values to real-world ones (Hounsfield units for CT); (1, 0) where
    the object has none.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    sources: tuple[SliceSource, ...]
    rescale: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        if self.array.ndim != 3 or self.array.shape[0] != len(self.sources):
            raise ValueError(
                f"array shape {self.array.shape} does not match {len(self.sources)} slice sources"
            )
        if self.rescale and len(self.rescale) != len(self.sources):
            raise ValueError(f"{len(self.rescale)} rescale pairs for {len(self.sources)} slices")
