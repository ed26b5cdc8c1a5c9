"""``n2d bench --perf``: the work model and a tiny run through the command."""

import re
import subprocess
from pathlib import Path

import pytest
import torch

from n2d_dicom.devices import resolve_precision
from n2d_dicom.settings import N2DSettings
from n2d_dicom.tools.perf import PerfPlan, device_peak, may_stop_early, n2d_flops, network_flops, run_perf
from tests.helpers import N2D


def test_flops_count_the_convolutions_of_training_and_inference():
    assert network_flops(48) == 2 * (9 * 48 + 9 * 48 * 48 + 48)
    per_slice = N2DSettings(iterations=10, channels=4)
    per_pixel = network_flops(4)
    # 2 networks x 10 steps x (image + two quarter images) x (forward + backward), then 6 passes
    assert n2d_flops(per_slice, 2, 16) == pytest.approx(
        (2 * 10 * 2 * 256 * 1.5 * 3 + 2 * 256 * 6) * per_pixel
    )
    crops = per_slice.model_copy(update={"mode": "per-series", "series_batch": 4, "series_patch": 8})
    assert n2d_flops(crops, 100, 16) == pytest.approx((2 * 10 * 4 * 64 * 1.5 * 3 + 100 * 256 * 6) * per_pixel)


def test_cpu_peak_comes_from_cpuinfo():
    """Threads torch runs on x the fastest core's clock x the FLOP per cycle its vector units allow."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    clocks = [float(mhz) for mhz in re.findall(r"cpu MHz\s*:\s*([\d.]+)", info)]
    flags = set(re.search(r"flags\s*:\s*(.*)", info).group(1).split()) if "flags" in info else set()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, _ = device_peak(torch.device("cpu"), "fp32")
        torch.set_num_threads(2)
        two, source = device_peak(torch.device("cpu"), "fp32")
    finally:
        torch.set_num_threads(threads)
    if not clocks:  # no clock to read (some virtual machines, Arm): no figure rather than a guess
        assert (one, two, source) == (None, None, "2 CPU threads")
        return
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
    assert one == pytest.approx(max(clocks) * 1e6 * per_cycle)
    assert two == pytest.approx(2 * one)
    assert source == f"2 CPU threads x {max(clocks):.0f} MHz x {per_cycle} fp32 FLOP/cycle (cpuinfo)"


@pytest.mark.slow
def test_perf_prints_every_row_with_the_reference_as_one(cpu):
    lines: list[str] = []
    plan = PerfPlan(
        N2DSettings(iterations=3, channels=4), slices=2, side=16, volume_slices=2, volume_side=32, repeats=1
    )
    rows = run_perf(plan, cpu, lines.append)
    ran = resolve_precision("auto", cpu)  # the settings' precision, auto, as the engine decides it here
    assert [row.method for row in rows] == [
        "reference: one slice at a time, fp32",
        f"per-slice, 2 slices batched, {ran}",
        f"per-series, {ran}",
        f"per-series, {ran}",
    ]
    assert lines[3].split(" | ")[4] == "1.00x"  # the reference against itself
    assert len(lines) == 3 + 4 + 5 and all(row.seconds > 0 and row.flops > 0 for row in rows)
    assert lines[-1].startswith("| Wiener step") and float(lines[-1].split(" | ")[1].rstrip(" |")) > 0


@pytest.mark.slow
def test_bench_perf_command_runs(tmp_path):
    run = subprocess.run(
        [str(N2D), "bench", "--perf", "--iterations", "2", "--volume-slices", "2", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    # header row, 3 comparison rows, the volume; header row and 2 rows of the steps outside the networks;
    # the node's table: header row, before issue 16, cold and warm
    assert run.stdout.count("\n| ") == 5 + 3 + 4


def test_flops_are_an_upper_bound_only_where_early_stopping_can_cut_training():
    series = N2DSettings(mode="per-series")
    assert may_stop_early(series, 8) and not may_stop_early(series, 7)
    assert not may_stop_early(series.model_copy(update={"early_stop": False}), 100)
    assert not may_stop_early(N2DSettings(mode="per-slice"), 100)
