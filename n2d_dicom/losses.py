"""The losses N2D trains with: Noise2Noise across the two diagonal 2x downsamples, plus consistency.

Stage 1 trains ``f`` (predicting the noise residual) on the noisy image alone; stage 3 trains
``g`` (predicting the image) from downsamples of stage 2's smooth image against downsamples of the
noisy one (Chobola et al., MICCAI 2025). Tensors are ``(N, K, H, W)``: ``K`` stacked networks.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from n2d_dicom.model import StackedDenoiser

LossFn = Callable[[StackedDenoiser, Tensor, Tensor], Tensor]
"""``loss(net, inputs, targets)``: a scalar to minimise."""


def diagonal_downsamples(x: Tensor) -> tuple[Tensor, Tensor]:
    """The two diagonal 2x downsamples of ``(..., H, W)`` with even ``H`` and ``W``.

    ``D1`` averages the top-left and bottom-right pixel of every 2x2 block, ``D2``
    the top-right and bottom-left one; their noise is independent for white noise.
    """
    d1 = (x[..., 0::2, 0::2] + x[..., 1::2, 1::2]) / 2
    d2 = (x[..., 0::2, 1::2] + x[..., 1::2, 0::2]) / 2
    return d1, d2


def per_model_mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error of each network (channel), summed over networks.

    Summing keeps every stacked network's gradient equal to what it would be alone.
    """
    return (a.float() - b.float()).square().mean(dim=(0, 2, 3)).sum()


def _consistency(predict: Callable[[Tensor], Tensor], inputs: Tensor, p1: Tensor, p2: Tensor) -> Tensor:
    """Downsampled full-size estimate against the sub-image estimates ``p1``, ``p2``."""
    full1, full2 = diagonal_downsamples(predict(inputs))
    return 0.5 * (per_model_mse(p1, full1) + per_model_mse(p2, full2))


def stage1_loss(net: StackedDenoiser, noisy: Tensor, _unused: Tensor) -> Tensor:
    """Stage-1 loss: ``net`` predicts the noise, trained on ``noisy`` alone.

    Residual term: the estimate from one downsample must match the *other*
    downsample, whose noise is independent (Noise2Noise), so the network cannot
    learn the identity.
    """

    def predict(x: Tensor) -> Tensor:
        return x - net(x)

    y1, y2 = diagonal_downsamples(noisy)
    p1, p2 = predict(y1), predict(y2)
    residual = 0.5 * (per_model_mse(y1, p2) + per_model_mse(y2, p1))
    return residual + _consistency(predict, noisy, p1, p2)


def stage3_loss(net: StackedDenoiser, smooth: Tensor, noisy: Tensor) -> Tensor:
    """Stage-3 loss: ``net`` predicts the image from downsamples of ``smooth``, against ``noisy``.

    Pairs cross diagonals as in stage 1: paired on the *same* diagonal, the network would learn
    the noise back wherever ``d2`` keeps some (docs/benchmarks.md, "Design choices, measured").
    """
    s1, s2 = diagonal_downsamples(smooth)
    y1, y2 = diagonal_downsamples(noisy)
    p1, p2 = net(s1), net(s2)
    residual = 0.5 * (per_model_mse(y1, p2) + per_model_mse(y2, p1))
    return residual + _consistency(net, smooth, p1, p2)
