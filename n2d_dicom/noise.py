"""How correlated is an image's noise, measured on the image itself, and how far apart to sample it.

A CT reconstruction kernel spreads each pixel's noise over its neighbours, and
N2D's Noise2Noise pairs (neighbouring pixels) then share noise: the network
learns to keep it. Pixels ``stride`` apart, where the noise correlation has
died out, are independent again, so N2D run on the ``stride x stride``
pixel-unshuffled sub-images sees white noise.

The correlation is measured on the high-pass residual ``r = y - mean_7x7(y)`` in
the flattest half of the image (lowest local residual energy, zero-energy areas
such as clipped background left out), where ``r`` is nearly all noise:
``rho_k = sum r(x) r(x+k) / sum r(x)^2`` over rows and columns.

A reconstruction that spreads noise thinly over a wider neighbourhood (filtered back projection's
interpolation, measured at about 0.07 at lag 1) escapes that test, yet N2D's pairs still share
it. It shows at the next scale: averaging 2x2 blocks divides white noise's sigma by 2 and
correlated noise's by less, so the ratio of twice the sigma of the 2x2-averaged image to the
image's (both by :func:`noise_sigma`) is 1 for white noise and :data:`WIDE_FROM` or more for
such noise, which is then sampled at stride 2 (:func:`scale_ratio`).

Sub-images ``stride`` pixels apart alias thin, high-contrast structures (a
3-pixel skull ring is one pixel wide in them), and the network trained on them
blurs such edges. :func:`keep_structure` finds where that happened, without a
clean image: there the residual ``noisy - denoised`` holds more energy than
noise can, and the noisy pixels are kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: The largest stride chosen; noise correlated further than this is left as it is.
MAX_STRIDE = 4
#: Side of the box whose mean is the local signal.
BOX = 7
#: A lag whose measured correlation reaches this is correlated (white and Poisson noise on the
#: benchmark images measure at most 0.15 at lag 1; a 3x3 binomial kernel's noise about 0.47).
CORRELATED_FROM = 0.2
#: Noise whose sigma at 2x2-averaged scale reaches this share of white noise's is correlated (white,
#: Poisson and Rician noise on the bench's images measure 0.93-1.07, low-dose CT reconstructed by
#: filtered back projection about 1.4, a 3x3 binomial kernel's noise about 3.4).
WIDE_FROM = 1.25
#: Residual energy, in units of the noise variance, from which :func:`keep_structure` starts to
#: keep the noisy pixels, and at which it keeps them alone. Noise correlated over 3x3 pixels leaves
#: about 12 independent values in a 7x7 box, whose mean energy exceeds 3 noise variances with
#: probability under 1e-3.
STRUCTURE_FROM, STRUCTURE_AT = 3.0, 6.0
#: The noise is measured on at most this many slices, evenly spread: a series' noise is the same
#: on all of them, and measuring more only costs time that grows with the series.
MEASURED_SLICES = 16
#: Local means outside this range are treated as clipped (the residual there is not the noise).
UNCLIPPED = (0.02, 0.98)
#: The median of ``|x|`` for a standard normal ``x``: a median absolute value over this is a sigma.
NORMAL_MAD = 0.6745


def haar_blocks(image: Tensor) -> tuple[Tensor, Tensor]:
    """The 2x2 blocks of ``(..., H, W)`` (odd last row or column left out), in float64: each block's
    mean ``(a + b + c + d) / 4`` and its finest diagonal Haar detail ``(a - b - c + d) / 2``."""
    h, w = image.shape[-2] // 2 * 2, image.shape[-1] // 2 * 2
    x = image[..., :h, :w].double()
    a, b, c, d = x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    return (a + b + c + d) / 4, (a - b - c + d) / 2


def noise_sigma(image: Tensor) -> Tensor:
    """The sigma of white noise in the 2-D ``image``, from its finest diagonal Haar detail (Donoho).

    Every 2x2 block gives ``(a - b - c + d) / 2``, which white noise of sigma ``s`` leaves with
    sigma ``s`` and smooth signal with almost nothing; the median absolute value over the image,
    divided by :data:`NORMAL_MAD`, is the robust estimate of wavelet shrinkage (and of
    scikit-image's ``estimate_sigma``, without its PyWavelets dependency). Details of exactly 0
    are left out, as there: they come from constant blocks (clipped values, zero counts), whose
    noise is not the image's; counted, the zero background of a Poisson phantom measured 0.
    """
    _, detail = haar_blocks(image)
    detail = detail[detail != 0].abs()
    if detail.numel() == 0:
        return torch.zeros((), dtype=torch.float32)
    return (detail.median() / NORMAL_MAD).to(torch.float32)


def spread_indices(total: int, count: int) -> list[int]:
    """At most ``count`` of the indices ``0 .. total - 1``, evenly spread from the first to the last."""
    spread = torch.linspace(0, total - 1, min(total, count), dtype=torch.float64)
    return spread.round().long().unique().tolist()


def spread_slices(slices: Tensor, count: int = MEASURED_SLICES) -> Tensor:
    """At most ``count`` slices of ``(S, ...)``, evenly spread from the first to the last."""
    if slices.shape[0] <= count:
        return slices
    return slices[spread_indices(slices.shape[0], count)]


def lag_correlations(slices: Tensor, max_lag: int = MAX_STRIDE) -> list[float]:
    """Estimated noise correlation at lags ``1..max_lag`` (rows and columns pooled) of ``(S, H, W)``."""
    x = slices.float()
    residual = x - box_mean(x)
    energy = box_mean(residual**2)
    active = energy > 0
    if not active.any():
        return [0.0] * max_lag
    flat = active & (energy <= energy[active].median())
    r = residual * flat
    power = float((r * r).sum())
    if power <= 0:
        return [0.0] * max_lag
    correlations = []
    for lag in range(1, max_lag + 1):
        across = (r[:, :, lag:] * r[:, :, :-lag]).sum() / (r[:, :, lag:] ** 2).sum().clamp_min(1e-12)
        down = (r[:, lag:, :] * r[:, :-lag, :]).sum() / (r[:, lag:, :] ** 2).sum().clamp_min(1e-12)
        correlations.append(float(across + down) / 2)
    return correlations


def box_mean(slices: Tensor) -> Tensor:
    """Mean over the ``BOX x BOX`` neighbourhood of every pixel of ``(S, H, W)`` (edges reflected)."""
    padded = F.pad(slices.unsqueeze(1), (BOX // 2,) * 4, mode="reflect")
    return F.avg_pool2d(padded, BOX, stride=1).squeeze(1)


def decorrelating_stride(slices: Tensor) -> int:
    """The pixel spacing at which the noise of ``(S, H, W)`` is independent (1: white noise).

    The box-mean residual hides the weak tail of a correlation (a 3x3 binomial
    kernel's noise has rho = 0.67 at lag 1 and 0.17 at lag 2, measured as about
    0.47 and 0), so the stride is one beyond the last lag measured as correlated:
    3 for that kernel, which is what its noise needs (stride 2 leaves N2D's pairs
    sharing part of it; docs/benchmarks.md).
    """
    if min(slices.shape[-2:]) <= 2 * BOX:
        return 1
    correlated = 0
    for rho in lag_correlations(slices):
        if rho < CORRELATED_FROM:
            break
        correlated += 1
    if correlated == 0:
        return 2 if scale_ratio(slices) >= WIDE_FROM else 1
    return min(MAX_STRIDE, correlated + 2)


def scale_ratio(slices: Tensor) -> float:
    """Twice the noise sigma of ``(S, H, W)`` averaged over 2x2 blocks over its sigma (median over
    slices): 1 for white noise, more where the noise is correlated beyond neighbouring pixels."""
    ratios = []
    for image in slices:
        blocks, _ = haar_blocks(image)
        fine = float(noise_sigma(image))
        if fine > 0:
            ratios.append(2 * float(noise_sigma(blocks)) / fine)
    return float(torch.tensor(ratios).median()) if ratios else 1.0


def keep_structure(noisy: Tensor, denoised: Tensor) -> Tensor:
    """``denoised`` with the noisy pixels put back where it removed more than noise.

    ``E`` is the 7x7 mean of the squared residual ``noisy - denoised`` and
    ``sigma^2`` the median of ``E`` where ``denoised`` is flat (the flatter half of
    its unclipped pixels): where the denoiser removed noise only, ``E`` is about
    ``sigma^2``. From ``E = 3 sigma^2`` to ``6 sigma^2`` the output blends linearly to
    the noisy pixel. Where nothing was blurred the output is left nearly as it was;
    what it restores on the benchmark's phantom is in docs/benchmarks.md.
    """
    estimate = denoised.float()
    energy = box_mean((noisy.float() - estimate) ** 2)
    local_mean = box_mean(estimate)
    roughness = box_mean((estimate - local_mean) ** 2)
    unclipped = (local_mean > UNCLIPPED[0]) & (local_mean < UNCLIPPED[1])
    if not unclipped.any():
        return denoised
    flat = unclipped & (roughness <= roughness[unclipped].median())
    noise_power = float(energy[flat].median())
    if noise_power <= 0:
        return denoised
    excess = (energy / noise_power - STRUCTURE_FROM) / (STRUCTURE_AT - STRUCTURE_FROM)
    weight = excess.clamp(0, 1)
    return (denoised + weight * (noisy - denoised)).to(denoised.dtype)
