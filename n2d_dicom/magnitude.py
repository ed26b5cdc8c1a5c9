"""MR magnitude data: the noise floor of a modulus, measured and taken out.

An MR magnitude image is the modulus of complex data whose real and imaginary parts carry
Gaussian noise of sigma ``s`` (per coil channel; a sum of squares over ``L`` channels gives
non-central chi noise with ``2L`` degrees of freedom). The modulus cannot go below zero, so noise
does not average out where the signal is low: a denoiser that estimates the local mean returns
``E[M] = s * sqrt(pi/2)`` in air (``L = 1``) and lifts every dark tissue. This module measures
``s`` on the image and maps a denoised mean back to the signal by inverting the exact mean of the
non-central chi distribution,

    E[M | A] = s * sqrt(pi/2) * (2L-1)!! / (2^(L-1) (L-1)!) * 1F1(-1/2; L; -A^2 / (2 s^2)),

(Koay and Basser, JMR 2006), which is the unbiased inverse for a denoiser that returns the mean:
below the floor ``E[M | 0]`` the signal is 0, far above it ``A = sqrt(E[M]^2 - (2L-1) s^2)``.

``s`` is measured where the image is background: in 7x7 boxes whose ratio of squared mean to
mean square is that of a central chi distribution (``pi/4`` for ``L = 1``; tissue boxes measure
near 1), ``s^2`` is the median mean square over ``2L``; and in the brightest tissue, where the
noise is Gaussian of sigma ``s``. Where both agree the image has a magnitude's background: that
is how ``auto`` knows magnitude data (a CT's air, a phase image, a zero-filled or clipped
background, or dark tissue at low SNR does not pass). With ``on`` and no such background (a crop
inside the anatomy), ``s`` is the brightest tissue's.

Unit values must keep stored 0 at 0 (:meth:`~n2d_dicom.intensity.IntensityMap.from_array` with
``keep_zero``), since the floor is measured from zero signal.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from n2d_dicom.noise import NORMAL_MAD, box_mean, haar_blocks
from n2d_dicom.settings import Rician

log = logging.getLogger(__name__)

#: A box is background when its squared mean over its mean square is within this of the central
#: chi value (a box of 49 Rayleigh samples spreads about 0.03 around it).
RATIO_TOLERANCE = 0.06
#: The darkest boxes, this share of all, must be background for ``auto`` to call the data magnitude
#: and for the background to give sigma: most of them must pass the ratio test.
DARKEST = 0.03
#: The mean is tabulated for signals up to this many sigma (above, the asymptote is exact to 1e-4),
#: at this many points.
TABLE_TOP, TABLE_POINTS = 40.0, 8001
#: The tissue's sigma is measured on the brightest blocks, above this quantile of them.
BRIGHT_QUANTILE = 0.9
#: A background's sigma and the brightest tissue's must agree within this share.
AGREEMENT = 0.25


@dataclass(frozen=True)
class MagnitudeNoise:
    """The noise of a magnitude image: ``sigma`` per channel (unit values), over ``coils`` channels."""

    sigma: float
    coils: int
    from_background: bool

    def inverse(self, denoised: Tensor) -> Tensor:
        """The signal whose magnitude has the mean ``denoised`` (in unit values, 0 = no signal)."""
        if self.sigma <= 0:
            return denoised
        signal, mean = _mean_table(self.coils)
        ratio = denoised.double().cpu().numpy() / self.sigma
        top = ratio > mean[-1]
        out = np.interp(ratio, mean, signal, left=0.0)
        out[top] = np.sqrt(ratio[top] ** 2 - (2 * self.coils - 1))
        return torch.from_numpy(out * self.sigma).to(denoised.dtype).clamp(0, 1)

    @property
    def floor(self) -> float:
        """``E[M]`` where there is no signal, in unit values: what air measures."""
        return float(_mean_table(self.coils)[1][0]) * self.sigma


def chi_mean(signal: np.ndarray, coils: int) -> np.ndarray:
    """``E[M] / s`` of a non-central chi magnitude (``2 * coils`` degrees of freedom) at ``signal / s``."""
    from scipy.special import hyp1f1

    # (2L-1)!! / (2^(L-1) (L-1)!) = (2L)! / (2^L L! 2^(L-1) (L-1)!)
    scale = math.exp(
        math.lgamma(2 * coils + 1)
        - math.lgamma(coils + 1)
        - math.lgamma(coils)
        - (2 * coils - 1) * math.log(2)
    )
    return math.sqrt(math.pi / 2) * scale * hyp1f1(-0.5, coils, -np.square(signal) / 2)


@lru_cache(maxsize=8)
def _mean_table(coils: int) -> tuple[np.ndarray, np.ndarray]:
    signal = np.linspace(0.0, TABLE_TOP, TABLE_POINTS)
    return signal, np.maximum.accumulate(chi_mean(signal, coils))


def central_ratio(coils: int) -> float:
    """``E[M]^2 / E[M^2]`` where there is no signal: ``Gamma(L + 1/2)^2 / (L Gamma(L)^2)``."""
    return math.exp(2 * math.lgamma(coils + 0.5) - 2 * math.lgamma(coils)) / coils


def background_sigma(slices: Tensor, coils: int) -> float | None:
    """Sigma per channel from the background of ``(S, H, W)`` magnitude slices, or None where the
    darkest :data:`DARKEST` of the 7x7 boxes are not, in the main, a central chi background.

    The darkest boxes only decide whether there is a background: being picked for a low mean, their
    noise is lower than the background's. Sigma comes from every box that passes the ratio test up
    to twice the darkest ones' mean, which takes in the whole background."""
    x = slices.double()
    mean, square = box_mean(x).flatten(), box_mean(x * x).flatten()
    ratio = mean.square() / square.clamp_min(1e-30)
    chi = (square > 0) & ((ratio - central_ratio(coils)).abs() <= RATIO_TOLERANCE)
    darkest = torch.argsort(mean)[: max(1, int(DARKEST * mean.numel()))]
    # Zero-filled air, clipped Gaussian noise (ratio 1/pi) or tissue (near 1) fail here.
    if float(chi[darkest].double().mean()) < 0.5:
        return None
    background = chi & (mean <= 2 * mean[darkest][chi[darkest]].median())
    return math.sqrt(float(square[background].median()) / (2 * coils))


def bright_sigma(slices: Tensor) -> float:
    """Sigma per channel where the signal is highest: the white-noise estimate
    (:func:`~n2d_dicom.noise.noise_sigma`'s diagonal Haar details) over the 2x2 blocks brighter than
    :data:`BRIGHT_QUANTILE` of them, where a magnitude's noise is Gaussian of that sigma."""
    mean, detail = haar_blocks(slices)
    bright = mean >= torch.quantile(mean.flatten().float(), BRIGHT_QUANTILE).double()
    return float(detail[bright].abs().median()) / NORMAL_MAD


def magnitude_noise(slices: Tensor, choice: Rician, coils: int) -> MagnitudeNoise | None:
    """What the ``rician`` setting asks for on ``slices`` in [0, 1]: the noise to take out, or None.

    A background counts only where its sigma agrees with the brightest tissue's (within
    :data:`AGREEMENT`): dark tissue at low SNR passes the ratio test too, and would put its
    signal into sigma."""
    if choice == "off" or float(slices.min()) < 0:
        return None
    background = background_sigma(slices, coils)
    if background is None and choice == "auto":
        return None
    tissue = bright_sigma(slices)
    if background is not None and abs(background / max(tissue, 1e-12) - 1) <= AGREEMENT:
        return MagnitudeNoise(background, coils, True)
    if choice == "auto":
        return None
    log.info(
        "rician: no background agrees with the tissue's noise; sigma %.4g measured in the tissue", tissue
    )
    return MagnitudeNoise(tissue, coils, False)
