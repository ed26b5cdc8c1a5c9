import pytest
import torch

from n2d_dicom.model import StackedDenoiser


def test_single_network_has_the_papers_layers():
    net = StackedDenoiser(1, 48)
    assert [tuple(p.shape) for p in net.parameters()] == [
        (48, 1, 3, 3),
        (48,),
        (48, 48, 3, 3),
        (48,),
        (1, 48, 1, 1),
        (1,),
    ]
    assert net.act.negative_slope == 0.2


def test_stacked_copies_compute_what_each_network_computes_alone():
    torch.manual_seed(0)
    singles = [StackedDenoiser(1, 8) for _ in range(3)]
    stacked = StackedDenoiser.stack(singles)
    x = torch.rand(2, 3, 12, 12)
    expected = torch.cat([net(x[:, k : k + 1]) for k, net in enumerate(singles)], dim=1)
    torch.testing.assert_close(stacked(x), expected)


def test_stack_refuses_networks_of_different_width():
    with pytest.raises(ValueError, match="equal width"):
        StackedDenoiser.stack([StackedDenoiser(1, 8), StackedDenoiser(1, 4)])
