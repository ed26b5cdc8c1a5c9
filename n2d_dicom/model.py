"""The tiny N2D network, stacked so that many independent copies train at once.

N2D's network is conv3x3 -> LeakyReLU(0.2) -> conv3x3 -> LeakyReLU(0.2) -> conv1x1
with 48 hidden channels. Per-slice mode trains one such network per slice; doing
that one slice at a time leaves most of a CPU or GPU idle, so ``StackedDenoiser``
holds ``n_models`` independent copies as grouped convolutions: channel ``k`` of
the input is seen only by copy ``k``. With ``n_models=1`` it is exactly the
paper's network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class StackedDenoiser(nn.Module):
    """``n_models`` independent N2D networks evaluated in one pass.

    Parameters
    ----------
    n_models
        Number of independent networks. Input channel ``k`` goes through network ``k``.
    channels
        Hidden channels of each network (48 in the paper).

    Notes
    -----
    Grouped convolutions compute each group's fan-in from its own slice of the
    weight, so PyTorch's default initialisation gives every copy the same
    distribution as a stand-alone network; Adam is element-wise, so training the
    stack on the sum of per-model losses is the same as training each copy alone.
    """

    def __init__(self, n_models: int = 1, channels: int = 48) -> None:
        super().__init__()
        if n_models < 1 or channels < 1:
            raise ValueError(f"n_models and channels must be >= 1, got {n_models}, {channels}")
        self.n_models = n_models
        self.channels = channels
        hidden = n_models * channels
        self.conv1 = nn.Conv2d(n_models, hidden, 3, padding=1, groups=n_models)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1, groups=n_models)
        self.conv3 = nn.Conv2d(hidden, n_models, 1, groups=n_models)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, n_models, H, W)`` to ``(N, n_models, H, W)``."""
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x)

    @classmethod
    def stack(cls, nets: Sequence[StackedDenoiser]) -> StackedDenoiser:
        """One stacked network holding copies of ``nets`` (each with ``n_models == 1``).

        Used so that a slice's network starts from the same weights whatever batch
        it is trained in: per-slice results then do not depend on the batch size.
        """
        if not nets or any(n.n_models != 1 or n.channels != nets[0].channels for n in nets):
            raise ValueError("stack() takes one or more single networks of equal width")
        stacked = cls(len(nets), nets[0].channels)
        with torch.no_grad():
            for name, param in stacked.named_parameters():
                param.copy_(torch.cat([dict(n.named_parameters())[name] for n in nets]))
        return stacked
