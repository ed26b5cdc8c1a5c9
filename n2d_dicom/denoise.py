"""Denoise arrays of stored values slice by slice: the one entry point for every front end.

The command line (NIfTI and DICOM) and the node's worker all call
:func:`denoise_stack`; it owns input checks, the intensity map and the move to
and from the device, so the engine in :mod:`n2d_dicom.n2d` sees only tensors.
"""

from __future__ import annotations

import numpy as np
import torch

from n2d_dicom.errors import N2DInputError
from n2d_dicom.intensity import IntensityMap
from n2d_dicom.n2d import MIN_SIDE, Progress, Report, denoise_slices
from n2d_dicom.settings import N2DSettings


def denoise_stack(
    stored: np.ndarray,
    settings: N2DSettings,
    device: torch.device,
    *,
    axis: int = -1,
    progress: Progress | None = None,
    report: Report | None = None,
) -> np.ndarray:
    """Denoise a 2-D image or a 3-D stack of slices taken along ``axis``.

    Returns an array of the same shape, dtype and value range as ``stored``; ``report`` receives
    what the engine measured and chose (:class:`~n2d_dicom.n2d.Measured`).
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
    intensity = IntensityMap.from_array(slices)
    unit = torch.from_numpy(intensity.to_unit(slices).astype(np.float32))
    denoised = intensity.to_stored(denoise_slices(unit, settings, device, progress, report).numpy())
    return denoised[0] if stored.ndim == 2 else np.moveaxis(denoised, 0, axis)
