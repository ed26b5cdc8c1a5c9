"""Measuring the noise (sigma, spatial correlation) on the image, and N2D on decorrelated sub-images."""

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from n2d_dicom.engine import denoise_slices, sampling_stride
from n2d_dicom.measured import Measured
from n2d_dicom.noise import decorrelating_stride, keep_structure, lag_correlations, noise_sigma
from n2d_dicom.settings import N2DSettings
from n2d_dicom.tools.bench import real_crop
from n2d_dicom.tools.phantom import add_noise, ellipsoid_phantom


@pytest.fixture(scope="module")
def clean():
    return ellipsoid_phantom(2, 96, supersample=2)


def noisy(clean, noise):
    return torch.from_numpy(add_noise(clean, noise, seed=5))


@pytest.mark.parametrize("noise", ["gaussian", "poisson"])
def test_white_and_poisson_noise_measure_as_independent(clean, noise):
    assert max(lag_correlations(noisy(clean, noise))) < 0.2
    assert decorrelating_stride(noisy(clean, noise)) == 1


def test_kernel_filtered_noise_measures_as_correlated_at_lag_one_only(clean):
    rho = lag_correlations(noisy(clean, "correlated"))
    assert rho[0] > 0.35 and max(rho[1:]) < 0.2
    assert decorrelating_stride(noisy(clean, "correlated")) == 3


def test_noise_setting_picks_the_stride(clean):
    white, correlated = noisy(clean, "gaussian"), noisy(clean, "correlated")
    assert sampling_stride(correlated, N2DSettings(noise="white")) == 1
    assert sampling_stride(correlated, N2DSettings(noise="auto")) == 3
    assert sampling_stride(white, N2DSettings(noise="auto")) == 1
    assert sampling_stride(white, N2DSettings(noise="correlated")) == 2  # asked for: at least 2
    assert sampling_stride(correlated[:, :12, :12], N2DSettings(noise="auto")) == 1  # too small to measure


@pytest.mark.parametrize(("noise", "wiener", "expected"), [("correlated", True, 3), ("gaussian", False, 1)])
def test_the_engine_reports_the_stride_and_window_it_chose(clean, noise, wiener, expected):
    reports: list[Measured] = []
    settings = N2DSettings(iterations=2, channels=4, wiener=wiener, anscombe="off")
    denoise_slices(noisy(clean, noise).float(), settings, torch.device("cpu"), report=reports.append)
    (measured,) = reports
    assert measured.stride == expected and not measured.stabilised
    assert (measured.wiener_side is not None) == wiener


def test_sub_images_keep_at_least_eight_pixels_a_side():
    x = torch.rand(1, 20, 40)
    assert sampling_stride(x, N2DSettings(noise="correlated")) == 2


@pytest.mark.slow
def test_decorrelated_n2d_removes_correlated_noise_the_paper_pipeline_keeps():
    clean = real_crop("693_UNCI.dcm", 96)  # a real CT slice
    x = noisy(clean, "correlated").float()
    settings = N2DSettings(iterations=300, channels=16)
    paper = denoise_slices(x, settings.model_copy(update={"noise": "white"}), torch.device("cpu"))
    auto = denoise_slices(x, settings, torch.device("cpu"))

    def psnr(image):
        return peak_signal_noise_ratio(clean, image.numpy().astype(np.float64), data_range=1)

    assert psnr(auto) > psnr(paper) + 3
    assert auto.shape == x.shape


def test_structure_the_denoiser_removed_is_put_back_and_noise_it_removed_is_not(clean):
    truth = torch.from_numpy(clean).float()
    x = noisy(clean, "correlated").float()
    unclipped = (truth > 0.1) & (truth < 0.9)

    def error(image, where):
        return float((image - truth)[where].square().mean())

    # A perfect denoiser removed noise only: its output stays (almost) as it is.
    kept = keep_structure(x, truth)
    assert error(kept, unclipped) < 0.02 * error(x, unclipped)

    # A denoiser that also erased the bright skull: there the noisy pixels come back.
    erased = truth.masked_fill(truth > 0.6, 0.25)
    guarded = keep_structure(x, erased)
    skull = (erased - truth).abs() > 0.3
    assert skull.any()
    assert error(guarded, skull) < 0.2 * error(erased, skull)
    near_skull = torch.nn.functional.max_pool2d(skull.float(), 9, stride=1, padding=4) > 0
    assert error(guarded, ~near_skull) < 0.02 * error(x, ~near_skull)  # beyond the 7x7 box: as it was
    assert torch.equal(keep_structure(x, torch.zeros_like(x)), torch.zeros_like(x))  # all clipped


def test_noise_sigma_measures_white_noise_on_a_real_slice():
    mr = real_crop("MR-SIEMENS-DICOM-WithOverlays.dcm", 96)[0]
    for sigma in (0.02, 0.1):
        noisy = mr + np.random.default_rng(5).normal(0, sigma, mr.shape)
        assert noise_sigma(torch.from_numpy(noisy)) == pytest.approx(sigma, rel=0.1)


def test_noise_sigma_leaves_out_constant_background():
    image = torch.zeros(64, 64)
    image[:, :24] = 0.5 + 0.05 * torch.randn(64, 24, generator=torch.Generator().manual_seed(6))
    assert float(noise_sigma(image)) == pytest.approx(0.05, rel=0.15)
    assert float(noise_sigma(torch.zeros(16, 16))) == 0.0
