"""NIfTI volumes in and out, keeping affine, header, datatype and scaling.

Pixels are denoised as the stored (unscaled) values and written back with the
source header and its ``scl_slope``/``scl_inter``, so a viewer shows the same
real-world units and the file differs from its source only in its pixels.

A DICOM series is written as NIfTI (``n2d denoise-dicom --nifti``) from its
:class:`~n2d_dicom.volume.Volume`: voxel ``(i, j, k)`` is column ``i``, row
``j`` of slice ``k`` in the volume's slice order, and the affine maps it to the
patient position DICOM gives that pixel, in NIfTI's RAS axes rather than
DICOM's LPS (x and y change sign), as dcm2niix and ITK do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.arrayproxy import ArrayProxy

from n2d_dicom.atomic import atomic_path
from n2d_dicom.dicom_read import read_dicom_files
from n2d_dicom.errors import N2DInputError
from n2d_dicom.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NiftiImage = nib.Nifti1Image | nib.Nifti2Image
#: DICOM's patient axes (x to the left, y to the back: LPS) to NIfTI's (x right, y front: RAS).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: NIfTI's code for coordinates aligned to the scanner (qform and sform).
SCANNER_ANATOMICAL = 1


def nifti_suffix(path: Path) -> str:
    """``.nii`` or ``.nii.gz``; raises for any other name."""
    for suffix in sorted(NIFTI_SUFFIXES, key=len, reverse=True):
        if path.name.endswith(suffix):
            return suffix
    raise N2DInputError(f"{path}: not a NIfTI file name (expected {' or '.join(NIFTI_SUFFIXES)})")


@contextmanager
def _nibabel_quiet() -> Iterator[None]:
    """nibabel's own logger held above every level meanwhile."""
    logger = logging.getLogger("nibabel.global")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def read_nifti(path: Path) -> NiftiImage:
    """Load a NIfTI-1/2 image, with a one-line error naming the file if that fails."""
    nifti_suffix(path)
    if not path.is_file():
        raise N2DInputError(f"{path}: no such file")
    try:
        # nibabel also logs what it then raises ("data code 1 not supported"): one line, ours.
        with _nibabel_quiet():
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


def scaling(image: NiftiImage) -> tuple[float, float]:
    """The slope and intercept nibabel applies to stored values (1 and 0 where the header has none)."""
    proxy = _file_proxy(image)
    slope, intercept = float(proxy.slope), float(proxy.inter)
    return (slope if np.isfinite(slope) and slope != 0 else 1.0), (
        intercept if np.isfinite(intercept) else 0.0
    )


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


def volume_affine(volume: Volume) -> np.ndarray:
    """The RAS affine of ``volume`` as :func:`volume_image` lays it out: voxel (column, row, slice) to mm."""
    between, row_step, column_step = volume.spacing
    lps = np.eye(4)
    lps[:3, 0] = volume.direction[0] * column_step  # along a row: the next column
    lps[:3, 1] = volume.direction[1] * row_step  # down a column: the next row
    lps[:3, 2] = volume.direction[2] * between  # the next slice, along the normal
    lps[:3, 3] = volume.origin
    return LPS_TO_RAS @ lps


def volume_image(volume: Volume) -> nib.Nifti1Image:
    """``volume`` as a NIfTI-1 image in patient space (RAS, mm).

    The stored values keep their type, with the rescale as ``scl_slope``/``scl_inter``
    when every slice shares one (a reader gets real-world values such as Hounsfield
    units); slices with different rescales are written as real-world float32 values.
    """
    stored = np.ascontiguousarray(volume.array.transpose(2, 1, 0))  # (columns, rows, slices)
    affine = volume_affine(volume)
    rescales = set(volume.rescale) or {(1.0, 0.0)}
    if len(rescales) == 1:
        image = nib.Nifti1Image(stored, affine)
        image.header.set_slope_inter(*rescales.pop())
    else:
        slope, intercept = (
            np.array(values, dtype=np.float32) for values in zip(*volume.rescale, strict=True)
        )
        image = nib.Nifti1Image(stored.astype(np.float32) * slope + intercept, affine)
        image.header.set_slope_inter(1.0, 0.0)
    image.header.set_xyzt_units("mm")
    image.header.set_dim_info(slice=2)
    image.set_qform(affine, code=SCANNER_ANATOMICAL)
    image.set_sform(affine, code=SCANNER_ANATOMICAL)
    return image


def write_series_nifti(paths: list[Path], path: Path) -> None:
    """Write the one DICOM series in ``paths`` (e.g. a derived series just written) as NIfTI, atomically.

    The files are read back as any DICOM input is, so the volume is what the
    files say (geometry, order, stored values), not what the writer meant them to say.
    """
    found, rejected = read_dicom_files(paths)
    if rejected:
        raise N2DInputError(f"{path}: not written, {rejected[0].path.name}: {rejected[0].reason}")
    if len(found) != 1:
        raise N2DInputError(f"{path}: not written, the files hold {len(found)} series, not one")
    try:
        volume = found[0].volume()
    except ValueError as exc:  # e.g. slices of different sizes: no one array holds them
        raise N2DInputError(f"{path}: not written, {exc}") from exc
    with atomic_path(path, suffix=nifti_suffix(path)) as tmp:
        nib.save(volume_image(volume), tmp)
