"""The Wiener step in sliding DCT windows, with N2D's output as its pilot."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio

from n2d_dicom.engine import denoise_slices
from n2d_dicom.noise import noise_sigma
from n2d_dicom.settings import N2DSettings
from n2d_dicom.tools.bench import real_crop
from n2d_dicom.tools.phantom import add_noise, binomial_filtered_noise
from n2d_dicom.wiener import (
    SIDES,
    box_sum,
    constant,
    dct_matrix,
    decorrelated_power,
    residual_spectrum,
    wiener_filter,
    wiener_refine,
    window_dct,
    window_step,
    window_sum,
)


@pytest.fixture(scope="module")
def mr():
    return real_crop("MR-SIEMENS-DICOM-WithOverlays.dcm", 96)  # a real MR slice


def psnr(clean, image):
    return peak_signal_noise_ratio(clean, np.asarray(image, dtype=np.float64), data_range=1)


def test_the_dct_matrix_is_orthonormal():
    matrix = dct_matrix(16)
    torch.testing.assert_close(matrix @ matrix.T, torch.eye(16), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("side", "step"), [(8, 1), (8, 2), (16, 2), (24, 3), (12, 4)])
@pytest.mark.parametrize("squared", [False, True])
def test_window_sum_is_the_adjoint_of_window_dct(side, step, squared):
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, 1, side + 4 * step, side + 3 * step, generator=generator)
    coefficients = torch.rand(window_dct(image, side, step).shape, generator=generator)
    basis = dct_matrix(side).square() if squared else dct_matrix(side)
    windows = image.unfold(2, side, step).unfold(3, side, step)  # (2, 1, rows, columns, side, side)
    transformed = torch.einsum("ai,bj,xyrcij->xrcab", basis, basis, windows).flatten(-2).movedim(-1, 1)
    left = (transformed * coefficients).sum()
    right = (image * window_sum(coefficients, side, step, squared)).sum()
    torch.testing.assert_close(left, right, rtol=1e-4, atol=0)


@pytest.mark.parametrize(("side", "step"), [(8, 1), (8, 2), (16, 2), (24, 3), (12, 4)])
def test_box_sum_adds_each_value_over_its_whole_window(side, step):
    values = torch.rand(2, 1, 5, 4, generator=torch.Generator().manual_seed(3))
    expected = F.conv_transpose2d(values, torch.ones(1, 1, side, side), stride=step)  # the plain form
    torch.testing.assert_close(box_sum(values, side, step), expected)


@pytest.mark.parametrize("side", range(2, 49))
def test_windows_are_a_whole_divisor_of_their_side_apart(side):
    step = window_step(side)
    assert side % step == 0 and step <= max(1, side // 8)
    assert window_step(8) == 1 and window_step(16) == 2 and window_step(24) == 3


def test_window_dct_holds_each_window_s_coefficients():
    image = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    matrix = dct_matrix(8)
    expected = matrix @ image[0, 0, 2:10, 4:12] @ matrix.T  # the window at row 2, column 4
    torch.testing.assert_close(window_dct(image, 8, 2)[0, :, 1, 2].view(8, 8), expected)


def test_no_noise_keeps_the_image_and_a_zero_pilot_removes_it():
    image = torch.rand(1, 1, 30, 34, generator=torch.Generator().manual_seed(2))
    nothing = constant(torch.tensor(0.0))
    torch.testing.assert_close(wiener_filter(image, image, nothing, 16)[0], image, atol=1e-5, rtol=0)
    zero, _ = wiener_filter(image, torch.zeros_like(image), constant(torch.tensor(0.01)), 16)
    assert zero.abs().max() < 1e-6


@pytest.mark.slow
def test_a_good_pilot_and_the_noise_level_recover_a_real_slice(mr):
    noisy = torch.from_numpy(add_noise(mr, "gaussian", seed=3)).float()
    pilot = F.avg_pool2d(noisy[None], 3, stride=1, padding=1, count_include_pad=False)[0]
    refined, side = wiener_refine(noisy, pilot, stride=1)
    assert side in SIDES
    assert refined.shape == noisy.shape and refined.dtype == torch.float32
    # measured: noisy 20.4, 3x3 box mean 29.0, Wiener on it 29.8 dB
    assert psnr(mr, refined) > psnr(mr, pilot) + 0.5


@pytest.mark.slow
@pytest.mark.parametrize("side", [8, 16, 24])
def test_the_risk_is_unbiased_for_a_pilot_independent_of_the_noise(mr, side):
    clean = torch.from_numpy(mr).float()[None].expand(12, 1, -1, -1)  # 12 noise draws
    generator = torch.Generator().manual_seed(7)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=generator)
    pilot = clean + 0.03 * torch.randn(clean.shape, generator=generator)  # a fixed, imperfect pilot
    estimate, risk = wiener_filter(noisy, pilot, constant(torch.tensor(0.01)), side, risk=True)
    inside = (..., slice(side // 2, -(side // 2)), slice(side // 2, -(side // 2)))
    error = float((estimate - clean)[inside].square().mean())
    assert float(risk[inside].mean()) == pytest.approx(error, rel=0.05)  # no clean image needed


def test_the_correlated_noise_power_is_measured_on_decorrelated_sub_images(mr):
    rng = np.random.default_rng(8)
    noisy = torch.from_numpy(mr + 0.1 * binomial_filtered_noise(rng, mr.shape)).float()
    assert decorrelated_power(noisy, 3) == pytest.approx(0.01, rel=0.2)  # measured: 0.0113
    assert noise_sigma(noisy[0]) ** 2 < 0.005  # neighbours share the noise: Haar details miss it


def test_the_residual_spectrum_sees_where_correlated_noise_lies():
    generator = torch.Generator().manual_seed(4)
    white = torch.randn(1, 1, 96, 96, generator=generator) * 0.1
    kernel = torch.tensor([1.0, 2.0, 1.0])
    binomial = (kernel[:, None] * kernel[None, :] / 16).view(1, 1, 3, 3)
    filtered = F.conv2d(white, binomial, padding=1)
    zero = torch.zeros_like(white)
    flat = residual_spectrum(white, zero, 8).view(8, 8)
    assert flat.min() > 0.007 and flat.max() < 0.013  # sigma^2 = 0.01 at every frequency
    spectrum = residual_spectrum(filtered, zero, 8).view(8, 8)
    assert spectrum[0, 0] > 20 * spectrum[7, 7]  # a low-pass kernel: low frequencies carry the noise


@pytest.mark.slow
@pytest.mark.parametrize("noise", ["gaussian", "correlated"])
def test_the_wiener_step_improves_n2d(mr, noise):
    settings = N2DSettings(iterations=150, channels=16)
    x = torch.from_numpy(add_noise(mr, noise, seed=4)).float()
    refined = denoise_slices(x, settings, torch.device("cpu"))
    alone = denoise_slices(x, settings.model_copy(update={"wiener": False}), torch.device("cpu"))
    # measured: +4.8 dB white, +3.3 dB correlated (N2D is undertrained at 150 iterations)
    assert psnr(mr, refined) > psnr(mr, alone) + 1.0


@pytest.mark.slow
def test_the_engine_runs_without_pywavelets():
    """scikit-image's sigma estimate needs PyWavelets, which the node does not install."""
    script = (
        "import sys; sys.modules['pywt'] = None\n"
        "import torch\n"
        "from n2d_dicom.engine import denoise_slices\n"
        "from n2d_dicom.settings import N2DSettings\n"
        "settings = N2DSettings(iterations=2, channels=4)\n"
        "out = denoise_slices(torch.rand(1, 24, 24), settings, torch.device('cpu'))\n"
        "assert out.shape == (1, 24, 24)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


@pytest.mark.gpu
@pytest.mark.parametrize("stride", [1, 2])
def test_on_a_gpu_the_wiener_step_gives_what_it_gives_on_the_cpu(stride):
    """Issue 29: the step runs on the pilot's device; white (stride 1) and correlated (2) noise."""
    clean = real_crop("CT_small.dcm", 64)
    noise = "gaussian" if stride == 1 else "correlated"
    noisy = torch.from_numpy(np.concatenate([add_noise(clean, noise, seed=s) for s in (1, 2)])).float()
    pilot = torch.from_numpy(np.concatenate([clean, clean])).float()
    on_cpu, side_cpu = wiener_refine(noisy, pilot, stride)
    on_gpu, side_gpu = wiener_refine(noisy.cuda(), pilot.cuda(), stride)
    assert on_gpu.device.type == "cuda" and side_gpu == side_cpu
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-4, rtol=0)
