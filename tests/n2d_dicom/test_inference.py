"""Applying networks: pixel shuffles, stage 2's refinements, inference in strips of rows."""

import pytest
import torch

from n2d_dicom.inference import (
    apply_in_strips,
    refinements,
    shuffle_from_batch,
    unshuffle_to_batch,
)
from n2d_dicom.model import StackedDenoiser
from n2d_dicom.settings import N2DSettings
from n2d_dicom.training import new_networks


@pytest.mark.parametrize("factor", [2, 4])
def test_pixelunshuffle_to_batch_round_trips(factor):
    x = torch.rand(3, 2, 16, 8)
    sub = unshuffle_to_batch(x, factor)
    assert sub.shape == (factor * factor * 3, 2, 16 // factor, 8 // factor)
    torch.testing.assert_close(sub[0, 1], x[0, 1, ::factor, ::factor])
    torch.testing.assert_close(shuffle_from_batch(sub, factor), x)


def test_refine_with_an_identity_network_returns_the_image():
    zero_noise = StackedDenoiser(1, 4)
    for p in zero_noise.parameters():
        torch.nn.init.zeros_(p)
    y = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(refinements(zero_noise, y, y, "fp32"), y)


@pytest.mark.parametrize("shape", [(1, 1, 37, 20), (3, 2, 64, 24)])
def test_inference_in_strips_gives_what_one_pass_gives(monkeypatch, shape, cpu):
    monkeypatch.setattr("n2d_dicom.inference.STRIP_PIXELS", 5 * shape[3] * shape[1])  # strips of 5 rows
    net = new_networks(list(range(shape[1])), N2DSettings(channels=8), cpu).eval()
    x = torch.rand(shape).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(apply_in_strips(net, x), net(x), rtol=1e-5, atol=1e-6)
