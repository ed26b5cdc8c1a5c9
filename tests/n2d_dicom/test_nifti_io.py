from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from n2d_dicom.errors import N2DInputError
from n2d_dicom.nifti_io import default_slice_axis, read_nifti, slice_count
from n2d_dicom.pipeline import denoise_nifti
from n2d_dicom.settings import N2DSettings

QUICK = N2DSettings(iterations=5, channels=8)
AFFINE = np.array([[-0.8, 0.0, 0.1, 90.0], [0.0, 0.8, 0.0, -120.5], [0.0, 0.0, 2.5, -60.0], [0, 0, 0, 1]])


def save(tmp_path: Path, data: np.ndarray, name: str = "in.nii.gz", slope=None, inter=None) -> Path:
    image = nib.Nifti1Image(data, AFFINE)
    image.header["descrip"] = b"test volume"
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_qform(AFFINE, code=1)
    image.header.set_sform(AFFINE, code=2)
    if slope is not None:
        image.header.set_slope_inter(slope, inter)
    path = tmp_path / name
    nib.save(image, path)
    return path


def noisy_volume(dtype, shape=(24, 20, 3), low=-1024, high=2000) -> np.ndarray:
    rng = np.random.default_rng(0)
    smooth = np.linspace(low, high, shape[0])[:, None, None] * np.ones(shape)
    return np.clip(smooth + rng.normal(0, 200, shape), low, high).astype(dtype)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.float32])
def test_affine_header_dtype_and_scaling_survive(tmp_path, cpu, dtype):
    low = 0 if dtype == np.uint16 else -1024
    source = save(tmp_path, noisy_volume(dtype, low=low), slope=0.5, inter=-10.0)
    output = tmp_path / "out.nii.gz"
    denoise_nifti(source, output, QUICK, cpu)

    before, after = nib.load(source), nib.load(output)
    np.testing.assert_array_equal(after.affine, before.affine)
    assert after.get_data_dtype() == before.get_data_dtype()
    assert (after.dataobj.slope, after.dataobj.inter) == (0.5, -10.0)
    for field in ("dim", "pixdim", "qform_code", "sform_code", "descrip", "xyzt_units", "srow_x"):
        np.testing.assert_array_equal(after.header[field], before.header[field])
    raw_before = np.asanyarray(before.dataobj.get_unscaled())
    raw_after = np.asanyarray(after.dataobj.get_unscaled())
    assert raw_after.dtype == raw_before.dtype
    assert raw_before.min() <= raw_after.min() and raw_after.max() <= raw_before.max()
    assert not np.array_equal(raw_after, raw_before)


def test_two_dimensional_image(tmp_path, cpu):
    source = save(tmp_path, noisy_volume(np.int16)[:, :, 0])
    denoise_nifti(source, tmp_path / "out.nii", QUICK, cpu)
    assert nib.load(tmp_path / "out.nii").shape == (24, 20)


def test_four_dimensional_image_is_denoised_volume_by_volume(tmp_path, cpu):
    data = np.stack([noisy_volume(np.int16), noisy_volume(np.int16)[::-1]], axis=3)
    source = save(tmp_path, data)
    denoise_nifti(source, tmp_path / "out.nii.gz", QUICK, cpu)
    out = nib.load(tmp_path / "out.nii.gz")
    assert out.shape == data.shape
    assert slice_count(data.shape, 2) == 6


def test_slices_follow_the_chosen_axis(tmp_path, cpu):
    source = save(tmp_path, noisy_volume(np.int16, shape=(6, 24, 20)))
    with pytest.raises(N2DInputError, match="slices are 6x20 pixels"):
        denoise_nifti(source, tmp_path / "bad.nii.gz", QUICK, cpu, axis=1)
    denoise_nifti(source, tmp_path / "out.nii.gz", QUICK, cpu, axis=0)
    assert nib.load(tmp_path / "out.nii.gz").shape == (6, 24, 20)


def test_default_axis_is_the_headers_slice_dimension(tmp_path):
    source = save(tmp_path, noisy_volume(np.int16))
    image = read_nifti(source)
    assert default_slice_axis(image) == 2
    image.header.set_dim_info(slice=0)
    assert default_slice_axis(image) == 0


def test_output_is_written_atomically_with_no_leftovers(tmp_path, cpu):
    source = save(tmp_path, noisy_volume(np.int16))
    denoise_nifti(source, tmp_path / "out.nii.gz", QUICK, cpu)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz", "out.nii.gz"]


def test_failed_run_leaves_an_existing_output_untouched(tmp_path, cpu):
    source = save(tmp_path, noisy_volume(np.float32, shape=(4, 4, 2)))
    existing = tmp_path / "out.nii.gz"
    existing.write_bytes(b"previous result")
    with pytest.raises(N2DInputError, match="in.nii.gz.*>= 8"):
        denoise_nifti(source, existing, QUICK, cpu)
    assert existing.read_bytes() == b"previous result"


def test_nan_values_are_refused_with_the_file_name(tmp_path, cpu):
    data = noisy_volume(np.float32)
    data[3, 4, 1] = np.nan
    source = save(tmp_path, data)
    with pytest.raises(N2DInputError, match=r"in\.nii\.gz: .*NaN"):
        denoise_nifti(source, tmp_path / "out.nii.gz", QUICK, cpu)


def test_unreadable_file_is_refused_with_its_name(tmp_path, cpu):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti file")
    with pytest.raises(N2DInputError, match="broken.nii.gz: cannot read as NIfTI"):
        denoise_nifti(broken, tmp_path / "out.nii.gz", QUICK, cpu)


def test_output_name_must_be_nifti(tmp_path, cpu):
    source = save(tmp_path, noisy_volume(np.int16))
    with pytest.raises(N2DInputError, match="not a NIfTI file name"):
        denoise_nifti(source, tmp_path / "out.png", QUICK, cpu)


def test_five_dimensional_data_is_refused(tmp_path, cpu):
    source = save(tmp_path, np.zeros((8, 8, 2, 2, 2), dtype=np.int16))
    with pytest.raises(N2DInputError, match="5 dimensions"):
        denoise_nifti(source, tmp_path / "out.nii.gz", QUICK, cpu)
