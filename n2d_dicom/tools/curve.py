"""Quality against time: PSNR and seconds of N2D's defaults at other step counts, widths and precisions.

A speed default is chosen on this table, on the bench's realistic cases (:func:`~n2d_dicom.tools.
bench.BenchPlan.realistic`), never on a phantom: every row is the node's defaults (as it applies them to the
case's modality) with one of ``iterations``, ``channels``, ``precision`` or ``mode`` changed, each
case in the mode ``auto`` runs it in (the crops per-slice, the volume per-series) unless the row
says otherwise. Run alone on an idle machine::

    python -m n2d_dicom.tools.curve [--case CT] [--steps 300 600 1000 2000] [--channels 32 48]

and it prints a Markdown table, row by row.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from n2d_dicom.engine import denoise_slices
from n2d_dicom.measured import Measured, steps_taken
from n2d_dicom.settings import N2DSettings, Precision
from n2d_dicom.tools.bench import BenchPlan, Case, as_node_runs, build_cases, quality

#: What the table varies by default.
STEPS = (300, 600, 1000, 2000)
CHANNELS = (32, 48)


def variants(
    steps: tuple[int, ...], channels: tuple[int, ...], slices: int
) -> Iterator[tuple[str, N2DSettings]]:
    """The defaults, every (steps, channels) pair, the defaults in fp32, and on a stack that ``auto``
    runs per-slice, per-series at each step count (the small-stack question)."""
    yield "defaults", N2DSettings()
    for width in channels:
        for count in steps:
            yield f"{count} steps, {width} channels", N2DSettings(iterations=count, channels=width)
    fp32: Precision = "fp32"
    yield "defaults, fp32", N2DSettings(precision=fp32)
    if N2DSettings().mode_for(slices) == "per-slice":
        for count in steps:
            yield f"per-series, {count} steps", N2DSettings(mode="per-series", iterations=count)


def run_curve(
    cases: list[Case], steps: tuple[int, ...], channels: tuple[int, ...], echo: Callable[[str], None]
) -> None:
    """Print one row per case and variant: PSNR, seconds, the mode, steps taken and precision."""
    device = torch.device("cpu")
    echo(f"n2d curve: {torch.get_num_threads()} CPU threads")
    echo("| case | settings | mode | precision | steps taken | PSNR dB | seconds |")
    echo("|---|---|---|---|---|---|---|")
    for case in cases:
        noisy = torch.from_numpy(case.noisy.astype(np.float32))
        for name, settings in variants(steps, channels, noisy.shape[0]):
            ran: list[Measured] = []
            started = time.perf_counter()
            node = as_node_runs(settings, case)
            out = denoise_slices(noisy, node, device, report=ran.append).numpy().astype(np.float64)
            seconds = time.perf_counter() - started
            psnr = quality(case.clean, out)[0]
            echo(
                f"| {case.label} | {name} | {ran[0].mode} | {ran[0].precision} | {steps_taken(tuple(ran))} "
                f"| {psnr:.2f} | {seconds:.1f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", default=[], help="Cases whose label contains this.")
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    parser.add_argument("--channels", type=int, nargs="+", default=list(CHANNELS))
    args = parser.parse_args()
    cases = build_cases(BenchPlan.realistic(), args.case)
    run_curve(cases, tuple(args.steps), tuple(args.channels), lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
