"""What the engine ran and what it cost: ``mode: auto``, work units for progress, the time split,
the steps taken, warm starts."""

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from n2d_dicom.engine import denoise_slices
from n2d_dicom.measured import Measured
from n2d_dicom.model import StackedDenoiser
from n2d_dicom.progress import WorkCost, work_units
from n2d_dicom.settings import N2DSettings
from n2d_dicom.tools.phantom import add_noise, ellipsoid_phantom
from n2d_dicom.training import EarlyStop, new_networks, train
from n2d_dicom.warm_pair import weights_digest

#: Tiny settings for tests that look at what ran, not at quality.
TINY = N2DSettings(iterations=2, channels=4, nlm_blend=0, wiener=False, noise="white", anscombe="off")


def ran(slices: int, settings: N2DSettings = TINY, **kwargs) -> Measured:
    reports: list[Measured] = []
    denoise_slices(torch.rand(slices, 16, 16), settings, torch.device("cpu"), report=reports.append, **kwargs)
    return reports[0]


def test_mode_auto_runs_per_series_on_every_stack_and_per_slice_only_when_asked():
    assert TINY.mode == "auto"
    assert ran(1).mode == ran(4).mode == ran(8).mode == "per-series"
    assert ran(8, TINY.model_copy(update={"mode": "per-slice"})).mode == "per-slice"


def test_progress_counts_every_work_unit_up_to_the_total_known_before(cpu):
    settings = TINY.model_copy(update={"iterations": 5, "nlm_blend": 0.5, "wiener": True})
    for slices in (3, 9):
        heard: list[tuple[int, str]] = []

        def hear(n: int, phase: str, heard: list[tuple[int, str]] = heard) -> None:
            heard.append((n, phase))

        denoise_slices(torch.rand(slices, 16, 16), settings, cpu, progress=hear)
        assert sum(n for n, _ in heard) == work_units(slices, settings, 16 * 16)
        phases = [p for _, p in heard]
        assert phases[0] == "noise measurement" and phases[-1] == "Wiener step"
        assert {"training stage 1", "training stage 3", "non-local means"} <= set(phases)


def test_each_kind_of_work_counts_what_it_costs_so_the_bar_keeps_its_rate(cpu):
    """Issue 26: the bar sat at 98% for two minutes while non-local means and the Wiener step ran, each
    slice of them counted like one training step; a pass over a slice now counts by its pixels."""
    big = work_units(4, N2DSettings(mode="per-series", iterations=1000), 512 * 512)
    steps = 2 * 1000
    assert big - steps == WorkCost(512 * 512).of("noise") + 4 * (3 * 1 + 5 + 22)  # Wiener 22 units a slice
    settings = TINY.model_copy(update={"iterations": 5, "nlm_blend": 0.5, "wiener": True})
    heard: list[tuple[int, str]] = []
    denoise_slices(torch.rand(2, 160, 160), settings, cpu, progress=lambda n, p: heard.append((n, p)))
    assert sum(n for n, _ in heard) == work_units(2, settings, 160 * 160)
    assert sum(n for n, p in heard if p == "Wiener step") == 2 * WorkCost(160 * 160).of("wiener") == 4


def test_early_stopping_counts_the_steps_it_saved_as_done(cpu):
    settings = TINY.model_copy(update={"iterations": 1000})
    net = new_networks([0], settings, cpu)
    images = torch.rand(2, 1, 16, 16)

    def stalled(net: StackedDenoiser, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (net(inputs) * 0).sum() + 1.0  # a loss that never improves

    heard: list[int] = []
    stop = EarlyStop(images, images)
    taken = train(net, stalled, lambda: (images, images), settings, cpu, stop, heard.append)
    assert taken == 399  # checks at steps 100, 200, 300, 400: the first sets the best, three stale
    assert sum(heard) == settings.iterations


def test_measured_holds_the_time_split_and_the_steps_each_network_took():
    settings = TINY.model_copy(update={"nlm_blend": 0.5, "wiener": True})
    measured = ran(8, settings)
    assert measured.steps == (2, 2)
    assert set(measured.seconds) == {"noise", "training", "inference", "nlm", "wiener"}
    assert all(seconds >= 0 for seconds in measured.seconds.values())
    assert ran(3).steps == (2, 2) and "nlm" not in ran(3).seconds


def test_a_warm_start_begins_from_the_given_pair_and_says_which():
    cold = ran(8)
    assert cold.warm_from is None and cold.trained is not None
    warm = ran(8, start=cold.trained)
    assert warm.warm_from == weights_digest(cold.trained)
    per_slice = TINY.model_copy(update={"mode": "per-slice"})
    assert ran(3, per_slice, start=cold.trained).warm_from is None  # per-slice mode trains its own pairs
    wider = TINY.model_copy(update={"channels": 8})
    assert ran(8, wider, start=cold.trained).warm_from is None  # another width: cold
    assert ran(8, start=b"not weights").warm_from is None


@pytest.mark.slow
def test_a_warm_start_from_another_protocol_is_no_worse_than_cold_after_early_stopping(cpu):
    """MR-like weights (a smooth Poisson phantom) warm-start a CT-like series (white noise, sharp)."""
    settings = N2DSettings(
        mode="per-series", iterations=400, channels=16, series_patch=32, nlm_blend=0, wiener=False
    )
    other = add_noise(ellipsoid_phantom(8, 48, supersample=2), "poisson", seed=5)
    reports: list[Measured] = []
    denoise_slices(torch.from_numpy(other.astype(np.float32)), settings, cpu, report=reports.append)
    clean = ellipsoid_phantom(16, 48, supersample=2)[::-1].copy()
    noisy = torch.from_numpy(add_noise(clean, "gaussian", seed=6).astype(np.float32))
    cold = denoise_slices(noisy, settings, cpu).numpy().astype(np.float64)
    warmed: list[Measured] = []
    warm = denoise_slices(noisy, settings, cpu, report=warmed.append, start=reports[0].trained)
    assert warmed[0].warm_from is not None
    assert sum(warmed[0].steps) < 2 * settings.iterations
    cold_psnr = peak_signal_noise_ratio(clean, cold, data_range=1)
    assert peak_signal_noise_ratio(clean, warm.numpy().astype(np.float64), data_range=1) >= cold_psnr - 0.05
