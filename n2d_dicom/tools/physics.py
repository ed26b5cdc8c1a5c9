"""Noise made the way scanners make it: low-dose CT and MR magnitude images.

:mod:`n2d_dicom.tools.phantom` adds noise to a clean image; here the noise comes out of the
measurement. A CT slice in HU becomes linear attenuation, parallel-beam projections
(scikit-image's ``radon``), Poisson photon counts at a chosen dose, their log, and a filtered back
projection (``iradon``, ramp filter): the noise has CT's own texture, correlated and streaky, and
its level follows the attenuation along each ray. The reference is the back projection of the
noiseless projections, so the only difference between reference and noisy image is the photon
noise (view sampling and the filter are shared). An MR magnitude image is the modulus of a
complex image whose real and imaginary parts carry Gaussian noise: Rician noise, which lifts the
dark background (the Rician bias) instead of averaging out there.

Used by ``n2d bench`` (its ``lowdose`` and ``rician`` cases); the figures it measured are in
docs/benchmarks.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Linear attenuation of water, per mm, near a CT beam's effective energy (about 70 keV).
MU_WATER_PER_MM = 0.019
#: Hounsfield units of air: attenuation below it is clipped to none.
AIR_HU = -1000.0
#: Projection angles over 180 degrees of a parallel-beam scan.
VIEWS = 360


@dataclass(frozen=True)
class LowDoseScan:
    """A slice scanned at a dose: the noiseless and the noisy reconstruction, both in HU."""

    reference_hu: np.ndarray
    """The filtered back projection of the noiseless projections."""
    noisy_hu: np.ndarray
    """The filtered back projection of the projections from Poisson photon counts."""
    inside: np.ndarray
    """Where the reconstruction is defined: the circle the scan covers."""

    @property
    def noise_hu(self) -> np.ndarray:
        """The photon noise alone, in HU (zero outside the scanned circle)."""
        return np.where(self.inside, self.noisy_hu - self.reference_hu, 0.0)


def attenuation(hu: np.ndarray, mu_water: float = MU_WATER_PER_MM) -> np.ndarray:
    """Linear attenuation per mm of ``hu``: ``mu_water * (1 + HU / 1000)``, nothing below air."""
    return mu_water * np.clip(1 + np.asarray(hu, dtype=np.float64) / 1000, 0, None)


def hounsfield(mu: np.ndarray, mu_water: float = MU_WATER_PER_MM) -> np.ndarray:
    """Hounsfield units of the attenuation ``mu`` per mm (the inverse of :func:`attenuation`)."""
    return 1000 * (mu / mu_water - 1)


def scan_circle(side: int) -> np.ndarray:
    """The pixels of a ``side x side`` image that every parallel-beam view crosses.

    The same circle scikit-image's ``radon`` assumes with ``circle=True``: centre ``side // 2``,
    radius ``side // 2``.
    """
    rows, cols = np.ogrid[:side, :side]
    centre = side // 2
    return (rows - centre) ** 2 + (cols - centre) ** 2 <= centre**2


def low_dose_scan(
    hu: np.ndarray, pixel_mm: float, photons: float, seed: int, views: int = VIEWS
) -> LowDoseScan:
    """Scan the square slice ``hu`` with ``photons`` per ray (before the body) and reconstruct it.

    Pixels outside :func:`scan_circle` are treated as air. Line integrals of the attenuation (mm
    per pixel ``pixel_mm``) give the expected counts ``photons * exp(-integral)``; the detected
    counts are Poisson draws (``seed``), a ray with none counted as half a photon so that the log
    stays finite. Lower ``photons`` means fewer counts and more noise, its standard deviation
    growing as ``1 / sqrt(photons)``.
    """
    from skimage.transform import iradon, radon

    if hu.ndim != 2 or hu.shape[0] != hu.shape[1]:
        raise ValueError(f"expected a square slice, got shape {hu.shape}")
    inside = scan_circle(hu.shape[0])
    mu_per_pixel = np.where(inside, attenuation(hu), 0.0) * pixel_mm
    angles = np.linspace(0.0, 180.0, views, endpoint=False)
    integrals = radon(mu_per_pixel, angles, circle=True)
    counts = np.random.default_rng(seed).poisson(photons * np.exp(-integrals))
    measured = -np.log(np.maximum(counts, 0.5) / photons)

    def reconstruct(sinogram: np.ndarray) -> np.ndarray:
        mu = iradon(sinogram, angles, filter_name="ramp", circle=True) / pixel_mm
        return np.where(inside, hounsfield(mu), AIR_HU)

    return LowDoseScan(reconstruct(integrals), reconstruct(measured), inside)


def rician_magnitude(magnitude: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """The magnitude image a receiver reports for ``magnitude``, noise ``sigma`` per channel.

    ``magnitude`` is taken as the modulus of a complex image of phase zero (the phase does not
    change the statistics: the noise is circular); independent Gaussian noise of ``sigma`` is
    added to its real and imaginary parts (``seed``) and the modulus taken. Where the signal is
    high the noise is nearly Gaussian; where it is nought the result is Rayleigh distributed, its
    mean ``sigma * sqrt(pi / 2)`` above zero.
    """
    rng = np.random.default_rng(seed)
    real = np.asarray(magnitude, dtype=np.float64) + rng.normal(0, sigma, magnitude.shape)
    imaginary = rng.normal(0, sigma, magnitude.shape)
    return np.hypot(real, imaginary)
