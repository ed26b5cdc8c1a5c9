"""Pictures of a denoising run for people: one slice's input, output and residual as 8-bit PNG.

A user judges a denoiser by looking at it, and the residual (input - output) is where a
denoiser shows what it removed: noise alone looks like grain, removed structure looks like
anatomy. The residual is drawn on a symmetric scale around mid-grey (nothing removed), so
removal in either direction stands out. Input and output share one display window, taken
from the series' own Window Center/Width where it has one, else from the input's percentiles.

These PNGs are for display only: stored values never pass through 8 bits anywhere else.
No torch here: the node's dashboard and ``n2d denoise --preview`` both draw with it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset

from n2d_dicom.atomic import atomic_path
from n2d_dicom.nifti_io import read_nifti, scaling, stored_values

#: Longest side of a picture; larger slices are reduced by a whole factor (box filter).
MAX_SIDE = 256
#: Percentiles of the input that bound the display window where the series names none.
WINDOW_PERCENTILES = (1.0, 99.0)
#: Center and width (HU) of the soft-tissue window, for CT that names no window of its own: on its
#: full range soft tissue is one flat grey.
SOFT_TISSUE = (40.0, 400.0)
#: Values (after rescale) look like CT's HU when their 1st percentile is air or below and none
#: exceeds this (dense bone and metal stay under it).
HU_AIR, HU_TOP = -900.0, 4000.0
#: Percentile of ``|residual|`` drawn as full black or white; a few brighter pixels saturate.
RESIDUAL_PERCENTILE = 99.0
#: The panels of a run's picture, in the order they are drawn side by side.
KINDS = ("input", "output", "residual")
#: Pixels between panels and the height of the label strip above them.
GAP, LABEL_HEIGHT = 4, 14


@dataclass(frozen=True)
class Window:
    """A display window in stored values: ``low`` is drawn black, ``high`` white."""

    low: float
    high: float

    @classmethod
    def from_center_width(
        cls, center: float, width: float, slope: float = 1.0, intercept: float = 0.0
    ) -> Window:
        """The window DICOM's Window Center/Width name (in rescaled units), in stored values."""
        ends = [(center - width / 2 - intercept) / slope, (center + width / 2 - intercept) / slope]
        return cls(min(ends), max(ends))

    @classmethod
    def from_percentiles(
        cls, image: np.ndarray, percentiles: tuple[float, float] = WINDOW_PERCENTILES
    ) -> Window:
        """The window between two percentiles of ``image`` (its finite values)."""
        values = np.asarray(image, dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return cls(0.0, 1.0)
        low, high = np.percentile(values, percentiles)
        return cls(float(low), float(high))


def dicom_window(dataset: Dataset, image: np.ndarray) -> Window:
    """The dataset's first Window Center/Width as stored values; the percentiles of ``image`` without one."""
    center, width = _first(dataset.get("WindowCenter")), _first(dataset.get("WindowWidth"))
    slope = float(dataset.get("RescaleSlope") or 1.0)
    intercept = float(dataset.get("RescaleIntercept") or 0.0)
    if center is None or width is None or width <= 0 or slope == 0:
        if dataset.get("Modality") == "CT" and slope != 0:
            return Window.from_center_width(*SOFT_TISSUE, slope, intercept)
        return Window.from_percentiles(image)
    return Window.from_center_width(center, width, slope, intercept)


def values_window(stored: np.ndarray, slope: float, intercept: float) -> tuple[Window, str]:
    """The window for stored values that name none (NIfTI): the soft-tissue window where their
    rescaled values look like CT's HU, else the stored values' percentiles; and which, in words."""
    values = np.asarray(stored, dtype=np.float64) * slope + intercept
    finite = values[np.isfinite(values)]
    if slope != 0 and finite.size and np.percentile(finite, 1) <= HU_AIR and finite.max() <= HU_TOP:
        center, width = SOFT_TISSUE
        return Window.from_center_width(center, width, slope, intercept), (
            f"soft-tissue window {center:g}/{width:g} HU (the values look like CT)"
        )
    low, high = WINDOW_PERCENTILES
    return Window.from_percentiles(stored), f"window from the input's {low:g}th to {high:g}th percentile"


def _first(value: object) -> float | None:
    """The first number of a (possibly multi-valued) DICOM element, or None."""
    if value is None or value == "":
        return None
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0] if len(value) else None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def windowed(image: np.ndarray, window: Window) -> np.ndarray:
    """``image`` through ``window`` as uint8: ``low`` and below 0, ``high`` and above 255."""
    span = max(window.high - window.low, np.finfo(np.float64).eps)
    scaled = (np.asarray(image, dtype=np.float64) - window.low) / span
    return np.round(np.clip(np.nan_to_num(scaled), 0.0, 1.0) * 255).astype(np.uint8)


def residual_scale(residual: np.ndarray, percentile: float = RESIDUAL_PERCENTILE) -> float:
    """The ``|residual|`` drawn as full black or white: a high percentile, so outliers do not flatten it."""
    magnitude = np.abs(np.asarray(residual, dtype=np.float64))
    magnitude = magnitude[np.isfinite(magnitude)]
    scale = float(np.percentile(magnitude, percentile)) if magnitude.size else 0.0
    return scale if scale > 0 else 1.0


def symmetric(residual: np.ndarray, scale: float) -> np.ndarray:
    """``residual`` as uint8 on a scale symmetric around 128 (zero): ``-scale`` black, ``+scale`` white."""
    scaled = np.clip(np.nan_to_num(np.asarray(residual, dtype=np.float64) / scale), -1.0, 1.0)
    return np.round(128 + 127 * scaled).astype(np.uint8)


def reduced(picture: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """``picture`` (uint8, 2-D) reduced by the smallest whole factor that fits ``max_side``."""
    factor = math.ceil(max(picture.shape) / max_side)
    if factor <= 1:
        return picture
    return np.asarray(Image.fromarray(picture).reduce(factor))


@dataclass(frozen=True)
class SlicePictures:
    """One slice of a run, drawn: input and output in one window, and the residual between them."""

    input: np.ndarray
    output: np.ndarray
    residual: np.ndarray

    def panels(self) -> dict[str, np.ndarray]:
        """The pictures by kind (:data:`KINDS`)."""
        return {"input": self.input, "output": self.output, "residual": self.residual}


def slice_pictures(
    stored_in: np.ndarray, stored_out: np.ndarray, window: Window, max_side: int = MAX_SIDE
) -> SlicePictures:
    """Draw a slice's stored values before and after denoising, and their difference."""
    if stored_in.shape != stored_out.shape or stored_in.ndim != 2:
        raise ValueError(
            f"a 2-D input and output of one shape are needed, not {stored_in.shape} and {stored_out.shape}"
        )
    residual = np.asarray(stored_in, dtype=np.float64) - np.asarray(stored_out, dtype=np.float64)
    return SlicePictures(
        input=reduced(windowed(stored_in, window), max_side),
        output=reduced(windowed(stored_out, window), max_side),
        residual=reduced(symmetric(residual, residual_scale(residual)), max_side),
    )


def png_bytes(picture: np.ndarray) -> bytes:
    """A uint8 picture (2-D grey) encoded as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(picture, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(picture: np.ndarray, path: Path, private: bool = False) -> None:
    """Write ``picture`` as a PNG file, atomically (a reader sees the old file or the new one);
    readable as the umask allows, or by the owner alone where ``private`` (the node's spool)."""
    with atomic_path(path, ".png", private=private) as tmp:
        tmp.write_bytes(png_bytes(picture))


def side_by_side(pictures: SlicePictures) -> np.ndarray:
    """The three panels in one picture, each under its label, on black."""
    panels = list(pictures.panels().items())
    height = max(picture.shape[0] for _, picture in panels)
    width = sum(picture.shape[1] for _, picture in panels) + GAP * (len(panels) - 1)
    canvas = Image.new("L", (width, height + LABEL_HEIGHT), 0)
    draw = ImageDraw.Draw(canvas)
    x = 0
    for kind, picture in panels:
        canvas.paste(Image.fromarray(picture), (x, LABEL_HEIGHT))
        draw.text((x + 2, 1), kind, fill=255)
        x += picture.shape[1] + GAP
    return np.asarray(canvas)


def middle_slice(volume: np.ndarray, axis: int) -> np.ndarray:
    """The middle 2-D slice of a 2-D, 3-D or 4-D array along ``axis`` (4-D: of the middle volume)."""
    array = np.asarray(volume)
    if array.ndim == 4:
        array = array[..., array.shape[3] // 2]
    if array.ndim == 3:
        array = np.take(array, array.shape[axis] // 2, axis=axis)
    if array.ndim != 2:
        raise ValueError(f"no 2-D slice in an array of shape {volume.shape}")
    return array


def nifti_preview(source: Path, output: Path, axis: int, picture: Path) -> str:
    """Write the input/output/residual picture of the middle slice of a NIfTI run to ``picture``;
    returns the window used, in words.

    NIfTI has no display window: CT in HU gets the soft-tissue window, anything else the input's
    percentiles (:func:`values_window`). The slice is turned a quarter so that, for the usual
    RAS+ orientation, anterior or superior is up.
    """
    image = read_nifti(source)
    slope, intercept = scaling(image)
    before = middle_slice(stored_values(image), axis)
    after = middle_slice(stored_values(read_nifti(output)), axis)
    before, after = np.rot90(before), np.rot90(after)
    window, words = values_window(before, slope, intercept)
    write_png(side_by_side(slice_pictures(before, after, window)), picture)
    return words
