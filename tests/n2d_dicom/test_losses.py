"""N2D's losses: the diagonal downsamples, stage 1's and stage 3's terms, stacked networks' sums."""

import torch

from n2d_dicom.losses import diagonal_downsamples, stage1_loss, stage3_loss
from n2d_dicom.settings import N2DSettings
from n2d_dicom.training import new_networks


class Scale(torch.nn.Module):
    """A stand-in network with a known output: ``factor * x``."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * x


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).mean()


def test_diagonal_downsamples_average_each_diagonal_of_every_2x2_block():
    x = torch.tensor([[1.0, 2.0, 5.0, 6.0], [3.0, 4.0, 7.0, 8.0], [0.0, 0.0, 1.0, 1.0], [2.0, 4.0, 3.0, 5.0]])
    d1, d2 = diagonal_downsamples(x)
    torch.testing.assert_close(d1, torch.tensor([[2.5, 6.5], [2.0, 3.0]]))
    torch.testing.assert_close(d2, torch.tensor([[2.5, 6.5], [1.0, 2.0]]))


def test_stage1_loss_is_residual_plus_consistency_term():
    torch.manual_seed(0)
    y = torch.rand(1, 1, 8, 8)
    f = Scale(0.3)
    y1, y2 = diagonal_downsamples(y)
    full1, full2 = diagonal_downsamples(y - f(y))
    residual = 0.5 * (mse(y1, y2 - f(y2)) + mse(y2, y1 - f(y1)))
    consistency = 0.5 * (mse(y1 - f(y1), full1) + mse(y2 - f(y2), full2))
    torch.testing.assert_close(stage1_loss(f, y, y), residual + consistency)


def test_stage3_loss_maps_smooth_downsamples_onto_the_noisy_ones_across_diagonals():
    torch.manual_seed(0)
    y, d2 = torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8)
    g = Scale(1.7)
    y1, y2 = diagonal_downsamples(y)
    s1, s2 = diagonal_downsamples(d2)
    full1, full2 = diagonal_downsamples(g(d2))
    residual = 0.5 * (mse(y1, g(s2)) + mse(y2, g(s1)))
    consistency = 0.5 * (mse(g(s1), full1) + mse(g(s2), full2))
    torch.testing.assert_close(stage3_loss(g, d2, y), residual + consistency)


def test_stacked_loss_is_the_sum_of_each_networks_own_loss():
    torch.manual_seed(0)
    y = torch.rand(1, 2, 8, 8)
    stacked = new_networks([5, 6], N2DSettings(channels=8), torch.device("cpu"))
    singles = [new_networks([s], N2DSettings(channels=8), torch.device("cpu")) for s in (5, 6)]
    alone = sum(stage1_loss(net, y[:, k : k + 1], y) for k, net in enumerate(singles))
    torch.testing.assert_close(stage1_loss(stacked, y, y), alone)
