"""Signal-dependent noise: measure how its variance grows with intensity, and stabilise it.

Photon-counting noise (low-dose CT before reconstruction, MR magnitude at low
SNR, X-ray, PET) has a variance that grows with the signal, ``var = gain * y +
floor`` (Poisson-Gaussian). N2D's losses weigh every pixel alike, so bright areas,
whose noise is largest, dominate training. The generalised Anscombe transform
(GAT) maps such data to noise of unit variance everywhere; N2D denoises that, and
the closed-form approximation of the exact unbiased inverse (Makitalo and Foi,
IEEE TIP 2011 and 2013) maps the result back without the bias a plain algebraic
inverse leaves at low counts.

The noise-level line is fitted on the image itself: the residual of a 7x7 box
mean, where the image is flatter than its median (edges left out), binned by
local mean into :data:`BINS` intensity bins, gives one variance per bin. Areas
touching the image's minimum or maximum (clipped values, zero counts) are left
out, as their variance there is not the noise's.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from n2d_dicom.noise import BOX, box_mean
from n2d_dicom.settings import Anscombe

log = logging.getLogger(__name__)

#: Intensity bins along which the noise variance is measured.
BINS = 16
#: The variance at the brightest measured intensity must reach this many times that at the darkest
#: for ``auto`` to call the noise signal-dependent (white Gaussian measures about 1, Poisson from
#: 0.2 to 0.9 of the peak about 4.5).
DEPENDENT_FROM = 2.0
#: The narrowest intensity range (of [0, 1]) over which noise may be called signal-dependent.
MIN_SPAN = 0.3
#: Boxes with more than this share of pixels at the image's minimum or maximum are left out (one
#: such pixel in a 7x7 box is allowed: Gaussian noise 2 sigma from a clipped end clips 2% of pixels).
MAX_EXTREME = 1.5 / BOX**2
#: Fewer measurable pixels than this, and the noise is taken as it is.
MIN_PIXELS = 64 * BINS


@dataclass(frozen=True)
class NoiseLevel:
    """``var(y) = gain * y + floor`` for ``y`` in [0, 1], and the intensities it was measured over."""

    gain: float
    floor: float
    darkest: float
    brightest: float

    def variance(self, y: float) -> float:
        """The noise variance at intensity ``y``."""
        return self.gain * y + self.floor

    @property
    def signal_dependent(self) -> bool:
        """True when the variance grows by :data:`DEPENDENT_FROM` or more over a measured range of
        :data:`MIN_SPAN` or more (a narrow range, e.g. one tissue next to clipped air, proves nothing)."""
        dark = self.variance(self.darkest)
        grows = self.variance(self.brightest) >= DEPENDENT_FROM * max(dark, 1e-12)
        return self.gain > 0 and grows and self.brightest - self.darkest >= MIN_SPAN


def noise_level(slices: Tensor) -> NoiseLevel | None:
    """The noise-level line of ``(S, H, W)`` slices in [0, 1], or None where it cannot be measured."""
    x = slices.float()
    local_mean = box_mean(x)
    residual = x - local_mean
    energy = box_mean(residual**2) * (BOX * BOX) / (BOX * BOX - 1)  # unbiased for white noise
    extreme = ((x <= x.min()) | (x >= x.max())).float()
    gradient = _gradient_energy(local_mean)
    usable = (energy > 0) & (box_mean(extreme) <= MAX_EXTREME)
    if int(usable.sum()) < 2 * MIN_PIXELS:  # the flatter half must leave MIN_PIXELS
        return None
    flat = usable & (gradient <= gradient[usable].median())
    means, variances = _binned_variances(local_mean[flat], energy[flat])
    gain, floor = _fit_line(means, variances)
    return NoiseLevel(gain, floor, float(means.min()), float(means.max()))


def _gradient_energy(image: Tensor) -> Tensor:
    """Squared central-difference gradient of ``(S, H, W)``: large on edges, small where flat."""
    padded = F.pad(image.unsqueeze(1), (1, 1, 1, 1), mode="replicate").squeeze(1)
    across = padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2]
    down = padded[:, 2:, 1:-1] - padded[:, :-2, 1:-1]
    return across**2 + down**2


def _binned_variances(means: Tensor, energy: Tensor) -> tuple[Tensor, Tensor]:
    """Median intensity and median noise variance of each of :data:`BINS` equally full intensity bins."""
    order = torch.argsort(means)
    chunks = torch.tensor_split(order, BINS)
    centres = torch.stack([means[chunk].median() for chunk in chunks])
    variances = torch.stack([energy[chunk].median() for chunk in chunks])
    return centres.double(), variances.double()


def _fit_line(means: Tensor, variances: Tensor) -> tuple[float, float]:
    """Least-squares ``variance = gain * mean + floor`` with ``gain, floor >= 0``."""
    design = torch.stack([means, torch.ones_like(means)], dim=1)
    gain, floor = torch.linalg.lstsq(design, variances.unsqueeze(1)).solution.squeeze(1).tolist()
    if gain <= 0:
        return 0.0, float(variances.mean())
    if floor < 0:
        return float((variances * means).sum() / (means * means).sum()), 0.0
    return gain, floor


@dataclass(frozen=True)
class GeneralisedAnscombe:
    """The GAT for ``var(y) = gain * y + floor``, rescaled so that its output spans [0, 1].

    In count units (``y / gain``, Gaussian variance ``floor / gain^2``) the GAT is
    ``2 sqrt(count + 3/8 + sigma^2)``, whose noise has unit variance.
    """

    level: NoiseLevel
    low: float
    high: float

    @classmethod
    def fitted(cls, level: NoiseLevel) -> GeneralisedAnscombe:
        """The transform for ``level``, scaled to map [0, 1] onto [0, 1]."""
        unscaled = cls(level, 0.0, 1.0)
        ends = unscaled.forward(torch.tensor([0.0, 1.0], dtype=torch.float64))
        return cls(level, float(ends[0]), float(ends[1]))

    @property
    def _gaussian_variance(self) -> float:
        return self.level.floor / self.level.gain**2

    def forward(self, y: Tensor) -> Tensor:
        """Stabilised values in [0, 1] of ``y`` in [0, 1]."""
        counts = y.double() / self.level.gain
        stabilised = 2 * torch.sqrt((counts + 0.375 + self._gaussian_variance).clamp_min(0))
        return ((stabilised - self.low) / (self.high - self.low)).to(y.dtype)

    def inverse(self, denoised: Tensor) -> Tensor:
        """``y`` in [0, 1] from denoised stabilised values: the unbiased inverse, not the algebraic one."""
        d = (denoised.double() * (self.high - self.low) + self.low).clamp_min(1e-3)
        root = math.sqrt(1.5)
        counts = (
            d**2 / 4 + root / (4 * d) - 11 / (8 * d**2) + 5 * root / (8 * d**3) - 0.125
        ) - self._gaussian_variance
        return (counts.clamp_min(0) * self.level.gain).clamp(0, 1).to(denoised.dtype)


def stabiliser_for(slices: Tensor, choice: Anscombe) -> GeneralisedAnscombe | None:
    """The transform the ``anscombe`` setting asks for on ``slices``, or None to denoise them as they are."""
    if choice == "off":
        return None
    level = noise_level(slices)
    if level is None or level.gain <= 0:
        if choice == "on":
            log.warning("anscombe: the noise does not measure as signal-dependent; denoising without it")
        return None
    if choice == "auto" and not level.signal_dependent:
        return None
    return GeneralisedAnscombe.fitted(level)
