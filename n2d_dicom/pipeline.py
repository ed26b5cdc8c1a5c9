"""The data path, step after step: stored values in, the engine, stored values out.

Every front end takes this road: ``n2d denoise`` (:func:`denoise_nifti`), ``n2d denoise-dicom`` and
the node's worker (:func:`denoise_series`). :func:`denoise_stack` owns input checks, the intensity
map and the move to and from the device, so the engine (:mod:`n2d_dicom.engine`) sees only tensors.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from pydicom.dataset import Dataset

from n2d_dicom.derive import DerivationSettings, Provenance, derive_instance, new_uid
from n2d_dicom.dicom_read import DicomSeries, Frame
from n2d_dicom.engine import denoise_slices
from n2d_dicom.errors import N2DInputError
from n2d_dicom.inference import MIN_SIDE
from n2d_dicom.intensity import IntensityMap
from n2d_dicom.measured import Measured, Report
from n2d_dicom.nifti_io import default_slice_axis, nifti_suffix, read_nifti, stored_values, write_like
from n2d_dicom.progress import Progress, work_units
from n2d_dicom.settings import N2DSettings


def denoise_stack(
    stored: np.ndarray,
    settings: N2DSettings,
    device: torch.device,
    *,
    axis: int = -1,
    progress: Progress | None = None,
    report: Report | None = None,
    start: bytes | None = None,
) -> np.ndarray:
    """Denoise a 2-D image or a 3-D stack of slices taken along ``axis``.

    Returns an array of the same shape, dtype and value range as ``stored``; ``report`` receives
    what the engine measured and chose (:class:`~n2d_dicom.engine.Measured`); ``start`` is a
    trained pair to warm-start from (:func:`~n2d_dicom.engine.denoise_slices`).
    Raises :class:`N2DInputError` for inputs that cannot be denoised.
    """
    if stored.ndim not in (2, 3):
        raise N2DInputError(f"expected a 2-D image or 3-D volume, got {stored.ndim} dimensions")
    slices = stored[np.newaxis] if stored.ndim == 2 else np.moveaxis(stored, axis, 0)
    if min(slices.shape[1:]) < MIN_SIDE:
        rows, cols = slices.shape[1:]
        raise N2DInputError(
            f"slices are {rows}x{cols} pixels; N2D needs both sides >= {MIN_SIDE} "
            "(choose another slice axis with --axis?)"
        )
    intensity = IntensityMap.from_array(slices, keep_zero=settings.rician != "off")
    unit = torch.from_numpy(intensity.to_unit(slices).astype(np.float32))
    denoised = intensity.to_stored(denoise_slices(unit, settings, device, progress, report, start).numpy())
    return denoised[0] if stored.ndim == 2 else np.moveaxis(denoised, 0, axis)


def volume_work(shape: tuple[int, ...], axis: int, settings: N2DSettings) -> int:
    """Work units (:func:`~n2d_dicom.progress.work_units`) of :func:`denoise_volume_array` on ``shape``."""
    if len(shape) == 2:
        return work_units(1, settings, shape[0] * shape[1])
    volumes = shape[3] if len(shape) == 4 else 1
    in_plane = [side for number, side in enumerate(shape[:3]) if number != axis]
    return volumes * work_units(shape[axis], settings, in_plane[0] * in_plane[1])


def series_work(series: DicomSeries, settings: N2DSettings) -> int:
    """Work units (:func:`~n2d_dicom.progress.work_units`) of :func:`denoise_series` on ``series``:
    frames of one size are one stack."""
    sizes: dict[tuple[int, ...], int] = defaultdict(int)
    for frame in series.frames:
        sizes[frame.pixels.shape] += 1
    return sum(work_units(count, settings, shape[0] * shape[1]) for shape, count in sizes.items())


def denoise_volume_array(
    stored: np.ndarray,
    settings: N2DSettings,
    device: torch.device,
    axis: int,
    progress: Progress | None = None,
    report: Report | None = None,
) -> np.ndarray:
    """Denoise a 2-D, 3-D or 4-D (each 3-D volume on its own) array slice-wise."""
    if stored.ndim == 4:
        volumes = [
            denoise_stack(stored[..., t], settings, device, axis=axis, progress=progress, report=report)
            for t in range(stored.shape[3])
        ]
        return np.stack(volumes, axis=3)
    if stored.ndim not in (2, 3):
        raise N2DInputError(f"expected 2-D, 3-D or 4-D data, got {stored.ndim} dimensions")
    return denoise_stack(stored, settings, device, axis=axis, progress=progress, report=report)


def denoise_nifti(
    source_path: Path,
    output_path: Path,
    settings: N2DSettings,
    device: torch.device,
    axis: int | None = None,
    progress: Progress | None = None,
    report: Report | None = None,
) -> dict[str, float]:
    """Read, denoise slice-wise along ``axis`` (default: the slice axis), write.

    ``report`` hears what the engine measured and chose, once per 3-D volume. Returns the seconds
    spent reading and writing (``{"reading": ..., "writing": ...}``), the phases that are not the engine's.
    """
    nifti_suffix(output_path)
    started = time.perf_counter()
    image = read_nifti(source_path)
    stored = stored_values(image)
    reading = time.perf_counter() - started
    axis = default_slice_axis(image) if axis is None else axis
    if stored.ndim > 2 and not 0 <= axis < 3:
        raise N2DInputError(f"{source_path}: slice axis must be 0, 1 or 2, got {axis}")
    try:
        denoised = denoise_volume_array(stored, settings, device, axis, progress, report)
    except N2DInputError as exc:
        raise N2DInputError(f"{source_path}: {exc}") from exc
    started = time.perf_counter()
    write_like(image, denoised, output_path)
    return {"reading": reading, "writing": time.perf_counter() - started}


@dataclass(frozen=True)
class DerivedSeries:
    """The derived instances of one source series, in slice order of their sources."""

    source_series_uid: str
    series_uid: str
    datasets: list[Dataset]
    seconds: float
    measured: tuple[Measured, ...]
    """What the engine measured and chose, one entry per frame size."""


def denoise_frames(
    frames: list[Frame],
    settings: N2DSettings,
    device: torch.device,
    progress: Progress | None = None,
    report: Report | None = None,
    start: bytes | None = None,
) -> list[np.ndarray]:
    """Denoised stored values for each frame, in order.

    Frames of one size are denoised together as one stack (sharing one intensity
    map, and one network pair in per-series mode); a series mixing sizes is
    denoised size by size, and ``report`` hears once per size. ``start`` warm-starts every stack.
    """
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, frame in enumerate(frames):
        by_shape[frame.pixels.shape].append(index)
    denoised: list[np.ndarray] = [np.empty(0)] * len(frames)
    for indices in by_shape.values():
        stack = np.stack([frames[i].pixels for i in indices])
        images = denoise_stack(stack, settings, device, axis=0, progress=progress, report=report, start=start)
        for i, image in zip(indices, images):
            denoised[i] = image
    return denoised


def _pixels_per_object(series: DicomSeries, denoised: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Reassemble frames into each source object's pixel array shape."""
    frames_of: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for frame, image in zip(series.frames, denoised):
        frames_of[str(frame.dataset.SOPInstanceUID)].append((frame.index or 0, image))
    pixels = {}
    for dataset in series.datasets:
        ordered = [image for _, image in sorted(frames_of[str(dataset.SOPInstanceUID)], key=lambda p: p[0])]
        pixels[str(dataset.SOPInstanceUID)] = np.stack(ordered).reshape(dataset.pixel_array.shape)
    return pixels


#: Image Type values (its third) of MR images that are not magnitudes: phase, real and imaginary parts.
NOT_MAGNITUDE = {"P", "PHASE", "R", "REAL", "I", "IMAGINARY"}


def settings_for_modality(settings: N2DSettings, modality: str, image_type: list[str]) -> N2DSettings:
    """``settings`` as they apply to images of ``modality`` and ``image_type`` (DICOM's values):
    ``rician: auto`` is on for MR magnitude images, whose noise is Rician whether or not the image
    shows air to measure it in, and off for everything else (a CT's air can look like a floor)."""
    if settings.rician != "auto":
        return settings
    magnitude = modality == "MR" and not NOT_MAGNITUDE.intersection(v.upper() for v in image_type[2:3])
    return settings.model_copy(update={"rician": "on" if magnitude else "off"})


def settings_for_series(settings: N2DSettings, dataset: Dataset) -> N2DSettings:
    """:func:`settings_for_modality` for a series like ``dataset``."""
    image_type = [str(v) for v in dataset.get("ImageType", [])]
    return settings_for_modality(settings, str(dataset.get("Modality", "")), image_type)


def denoise_series(
    series: DicomSeries,
    settings: N2DSettings,
    derivation: DerivationSettings,
    device: torch.device,
    progress: Progress | None = None,
    identity: str | None = None,
    start: bytes | None = None,
    warm_key: str | None = None,
) -> DerivedSeries:
    """Denoise every frame of ``series`` and build the derived instances.

    With an ``identity`` (the node passes the source series and run), the derived
    Series and SOP Instance UIDs are the same each time that identity is processed.
    ``start`` is a trained pair to warm-start from, ``warm_key`` the protocol key it was cached
    under (recorded in the private block with the pair's digest when the start was used).
    """
    started = time.perf_counter()
    measured: list[Measured] = []
    settings = settings_for_series(settings, series.datasets[0])
    denoised = denoise_frames(series.frames, settings, device, progress, measured.append, start)
    pixels = _pixels_per_object(series, denoised)
    provenance = Provenance(
        n2d=settings,
        device=str(device),
        seconds=time.perf_counter() - started,
        measured=tuple(measured),
        warm_key=warm_key if any(m.warm_from for m in measured) else None,
    )
    series_uid = new_uid(derivation, None if identity is None else f"{series.series_uid}/{identity}")
    now = datetime.now()
    datasets = [
        derive_instance(source, pixels[str(source.SOPInstanceUID)], series_uid, provenance, derivation, now)
        for source in series.datasets
    ]
    seconds = time.perf_counter() - started
    return DerivedSeries(series.series_uid, series_uid, datasets, seconds, provenance.measured)
