"""One DICOM series in, one derived series out: the step the CLI and the node's worker share."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from pydicom.dataset import Dataset

from n2d_dicom.atomic import atomic_path
from n2d_dicom.denoise import denoise_stack
from n2d_dicom.derive import DerivationSettings, Provenance, derive_instance, new_uid, values_already_checked
from n2d_dicom.dicom_io import DicomSeries, Frame
from n2d_dicom.n2d import Measured, Progress, Report
from n2d_dicom.settings import N2DSettings


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
) -> list[np.ndarray]:
    """Denoised stored values for each frame, in order.

    Frames of one size are denoised together as one stack (sharing one intensity
    map, and one network pair in per-series mode); a series mixing sizes is
    denoised size by size, and ``report`` hears once per size.
    """
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, frame in enumerate(frames):
        by_shape[frame.pixels.shape].append(index)
    denoised: list[np.ndarray] = [np.empty(0)] * len(frames)
    for indices in by_shape.values():
        stack = np.stack([frames[i].pixels for i in indices])
        images = denoise_stack(stack, settings, device, axis=0, progress=progress, report=report)
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


def denoise_series(
    series: DicomSeries,
    settings: N2DSettings,
    derivation: DerivationSettings,
    device: torch.device,
    progress: Progress | None = None,
    identity: str | None = None,
) -> DerivedSeries:
    """Denoise every frame of ``series`` and build the derived instances.

    With an ``identity`` (the node passes the source series and run), the derived
    Series and SOP Instance UIDs are the same each time that identity is processed.
    """
    started = time.perf_counter()
    measured: list[Measured] = []
    denoised = denoise_frames(series.frames, settings, device, progress, measured.append)
    pixels = _pixels_per_object(series, denoised)
    provenance = Provenance(
        n2d=settings, device=str(device), seconds=time.perf_counter() - started, measured=tuple(measured)
    )
    series_uid = new_uid(derivation, None if identity is None else f"{series.series_uid}/{identity}")
    now = datetime.now()
    datasets = [
        derive_instance(source, pixels[str(source.SOPInstanceUID)], series_uid, provenance, derivation, now)
        for source in series.datasets
    ]
    seconds = time.perf_counter() - started
    return DerivedSeries(series.series_uid, series_uid, datasets, seconds, provenance.measured)


def write_instances(datasets: list[Dataset], folder: Path) -> list[Path]:
    """Write each dataset as ``<SOP Instance UID>.dcm`` in ``folder``, atomically.

    Values copied from the source are not warned about again (:func:`values_already_checked`).
    """
    paths = []
    for dataset in datasets:
        path = folder / f"{dataset.SOPInstanceUID}.dcm"
        with atomic_path(path) as tmp, values_already_checked():
            dataset.save_as(tmp, enforce_file_format=True)
        paths.append(path)
    return paths
