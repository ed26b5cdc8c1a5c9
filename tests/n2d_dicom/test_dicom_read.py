"""Reading real DICOM files: pydicom's own test files and pydicom-data, in many transfer syntaxes."""

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

from n2d_dicom.dicom_read import read_dicom_files, read_dicom_folder
from tests.n2d_dicom.conftest import data_file, write_ct_series


def one_series(*paths: Path):
    series, rejected = read_dicom_files(paths)
    assert not rejected, rejected
    assert len(series) == 1
    return series[0]


MR_SMALL_SYNTAXES = [
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
]


@pytest.mark.parametrize("name", MR_SMALL_SYNTAXES)
def test_lossless_transfer_syntaxes_decode_to_the_same_stored_values(name):
    reference = one_series(data_file("MR_small.dcm")).volume().array
    decoded = one_series(data_file(name)).volume().array
    assert decoded.dtype == reference.dtype and decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, reference)


@pytest.mark.parametrize(
    "name", ["image_dfl.dcm", "JPEG-LL.dcm", "JPGExtended.dcm", "693_J2KR.dcm", "RG1_J2KR.dcm"]
)
def test_other_syntaxes_and_monochrome1_decode(name):
    volume = one_series(data_file(name)).volume()
    assert volume.array.ndim == 3 and volume.array.shape[0] == 1


@pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_jpeg_ls_lossless.dcm", "emri_small_RLE.dcm"])
def test_enhanced_mr_frames_become_slices_with_frame_references(name):
    series = one_series(data_file(name))
    volume = series.volume()
    assert volume.array.shape == (10, 64, 64)
    assert sorted(s.frame for s in volume.sources) == list(range(1, 11))
    assert len(series.datasets) == 1
    np.testing.assert_array_equal(volume.array, one_series(data_file("emri_small.dcm")).volume().array)


def test_slices_are_sorted_by_position_along_the_normal(tmp_path):
    write_ct_series(tmp_path, [30.0, -10.0, 10.0, 0.0, 20.0])
    (series,), rejected = read_dicom_folder(tmp_path)
    assert not rejected and not series.problems
    volume = series.volume()
    z = [float(f.position[2]) for f in series.frames]
    assert z == [-10.0, 0.0, 10.0, 20.0, 30.0]
    assert volume.spacing[0] == pytest.approx(10.0)
    assert volume.spacing[1:] == tuple(float(v) for v in series.frames[0].dataset.PixelSpacing)
    assert volume.origin[2] == -10.0
    np.testing.assert_array_equal(volume.direction, np.eye(3))
    offsets = [int(volume.array[i, 0, 0]) - int(volume.array[1, 0, 0]) for i in range(5)]
    assert offsets == [-2, 0, -1, 1, -3]  # file k (z = 30, -10, 10, 0, 20) holds pixels + k


def test_duplicates_are_reported_and_ignored(tmp_path):
    paths = write_ct_series(tmp_path, [0.0, 5.0, 10.0])
    shutil.copy(paths[0], tmp_path / "copy.dcm")
    (series,), _ = read_dicom_folder(tmp_path)
    assert len(series.frames) == 3
    assert "1 duplicate instance(s) ignored" in series.problems


def test_missing_slices_are_reported(tmp_path):
    write_ct_series(tmp_path, [0.0, 2.5, 5.0, 12.5])
    (series,), _ = read_dicom_folder(tmp_path)
    assert any("about 2 missing slice(s)" in p for p in series.problems)
    assert series.volume().array.shape[0] == 4


def test_uneven_spacing_is_reported(tmp_path):
    write_ct_series(tmp_path, [0.0, 2.0, 4.5, 6.5])
    (series,), _ = read_dicom_folder(tmp_path)
    assert series.problems == ["uneven spacing (2.00 to 2.50 mm)"]


def test_mixed_orientations_fall_back_to_instance_order(tmp_path):
    uid = generate_uid()
    write_ct_series(tmp_path, [0.0, 5.0], series_uid=uid)
    write_ct_series(tmp_path, [7.0], series_uid=uid, orientation=[1, 0, 0, 0, 0, -1])
    (series,), _ = read_dicom_folder(tmp_path)
    assert "mixed orientations; slices ordered by Instance Number" in series.problems
    assert len(series.frames) == 3


def test_several_series_in_one_folder_are_kept_apart(tmp_path):
    write_ct_series(tmp_path, [0.0, 1.0])
    write_ct_series(tmp_path, [0.0, 1.0, 2.0])
    series, rejected = read_dicom_folder(tmp_path)
    assert sorted(len(s.frames) for s in series) == [2, 3]
    assert not rejected


def test_unusable_files_are_listed_with_the_reason_and_skipped(tmp_path):
    write_ct_series(tmp_path, [0.0, 1.0])
    (tmp_path / "notes.txt").write_text("not dicom")
    for name in ("SC_rgb.dcm", "rtplan.dcm"):
        shutil.copy(data_file(name), tmp_path / name)
    corrupt = pydicom.dcmread(data_file("MR_small_jpeg_ls_lossless.dcm"))
    corrupt.PixelData = encapsulate([b"\xff\xd8 not a JPEG-LS stream" + bytes(64)])
    corrupt.save_as(tmp_path / "corrupt.dcm")
    series, rejected = read_dicom_folder(tmp_path)
    reasons = {r.path.name: r.reason for r in rejected}
    assert len(series) == 1 and len(series[0].frames) == 2
    assert reasons["notes.txt"].startswith("not a readable DICOM file")
    assert reasons["SC_rgb.dcm"] == "RGB images are not denoised (grayscale only)"
    assert reasons["rtplan.dcm"] == "no pixel data (not an image)"
    assert reasons["corrupt.dcm"].startswith("cannot decode pixel data (JPEG-LS Lossless")


def test_jpeg_baseline_grayscale_decodes_close_to_what_was_encoded(tmp_path):
    from io import BytesIO

    from PIL import Image
    from pydicom.uid import JPEGBaseline8Bit

    ds = pydicom.dcmread(data_file("CT_small.dcm"))
    image = ds.pixel_array.astype(np.float64)
    gray = np.rint((image - image.min()) / (image.max() - image.min()) * 255).astype(np.uint8)
    encoded = BytesIO()
    Image.fromarray(gray).save(encoded, format="JPEG", quality=95)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for keyword in ("RescaleSlope", "RescaleIntercept", "SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PixelData = encapsulate([encoded.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.LossyImageCompression = "01"
    ds.save_as(tmp_path / "baseline.dcm", enforce_file_format=True)
    decoded = one_series(tmp_path / "baseline.dcm").volume().array[0]
    assert decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - gray).mean() < 2
