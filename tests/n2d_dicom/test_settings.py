"""The N2D knobs: per-mode defaults of steps and width, decided where the stack's size is known."""

import pytest

from n2d_dicom.measured import Measured, as_ran
from n2d_dicom.settings import EARLY_STOP_FROM, N2DSettings


def test_unset_steps_and_width_follow_the_mode_that_runs_and_the_stack():
    settings = N2DSettings()
    series = settings.for_stack(EARLY_STOP_FROM)
    small = settings.for_stack(EARLY_STOP_FROM - 1)
    single = settings.model_copy(update={"mode": "per-slice"}).for_stack(1)
    assert (series.mode, series.steps, series.width) == ("per-series", 1000, 32)
    assert (small.mode, small.steps, small.width) == ("per-series", 2000, 32)  # no early stopping
    assert (single.mode, single.steps, single.width) == ("per-slice", 2000, 48)  # the paper's


def test_steps_and_width_set_by_the_user_win_in_every_mode():
    settings = N2DSettings(iterations=7, channels=16)
    for slices in (1, 100):
        decided = settings.for_stack(slices)
        assert (decided.steps, decided.width) == (7, 16)


def test_undecided_settings_have_no_steps_or_width():
    with pytest.raises(ValueError, match="for_stack"):
        _ = N2DSettings().steps
    with pytest.raises(ValueError, match="for_stack"):
        _ = N2DSettings().width


def test_what_ran_is_read_from_the_first_stack_measured():
    ran = (Measured(stride=1, stabilised=False, wiener_side=None, mode="per-slice"),)
    assert as_ran(ran, N2DSettings()).steps == 2000
    assert as_ran((), N2DSettings()).steps == 1000  # nothing measured: as a series would run
    small = (Measured(stride=1, stabilised=False, wiener_side=None, mode="per-series", iterations=2000),)
    assert as_ran(small, N2DSettings()).steps == 2000  # as decided for the stack that ran
    bf16 = (Measured(stride=1, stabilised=False, wiener_side=None, mode="per-series", precision="bf16"),)
    assert as_ran(bf16, N2DSettings()).precision == "bf16"  # auto, as decided on the device
