"""NIfTI volumes in and out, keeping affine, header, datatype and scaling.

Pixels are denoised as the stored (unscaled) values and written back with the
source header and its ``scl_slope``/``scl_inter``, so a viewer shows the same
real-world units and the file differs from its source only in its pixels.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from nibabel.arrayproxy import ArrayProxy

from n2d_dicom.atomic import atomic_path
from n2d_dicom.denoise import denoise_stack
from n2d_dicom.errors import N2DInputError
from n2d_dicom.n2d import Progress, Report
from n2d_dicom.settings import N2DSettings

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NiftiImage = nib.Nifti1Image | nib.Nifti2Image


def nifti_suffix(path: Path) -> str:
    """``.nii`` or ``.nii.gz``; raises for any other name."""
    for suffix in sorted(NIFTI_SUFFIXES, key=len, reverse=True):
        if path.name.endswith(suffix):
            return suffix
    raise N2DInputError(f"{path}: not a NIfTI file name (expected {' or '.join(NIFTI_SUFFIXES)})")


def read_nifti(path: Path) -> NiftiImage:
    """Load a NIfTI-1/2 image, with a one-line error naming the file if that fails."""
    nifti_suffix(path)
    if not path.is_file():
        raise N2DInputError(f"{path}: no such file")
    try:
        image = nib.load(path)
    except Exception as exc:  # nibabel raises many types for damaged files
        raise N2DInputError(f"{path}: cannot read as NIfTI ({exc})") from exc
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise N2DInputError(f"{path}: {type(image).__name__} is not a NIfTI image")
    return image


def _file_proxy(image: NiftiImage) -> ArrayProxy:
    """The image's on-disk array proxy (which holds the scaling nibabel read)."""
    if not isinstance(image.dataobj, ArrayProxy):
        raise TypeError("expected an image loaded from a file")
    return image.dataobj


def stored_values(image: NiftiImage) -> np.ndarray:
    """The on-disk values, before ``scl_slope``/``scl_inter`` are applied."""
    try:
        return np.asanyarray(_file_proxy(image).get_unscaled())
    except Exception as exc:
        raise N2DInputError(f"{image.get_filename()}: pixel data unreadable ({exc})") from exc


def default_slice_axis(image: NiftiImage) -> int:
    """The header's slice dimension if it names one, else the third axis."""
    slice_dim = image.header.get_dim_info()[2]
    return 2 if slice_dim is None else int(slice_dim)


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


def slice_count(shape: tuple[int, ...], axis: int) -> int:
    """How many 2-D slices a volume of ``shape`` gives along ``axis`` (for progress bars)."""
    if len(shape) == 2:
        return 1
    volumes = shape[3] if len(shape) == 4 else 1
    return shape[axis] * volumes


def write_like(source: NiftiImage, stored: np.ndarray, path: Path) -> None:
    """Write ``stored`` with ``source``'s affine, header, datatype and scaling, atomically."""
    output = type(source)(stored, source.affine, header=source.header)
    proxy = _file_proxy(source)
    output.header.set_slope_inter(proxy.slope, proxy.inter)
    with atomic_path(path, suffix=nifti_suffix(path)) as tmp:
        nib.save(output, tmp)


def denoise_nifti(
    source_path: Path,
    output_path: Path,
    settings: N2DSettings,
    device: torch.device,
    axis: int | None = None,
    progress: Progress | None = None,
    report: Report | None = None,
) -> None:
    """Read, denoise slice-wise along ``axis`` (default: the slice axis), write.

    ``report`` hears what the engine measured and chose, once per 3-D volume.
    """
    nifti_suffix(output_path)
    image = read_nifti(source_path)
    stored = stored_values(image)
    axis = default_slice_axis(image) if axis is None else axis
    if stored.ndim > 2 and not 0 <= axis < 3:
        raise N2DInputError(f"{source_path}: slice axis must be 0, 1 or 2, got {axis}")
    try:
        denoised = denoise_volume_array(stored, settings, device, axis, progress, report)
    except N2DInputError as exc:
        raise N2DInputError(f"{source_path}: {exc}") from exc
    write_like(image, denoised, output_path)
