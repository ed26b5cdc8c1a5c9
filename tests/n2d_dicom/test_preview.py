"""The pictures of a run: display window, symmetric residual, PNG, and ``n2d denoise --preview``."""

import io
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from n2d_dicom.preview import (
    GAP,
    LABEL_HEIGHT,
    Window,
    dicom_window,
    png_bytes,
    reduced,
    residual_scale,
    side_by_side,
    slice_pictures,
    symmetric,
    values_window,
    windowed,
)

N2D = Path(sys.executable).with_name("n2d")


def ct_header(**values: object) -> Dataset:
    header = Dataset()
    header.RescaleSlope, header.RescaleIntercept = 1, -1024
    for keyword, value in values.items():
        setattr(header, keyword, value)
    return header


def test_a_dicom_window_in_hu_is_applied_to_stored_values():
    window = dicom_window(ct_header(WindowCenter=40, WindowWidth=400), np.zeros((4, 4)))
    assert (window.low, window.high) == (1024 + 40 - 200, 1024 + 40 + 200)
    drawn = windowed(np.array([[0, 864, 1064, 1264, 4000]]), window)
    assert drawn.tolist() == [[0, 0, 128, 255, 255]]


def test_the_first_of_several_windows_is_used_and_a_negative_slope_keeps_low_below_high():
    header = ct_header(WindowCenter=[40, 300], WindowWidth=[400, 1500])
    header.RescaleSlope = -2
    window = dicom_window(header, np.zeros((4, 4)))
    assert window.low < window.high
    assert window == Window.from_center_width(40, 400, -2, -1024)


@pytest.mark.parametrize("values", [{}, {"WindowCenter": 40, "WindowWidth": 0}], ids=["none", "zero-width"])
def test_without_a_usable_window_the_percentiles_of_the_image_are_used(values):
    image = np.arange(1000, dtype=np.int16).reshape(10, 100)
    window = dicom_window(ct_header(**values), image)
    assert window == Window(float(np.percentile(image, 1)), float(np.percentile(image, 99)))


def test_the_residual_is_drawn_symmetrically_around_mid_grey():
    residual = np.linspace(-30, 30, 61).reshape(1, -1)
    drawn = symmetric(residual, 20.0).astype(int)
    assert drawn[0, 30] == 128  # zero
    assert (drawn + symmetric(-residual, 20.0).astype(int) == 256).all()  # +r and -r mirror each other
    assert drawn.min() == 1 and drawn.max() == 255  # beyond the scale saturates


def test_the_residual_scale_ignores_a_few_outliers():
    rng = np.random.default_rng(0)
    residual = rng.normal(0, 10, (64, 64))
    residual[0, :5] = 1e6
    assert 20 < residual_scale(residual) < 40
    assert residual_scale(np.zeros((8, 8))) == 1.0


def test_structure_the_denoiser_removed_stands_out_in_the_residual():
    rng = np.random.default_rng(1)
    noisy = 1000 + rng.normal(0, 5, (64, 64))
    denoised = noisy.copy()
    denoised[20:40, 20:40] -= 200  # a square the "denoiser" removed
    pictures = slice_pictures(noisy, denoised, Window(900, 1100))
    inside, outside = pictures.residual[22:38, 22:38], pictures.residual[:16, :16]
    assert inside.min() == 255 and abs(float(outside.mean()) - 128) < 10
    assert pictures.input.shape == pictures.output.shape == pictures.residual.shape == (64, 64)


def test_large_slices_are_reduced_to_fit_and_keep_their_aspect():
    assert reduced(np.zeros((512, 384), np.uint8)).shape == (256, 192)
    assert reduced(np.zeros((100, 60), np.uint8)).shape == (100, 60)


def test_the_three_panels_are_side_by_side_under_labels_and_round_trip_through_png():
    pictures = slice_pictures(np.eye(32) * 100, np.zeros((32, 32)), Window(0, 100))
    picture = side_by_side(pictures)
    assert picture.shape == (32 + LABEL_HEIGHT, 3 * 32 + 2 * GAP)
    assert picture[:LABEL_HEIGHT].max() > 200  # the labels are drawn, white on black
    decoded = np.asarray(Image.open(io.BytesIO(png_bytes(picture))))
    assert np.array_equal(decoded, picture)


@pytest.mark.slow
def test_denoise_writes_the_preview_of_its_middle_slice(tmp_path):
    rng = np.random.default_rng(0)
    data = (1000 + rng.normal(0, 100, (24, 20, 3))).astype(np.int16)
    source, output, preview = tmp_path / "in.nii.gz", tmp_path / "out.nii.gz", tmp_path / "look" / "p.png"
    nib.save(nib.Nifti1Image(data, np.eye(4)), source)
    args = ["denoise", str(source), str(output), "--iterations", "3", "--nlm-blend", "0", "--no-wiener"]
    args += ["--device", "cpu", "--no-progress"]
    result = subprocess.run([str(N2D), *args, "--preview", str(preview)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    picture = np.asarray(Image.open(preview))
    assert picture.shape == (20 + LABEL_HEIGHT, 3 * 24 + 2 * GAP)  # slices turned a quarter
    assert picture[LABEL_HEIGHT:].std() > 10


@pytest.mark.slow
def test_denoise_refuses_a_preview_that_is_not_a_png_before_denoising(tmp_path):
    args = ["denoise", str(tmp_path / "in.nii.gz"), str(tmp_path / "out.nii.gz"), "--preview", "p.jpg"]
    result = subprocess.run([str(N2D), *args], capture_output=True, text=True)
    assert result.returncode == 1 and "p.jpg" in result.stderr and ".png" in result.stderr


def test_ct_without_a_window_is_drawn_in_the_soft_tissue_window():
    header = ct_header(Modality="CT")
    window = dicom_window(header, np.zeros((4, 4)))
    assert window == Window.from_center_width(40, 400, 1, -1024)


def test_values_in_hu_get_the_soft_tissue_window_and_others_their_percentiles():
    hu = np.array([[-1000.0, -500, 0, 40, 240, 1500]] * 10)
    window, words = values_window(hu, 1.0, 0.0)
    assert windowed(np.array([[-160, 40, 240]]), window).tolist() == [[0, 128, 255]]
    assert "soft-tissue window 40/400 HU" in words
    stored = hu + 1024  # stored with an intercept, as CT NIfTI often is
    assert values_window(stored, 1.0, -1024.0)[0] == Window.from_center_width(40, 400, 1, -1024)
    mr = np.arange(1000, dtype=np.float64).reshape(10, 100)
    window, words = values_window(mr, 1.0, 0.0)
    assert window == Window.from_percentiles(mr) and "percentile" in words
