"""``n2d demo``: a noisy CT-like NIfTI volume made on the spot, denoised through the real CLI path."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from n2d_dicom.nifti_io import read_nifti
from n2d_dicom.pipeline import denoise_nifti
from n2d_dicom.progress import Progress
from n2d_dicom.settings import N2DSettings
from n2d_dicom.tools.phantom import add_noise, ellipsoid_phantom, psnr

#: The phantom is written as CT numbers: air -1000 HU up to bone-like +1000 HU.
HU_RANGE = (-1000.0, 1000.0)
#: Size of the demo volume: a few minutes of per-slice work on 2 cores, seconds per-series.
DEMO_SLICES, DEMO_SIDE = 8, 128


def write_demo_volume(directory: Path, slices: int, side: int) -> tuple[Path, np.ndarray]:
    """Write ``noisy.nii.gz`` (int16 HU, 0.8 x 0.8 x 2.5 mm) and return its path and the clean HU."""
    low, high = HU_RANGE
    clean = ellipsoid_phantom(slices, side) * (high - low) + low
    noisy = add_noise((clean - low) / (high - low), "gaussian", seed=0) * (high - low) + low
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    image = nib.Nifti1Image(np.rint(np.moveaxis(noisy, 0, 2)).astype(np.int16), affine)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "noisy.nii.gz"
    nib.save(image, path)
    return path, np.moveaxis(clean, 0, 2)


def run_demo(
    directory: Path, settings: N2DSettings, device: torch.device, progress: Progress | None = None
) -> tuple[Path, float, float]:
    """Denoise the demo volume; returns the output path and PSNR before and after (dB)."""
    source, clean = write_demo_volume(directory, slices=DEMO_SLICES, side=DEMO_SIDE)
    output = directory / "denoised.nii.gz"
    denoise_nifti(source, output, settings, device, progress=progress)
    data_range = HU_RANGE[1] - HU_RANGE[0]
    before = psnr(clean, read_nifti(source).get_fdata(), data_range)
    after = psnr(clean, read_nifti(output).get_fdata(), data_range)
    return output, before, after
