"""``n2d bench --perf``: the time split, the steps taken, and the node's cold-against-warm table."""

import torch

from n2d_dicom.devices import resolve_precision
from n2d_dicom.settings import N2DSettings
from n2d_dicom.tools.perf import PerfPlan, node_rows, run_perf
from n2d_dicom.training import warm_steps


def test_rows_give_the_steps_taken_and_the_seconds_of_each_phase(cpu):
    lines: list[str] = []
    settings = N2DSettings(iterations=2, channels=4)
    plan = PerfPlan(settings, slices=2, side=16, volume_slices=2, volume_side=32, repeats=1)
    rows = run_perf(plan, cpu, lines.append)
    assert all(row.steps == "2+2" for row in rows)
    assert all({"training", "inference"} <= set(row.split) for row in rows)
    assert " | 2+2 | noise measurement " in lines[3] and "training" in lines[3]
    assert lines[1].rstrip().endswith("| steps | seconds by phase |")


def test_the_node_table_runs_before_then_cold_then_warm_from_an_earlier_series_pair(cpu):
    node = N2DSettings(mode="per-series", iterations=4, channels=4, series_patch=16)
    before = node.model_copy(update={"iterations": 6, "channels": 8, "precision": "fp32"})
    plan = PerfPlan(
        node, slices=1, side=16, volume_slices=8, volume_side=32, repeats=1, node=node, before=before
    )
    lines: list[str] = []
    old, cold, warm = node_rows(plan, cpu, lines.append)
    ran = resolve_precision("auto", cpu)  # the node's precision, auto, as the engine decides it here
    assert (old.method, cold.method, warm.method) == (
        "before issue 16 (8 channels), 6 it, fp32",
        f"cold (no earlier series), 4 it, {ran}",
        f"warm (earlier series' pair), 4 it, {ran}",
    )
    assert old.steps == "6+6" and cold.steps == "4+4"
    assert warm.steps == f"{warm_steps(node)}+{warm_steps(node)}"
    assert lines[0].split(" | ")[4] == "1.00x"  # the first row against itself
    assert len(lines) == 3 and torch.isfinite(torch.tensor([old.psnr, cold.psnr, warm.psnr])).all()


def test_the_cpu_plan_has_the_node_table_at_the_node_defaults():
    plan = PerfPlan.for_device(torch.device("cpu"), N2DSettings(nlm_blend=0, wiener=False))
    assert plan.node is not None and plan.node.mode == "per-series"
    assert plan.node.nlm_blend > 0 and plan.node.wiener
    assert plan.with_iterations(7).node.iterations == 7
    assert plan.before is not None and (plan.before.width, plan.before.steps) == (48, 2000)
    assert plan.before.precision == "fp32"  # the defaults before issue 16; the node's: decided here
    assert plan.node.precision == resolve_precision("auto", torch.device("cpu"))
    assert plan.with_iterations(7).before.iterations == 7
