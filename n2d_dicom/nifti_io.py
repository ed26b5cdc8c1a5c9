"""NIfTI volumes in and out, keeping affine, header, datatype and scaling.

Pixels are denoised as the stored (unscaled) values and written back with the
source header and its ``scl_slope``/``scl_inter``, so a viewer shows the same
real-world units and the file differs from its source only in its pixels.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.arrayproxy import ArrayProxy

from n2d_dicom.atomic import atomic_path
from n2d_dicom.errors import N2DInputError

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
