"""Non-local means, averaged into N2D's stage-2 smooth intermediate."""

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from n2d_dicom.engine import denoise_slices
from n2d_dicom.nlm import _nlm, blend_nlm, fast_exp, nlm_estimate, nlm_torch
from n2d_dicom.noise import noise_sigma
from n2d_dicom.settings import N2DSettings
from n2d_dicom.tools.bench import real_crop
from n2d_dicom.tools.phantom import add_noise


@pytest.fixture(scope="module")
def mr():
    return real_crop("MR-SIEMENS-DICOM-WithOverlays.dcm", 96)  # a real MR slice


def psnr(clean, image):
    return peak_signal_noise_ratio(clean, image.numpy().astype(np.float64), data_range=1)


def test_non_local_means_denoises_white_noise_slice_by_slice(mr):
    noisy = torch.from_numpy(add_noise(np.concatenate([mr, mr[:, ::-1]]), "gaussian", seed=2)).float()
    estimate = nlm_estimate(noisy)
    assert estimate.shape == noisy.shape and estimate.dtype == torch.float32
    clean = np.concatenate([mr, mr[:, ::-1]])
    assert psnr(clean, estimate) > psnr(clean, noisy) + 4


def test_the_blend_weighs_the_estimate_image_by_image():
    noisy, denoised = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    assert blend_nlm(noisy, denoised, 0.0) is denoised  # N2D alone
    estimate = nlm_estimate(noisy.reshape(6, 16, 16)).reshape(2, 3, 16, 16)
    torch.testing.assert_close(blend_nlm(noisy, denoised, 0.25), 0.75 * denoised + 0.25 * estimate)


def noisy_slices(mr: np.ndarray) -> torch.Tensor:
    """Three noisy slices unlike each other: white noise, Poisson, and white noise on a flipped copy."""
    slices = [
        add_noise(mr, "gaussian", seed=3),
        add_noise(mr, "poisson", seed=4),
        add_noise(mr[:, ::-1].copy(), "gaussian", seed=5),
    ]
    return torch.from_numpy(np.concatenate(slices)).double()


def test_the_torch_filter_is_scikit_images_fast_non_local_means(mr):
    """Issue 29: the filter on the device must give what the CPU path gives (scikit-image's)."""
    noisy = noisy_slices(mr)
    sigmas = torch.stack([noise_sigma(image) for image in noisy]).double()
    ours = nlm_torch(noisy, sigmas)
    for image, estimate in zip(noisy, ours):
        torch.testing.assert_close(estimate, torch.from_numpy(_nlm(image.numpy())), atol=1e-6, rtol=0)
    in_float32 = nlm_torch(noisy.float(), sigmas.float())
    torch.testing.assert_close(in_float32.double(), ours, atol=2e-4, rtol=0)


def test_slices_go_in_chunks_under_a_memory_budget_with_the_same_result(mr):
    noisy = noisy_slices(mr).float()
    sigmas = torch.stack([noise_sigma(image) for image in noisy])
    whole = nlm_torch(noisy, sigmas)
    one_at_a_time = nlm_torch(noisy, sigmas, memory_budget=1)
    torch.testing.assert_close(one_at_a_time, whole, atol=0, rtol=0)


def test_the_fast_exponential_is_within_its_known_error_of_the_exponential():
    y = -torch.linspace(0, 5, 1001, dtype=torch.float64)
    relative = (fast_exp(y) - torch.exp(y)).abs() / torch.exp(y)
    assert float(relative.max()) < 0.07
    assert float(fast_exp(torch.zeros(()))) == pytest.approx(0.9712, abs=1e-3)


@pytest.mark.gpu
def test_on_a_gpu_the_estimate_stays_on_the_device_and_matches_the_cpu(mr):
    noisy = noisy_slices(mr).float()
    on_gpu = nlm_estimate(noisy.cuda())
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), nlm_estimate(noisy), atol=2e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("noise", ["gaussian", "correlated"])
def test_non_local_means_in_stage_two_improves_n2d(mr, noise):
    settings = N2DSettings(iterations=150, channels=16, wiener=False)  # N2D's own output
    x = torch.from_numpy(add_noise(mr, noise, seed=4)).float()
    blended = denoise_slices(x, settings, torch.device("cpu"))
    alone = denoise_slices(x, settings.model_copy(update={"nlm_blend": 0.0}), torch.device("cpu"))
    assert psnr(mr, blended) > psnr(mr, alone) + 0.15  # measured: +0.32 white, +0.45 correlated
