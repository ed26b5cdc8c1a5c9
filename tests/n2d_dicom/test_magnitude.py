"""MR magnitude data: the noise floor measured and taken out (n2d_dicom/magnitude.py)."""

import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset

from n2d_dicom.engine import denoise_slices
from n2d_dicom.intensity import IntensityMap
from n2d_dicom.magnitude import MagnitudeNoise, background_sigma, chi_mean, magnitude_noise
from n2d_dicom.pipeline import settings_for_series
from n2d_dicom.settings import N2DSettings
from n2d_dicom.tools.physics import rician_magnitude

SIGMA = 0.04


def disc_image(slices: int = 2, side: int = 96) -> np.ndarray:
    """Two tissues (0.5 and 0.8) in a disc, no signal around it: a head in air."""
    yy, xx = np.mgrid[:side, :side] - (side - 1) / 2
    radius = np.hypot(yy, xx)
    image = np.where(radius < side * 0.3, 0.5, 0.0) + np.where(radius < side * 0.15, 0.3, 0.0)
    return np.repeat(image[np.newaxis], slices, axis=0)


def sum_of_squares(clean: np.ndarray, sigma: float, coils: int, seed: int) -> np.ndarray:
    """The magnitude of ``coils`` channels, the signal on the first, combined by sum of squares."""
    rng = np.random.default_rng(seed)
    total = np.zeros_like(clean)
    for coil in range(coils):
        signal = clean if coil == 0 else 0.0
        total += (signal + rng.normal(0, sigma, clean.shape)) ** 2 + rng.normal(0, sigma, clean.shape) ** 2
    return np.sqrt(total)


@pytest.mark.parametrize("coils", [1, 4])
@pytest.mark.parametrize("signal", [0.0, 1.0, 3.0])
def test_the_tabulated_mean_is_that_of_simulated_magnitudes(coils, signal):
    samples = sum_of_squares(np.full(400_000, signal), 1.0, coils, seed=coils)
    assert chi_mean(np.array([signal]), coils)[0] == pytest.approx(samples.mean(), rel=5e-3)


@pytest.mark.parametrize("coils", [1, 4])
def test_the_inverse_maps_each_mean_back_to_its_signal(coils):
    signal = np.array([0.0, 0.02, 0.05, 0.1, 0.4, 0.9])
    noise = MagnitudeNoise(SIGMA, coils, True)
    means = torch.from_numpy(chi_mean(signal / SIGMA, coils) * SIGMA)
    torch.testing.assert_close(noise.inverse(means), torch.from_numpy(signal), atol=2e-4, rtol=0)
    # Below the floor (a denoised air darker than the mean of pure noise) is no signal.
    assert float(noise.inverse(torch.tensor([0.5 * noise.floor]))[0]) == 0


@pytest.mark.parametrize("coils", [1, 4])
def test_sigma_is_measured_in_the_background(coils):
    noisy = torch.from_numpy(sum_of_squares(disc_image(), SIGMA, coils, seed=3))
    assert background_sigma(noisy, coils) == pytest.approx(SIGMA, rel=0.05)


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(
            np.clip(disc_image() + np.random.default_rng(0).normal(0, SIGMA, (2, 96, 96)), 0, 1),
            id="gaussian noise clipped at zero",
        ),
        pytest.param(
            np.where(disc_image() > 0, rician_magnitude(disc_image(), SIGMA, 1), 0.0), id="zero-filled air"
        ),
        pytest.param(
            rician_magnitude(disc_image(side=192)[:, 64:128, 64:128], SIGMA, 1), id="crop inside the anatomy"
        ),
    ],
)
def test_auto_finds_no_magnitude_background_where_there_is_none(image):
    unit = torch.from_numpy(image)
    assert background_sigma(unit, 1) is None
    assert magnitude_noise(unit, "auto", 1) is None


def test_on_measures_sigma_in_the_tissue_without_a_background_and_off_does_nothing():
    crop = torch.from_numpy(rician_magnitude(disc_image(side=192)[:, 64:128, 64:128], SIGMA, 1))
    on = magnitude_noise(crop, "on", 1)
    assert on is not None and not on.from_background and on.sigma == pytest.approx(SIGMA, rel=0.15)
    noisy = torch.from_numpy(rician_magnitude(disc_image(), SIGMA, 1))
    assert magnitude_noise(noisy, "off", 1) is None
    found = magnitude_noise(noisy, "auto", 1)
    assert found is not None and found.from_background
    assert magnitude_noise(noisy - 0.1, "on", 1) is None  # negative values: not a magnitude


def test_intensity_map_keeps_zero_for_non_negative_data_only():
    assert IntensityMap.from_array(np.array([5, 9], np.int16), keep_zero=True).low == 0
    assert IntensityMap.from_array(np.array([5, 9], np.int16)).low == 5
    assert IntensityMap.from_array(np.array([-5, 9], np.int16), keep_zero=True).low == -5


def header(modality: str, image_type: list[str]) -> Dataset:
    dataset = Dataset()
    dataset.Modality, dataset.ImageType = modality, image_type
    return dataset


@pytest.mark.parametrize(
    ("asked", "modality", "image_type", "applies"),
    [
        ("auto", "MR", ["ORIGINAL", "PRIMARY", "M", "ND"], "on"),  # the header says magnitude
        ("auto", "MR", ["DERIVED", "SECONDARY"], "on"),
        ("auto", "MR", ["ORIGINAL", "PRIMARY", "P", "ND"], "off"),  # phase image
        ("auto", "CT", ["ORIGINAL", "PRIMARY", "AXIAL"], "off"),
        ("on", "CT", ["ORIGINAL", "PRIMARY", "AXIAL"], "on"),  # asked for: kept
        ("off", "MR", ["ORIGINAL", "PRIMARY", "M"], "off"),
    ],
)
def test_auto_applies_to_mr_magnitude_series_only(asked, modality, image_type, applies):
    settings = settings_for_series(N2DSettings(rician=asked), header(modality, image_type))
    assert settings.rician == applies


@pytest.mark.slow
def test_denoising_a_magnitude_image_takes_the_floor_out_of_air_and_leaves_tissue_unbiased(cpu):
    clean = disc_image()
    noisy = torch.from_numpy(rician_magnitude(clean, SIGMA, 5).astype(np.float32))
    quick = N2DSettings(iterations=300, channels=16, noise="white")
    reports = []
    corrected = denoise_slices(noisy, quick, cpu, report=reports.append).numpy()
    raw = denoise_slices(noisy, quick.model_copy(update={"rician": "off"}), cpu).numpy()
    air, outer, inner = clean == 0, clean == 0.5, clean == 0.8
    assert reports[0].rician_sigma == pytest.approx(SIGMA, rel=0.1)
    assert raw[air].mean() == pytest.approx(SIGMA * np.sqrt(np.pi / 2), rel=0.15)  # the floor, kept
    assert abs(corrected[air].mean()) < 0.35 * SIGMA  # the floor (1.25 sigma), taken out
    for tissue, level in ((outer, 0.5), (inner, 0.8)):
        assert corrected[tissue].mean() == pytest.approx(level, rel=0.02)
