import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from n2d_dicom import engine
from n2d_dicom.devices import resolve_precision
from n2d_dicom.engine import (
    EarlyStop,
    _held_out_split,
    _shuffle_from_batch,
    _unshuffle_to_batch,
    apply_in_strips,
    denoise_slices,
    diagonal_downsamples,
    first_estimate,
    new_networks,
    random_crops,
    refine,
    slice_crops,
    stage1_loss,
    stage3_loss,
    train,
)
from n2d_dicom.measured import Measured
from n2d_dicom.model import StackedDenoiser
from n2d_dicom.settings import N2DSettings
from n2d_dicom.tools.phantom import add_noise, ellipsoid_phantom


class Scale(torch.nn.Module):
    """A stand-in network with a known output: ``factor * x``."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * x


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).mean()


def test_diagonal_downsamples_average_each_diagonal_of_every_2x2_block():
    x = torch.tensor([[1.0, 2.0, 5.0, 6.0], [3.0, 4.0, 7.0, 8.0], [0.0, 0.0, 1.0, 1.0], [2.0, 4.0, 3.0, 5.0]])
    d1, d2 = diagonal_downsamples(x)
    torch.testing.assert_close(d1, torch.tensor([[2.5, 6.5], [2.0, 3.0]]))
    torch.testing.assert_close(d2, torch.tensor([[2.5, 6.5], [1.0, 2.0]]))


def test_stage1_loss_is_residual_plus_consistency_term():
    torch.manual_seed(0)
    y = torch.rand(1, 1, 8, 8)
    f = Scale(0.3)
    y1, y2 = diagonal_downsamples(y)
    full1, full2 = diagonal_downsamples(y - f(y))
    residual = 0.5 * (mse(y1, y2 - f(y2)) + mse(y2, y1 - f(y1)))
    consistency = 0.5 * (mse(y1 - f(y1), full1) + mse(y2 - f(y2), full2))
    torch.testing.assert_close(stage1_loss(f, y, y), residual + consistency)


def test_stage3_loss_maps_smooth_downsamples_onto_the_noisy_ones_across_diagonals():
    torch.manual_seed(0)
    y, d2 = torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8)
    g = Scale(1.7)
    y1, y2 = diagonal_downsamples(y)
    s1, s2 = diagonal_downsamples(d2)
    full1, full2 = diagonal_downsamples(g(d2))
    residual = 0.5 * (mse(y1, g(s2)) + mse(y2, g(s1)))
    consistency = 0.5 * (mse(g(s1), full1) + mse(g(s2), full2))
    torch.testing.assert_close(stage3_loss(g, d2, y), residual + consistency)


def test_stacked_loss_is_the_sum_of_each_networks_own_loss():
    torch.manual_seed(0)
    y = torch.rand(1, 2, 8, 8)
    stacked = new_networks([5, 6], N2DSettings(channels=8), torch.device("cpu"))
    singles = [new_networks([s], N2DSettings(channels=8), torch.device("cpu")) for s in (5, 6)]
    alone = sum(stage1_loss(net, y[:, k : k + 1], y) for k, net in enumerate(singles))
    torch.testing.assert_close(stage1_loss(stacked, y, y), alone)


@pytest.mark.parametrize("factor", [2, 4])
def test_pixel_unshuffle_to_batch_round_trips(factor):
    x = torch.rand(3, 2, 16, 8)
    sub = _unshuffle_to_batch(x, factor)
    assert sub.shape == (factor * factor * 3, 2, 16 // factor, 8 // factor)
    torch.testing.assert_close(sub[0, 1], x[0, 1, ::factor, ::factor])
    torch.testing.assert_close(_shuffle_from_batch(sub, factor), x)


def test_refine_with_an_identity_network_returns_the_image():
    zero_noise = StackedDenoiser(1, 4)
    for p in zero_noise.parameters():
        torch.nn.init.zeros_(p)
    y = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(refine(zero_noise, y, y, "fp32"), y)


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


def test_random_crops_take_the_same_even_aligned_window_of_inputs_and_targets():
    inputs = torch.arange(3 * 20 * 24, dtype=torch.float32).view(3, 1, 20, 24)
    targets = -inputs
    crop_in, crop_out = random_crops(inputs, targets, torch.Generator().manual_seed(0), count=5, side=8)
    assert crop_in.shape == (3, 1, 8, 8)  # no more crops than slices: each slice once
    assert torch.equal(crop_out, -crop_in)
    for crop in crop_in:
        slice_index, rest = divmod(int(crop[0, 0, 0]), 20 * 24)
        top, left = divmod(rest, 24)
        assert top % 2 == 0 and left % 2 == 0
        assert torch.equal(crop, inputs[slice_index, :, top : top + 8, left : left + 8])
    whole, _ = random_crops(inputs, targets, torch.Generator().manual_seed(0), count=2, side=20)
    assert whole.shape == (2, 1, 20, 24)


def test_random_crops_draw_only_from_the_slices_given():
    volume = torch.arange(10.0).view(10, 1, 1, 1).expand(10, 1, 16, 16)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        crops, _ = random_crops(volume, volume, generator, 3, 8, among=[2, 5, 7])
        assert set(crops[:, 0, 0, 0].tolist()) <= {2.0, 5.0, 7.0}


@pytest.mark.parametrize("shape", [(1, 1, 37, 20), (3, 2, 64, 24)])
def test_inference_in_strips_gives_what_one_pass_gives(monkeypatch, shape, cpu):
    monkeypatch.setattr("n2d_dicom.engine.STRIP_PIXELS", 5 * shape[3] * shape[1])  # strips of 5 rows
    net = new_networks(list(range(shape[1])), N2DSettings(channels=8), cpu).eval()
    x = torch.rand(shape).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(apply_in_strips(net, x), net(x), rtol=1e-5, atol=1e-6)


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


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((1, 4, 256, 256), (1, None)),  # no more than the patch: whole slices, as in the paper
        ((9, 2, 32, 32), (9, None)),  # a 96x96 slice's 3x3 sub-images
        ((1, 2, 512, 512), (1, 256)),
        ((9, 2, 344, 344), (1, 256)),  # a 1024x1024 slice's 3x3 sub-images
        ((4, 1, 160, 160), (2, 160)),  # 2 whole sub-images of 4 a step
    ],
)
def test_a_per_slice_step_trains_on_about_the_patch_s_pixels(shape, expected):
    assert slice_crops(torch.Size(shape), 256) == expected
    assert slice_crops(torch.Size(shape), None) == (shape[0], None)


def test_auto_precision_runs_what_the_device_decides_and_reports_it(monkeypatch, noisy_phantom, cpu):
    entered: list[str] = []
    real = engine._precision

    def spied(device, precision):
        entered.append(precision)
        return real(device, precision)

    monkeypatch.setattr(engine, "_precision", spied)
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


def test_early_stop_waits_for_patience_checks_without_improvement():
    losses = iter([1.0, 0.5, 0.499, 0.498, 0.3, 0.31, 0.3, 0.299])
    stop = EarlyStop(torch.zeros(1), torch.zeros(1), every=10, patience=3, min_improvement=0.005)

    def loss_fn(net, inputs, targets):
        return torch.tensor(next(losses))

    checks = [step for step in range(80) if (step + 1) % 10 == 0]
    decisions = [stop.should_stop(None, loss_fn, step) for step in checks]
    # 1.0 best, 0.5 best, two stale, 0.3 best, three stale: stop at the last check
    assert decisions == [False] * 7 + [True]
    assert not stop.should_stop(None, loss_fn, 3)  # between checks nothing is evaluated


def test_held_out_slices_are_every_eighth_and_never_trained_on():
    assert _held_out_split(20, early_stop=True) == ([k for k in range(20) if k not in (4, 12)], [4, 12])
    assert _held_out_split(7, early_stop=True) == (list(range(7)), [])
    assert _held_out_split(20, early_stop=False) == (list(range(20)), [])


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
