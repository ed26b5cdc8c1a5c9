"""What a run decided and measured on its series, and its pictures: written when a run ends.

The worker records, with the run in the tracker, what the dashboard shows of it: the series'
modality and size, what the image decided (:class:`~n2d_dicom.measured.Measured`), and the
noise sigma before and after, measured on stored values with the engine's own estimate
(:func:`n2d_dicom.noise.noise_sigma`) and given in the series' units (times the rescale slope,
HU for CT). Thumbnails of the middle slice (input, output, residual:
:mod:`n2d_dicom.preview`) go under ``spool/previews/<key>/``, where the key is a digest of
the Series Instance UID: no UID in a file name or URL. They are images of patients: they
live in the spool, with its protection, and go with the series' files
(:func:`remove_previews`, called by the retention sweep).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from n2d_dicom.dicom_read import DicomSeries, Frame
from n2d_dicom.noise import noise_sigma, spread_indices
from n2d_dicom.pipeline import DerivedSeries
from n2d_dicom.preview import KINDS, dicom_window, slice_pictures, write_png
from scp_server.config import NodeSettings
from scp_server.stores import Stores

log = logging.getLogger(__name__)

#: Slices, evenly spread over the series, that the noise sigma is measured on.
SIGMA_SLICES = 8
#: A preview key: the first hex digits of the SHA-256 of a Series Instance UID.
KEY = re.compile(r"[0-9a-f]{16}")


class RunSummary(BaseModel):
    """What one run found in its series and did to it: plain data, stored as JSON with the run."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    modality: str
    slices: int
    rows: int
    columns: int
    derived_series: str
    measured: list[dict[str, Any]]
    """Each stack's :class:`~n2d_dicom.measured.Measured`, its fields by name (trained weights left out)."""
    sigma_before: float | None
    sigma_after: float | None
    unit: str
    """Unit of the sigmas: the series' Rescale Type, HU for CT, else empty (stored values)."""
    accession_number: str | None = None
    """Only where ``dashboard_accession_numbers`` is on."""


def preview_key(series_instance_uid: str) -> str:
    """The name of a series' preview folder and its id in URLs."""
    return hashlib.sha256(series_instance_uid.encode()).hexdigest()[:16]


def preview_folder(spool_dir: Path, series_instance_uid: str) -> Path:
    """Where a series' thumbnails are kept."""
    return spool_dir / "previews" / preview_key(series_instance_uid)


def preview_file(spool_dir: Path, key: str, kind: str) -> Path | None:
    """The thumbnail ``kind`` under preview ``key``, if both are well-formed and it is a plain file.

    ``key`` and ``kind`` come from a URL: anything but a key and a known kind is refused
    before a path is built, and a link is never followed.
    """
    if not KEY.fullmatch(key) or kind not in KINDS:
        return None
    path = spool_dir / "previews" / key / f"{kind}.png"
    return path if path.is_file() and not path.is_symlink() else None


def remove_previews(spool_dir: Path, series_instance_uid: str) -> None:
    """Delete a series' thumbnails (retention)."""
    shutil.rmtree(preview_folder(spool_dir, series_instance_uid), ignore_errors=True)


def summarise(
    series: DicomSeries, derived: DerivedSeries, previews: Path | None, accession_number: bool = False
) -> RunSummary:
    """Measure the series before and after, and draw its middle slice into ``previews`` (if given)."""
    frames = series.frames
    middle = frames[len(frames) // 2]
    output = DerivedFrames(series, derived)
    before, after = middle.pixels, output.pixels(middle)
    if previews is not None:
        pictures = slice_pictures(before, after, dicom_window(middle.dataset, before))
        for kind, picture in pictures.panels().items():
            write_png(picture, previews / f"{kind}.png", private=True)
    sampled = sampled_frames(frames, middle)
    slope = abs(float(middle.dataset.get("RescaleSlope") or 1.0))
    header = frames[0].dataset
    return RunSummary(
        modality=str(header.get("Modality") or ""),
        slices=len(frames),
        rows=int(before.shape[0]),
        columns=int(before.shape[1]),
        derived_series=derived.series_uid,
        measured=[measured_fields(m) for m in derived.measured],
        sigma_before=stack_sigma([f.pixels for f in sampled]) * slope,
        sigma_after=stack_sigma([output.pixels(f) for f in sampled]) * slope,
        unit=unit_of(header),
        accession_number=str(header.get("AccessionNumber") or "") if accession_number else None,
    )


def measured_fields(measured: object) -> dict[str, Any]:
    """A :class:`~n2d_dicom.measured.Measured` as JSON-ready fields; bytes (trained weights) left out."""
    fields = dataclasses.asdict(measured)  # type: ignore[call-overload]
    return {name: value for name, value in fields.items() if not isinstance(value, bytes | bytearray)}


class DerivedFrames:
    """The derived stored values of each source frame (each derived object decoded once)."""

    def __init__(self, series: DicomSeries, derived: DerivedSeries) -> None:
        self._derived = {
            str(source.SOPInstanceUID): result for source, result in zip(series.datasets, derived.datasets)
        }
        self._decoded: dict[str, np.ndarray] = {}

    def pixels(self, frame: Frame) -> np.ndarray:
        """The output of ``frame``, as stored values of the shape of its input."""
        uid = str(frame.dataset.SOPInstanceUID)
        if uid not in self._decoded:
            self._decoded[uid] = self._derived[uid].pixel_array
        array = self._decoded[uid]
        return array[frame.index or 0] if array.ndim == 3 else array


def sampled_frames(frames: list[Frame], like: Frame) -> list[Frame]:
    """Up to :data:`SIGMA_SLICES` frames of ``like``'s size, evenly spread over the series."""
    same = [f for f in frames if f.pixels.shape == like.pixels.shape]
    return [same[i] for i in spread_indices(len(same), SIGMA_SLICES)]


def stack_sigma(slices: list[np.ndarray]) -> float:
    """The white-noise sigma of some slices, in stored values (their details pooled)."""
    stack = torch.from_numpy(np.stack([np.asarray(s, dtype=np.float32) for s in slices]))
    return float(noise_sigma(stack))


def unit_of(header: Any) -> str:
    """What the rescaled values are in: the Rescale Type if given, HU for CT, else nothing."""
    rescale_type = str(header.get("RescaleType") or "").strip()
    if rescale_type:
        return rescale_type
    return "HU" if str(header.get("Modality") or "") == "CT" and "RescaleSlope" in header else ""


def record(
    stores: Stores,
    settings: NodeSettings,
    series_uid: str,
    run: int,
    series: DicomSeries,
    derived: DerivedSeries,
) -> None:
    """Summarise a run that ended and keep the summary with the run; a failure is logged, never raised.

    The summary and thumbnails are for people looking on: they never cost a run its result.
    """
    try:
        previews = preview_folder(stores.spool.root, series_uid)
        summary = summarise(series, derived, previews, settings.dashboard_accession_numbers)
        stores.tracker.record_summary(series_uid, run, summary.model_dump_json())
    except Exception as exc:
        log.warning(
            "series %s run %d: no summary or thumbnails (%s: %s)", series_uid, run, type(exc).__name__, exc
        )
