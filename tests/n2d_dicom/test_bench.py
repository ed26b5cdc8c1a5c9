import pytest
import torch

from n2d_dicom.bench import BenchPlan, run_benchmark

TINY = BenchPlan(crop=96, iterations=3, phantom_slices=2, phantom_side=32)


def test_benchmark_prints_one_table_row_per_method_and_case():
    lines: list[str] = []
    results = run_benchmark(TINY, torch.device("cpu"), ["phantom 2x32^2, gaussian"], [], lines.append)
    methods = [r.method for r in results]
    assert methods == [
        "noisy input",
        "BM3D (sigma estimated)",
        "BM3D (noise known)",
        "NLM (scikit-image)",
        "stage 1 only (ZS-N2N)",
        "N2D per-slice",
        "N2D per-slice, noise auto",
        "N2D per-slice, Anscombe",
        "N2D per-slice, defaults",
        "N2D per-series",
    ]
    assert lines[1] == "| case | method | PSNR dB | SSIM | seconds | peak MB |"
    assert len(lines) == 3 + len(results)
    assert all(r.seconds is not None and r.seconds > 0 for r in results[1:])
    bm3d, known = results[1], results[2]
    assert bm3d.psnr > results[0].psnr  # a sanity check that the comparator really ran
    assert known.psnr > results[0].psnr


def test_real_ct_and_mr_cases_have_no_series_mode():
    lines: list[str] = []
    results = run_benchmark(TINY, torch.device("cpu"), ["CT head, poisson"], ["N2D"], lines.append)
    assert [r.method for r in results] == [
        "noisy input",
        "N2D per-slice",
        "N2D per-slice, noise auto",
        "N2D per-slice, Anscombe",
        "N2D per-slice, defaults",
    ]
    assert results[0].case == "CT head, poisson"


@pytest.mark.parametrize("plan", [BenchPlan.quick(), BenchPlan.full()])
def test_plans_use_crops_that_n2d_accepts(plan):
    assert plan.crop % 4 == 0 and plan.phantom_side % 4 == 0
    assert plan.with_iterations(7).iterations == 7


def test_a_flat_crop_is_refused_with_a_clear_message():
    from n2d_dicom.bench import real_crop
    from n2d_dicom.errors import N2DInputError

    with pytest.raises(N2DInputError, match="693_UNCI.dcm is flat"):
        real_crop("693_UNCI.dcm", 32)
