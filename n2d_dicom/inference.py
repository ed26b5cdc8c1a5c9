"""Applying trained networks: stage 1's estimate, stage 2's pixel-unshuffle refinements, stage 3's
restoration, in strips of rows on a CPU; and the padding and shuffles they need."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from n2d_dicom.model import StackedDenoiser
from n2d_dicom.settings import Precision
from n2d_dicom.training import in_precision

#: Images are padded to a multiple of this (the largest pixel-unshuffle factor).
SIDE_MULTIPLE = 4
#: The smallest side accepted: the 4x unshuffle must leave sub-images of 2x2 or more.
MIN_SIDE = 8
#: Pixel-unshuffle factors of stage 2.
REFINE_FACTORS = (2, 4)
#: Pixels (times networks) of one inference call on a CPU: strips of about this many keep the hidden
#: activations in cache, about twice as fast as whole slices (docs/benchmarks.md).
STRIP_PIXELS = 96 * 512
#: Rows a strip reads beyond its own on each side: the network's reach (two 3x3 convolutions).
HALO = 2


def apply_in_strips(net: StackedDenoiser, x: Tensor) -> Tensor:
    """``net(x)`` for ``(N, K, H, W)``, on a CPU one image and one strip of rows at a time.

    Each strip reads :data:`HALO` rows beyond its own, so every output pixel sees the same
    neighbours as in one pass over the image and the result is the same. Whole images would
    run the hidden layers out of cache; on a GPU one call is faster, so it gets one.
    """
    n, k, h, w = x.shape
    rows = max(1, STRIP_PIXELS // (k * w))
    if x.device.type != "cpu" or (n == 1 and rows >= h):
        return net(x)

    def strips(image: Tensor) -> Iterator[Tensor]:
        for top in range(0, h, rows):
            first, last = max(0, top - HALO), min(h, top + rows + HALO)
            yield net(image[..., first:last, :])[..., top - first : top - first + rows, :]

    return torch.cat([torch.cat(list(strips(image)), dim=2) for image in x.split(1)])


def denoise_residual(net: StackedDenoiser, x: Tensor) -> Tensor:
    return x - apply_in_strips(net, x).float()


def unshuffle_to_batch(x: Tensor, factor: int) -> Tensor:
    """``(N, K, H, W)`` -> ``(factor^2 * N, K, H/factor, W/factor)`` sub-images."""
    n, k, h, w = x.shape
    sub = F.pixel_unshuffle(x, factor).view(n, k, factor * factor, h // factor, w // factor)
    return sub.permute(2, 0, 1, 3, 4).reshape(factor * factor * n, k, h // factor, w // factor)


def shuffle_from_batch(sub: Tensor, factor: int) -> Tensor:
    """Inverse of :func:`unshuffle_to_batch`."""
    ss_n, k, h, w = sub.shape
    n = ss_n // (factor * factor)
    grid = sub.view(factor * factor, n, k, h, w).permute(1, 2, 0, 3, 4)
    return F.pixel_shuffle(grid.reshape(n, k * factor * factor, h, w), factor)


def first_estimate(net: StackedDenoiser, noisy: Tensor, precision: Precision) -> Tensor:
    """Stage 1's output ``d1 = clamp(y - f(y), 0, 1)``."""
    with torch.inference_mode(), in_precision(noisy.device, precision):
        return denoise_residual(net, noisy).clamp(0, 1)


def refinements(net: StackedDenoiser, noisy: Tensor, d1: Tensor, precision: Precision) -> Tensor:
    """Stage 2's network passes: the mean of ``d1`` and the pixel-unshuffle refinements at factors 2 and 4."""
    estimates = [d1]
    with torch.inference_mode(), in_precision(noisy.device, precision):
        for factor in REFINE_FACTORS:
            sub = denoise_residual(net, unshuffle_to_batch(noisy, factor))
            full = shuffle_from_batch(sub, factor)
            estimates.append(denoise_residual(net, full).clamp(0, 1))
    return torch.stack(estimates).mean(dim=0)


def restore_detail(net: StackedDenoiser, smooth: Tensor, precision: Precision) -> Tensor:
    """Stage 3's output ``clamp(g(d2), 0, 1)``."""
    with torch.inference_mode(), in_precision(smooth.device, precision):
        return apply_in_strips(net, smooth).float().clamp(0, 1)


def pad_to_multiple(slices: Tensor, multiple: int = SIDE_MULTIPLE) -> tuple[Tensor, int, int]:
    """Reflect-pad ``(S, H, W)`` so both sides are multiples of ``multiple``."""
    _, h, w = slices.shape
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"image sides must be at least {MIN_SIDE} pixels, got {h}x{w}")
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h or pad_w:
        slices = F.pad(slices.unsqueeze(1), (0, pad_w, 0, pad_h), mode="reflect").squeeze(1)
    return slices, h, w
