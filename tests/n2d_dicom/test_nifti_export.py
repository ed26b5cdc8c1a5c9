"""DICOM series written as NIfTI: each voxel where DICOM puts its pixel (in RAS), holding that pixel's value.

The geometry is checked against the DICOM files themselves, read with pydicom
alone: Image Position, Image Orientation and Pixel Spacing place pixel (row r,
column c) at ``position + c * column_spacing * row_cosines + r * row_spacing *
column_cosines`` (PS3.3 C.7.6.2.1.1), in LPS.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from n2d_dicom.nifti_io import write_series_nifti
from tests.n2d_dicom.conftest import data_file

#: Five axial CT slices (16x16, 2.5 mm apart, rescaled to Hounsfield units) that pydicom ships.
CT_SERIES = Path(get_testdata_file("dicomdirtests/98892001/CT5N/2062", download=False) or "").parent
#: The ``n2d`` console script installed beside the interpreter running the tests.
N2D = Path(sys.executable).with_name("n2d")
#: An oblique plane: rows along (1, 0, 0), columns tilted out of the axial plane.
OBLIQUE = (1.0, 0.0, 0.0, 0.0, 0.8, -0.6)


def ct_series(folder: Path) -> list[Path]:
    """A copy of pydicom's CT series, named so that file order says nothing of slice order."""
    folder.mkdir()
    return [Path(shutil.copy(path, folder / f"{path.name}.dcm")) for path in sorted(CT_SERIES.iterdir())]


def patient_position(ds: pydicom.Dataset, row: int, column: int) -> np.ndarray:
    """Where DICOM puts pixel (row, column) of a single-frame image, in LPS mm."""
    cosines = np.array(ds.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    return (
        np.array(ds.ImagePositionPatient, dtype=float)
        + column * column_spacing * cosines[:3]
        + row * row_spacing * cosines[3:]
    )


def assert_voxels_are_where_dicom_puts_them(image: nib.Nifti1Image, files: list[Path]) -> None:
    """Every file is one slice k of ``image``: same values, and each voxel at its pixel's position."""
    stored = np.asanyarray(image.dataobj.get_unscaled())
    slope, inter = image.dataobj.slope, image.dataobj.inter
    slices = []
    for path in files:
        ds = pydicom.dcmread(path)
        lps_to_ras = np.array([-1.0, -1.0, 1.0])
        first = np.linalg.solve(
            image.affine[:3, :3], lps_to_ras * patient_position(ds, 0, 0) - image.affine[:3, 3]
        )
        assert first[:2] == pytest.approx([0, 0], abs=1e-3)
        k = round(float(first[2]))
        assert first[2] == pytest.approx(k, abs=1e-3)
        for row, column in [(0, 0), (3, 11), (15, 15), (9, 2)]:
            ras = image.affine @ np.array([column, row, k, 1.0])
            assert ras[:3] == pytest.approx(lps_to_ras * patient_position(ds, row, column), abs=1e-3)
        np.testing.assert_array_equal(stored[:, :, k].T, ds.pixel_array)
        assert (slope, inter) == (float(ds.RescaleSlope), float(ds.RescaleIntercept))
        slices.append(k)
    assert sorted(slices) == list(range(len(files)))


@pytest.mark.slow
def test_denoise_dicom_nifti_writes_each_derived_series_in_patient_space(tmp_path):
    ct_series(tmp_path / "in")
    out = tmp_path / "out"
    args = ("--iterations", "1", "--device", "cpu", "--no-progress", "--no-wiener", "--nlm-blend", "0")
    result = subprocess.run(
        [str(N2D), "denoise-dicom", str(tmp_path / "in"), str(out), "--nifti", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (folder,) = [path for path in out.iterdir() if path.is_dir()]
    derived = sorted(folder.iterdir())
    assert len(derived) == 5
    image = nib.load(out / f"{folder.name}.nii.gz")
    assert image.shape == (16, 16, 5)
    assert image.header.get_zooms() == pytest.approx((0.488281, 0.488281, 2.5))
    assert_voxels_are_where_dicom_puts_them(image, derived)


def test_an_oblique_series_keeps_its_orientation(tmp_path):
    files = ct_series(tmp_path / "in")
    normal = np.cross(OBLIQUE[:3], OBLIQUE[3:])
    for step, path in zip([3, 0, 4, 1, 2], files, strict=True):  # slice positions out of file order
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = list(OBLIQUE)
        ds.PixelSpacing = [0.5, 0.75]  # between rows, between columns: not to be swapped
        ds.ImagePositionPatient = list(np.array([-40.0, 25.0, 12.0]) + step * 3.0 * normal)
        ds.save_as(path)

    write_series_nifti(files, tmp_path / "oblique.nii.gz")

    image = nib.load(tmp_path / "oblique.nii.gz")
    assert image.header.get_zooms()[2] == pytest.approx(3.0)
    assert_voxels_are_where_dicom_puts_them(image, files)
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")  # RAS: columns run to the back, slices up


def test_an_image_without_geometry_is_written_with_unit_spacing(tmp_path):
    source = data_file("image_dfl.dcm")  # a secondary capture: no position, orientation or spacing
    path = Path(shutil.copy(source, tmp_path / "sc.dcm"))

    write_series_nifti([path], tmp_path / "sc.nii.gz")

    image = nib.load(tmp_path / "sc.nii.gz")
    ds = pydicom.dcmread(path)
    assert image.header.get_zooms() == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(image.affine, np.diag([-1.0, -1.0, 1.0, 1.0]))
    np.testing.assert_array_equal(np.asanyarray(image.dataobj)[:, :, 0].T, ds.pixel_array)


def test_slices_with_different_rescales_are_written_in_real_world_values(tmp_path):
    files = ct_series(tmp_path / "in")
    expected = {}
    for number, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.RescaleSlope, ds.RescaleIntercept = 1 + number, -1000 - number
        ds.save_as(path)
        expected[float(ds.ImagePositionPatient[2])] = ds.pixel_array * (1.0 + number) - 1000 - number

    write_series_nifti(files, tmp_path / "hu.nii.gz")

    image = nib.load(tmp_path / "hu.nii.gz")
    data = image.get_fdata()
    for z, values in expected.items():
        k = round(float(np.linalg.solve(image.affine[:3, :3], [0, 0, z] - image.affine[:3, 3])[2]))
        np.testing.assert_allclose(data[:, :, k].T, values)
