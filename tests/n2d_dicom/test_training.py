"""Training: the crops each step sees, early stopping, the held-out slices."""

import pytest
import torch

from n2d_dicom.training import EarlyStop, held_out_split, random_crops, slice_crops


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
    assert held_out_split(20, early_stop=True) == ([k for k in range(20) if k not in (4, 12)], [4, 12])
    assert held_out_split(7, early_stop=True) == (list(range(7)), [])
    assert held_out_split(20, early_stop=False) == (list(range(20)), [])
