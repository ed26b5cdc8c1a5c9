"""The last step: an empirical Wiener filter in sliding-window DCTs, with N2D's output as its pilot.

BM3D's second step (Dabov et al. 2007) shrinks each transform coefficient of the
noisy image by ``P^2 / (P^2 + v)``, where ``P`` is the same coefficient of a
pilot estimate and ``v`` the noise variance of that coefficient: the pilot
decides, per frequency and per place, how much of the noisy coefficient is
signal. Here the transform is the orthonormal 2-D DCT of square windows (every
``side / 8`` pixels, as in Yu and Sapiro's sliding DCT) and the pilot is N2D's
output. Every pixel then averages the estimates of the 64 windows over it, each
weighted by ``1 / sum(shrink^2 v)``, the inverse of its estimate's noise
variance, so windows kept noisy count less.

The window side suits the image: large windows fit smooth anatomy, small ones
sharp, small structures. Each series takes the side of 8, 16 and 24 with the
least risk, Stein's unbiased estimate of the squared error, which needs no clean
image.

For white noise ``v`` is the variance the noise-level line fitted on the image
(:func:`n2d_dicom.variance.noise_level`) gives at the window's mean intensity, so
that signal-dependent (Poisson) noise is shrunk by its local level. Where that line
cannot be measured (too few flat, unclipped pixels) it is one number, the noise
sigma squared (:func:`n2d_dicom.noise.noise_sigma`). For correlated noise each
frequency has its own variance: the spectrum of the residual ``noisy - pilot``,
scaled to the noise variance measured on the decorrelated sub-images
(:func:`noise_models`). For white noise the residual is the worse estimate: the
pilot keeps some noise, so the residual under-measures it.

What each choice measured: docs/benchmarks.md, "Design choices, measured".
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from n2d_dicom.noise import noise_sigma, spread_indices, spread_slices
from n2d_dicom.variance import NoiseLevel, noise_level

log = logging.getLogger(__name__)

#: Window sides tried; each image series gets the one with the least estimated risk.
SIDES = (8, 16, 24)
#: The side on images whose sides are under twice the largest of :data:`SIDES`.
SMALL_IMAGE_SIDE = 16
#: Windows ``side / 8`` pixels apart, so every pixel lies in 64 windows whatever the side: nearly
#: the quality of a window at every position, for a fraction of the work.
WINDOWS_ACROSS = 8
#: At most this many slices, evenly spread, choose the side.
RISK_SLICES = 8
#: Window rows transformed at once; bounds memory to ``side^2 x BAND x width / step`` coefficients.
BAND = 64
#: Noise variances are at least this (in [0, 1] intensity units squared; a sigma of 1e-5).
MIN_VARIANCE = 1e-10
#: The median of the square of a standard normal value, to turn a median of squares into a variance.
CHI2_MEDIAN = 0.4549


@functools.lru_cache(maxsize=4)
def dct_matrix(side: int) -> Tensor:
    """The orthonormal DCT-II matrix: row ``k`` is the ``k``-th basis vector of length ``side``."""
    n = torch.arange(side, dtype=torch.float64)
    matrix = torch.cos(math.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * side)) * math.sqrt(2 / side)
    matrix[0] /= math.sqrt(2)
    return matrix.float()


def window_dct(images: Tensor, side: int, step: int = 1) -> Tensor:
    """The 2-D DCT of the ``side x side`` windows ``step`` pixels apart of ``(N, 1, H, W)``.

    Returns ``(N, side^2, rows, columns)``, one position per window; channel ``a * side + b``
    holds vertical frequency ``a``, horizontal ``b``. The transform is separable, so it runs as a
    vertical then a horizontal convolution: ``2 side`` multiplications a coefficient, not ``side^2``.
    """
    matrix = dct_matrix(side).to(images.device)
    vertical = F.conv2d(images, matrix.view(side, 1, side, 1), stride=(step, 1))  # (N, side, rows, W)
    n, _, rows, width = vertical.shape
    per_row = vertical.reshape(n * side, 1, rows, width)
    both = F.conv2d(per_row, matrix.view(side, 1, 1, side), stride=(1, step))
    return both.reshape(n, side * side, rows, both.shape[-1])


def _inverse_and_overlap(coefficients: Tensor, basis: Tensor, step: int, axis: int) -> Tensor:
    """Each window's 1-D inverse transform, added up where the windows lie along ``axis``.

    ``coefficients`` ``(B, k, rows, columns)`` hold one basis function a channel (``basis``
    ``(k, side)``), for windows ``step`` pixels apart along ``axis`` (2: down the rows, 3: across the
    columns). Windows overlap by whole ``step``-pixel blocks: pixel ``q * step + s`` of the window at
    position ``p`` is phase ``s`` of block ``p + q``. Returns ``(B, step, ...)``, one channel a phase,
    with ``side / step - 1`` more blocks than positions along ``axis``. The inverse transform runs as
    one matrix product for every window at once and the overlap as ``side / step`` shifted additions:
    faster on CPUs than the equivalent transposed convolution with a channel a phase, which oneDNN
    runs slowly there (docs/benchmarks.md).
    """
    batch, k, rows, columns = coefficients.shape
    taps = basis.shape[1] // step
    pixels = torch.matmul(basis.T, coefficients.reshape(batch, k, rows * columns))
    pixels = pixels.view(batch, taps, step, rows, columns)
    size = [batch, step, rows, columns]
    size[axis] += taps - 1
    summed = coefficients.new_zeros(size)
    for q in range(taps):
        summed.narrow(axis, q, coefficients.shape[axis]).add_(pixels[:, q])
    return summed


def _sum_back(coefficients: Tensor, basis: Tensor, step: int) -> Tensor:
    """``(N, 1, H, W)``: the windows of ``coefficients`` ``(N, k^2, rows, columns)`` (channel ``a * k + b``
    weighting ``basis[a]`` down times ``basis[b]`` across) summed back where they lie; separable,
    across the columns, then down the rows (:func:`_inverse_and_overlap`)."""
    n, _, rows, columns = coefficients.shape
    k = basis.shape[0]
    per_row = coefficients.reshape(n * k, k, rows, columns)
    # (n k, step phases, rows, column blocks), then the phases put back across
    horizontal = _inverse_and_overlap(per_row, basis, step, axis=3)
    across = horizontal.permute(0, 2, 3, 1).reshape(n, k, rows, -1)
    # (n, step phases, row blocks, width), then the phases put back down
    vertical = _inverse_and_overlap(across, basis, step, axis=2)
    return vertical.transpose(1, 2).reshape(n, 1, -1, vertical.shape[-1])


def window_sum(coefficients: Tensor, side: int, step: int = 1, squared: bool = False) -> Tensor:
    """Adjoint of :func:`window_dct`: every window's inverse DCT, added up where the windows lie.

    ``squared``: with the squares of the basis functions instead, which puts each pixel's share
    of a coefficient's variance where the pixel lies (for the risk estimate).
    """
    matrix = dct_matrix(side).to(coefficients.device)
    return _sum_back(coefficients, matrix.square() if squared else matrix, step)


def box_sum(values: Tensor, side: int, step: int) -> Tensor:
    """``(N, 1, H, W)``: one value per window ``(N, 1, rows, columns)`` added to every pixel of its
    ``side x side`` window, the windows ``step`` pixels apart (the weights' and noise power's sums)."""
    return _sum_back(values, values.new_ones(1, side), step)


def window_step(side: int) -> int:
    """Pixels between neighbouring windows of ``side``: about ``side / WINDOWS_ACROSS``, every pixel
    lying in ``WINDOWS_ACROSS^2`` windows; a divisor of ``side``, so that windows overlap by whole
    steps (:func:`window_sum`)."""
    return max(d for d in range(1, max(1, side // WINDOWS_ACROSS) + 1) if side % d == 0)


def _pad(images: Tensor, side: int, step: int) -> Tensor:
    """Reflect ``side - 1`` pixels on every edge, so that every pixel lies in as many windows as any
    other, then repeat the last row and column until the windows tile the padded image exactly."""
    padded = F.pad(images, (side - 1,) * 4, mode="reflect")
    extra_rows, extra_columns = (-(padded.shape[-2] - side) % step), (-(padded.shape[-1] - side) % step)
    return F.pad(padded, (0, extra_columns, 0, extra_rows), mode="replicate")


#: The noise variance of every coefficient of every window, from the windows' mean intensity
#: ``(N, 1, rows, columns)``; broadcast against the coefficients ``(N, side^2, rows, columns)``.
NoiseModel = Callable[[Tensor], Tensor]


def wiener_filter(
    noisy: Tensor, pilot: Tensor, noise: NoiseModel, side: int, risk: bool = False
) -> tuple[Tensor, Tensor]:
    """Empirical Wiener filter of ``(N, 1, H, W)`` images in ``side x side`` windows, and their risks.

    ``H`` and ``W`` must be at least ``side``. With ``risk``, the second tensor ``(N, 1, H, W)``
    holds each pixel's term of Stein's unbiased estimate of the squared error (SURE), taking the
    pilot as fixed: the estimate is then linear in the noisy image, ``A y``, and the risk is
    ``|y - A y|^2 - tr(C) + 2 tr(A C)``, with ``C`` the noise covariance, diagonal in each window's
    DCT. It is unbiased at least ``side / 2`` pixels from the edges: nearer, windows also hold the
    pixel's reflection, which the trace leaves out. The pilot does depend on the noise, so the
    figure is biased, alike for every side: it ranks sides, it does not predict PSNR. Without
    ``risk`` the second tensor is empty.
    """
    step = window_step(side)
    h, w = noisy.shape[-2:]
    noisy_padded, pilot = _pad(noisy, side, step), _pad(pilot, side, step)
    numerator, weights = torch.zeros_like(noisy_padded), torch.zeros_like(noisy_padded)
    kept_noise, noise_power = torch.zeros_like(noisy_padded), torch.zeros_like(noisy_padded)
    positions = (noisy_padded.shape[-2] - side) // step + 1
    for first in range(0, positions, BAND):
        last = min(first + BAND, positions) - 1
        rows = slice(first * step, last * step + side)
        signal = window_dct(pilot[..., rows, :], side, step)
        variance = noise(signal[:, :1] / side).clamp_min(MIN_VARIANCE)  # DC / side: the window's mean
        signal.square_()
        shrink = signal / (signal + variance)
        weight = 1 / (shrink.square() * variance).sum(dim=1, keepdim=True).clamp_min(MIN_VARIANCE)
        estimate = window_dct(noisy_padded[..., rows, :], side, step).mul_(shrink).mul_(weight)
        numerator[..., rows, :] += window_sum(estimate, side, step)
        weights[..., rows, :] += box_sum(weight, side, step)
        if risk:
            kept_noise[..., rows, :] += window_sum(
                shrink.mul_(variance).mul_(weight), side, step, squared=True
            )
            window_power = torch.broadcast_to(variance, signal.shape).mean(dim=1, keepdim=True)
            noise_power[..., rows, :] += box_sum(window_power * weight, side, step)

    def crop(sums: Tensor) -> Tensor:
        return (sums / weights)[..., side - 1 : side - 1 + h, side - 1 : side - 1 + w]

    out = crop(numerator)
    if not risk:
        return out, torch.empty(0)
    return out, (noisy - out).square() - crop(noise_power) + 2 * crop(kept_noise)


def residual_spectrum(noisy: Tensor, pilot: Tensor, side: int) -> Tensor:
    """Noise variance of each DCT coefficient ``(side^2,)``, measured on ``noisy - pilot`` ``(N, 1, H, W)``.

    The median over windows, so that structure the pilot left in the residual counts little.
    """
    step = window_step(side)
    coefficients = window_dct(noisy - pilot, side, step).square().transpose(0, 1).flatten(1)
    return coefficients.median(dim=1).values / CHI2_MEDIAN


def constant(variance: Tensor) -> NoiseModel:
    """Noise whose variance does not depend on the intensity (one number, or one per coefficient)."""
    return lambda _mean: variance


def by_intensity(level: NoiseLevel) -> NoiseModel:
    """Signal-dependent noise: the variance ``level`` gives at each window's mean intensity."""
    return lambda mean: level.gain * mean.clamp(0, 1) + level.floor


#: The noise model of one slice ``(1, 1, H, W)`` with its pilot, for windows of a side.
ModelFor = Callable[[Tensor, Tensor, int], NoiseModel]


def noise_models(noisy: Tensor, stride: int) -> ModelFor:
    """How the noise of the ``(S, 1, 1, H, W)`` slices is modelled, given N2D's sampling ``stride``.

    White noise (stride 1): where the noise level can be measured by intensity
    (:func:`n2d_dicom.variance.noise_level`, fitted on up to 16 slices spread over the series),
    the variance it gives; else
    each slice's :func:`n2d_dicom.noise.noise_sigma` squared. Correlated noise: each slice's
    residual spectrum, rescaled to the noise's total variance measured on the decorrelated
    ``stride x stride`` sub-images, where it is white. The residual alone under-measures it
    wherever the pilot keeps some noise.
    """
    if stride > 1:
        power = decorrelated_power(spread_slices(noisy[:, 0, 0]), stride)

        def correlated(y: Tensor, p: Tensor, side: int) -> NoiseModel:
            spectrum = residual_spectrum(y, p, side)
            return constant((spectrum * power / spectrum.mean().clamp_min(MIN_VARIANCE)).view(1, -1, 1, 1))

        return correlated
    level = noise_level(spread_slices(noisy[:, 0, 0]))
    if level is not None:
        return lambda _y, _p, _side: by_intensity(level)
    return lambda y, _p, _side: constant(noise_sigma(y[0, 0]).square())


def decorrelated_power(slices: Tensor, stride: int) -> float:
    """The noise variance of ``(S, H, W)``: the median :func:`n2d_dicom.noise.noise_sigma` squared of
    the ``stride x stride`` pixel-unshuffled sub-images of every slice, whose noise is white."""
    sigmas = [
        noise_sigma(image[i::stride, j::stride])
        for image in slices
        for i in range(stride)
        for j in range(stride)
    ]
    return float(torch.stack(sigmas).median()) ** 2


def least_risk_side(noisy: Tensor, pilot: Tensor, model_for: ModelFor) -> tuple[int, dict[int, Tensor]]:
    """The side of :data:`SIDES` with the least summed risk on up to :data:`RISK_SLICES` of the
    ``(S, 1, 1, H, W)`` slices, counted where every side's risk is unbiased; one side for the whole
    series. Images under ``2 max(SIDES)`` pixels a side take :data:`SMALL_IMAGE_SIDE`.

    Also returns the estimates at that side of the slices it was chosen on, by slice index, so
    that they are not filtered twice.
    """
    margin = max(SIDES) // 2
    shortest = min(noisy.shape[-2:])
    if shortest < 4 * margin:
        return min(SMALL_IMAGE_SIDE, shortest), {}
    sample = spread_indices(len(noisy), RISK_SLICES)
    trials = {
        side: [
            wiener_filter(noisy[k], pilot[k], model_for(noisy[k], pilot[k], side), side, True) for k in sample
        ]
        for side in SIDES
    }
    risks = [
        float(torch.cat([r for _, r in trials[side]])[..., margin:-margin, margin:-margin].sum())
        for side in SIDES
    ]
    side = SIDES[risks.index(min(risks))]
    log.debug("wiener: window side %d (risks %s)", side, ", ".join(f"{r:.3g}" for r in risks))
    return side, {k: estimate for k, (estimate, _) in zip(sample, trials[side])}


def wiener_refine(noisy: Tensor, pilot: Tensor, stride: int) -> tuple[Tensor, int]:
    """``(S, H, W)`` slices in [0, 1] refined by :func:`wiener_filter` with ``pilot`` as the pilot.

    ``stride`` is the one N2D sampled the slices at (1: white noise), for :func:`noise_models`;
    the window side is :func:`least_risk_side`'s, and is returned with the float32 slices.
    Runs on ``pilot``'s device.
    """
    noisy = noisy.to(pilot.device, torch.float32)[:, None, None]
    pilot = pilot.float()[:, None, None]
    model_for = noise_models(noisy, stride)
    side, done = least_risk_side(noisy, pilot, model_for)
    outputs = [
        done[k] if k in done else wiener_filter(y, p, model_for(y, p, side), side)[0]
        for k, (y, p) in enumerate(zip(noisy, pilot))
    ]
    return torch.cat(outputs)[:, 0].clamp(0, 1), side
