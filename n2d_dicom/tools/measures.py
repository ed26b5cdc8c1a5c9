"""The measures a physicist reads a denoiser by, beside PSNR: noise, bias, resolution, texture,
and anatomy left in the residual.

As AAPM TG-233 and CT denoisers' 510(k) summaries report them, each against the noiseless
reference of a simulated scan:

- **noise reduction**: the standard deviation of the error in uniform regions (where the reference
  varies by less than a quarter of the noise), in % of the noisy image's;
- **bias**: the mean error there, in the case's units (HU for CT), which a magnitude's noise floor
  makes large in MR air;
- **resolution**: the task transfer function of a circular insert's edge, from a Gaussian-blurred
  step fitted to the radial edge profile (robust to the noise one realisation leaves), its 50%
  and 10% frequencies;
- **texture**: the noise power spectrum of the error in uniform square patches, its peak frequency
  (a denoiser that leaves blotchy, low-frequency noise moves the peak down);
- **anatomy in the residual**: the correlation between the local energy of what the method took
  out (``noisy - estimate``) and the reference's gradient: 0 for a residual that is noise alone,
  positive where edges were taken out with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Side of the boxes of local statistics, and of the patches of the noise power spectrum.
BOX = 7
NPS_PATCH = 32
#: A region is uniform where the reference's local standard deviation is below this share of the noise.
UNIFORM_FROM_NOISE = 0.25


def local_std(image: np.ndarray) -> np.ndarray:
    """Standard deviation in :data:`BOX` x :data:`BOX` boxes of each slice of ``(S, H, W)``."""
    size = (1, BOX, BOX)
    mean = ndimage.uniform_filter(image, size, mode="reflect")
    square = ndimage.uniform_filter(image * image, size, mode="reflect")
    return np.sqrt(np.maximum(square - mean * mean, 0))


def uniform_mask(clean: np.ndarray, noisy: np.ndarray) -> np.ndarray:
    """Where the reference is flat (local standard deviation below :data:`UNIFORM_FROM_NOISE` x the
    noise) and there is noise (not outside a scan's field of view, where both images are air)."""
    error = noisy - clean
    return (local_std(clean) <= UNIFORM_FROM_NOISE * float(np.std(error))) & (error != 0)


def noise_reduction(clean: np.ndarray, noisy: np.ndarray, estimate: np.ndarray, mask: np.ndarray) -> float:
    """100 x (1 - std of the estimate's error / std of the noisy image's error) where ``mask``."""
    return 100 * (1 - float(np.std((estimate - clean)[mask])) / float(np.std((noisy - clean)[mask])))


def bias(clean: np.ndarray, estimate: np.ndarray, mask: np.ndarray) -> float:
    """Mean error where ``mask``, in the images' units."""
    return float(np.mean((estimate - clean)[mask]))


def nps_peak(error: np.ndarray, mask: np.ndarray) -> float | None:
    """Peak frequency (cycles per pixel) of the radially averaged noise power spectrum of ``error``
    over :data:`NPS_PATCH`-square patches wholly in ``mask``; None where there is no such patch."""
    spectra = []
    for index in range(error.shape[0]):
        inside = ndimage.minimum_filter(mask[index].astype(np.uint8), NPS_PATCH, mode="constant") > 0
        for top, left in _patch_corners(inside):
            patch = error[index, top : top + NPS_PATCH, left : left + NPS_PATCH]
            spectra.append(np.abs(np.fft.fft2(patch - patch.mean())) ** 2)
    if not spectra:
        return None
    power = np.fft.fftshift(np.mean(spectra, axis=0))
    frequencies = np.fft.fftshift(np.fft.fftfreq(NPS_PATCH))
    radius = np.hypot(*np.meshgrid(frequencies, frequencies, indexing="ij"))
    rings = np.rint(radius * NPS_PATCH).astype(int)
    radial = np.bincount(rings.ravel(), power.ravel()) / np.maximum(np.bincount(rings.ravel()), 1)
    usable = radial[1 : NPS_PATCH // 2 + 1]  # from the lowest non-zero frequency up to Nyquist
    return float((np.argmax(usable) + 1) / NPS_PATCH)


def _patch_corners(centres: np.ndarray) -> list[tuple[int, int]]:
    """Top-left corners of non-overlapping patches whose centre lies where ``centres`` is true."""
    half = NPS_PATCH // 2
    corners = []
    for top in range(0, centres.shape[0] - NPS_PATCH + 1, NPS_PATCH):
        for left in range(0, centres.shape[1] - NPS_PATCH + 1, NPS_PATCH):
            if centres[top + half, left + half]:
                corners.append((top, left))
    return corners


def residual_edge_correlation(clean: np.ndarray, noisy: np.ndarray, estimate: np.ndarray) -> float:
    """Pearson correlation of the residual's local energy with the reference's gradient magnitude."""
    residual = noisy - estimate
    energy = ndimage.uniform_filter(residual * residual, (1, BOX, BOX), mode="reflect")
    gradient = np.hypot(ndimage.sobel(clean, axis=1), ndimage.sobel(clean, axis=2))
    if np.std(energy) == 0 or np.std(gradient) == 0:
        return 0.0
    return float(np.corrcoef(energy.ravel(), gradient.ravel())[0, 1])


@dataclass(frozen=True)
class Edge:
    """A circular insert: centre (row, column) and radius in pixels, on slice ``index``."""

    centre: tuple[float, float]
    radius: float
    index: int = 0


def edge_ttf(image: np.ndarray, edge: Edge) -> tuple[float, float] | None:
    """50% and 10% frequencies (cycles per pixel) of the task transfer function of ``edge`` in
    ``image`` (``(S, H, W)``): a step blurred by a Gaussian of width ``s`` fitted to the pixels
    within 2.5 radii, whose MTF is ``exp(-2 pi^2 s^2 f^2)``. None where the fit fails."""
    from scipy.optimize import curve_fit
    from scipy.special import erf

    rows, cols = np.indices(image.shape[1:])
    distance = np.hypot(rows - edge.centre[0], cols - edge.centre[1])
    near = distance <= 2.5 * edge.radius
    r, values = distance[near], image[edge.index][near]

    def blurred_step(radius: np.ndarray, inside: float, outside: float, blur: float) -> np.ndarray:
        return outside + (inside - outside) * 0.5 * (1 - erf((radius - edge.radius) / (math.sqrt(2) * blur)))

    start = (float(values[r < edge.radius * 0.6].mean()), float(values[r > edge.radius * 1.5].mean()), 1.0)
    try:
        (_, _, blur), _ = curve_fit(blurred_step, r, values, p0=start, maxfev=4000)
    except (RuntimeError, ValueError):
        return None
    blur = abs(float(blur))
    if blur < 1e-3:
        return None
    at = lambda level: math.sqrt(-math.log(level) / (2 * math.pi**2 * blur**2))  # noqa: E731
    return at(0.5), at(0.1)
