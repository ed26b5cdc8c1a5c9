"""``n2d bench --perf``: how fast N2D runs, against the straightforward implementation, in one run.

The reference is the paper's setting done the plain way: one slice at a time,
one network pair per slice, float32, no batching (``slice_batch=1``). Against it,
on the same device and the same noisy phantom slices, the batched per-slice mode
(many slices' networks trained side by side as grouped convolutions) and the
per-series mode (one network pair for the volume, trained on random crops). A
CT-sized volume is then denoised per-series to show what a series costs, and the
steps outside the networks (non-local means, the Wiener step) are timed per
slice of that volume's size.

Each figure is the median of ``repeats`` runs. Work is counted analytically (the
convolutions' multiply-adds, forward and backward) and reported as achieved FLOP/s
against the device's nominal peak, to show how far from the limit the code runs.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from n2d_dicom.devices import cpu_flags, resolve_precision
from n2d_dicom.engine import denoise_slices
from n2d_dicom.inference import REFINE_FACTORS
from n2d_dicom.measured import PHASE_NAMES, Measured, split_seconds, steps_taken
from n2d_dicom.nlm import nlm_estimate
from n2d_dicom.settings import N2DSettings
from n2d_dicom.tools.bench import peak_memory
from n2d_dicom.tools.phantom import add_noise, ellipsoid_phantom, psnr
from n2d_dicom.training import HELD_OUT_EVERY, slice_crops
from n2d_dicom.wiener import RISK_SLICES, wiener_refine

T = TypeVar("T")

#: Forward passes of a training step per input pixel: the image and its two quarter-size downsamples.
TRAIN_PIXELS_PER_STEP = 1.5
#: Backward costs about twice the forward.
FORWARD_AND_BACKWARD = 3
#: Full-size network passes per slice at inference: d1, two per refinement factor, g(d2).
INFERENCE_PASSES = 2 + 2 * len(REFINE_FACTORS)

#: Dense nominal peaks (FLOP/s) of the GPUs this project is lent, by precision.
GPU_PEAKS = {
    "H100": {"fp32": 67e12, "tf32": 495e12, "bf16": 989e12},
    "H200": {"fp32": 67e12, "tf32": 495e12, "bf16": 989e12},
}


@dataclass(frozen=True)
class PerfPlan:
    """Sizes: a few slices for the per-slice comparison, and a CT-sized per-series volume."""

    settings: N2DSettings
    """What every row runs (the per-slice part at ``part_iterations`` where that is set)."""
    slices: int
    side: int
    volume_slices: int
    volume_side: int
    repeats: int
    part_iterations: int | None = None
    """Steps of the per-slice comparison where it is cut down; None: ``settings.iterations``."""
    node: N2DSettings | None = None
    """Settings of the node's table (cold against warm on the volume, :func:`node_rows`); None: none."""
    before: N2DSettings | None = None
    """The node's defaults before the speed work of issue 16, the node table's first row; None: none."""

    @classmethod
    def for_device(cls, device: torch.device, settings: N2DSettings) -> PerfPlan:
        """Paper settings on a GPU; on a CPU the per-slice part is cut down to stay within minutes.

        The node's table runs the node's defaults (per-series, every step on) at ``settings``' steps,
        after :data:`BEFORE` (the defaults the node had before, on this engine) on the same volume.
        ``settings.precision`` ``auto`` is decided on ``device``, as the engine decides it.
        """
        settings = decided(settings, device)
        node = N2DSettings(mode="per-series", iterations=settings.iterations, precision=settings.precision)
        before = node.model_copy(update=BEFORE)
        slices, side, volume_slices, part_iterations = (
            (64, 256, 300, None) if device.type == "cuda" else (4, 96, 100, 150)
        )
        return cls(
            settings,
            slices=slices,
            side=side,
            volume_slices=volume_slices,
            volume_side=512,
            repeats=3,
            part_iterations=part_iterations,
            node=node,
            before=before,
        )

    def with_iterations(self, iterations: int) -> PerfPlan:
        """Every row at ``iterations`` steps, the per-slice part and the node's table included."""
        node, before = (
            None if run is None else run.model_copy(update={"iterations": iterations})
            for run in (self.node, self.before)
        )
        return replace(
            self,
            settings=self.settings.model_copy(update={"iterations": iterations}),
            part_iterations=None,
            node=node,
            before=before,
        )


def decided(settings: N2DSettings, device: torch.device) -> N2DSettings:
    """``settings`` with ``precision`` ``auto`` decided on ``device`` as the engine decides it, so that
    rows are named, and measured against the peak, of the precision that ran."""
    return settings.model_copy(update={"precision": resolve_precision(settings.precision, device)})


#: The node's per-series defaults before issue 16: the paper's width, 2000 steps at most, fp32.
BEFORE = {"channels": 48, "iterations": 2000, "precision": "fp32"}


@dataclass(frozen=True)
class PerfRow:
    """One line of the table."""

    part: str
    method: str
    slices: int
    seconds: float
    psnr: float
    peak_mb: float
    flops: float
    #: False when early stopping may have cut training short: ``flops`` is then an upper bound.
    flops_exact: bool = True
    #: Steps each network took (stage 1 + stage 3), of the last run.
    steps: str = ""
    #: Median seconds of each phase the engine ran (:data:`~n2d_dicom.measured.PHASES`).
    split: dict[str, float] = field(default_factory=dict)


def network_flops(channels: int) -> float:
    """Multiply-adds x 2 of one network pass over one pixel (conv3x3 1->C, conv3x3 C->C, conv1x1 C->1)."""
    return 2.0 * (9 * channels + 9 * channels * channels + channels)


def may_stop_early(settings: N2DSettings, slices: int) -> bool:
    """Whether training may take fewer than ``settings.iterations`` steps (per-series early stop)."""
    return settings.mode == "per-series" and settings.early_stop and slices >= HELD_OUT_EVERY


def n2d_flops(settings: N2DSettings, slices: int, side: int) -> float:
    """FLOPs of denoising ``slices`` of ``side``^2 pixels with ``settings`` (both stages, counted)."""
    settings = settings.for_stack(slices)
    per_pixel = network_flops(settings.width)
    if settings.mode == "per-series":
        patch = side if settings.series_patch is None else min(settings.series_patch, side)
        trained_pixels = min(settings.series_batch, slices) * patch * patch
    else:
        count, crop = slice_crops(torch.Size((1, slices, side, side)), settings.slice_patch)
        trained_pixels = slices * count * (side if crop is None else crop) ** 2
    training = 2 * settings.steps * trained_pixels * TRAIN_PIXELS_PER_STEP * FORWARD_AND_BACKWARD
    return (training + slices * side * side * INFERENCE_PASSES) * per_pixel


def device_peak(device: torch.device, precision: str) -> tuple[float | None, str]:
    """Nominal peak FLOP/s of ``device`` and where the figure comes from (None when unknown)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for model, peaks in GPU_PEAKS.items():
            if model in name:
                return peaks[precision], f"{name}, dense {precision} datasheet peak"
        return None, name
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mhz = [float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", info)]
    flags = cpu_flags(info)
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
    threads = torch.get_num_threads()
    if not mhz:
        return None, f"{threads} CPU threads"
    peak = threads * max(mhz) * 1e6 * per_cycle
    return peak, f"{threads} CPU threads x {max(mhz):.0f} MHz x {per_cycle} fp32 FLOP/cycle (cpuinfo)"


def timed(run: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """What ``run`` returns, and the seconds it took, the GPU's queued work included."""
    started = time.perf_counter()
    result = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - started


def measure(
    part: str,
    method: str,
    clean: np.ndarray,
    noisy: torch.Tensor,
    settings: N2DSettings,
    repeats: int,
    device: torch.device,
    start: bytes | None = None,
) -> PerfRow:
    """Denoise ``noisy`` ``repeats`` times: median seconds, split and peak memory, PSNR and steps of the
    last run; ``start`` warm-starts every run from that pair."""
    flops = n2d_flops(settings, noisy.shape[0], noisy.shape[-1])
    seconds: list[float] = []
    peaks: list[float] = []
    reports: list[Measured] = []
    estimate = clean
    for _ in range(repeats):
        with peak_memory(device) as peak:
            estimate, took = timed(
                lambda: (
                    denoise_slices(noisy, settings, device, report=reports.append, start=start)
                    .numpy()
                    .astype(np.float64)
                ),
                device,
            )
        seconds.append(took)
        peaks.append(peak[0])
    median = statistics.median
    splits = [split_seconds((m,)) for m in reports]
    return PerfRow(
        part,
        method,
        clean.shape[0],
        median(seconds),
        psnr(clean, estimate),
        median(peaks),
        flops,
        not may_stop_early(settings, clean.shape[0]),
        steps_taken(tuple(reports[-1:])),
        {phase: median(split.get(phase, 0.0) for split in splits) for phase in splits[-1]},
    )


def steps_label(settings: N2DSettings, slices: int) -> str:
    """``600 it``: the most steps of each network, or ``default it`` where they depend on the mode."""
    if settings.mode != "auto" or settings.iterations is not None:
        return f"{settings.for_stack(slices).steps} it"
    return "default it"


def perf_rows(plan: PerfPlan, device: torch.device, echo: Callable[[str], None]) -> list[PerfRow]:
    """The per-slice comparison against the reference, then the CT-sized per-series volume."""
    clean = ellipsoid_phantom(plan.slices, plan.side)
    noisy = torch.from_numpy(add_noise(clean, "gaussian", seed=0).astype(np.float32))
    settings = decided(plan.settings, device)
    base = settings.model_copy(update={"iterations": plan.part_iterations or settings.iterations})
    reference = base.model_copy(update={"mode": "per-slice", "slice_batch": 1, "precision": "fp32"})
    variants = {
        "reference: one slice at a time, fp32": reference,
        f"per-slice, {plan.slices} slices batched, {base.precision}": base.model_copy(
            update={"mode": "per-slice", "slice_batch": plan.slices}
        ),
        f"per-series, {base.precision}": base.model_copy(update={"mode": "per-series"}),
    }
    rows: list[PerfRow] = []
    part = f"{plan.slices} x {plan.side}^2, {steps_label(base, plan.slices)}"
    for name, variant in variants.items():
        row = measure(part, name, clean, noisy, variant, plan.repeats, device)
        echo(format_perf_row(row, rows[0] if rows else row, device, variant.precision))
        rows.append(row)
    volume_clean = ellipsoid_phantom(plan.volume_slices, plan.volume_side, supersample=1)
    volume = torch.from_numpy(add_noise(volume_clean, "gaussian", seed=1).astype(np.float32))
    series = settings.model_copy(update={"mode": "per-series"})
    row = measure(
        f"{plan.volume_slices} x {plan.volume_side}^2, {steps_label(series, plan.volume_slices)}",
        f"per-series, {series.precision}",
        volume_clean,
        volume,
        series,
        1,
        device,
    )
    echo(format_perf_row(row, None, device, series.precision))
    rows.append(row)
    return rows


def classical_steps(device: torch.device, slices: int, side: int, repeats: int) -> dict[str, float]:
    """Median seconds per ``side x side`` slice of the steps outside the networks, on ``slices`` slices.

    The Wiener step is timed as the node runs it on white noise: its window side chosen by risk on
    the slices, then applied, with the non-local means estimate standing in for N2D's output.
    """
    clean = ellipsoid_phantom(slices, side, supersample=1)
    noisy = torch.from_numpy(add_noise(clean, "gaussian", seed=2).astype(np.float32))
    pilot = nlm_estimate(noisy).float()
    steps: dict[str, Callable[[], Tensor]] = {
        "non-local means (stage 2, CPU threads)": lambda: nlm_estimate(noisy),
        "Wiener step (white noise, side chosen)": lambda: wiener_refine(noisy, pilot.to(device), stride=1)[0],
    }
    return {
        name: statistics.median(timed(step, device)[1] for _ in range(repeats)) / slices
        for name, step in steps.items()
    }


def format_perf_row(row: PerfRow, reference: PerfRow | None, device: torch.device, precision: str) -> str:
    """A Markdown table row; the speed-up is in slices per second against ``reference``."""
    rate = row.slices / row.seconds
    speedup = "-" if reference is None else f"{rate / (reference.slices / reference.seconds):.2f}x"
    achieved = row.flops / row.seconds
    peak, _ = device_peak(device, precision)
    share = "-" if peak is None else f"{100 * achieved / peak:.1f}%"
    bound = "" if row.flops_exact else "<="
    return (
        f"| {row.part} | {row.method} | {row.seconds:.2f} | {rate:.3f} | {speedup} | {row.psnr:.2f} | "
        f"{row.peak_mb:.0f} | {bound}{achieved / 1e9:.1f} | {bound}{share} | {row.steps} | "
        f"{format_split(row.split)} |"
    )


def format_split(split: dict[str, float]) -> str:
    """``training 12.3 s, inference passes 1.2 s, ...``: where a row's time went."""
    return ", ".join(f"{PHASE_NAMES[phase]} {seconds:.1f}" for phase, seconds in split.items())


#: Slices of the earlier series of the protocol that a warm start's pair is trained on.
EARLIER_SLICES = 16


def node_rows(plan: PerfPlan, device: torch.device, echo: Callable[[str], None]) -> list[PerfRow]:
    """The node's defaults on the volume: first as they were before issue 16 (``plan.before``, where
    set), then cold (no earlier series), then warm, from the pair trained on an earlier series of the
    same protocol (another noise draw of the phantom, :data:`EARLIER_SLICES` slices). The speed of
    each is against the first row. One run each, in this process."""
    assert plan.node is not None
    clean = ellipsoid_phantom(plan.volume_slices, plan.volume_side, supersample=1)
    noisy = torch.from_numpy(add_noise(clean, "gaussian", seed=1).astype(np.float32))
    earlier = torch.from_numpy(add_noise(clean[:EARLIER_SLICES], "gaussian", seed=7).astype(np.float32))
    reports: list[Measured] = []
    denoise_slices(earlier, plan.node, device, report=reports.append)
    part = f"{plan.volume_slices} x {plan.volume_side}^2, node defaults"
    runs: list[tuple[str, N2DSettings, bytes | None]] = [
        ("cold (no earlier series)", plan.node, None),
        ("warm (earlier series' pair)", plan.node, reports[0].trained),
    ]
    if plan.before is not None:
        runs.insert(0, (f"before issue 16 ({plan.before.width} channels)", plan.before, None))
    rows: list[PerfRow] = []
    for name, asked, start in runs:
        settings = decided(asked, device)
        label = f"{name}, {steps_label(settings, plan.volume_slices)}, {settings.precision}"
        row = measure(part, label, clean, noisy, settings, 1, device, start)
        echo(format_perf_row(row, rows[0] if rows else row, device, settings.precision))
        rows.append(row)
    return rows


def run_perf(plan: PerfPlan, device: torch.device, echo: Callable[[str], None]) -> list[PerfRow]:
    """Print the header and the rows as they complete."""
    _, peak_source = device_peak(device, decided(plan.settings, device).precision)
    echo(
        f"n2d bench --perf: device {device} ({peak_source}); medians of {plan.repeats} runs; "
        "phantom, Gaussian sigma 25/255"
    )
    echo(
        "| volume | method | seconds | slices/s | vs reference | PSNR dB | peak MB | GFLOP/s | of peak "
        "| steps | seconds by phase |"
    )
    echo("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = perf_rows(plan, device, echo)
    slices, side = min(RISK_SLICES, plan.volume_slices), plan.volume_side
    echo("")
    echo(f"| step outside the networks ({slices} slices) | seconds per {side}x{side} slice |")
    echo("|---|---|")
    for name, seconds in classical_steps(device, slices, side, plan.repeats).items():
        echo(f"| {name} | {seconds:.3f} |")
    if plan.node is not None:
        echo("")
        echo("Node defaults, before issue 16, cold and warm ('vs first': speed against the first row):")
        echo(
            "| volume | run | seconds | slices/s | vs first | PSNR dB | peak MB | GFLOP/s | of peak "
            "| steps | seconds by phase |"
        )
        echo("|---|---|---|---|---|---|---|---|---|---|---|")
        rows += node_rows(plan, device, echo)
    return rows
