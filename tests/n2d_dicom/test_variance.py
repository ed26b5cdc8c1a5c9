"""Measuring signal-dependent noise on the image, and the generalised Anscombe transform."""

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from n2d_dicom.engine import denoise_slices
from n2d_dicom.measured import Measured
from n2d_dicom.settings import N2DSettings
from n2d_dicom.tools.bench import real_crop
from n2d_dicom.tools.phantom import POISSON_PEAK, SIGMA, add_noise
from n2d_dicom.variance import GeneralisedAnscombe, NoiseLevel, noise_level, stabiliser_for

POISSON_GAIN = 1 / POISSON_PEAK


@pytest.fixture(scope="module")
def mr():
    return real_crop("MR-SIEMENS-DICOM-WithOverlays.dcm", 128)  # a real MR slice


def noisy(clean, noise, seed=3):
    return torch.from_numpy(add_noise(clean, noise, seed))


def test_poisson_noise_measures_as_growing_with_intensity(mr):
    level = noise_level(noisy(mr, "poisson"))
    assert level is not None and level.signal_dependent
    assert level.gain == pytest.approx(POISSON_GAIN, rel=0.2)
    assert level.floor < 0.2 * SIGMA**2


def test_white_gaussian_noise_measures_as_constant(mr):
    level = noise_level(noisy(mr, "gaussian"))
    assert level is not None and not level.signal_dependent
    assert level.variance(0.5) == pytest.approx(SIGMA**2, rel=0.25)


def test_a_narrow_intensity_range_proves_no_signal_dependence():
    assert not NoiseLevel(gain=0.04, floor=0.0, darkest=0.2, brightest=0.4).signal_dependent
    assert NoiseLevel(gain=0.04, floor=0.0, darkest=0.2, brightest=0.6).signal_dependent
    assert not NoiseLevel(gain=0.001, floor=0.01, darkest=0.1, brightest=0.9).signal_dependent


def test_too_little_unclipped_image_gives_no_measurement():
    assert noise_level(torch.zeros(1, 32, 32)) is None
    assert stabiliser_for(torch.zeros(1, 32, 32), "on") is None


def test_the_setting_picks_the_transform(mr):
    poisson, gaussian = noisy(mr, "poisson"), noisy(mr, "gaussian")
    assert stabiliser_for(poisson, "off") is None
    assert stabiliser_for(gaussian, "auto") is None
    assert isinstance(stabiliser_for(poisson, "auto"), GeneralisedAnscombe)
    assert isinstance(stabiliser_for(gaussian, "on"), GeneralisedAnscombe)


def test_transform_makes_poisson_gaussian_noise_unit_variance_in_count_units():
    gat = GeneralisedAnscombe.fitted(NoiseLevel(gain=0.02, floor=1e-4, darkest=0.1, brightest=0.9))
    rng = np.random.default_rng(0)
    spreads = []
    for mean in (0.1, 0.3, 0.6, 0.9):
        samples = 0.02 * rng.poisson(mean / 0.02, 200_000) + rng.normal(0, 0.01, 200_000)
        stabilised = gat.forward(torch.from_numpy(samples)) * (gat.high - gat.low)
        spreads.append(float(stabilised.std()))
    assert spreads == pytest.approx([1.0] * 4, abs=0.05)


def test_inverse_of_the_expected_transform_is_the_mean_without_the_algebraic_bias():
    gat = GeneralisedAnscombe.fitted(NoiseLevel(gain=0.02, floor=0.0, darkest=0.1, brightest=0.9))
    rng = np.random.default_rng(1)
    for mean in (0.04, 0.1, 0.5):  # 2, 5 and 25 counts
        samples = torch.from_numpy(0.02 * rng.poisson(mean / 0.02, 400_000))
        expected = gat.forward(samples).mean().reshape(1)  # what an ideal denoiser returns
        assert float(gat.inverse(expected)) == pytest.approx(mean, rel=0.03)
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert gat.forward(ends).tolist() == pytest.approx([0.0, 1.0])


@pytest.mark.slow
def test_n2d_with_the_transform_denoises_poisson_noise(mr):
    x = noisy(mr, "poisson").float()
    reports: list[Measured] = []
    settings = N2DSettings(iterations=150, channels=16, anscombe="auto")
    out = denoise_slices(x, settings, torch.device("cpu"), report=reports.append)
    assert reports[0].stabilised  # auto: MR Poisson noise measures as signal-dependent

    def psnr(image):
        return peak_signal_noise_ratio(mr, image.numpy().astype(np.float64), data_range=1)

    assert out.shape == x.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert psnr(out) > psnr(x) + 4
