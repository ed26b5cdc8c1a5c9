import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from n2d_dicom import engine, inference, training
from n2d_dicom.devices import resolve_precision
from n2d_dicom.engine import denoise_slices
from n2d_dicom.inference import (
    first_estimate,
)
from n2d_dicom.losses import stage1_loss
from n2d_dicom.measured import Measured
from n2d_dicom.settings import N2DSettings
from n2d_dicom.tools.phantom import add_noise, ellipsoid_phantom
from n2d_dicom.training import new_networks, train


@pytest.mark.slow
def test_denoising_a_noisy_phantom_gains_psnr(phantom, noisy_phantom, fast_settings, cpu):
    noisy = torch.from_numpy(noisy_phantom[:1].astype(np.float32))
    out = denoise_slices(noisy, fast_settings, cpu).numpy().astype(np.float64)
    before = peak_signal_noise_ratio(phantom[:1], noisy_phantom[:1], data_range=1)
    after = peak_signal_noise_ratio(phantom[:1], out, data_range=1)
    assert after > before + 2


@pytest.mark.slow
def test_per_series_mode_denoises_every_slice(phantom, noisy_phantom, fast_settings, cpu):
    settings = fast_settings.model_copy(update={"mode": "per-series"})
    out = denoise_slices(torch.from_numpy(noisy_phantom.astype(np.float32)), settings, cpu).numpy()
    for clean, noisy, denoised in zip(phantom, noisy_phantom, out.astype(np.float64)):
        assert peak_signal_noise_ratio(clean, denoised, data_range=1) > (
            peak_signal_noise_ratio(clean, noisy, data_range=1) + 1.5
        )


@pytest.mark.slow
def test_same_seed_gives_identical_output_on_cpu(noisy_phantom, cpu):
    settings = N2DSettings(iterations=10, channels=8)
    x = torch.from_numpy(noisy_phantom[:2].astype(np.float32))
    torch.testing.assert_close(
        denoise_slices(x, settings, cpu), denoise_slices(x, settings, cpu), rtol=0, atol=0
    )


@pytest.mark.slow
def test_per_slice_result_does_not_depend_on_the_slice_batch(noisy_phantom, cpu):
    x = torch.from_numpy(noisy_phantom[:3].astype(np.float32))
    one_by_one = denoise_slices(x, N2DSettings(iterations=10, channels=8, slice_batch=1), cpu)
    together = denoise_slices(x, N2DSettings(iterations=10, channels=8, slice_batch=3), cpu)
    torch.testing.assert_close(one_by_one, together, rtol=0, atol=1e-4)


def test_odd_sizes_are_padded_and_cropped_back(cpu):
    x = torch.rand(2, 13, 17)
    out = denoise_slices(x, N2DSettings(iterations=3, channels=4), cpu)
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1


def test_images_smaller_than_8_pixels_are_refused(cpu):
    with pytest.raises(ValueError, match="at least 8"):
        denoise_slices(torch.rand(1, 7, 32), N2DSettings(iterations=1), cpu)


def test_stage1_pipeline_stops_after_the_first_network(noisy_phantom, cpu):
    x = torch.from_numpy(noisy_phantom[:1].astype(np.float32))
    # White noise, no Anscombe, no non-local means, no Wiener step: nothing runs around the networks.
    settings = N2DSettings(iterations=5, channels=8, noise="white", anscombe="off", nlm_blend=0, wiener=False)
    stage1 = denoise_slices(x, settings.model_copy(update={"pipeline": "stage1"}), cpu)
    # Stage 1 by hand: the first network trained alone, and its estimate d1.
    images = x.unsqueeze(0)  # (N=1, K=1 network, H, W)
    f = new_networks([settings.seed], settings, cpu)
    train(f, stage1_loss, lambda: (images, images), settings, cpu)  # in place
    d1 = first_estimate(f, images, settings.precision)[0]
    torch.testing.assert_close(stage1, d1, rtol=0, atol=1e-6)  # float rounding at most
    assert (denoise_slices(x, settings, cpu) - d1).abs().max() > 1e-3  # the n2d pipeline goes on past d1


@pytest.mark.slow
def test_per_series_mode_on_crops_denoises_larger_slices(cpu):
    clean = ellipsoid_phantom(3, 96)
    noisy = add_noise(clean, "gaussian", seed=3)
    settings = N2DSettings(mode="per-series", iterations=600, channels=16, series_patch=32)
    out = denoise_slices(torch.from_numpy(noisy.astype(np.float32)), settings, cpu).numpy().astype(np.float64)
    assert (
        peak_signal_noise_ratio(clean, out, data_range=1)
        > peak_signal_noise_ratio(clean, noisy, data_range=1) + 3
    )


def test_auto_precision_runs_what_the_device_decides_and_reports_it(monkeypatch, noisy_phantom, cpu):
    entered: list[str] = []
    real = training.in_precision

    def spied(device, precision):
        entered.append(precision)
        return real(device, precision)

    monkeypatch.setattr(training, "in_precision", spied)  # training steps
    monkeypatch.setattr(inference, "in_precision", spied)  # and inference passes
    reports: list[Measured] = []
    x = torch.from_numpy(noisy_phantom[:2].astype(np.float32))
    denoise_slices(x, N2DSettings(iterations=2, channels=4), cpu, report=reports.append)
    ran = resolve_precision("auto", cpu)  # bf16 where this CPU has native bfloat16, else fp32
    assert set(entered) == {ran} and reports[0].precision == ran


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["per-slice", "per-series"])
def test_bf16_on_the_cpu_denoises_and_returns_float32(phantom, noisy_phantom, cpu, mode):
    """bfloat16 autocast on the CPU (what ``auto`` picks on CPUs with native bfloat16; emulated,
    and slower, on others): losses, weights and the output stay float32."""
    settings = N2DSettings(iterations=300, channels=32, mode=mode, precision="bf16")
    reports: list[Measured] = []
    noisy = torch.from_numpy(noisy_phantom.astype(np.float32))
    out = denoise_slices(noisy, settings, cpu, report=reports.append)
    assert out.dtype == torch.float32 and reports[0].precision == "bf16"
    before = peak_signal_noise_ratio(phantom, noisy_phantom, data_range=1)
    assert peak_signal_noise_ratio(phantom, out.numpy().astype(np.float64), data_range=1) > before + 1.5


@pytest.mark.slow
def test_per_slice_mode_trains_large_slices_on_crops_and_denoises_them(monkeypatch, cpu):
    seen: list[tuple[int, ...]] = []

    def spied(net, noisy, target):
        seen.append(tuple(noisy.shape))
        return stage1_loss(net, noisy, target)

    monkeypatch.setattr(engine, "stage1_loss", spied)
    clean = ellipsoid_phantom(2, 96)
    noisy = add_noise(clean, "gaussian", seed=3)
    settings = N2DSettings(mode="per-slice", iterations=300, channels=16, slice_patch=32, noise="white")
    out = denoise_slices(torch.from_numpy(noisy.astype(np.float32)), settings, cpu).numpy().astype(np.float64)
    assert set(seen) == {(1, 2, 32, 32)}  # one crop of 32x32 of both slices' networks a step
    assert (
        peak_signal_noise_ratio(clean, out, data_range=1)
        > peak_signal_noise_ratio(clean, noisy, data_range=1) + 3
    )


@pytest.mark.slow
def test_per_series_with_early_stop_still_denoises(cpu):
    clean = ellipsoid_phantom(8, 64, supersample=2)
    noisy = add_noise(clean, "gaussian", seed=4)
    settings = N2DSettings(
        mode="per-series", iterations=2000, learning_rate=0.01, channels=8, series_patch=32, early_stop=True
    )
    measured: list[Measured] = []
    out = denoise_slices(torch.from_numpy(noisy.astype(np.float32)), settings, cpu, report=measured.append)
    (ran,) = measured  # one stack of slices
    assert len(ran.steps) == 2 and max(ran.steps) < settings.iterations  # both networks stopped early
    out = out.numpy().astype(np.float64)
    assert (
        peak_signal_noise_ratio(clean, out, data_range=1)
        > peak_signal_noise_ratio(clean, noisy, data_range=1) + 2
    )
