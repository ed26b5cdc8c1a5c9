"""Synthetic test data: a 3-D ellipsoid phantom and the noises N2D is benchmarked on.

Used by ``n2d bench``, ``n2d demo`` and the tests, so that all three measure
the same thing. Noise is added in [0, 1] and the result clipped to [0, 1], as
stored data is clipped to its range.
"""

from __future__ import annotations

import numpy as np

#: Standard deviation of the Gaussian noises, in [0, 1] units (25 of 255 grey levels).
SIGMA = 25 / 255
#: Photon count at intensity 1 for Poisson noise.
POISSON_PEAK = 30.0
NOISES = ("gaussian", "poisson", "correlated")
#: The 1-D binomial kernel that spreads the correlated noise, and the L2 norm of its 2-D outer
#: product, by which the filtered noise is rescaled to unit variance: 0.375 = 0.25^2 + 0.5^2 + 0.25^2.
BINOMIAL_TAPS = (0.25, 0.5, 0.25)
BINOMIAL_NORM = 0.375


def ellipsoid_phantom(slices: int, side: int, supersample: int = 4) -> np.ndarray:
    """A 3-D Shepp-Logan-like phantom of nested ellipsoids, ``(slices, side, side)`` in [0, 1].

    Slices span the middle of the head so that neighbours share structure, as
    consecutive CT or MR slices do. Each pixel averages ``supersample**2`` points,
    giving the partial-volume edges of a real scan instead of aliased 1-pixel steps.
    """
    fine = side * supersample
    z = np.linspace(-0.35, 0.35, slices)[:, None, None]
    y = ((np.arange(fine) + 0.5) / fine * 2 - 1)[None, :, None]
    x = y.reshape(1, 1, fine)
    # (centre z, y, x), (semi-axes z, y, x), added intensity
    ellipsoids = (
        ((0.0, 0.0, 0.0), (0.9, 0.92, 0.69), 0.8),
        ((0.0, -0.0184, 0.0), (0.88, 0.874, 0.6624), -0.6),
        ((0.0, 0.0, 0.22), (0.41, 0.31, 0.11), -0.2),
        ((0.0, 0.0, -0.22), (0.5, 0.41, 0.16), -0.2),
        ((0.25, 0.35, 0.0), (0.3, 0.25, 0.21), 0.3),
        ((0.0, 0.1, 0.0), (0.04, 0.046, 0.046), 0.3),
        ((0.0, -0.1, 0.0), (0.04, 0.046, 0.046), 0.3),
        ((0.0, -0.605, -0.08), (0.05, 0.023, 0.046), 0.3),
        ((-0.1, -0.6, 0.06), (0.05, 0.023, 0.023), 0.3),
    )
    volume = np.zeros((slices, fine, fine))
    for (cz, cy, cx), (az, ay, ax), value in ellipsoids:
        inside = ((z - cz) / az) ** 2 + ((y - cy) / ay) ** 2 + ((x - cx) / ax) ** 2 <= 1
        volume += value * inside
    volume = volume.reshape(slices, side, supersample, side, supersample).mean(axis=(2, 4))
    return (volume - volume.min()) / (volume.max() - volume.min())


def add_noise(clean: np.ndarray, noise: str, seed: int) -> np.ndarray:
    """``clean`` plus noise of the named kind, clipped to [0, 1] like stored data."""
    rng = np.random.default_rng(seed)
    if noise == "gaussian":
        noisy = clean + rng.normal(0, SIGMA, clean.shape)
    elif noise == "poisson":
        noisy = rng.poisson(clean * POISSON_PEAK) / POISSON_PEAK
    elif noise == "correlated":
        noisy = clean + SIGMA * binomial_filtered_noise(rng, clean.shape)
    else:
        raise ValueError(f"unknown noise {noise!r}")
    return np.clip(noisy, 0, 1)


def noise_spectrum(noise: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The power spectral density of the named noise on ``shape`` images, as BM3D takes it.

    BM3D's convention: ``|FFT2(k)|^2 * H * W`` for noise that is white noise filtered by ``k``, so
    that white noise of sigma ``s`` is ``s^2 * H * W`` everywhere. Exact for
    :func:`binomial_filtered_noise`, whose filtering is periodic. None for Poisson noise, whose
    variance follows the signal: it has no spectrum of its own.
    """
    if noise == "poisson":
        return None
    kernel = np.zeros(shape)
    if noise == "gaussian":
        kernel[0, 0] = SIGMA
    elif noise == "correlated":
        taps = np.outer(BINOMIAL_TAPS, BINOMIAL_TAPS) * SIGMA / BINOMIAL_NORM
        kernel[np.ix_([-1, 0, 1], [-1, 0, 1])] = taps
    else:
        raise ValueError(f"unknown noise {noise!r}")
    return np.abs(np.fft.fft2(kernel)) ** 2 * kernel.size


def binomial_filtered_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Unit-variance white noise filtered in-plane by the 3x3 binomial kernel, rescaled to unit variance.

    Neighbouring pixels correlate (0.67 horizontally), as CT noise does after a
    smooth reconstruction kernel; periodic boundaries keep the variance uniform.
    """
    white = rng.normal(0, 1, shape)
    taps = dict(zip((-1, 0, 1), BINOMIAL_TAPS))
    rows = np.add.reduce([w * np.roll(white, k, axis=-2) for k, w in taps.items()])
    field = np.add.reduce([w * np.roll(rows, k, axis=-1) for k, w in taps.items()])
    return field / BINOMIAL_NORM


def psnr(clean: np.ndarray, estimate: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB, on ``data_range`` (default: the clean image's range)."""
    peak = float(clean.max() - clean.min()) if data_range is None else data_range
    mse = float(np.mean((clean.astype(np.float64) - estimate.astype(np.float64)) ** 2))
    return float(10 * np.log10(peak**2 / mse))
