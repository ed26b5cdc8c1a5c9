from dataclasses import replace

import numpy as np
import pytest
import torch

from n2d_dicom.settings import N2DSettings
from n2d_dicom.tools.bench import (
    BenchPlan,
    build_cases,
    methods_for,
    paper_settings,
    run_benchmark,
    select_methods,
)

TINY = BenchPlan(crop=96, settings=N2DSettings(iterations=3), phantom_slices=2, phantom_side=32)


@pytest.mark.slow
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
        "N2D defaults",
        "N2D per-series",
    ]
    assert lines[1] == (
        "| case | method | PSNR dB | SSIM | noise -% | bias | TTF50 % | NPS peak | residual-edge r "
        "| seconds | peak MB |"
    )
    assert len(lines) == 3 + len(results)
    assert all(r.seconds is not None and r.seconds > 0 for r in results[1:])
    bm3d, known = results[1], results[2]
    assert bm3d.psnr > results[0].psnr  # a sanity check that the comparator really ran
    assert known.psnr > results[0].psnr


@pytest.mark.slow
def test_real_ct_and_mr_cases_have_no_series_mode():
    lines: list[str] = []
    results = run_benchmark(TINY, torch.device("cpu"), ["CT head, poisson"], ["N2D"], lines.append)
    assert [r.method for r in results] == [
        "noisy input",
        "N2D per-slice",
        "N2D per-slice, noise auto",
        "N2D per-slice, Anscombe",
        "N2D defaults",
    ]
    assert results[0].case == "CT head, poisson"


@pytest.mark.slow
def test_the_quick_plan_runs_the_rows_users_compare_and_leaves_the_ablations_out():
    quick = replace(TINY, ablations=False)
    results = run_benchmark(quick, torch.device("cpu"), ["phantom 2x32^2, correlated"], [], [].append)
    assert [r.method for r in results] == [
        "noisy input",
        "BM3D (sigma estimated)",
        "NLM (scikit-image)",
        "stage 1 only (ZS-N2N)",
        "N2D per-slice",
        "N2D defaults",
        "N2D per-series",
    ]
    assert not BenchPlan.quick().ablations and BenchPlan.standard().ablations and BenchPlan.full().ablations


@pytest.mark.parametrize("name", ["quick", "standard", "full"])
def test_plans_use_crops_that_n2d_accepts(name):
    plan = BenchPlan.named(name)
    assert plan.crop % 4 == 0 and plan.phantom_side % 4 == 0
    assert plan.with_iterations(7).settings.iterations == 7


def test_a_flat_crop_is_refused_with_a_clear_message():
    from n2d_dicom.errors import N2DInputError
    from n2d_dicom.tools.bench import real_crop

    with pytest.raises(N2DInputError, match="693_UNCI.dcm is flat"):
        real_crop("693_UNCI.dcm", 32)


def test_the_paper_rows_switch_off_every_addition_the_node_makes_by_default():
    paper, node = paper_settings(N2DSettings(iterations=800)), N2DSettings()
    assert (paper.noise, paper.nlm_blend, paper.wiener, paper.anscombe) == ("white", 0, False, "off")
    assert (node.noise, node.wiener, node.anscombe) == ("auto", True, "auto") and node.nlm_blend > 0
    assert paper.model_copy(update={"iterations": node.iterations}).pipeline == node.pipeline == "n2d"


def test_the_quick_plan_runs_one_case_per_image_and_the_filter_narrows_it():
    labels = [c.label for c in build_cases(BenchPlan.quick(), [])]
    assert labels == [
        "CT head, gaussian",
        "CT head, correlated",
        "MR abdomen, poisson",
        "phantom 2x64^2, gaussian",
        "CT head, lowdose",
        "MR abdomen, rician",
    ]
    assert [c.label for c in build_cases(BenchPlan.quick(), ["MR"])] == [
        "MR abdomen, poisson",
        "MR abdomen, rician",
    ]
    every = {c.label: c.seed for c in build_cases(BenchPlan.standard(), [])}
    assert len(every) == 13 == len(set(every.values()))
    assert all(every[c.label] == c.seed for c in build_cases(BenchPlan.quick(), []) if c.label in every)


def test_a_method_named_exactly_runs_alone_and_a_part_of_a_name_runs_every_match():
    methods = methods_for(TINY, build_cases(TINY, ["phantom 2x32^2, gaussian"])[0])
    assert list(select_methods(methods, ["n2d per-slice"])) == ["N2D per-slice"]
    assert list(select_methods(methods, ["n2d d", "BM3D"])) == [
        "BM3D (sigma estimated)",
        "BM3D (noise known)",
        "N2D defaults",
    ]
    assert select_methods(methods, []) == methods


@pytest.mark.slow
def test_the_scanner_made_cases_run_with_their_noise_in_the_header(monkeypatch):
    monkeypatch.setattr("n2d_dicom.tools.bench.VIEWS", 60)  # a coarse scan: the projections are quick
    lines: list[str] = []
    results = run_benchmark(
        TINY,
        torch.device("cpu"),
        ["CT head, lowdose", "MR abdomen, rician"],
        ["NLM (scikit-image)"],
        lines.append,
    )
    assert [(r.case, r.method) for r in results] == [
        ("CT head, lowdose", "noisy input"),
        ("CT head, lowdose", "NLM (scikit-image)"),
        ("MR abdomen, rician", "noisy input"),
        ("MR abdomen, rician", "NLM (scikit-image)"),
    ]
    sigma_hu = float(lines[0].split("noise sigma ")[-1].split(" HU")[0])
    assert sigma_hu > 0 and "photons per ray, 60 parallel-beam views" in lines[0] and "rician" in lines[0]
    noisy_ct, nlm_ct, noisy_mr, nlm_mr = results
    assert nlm_ct.psnr > noisy_ct.psnr and nlm_mr.psnr > noisy_mr.psnr


def test_the_rician_case_is_on_the_noisy_images_range_and_reproducible():
    rician = build_cases(TINY, ["rician"])[0]
    assert rician.noisy.shape == rician.clean.shape == (1, TINY.crop, TINY.crop)
    # A magnitude's stored zero stays at 0 (its floor is measured from there), its maximum at 1.
    assert rician.noisy.min() > 0 and rician.noisy.max() == 1 and rician.clean.min() >= 0
    again = build_cases(TINY, ["rician"])[0]
    np.testing.assert_array_equal(rician.noisy, again.noisy)
    assert "HU" not in rician.images.note


def test_the_realistic_plan_runs_scanner_noise_against_each_modality_s_peers():
    plan = BenchPlan.realistic()
    cases = {c.label: c for c in build_cases(plan, [])}
    assert list(cases) == [
        "CT head, lowdose",
        "MR abdomen, rician",
        "CT water phantom, lowdose",
        "MR brain volume, rician",
    ]
    assert BenchPlan.named("realistic") == plan
    methods = {
        label: list(methods_for(plan, case))
        for label, case in cases.items()
        if label != "CT head, lowdose"  # its scan takes seconds; the phantom's shows the CT rows
    }
    assert methods["CT water phantom, lowdose"] == [
        "BM3D (sigma estimated)",
        "NLM (scikit-image)",
        "N2D defaults",
    ]
    assert methods["MR abdomen, rician"] == [
        "BM3D (sigma estimated)",
        "NLM (scikit-image)",
        "dipy NLM (Rician)",
        "N2D defaults",
    ]
    assert methods["MR brain volume, rician"] == [
        "BM3D (sigma estimated)",
        "BM4D (sigma estimated)",
        "NLM (scikit-image)",
        "dipy NLM (Rician)",
        "N2D defaults",
    ]


def test_the_mr_volume_is_adjacent_slices_of_real_anatomy_with_a_magnitude_floor():
    volume = build_cases(replace(BenchPlan.realistic(), volume_slices=4), ["brain volume"])[0]
    assert volume.clean.shape == volume.noisy.shape == (4, 197, 233)
    air = volume.clean == 0
    assert 0.3 < air.mean() < 0.95  # a head in air
    sigma = 0.04 * volume.clean.max()
    assert volume.noisy[air].mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.1)  # Rayleigh


@pytest.mark.slow
def test_the_bench_table_carries_the_physics_measures():
    lines: list[str] = []
    results = run_benchmark(BenchPlan.realistic(), torch.device("cpu"), ["water"], ["NLM"], lines.append)
    assert lines[1].startswith("| case | method | PSNR dB | SSIM | noise -% | bias | TTF50 % | NPS peak |")
    noisy, nlm = results
    assert noisy.physics.noise_reduction == 0 and nlm.physics.noise_reduction > 30
    assert abs(nlm.physics.bias) < 5  # HU
    assert nlm.physics.ttf50 is not None and nlm.physics.nps_peak is not None
    assert lines[-1].count("|") == lines[1].count("|")
