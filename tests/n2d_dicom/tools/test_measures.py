"""The physics measures of the bench on images whose answer is known (n2d_dicom/tools/measures.py)."""

import math

import numpy as np
import pytest
from scipy import ndimage

from n2d_dicom.tools import measures
from n2d_dicom.tools.measures import Edge


def disc(side: int = 96, radius: float = 15.0, contrast: float = 1.0) -> np.ndarray:
    rows, cols = np.indices((side, side)) - (side - 1) / 2
    return (np.hypot(rows, cols) <= radius).astype(np.float64)[np.newaxis] * contrast


@pytest.mark.parametrize("blur", [0.8, 1.5, 2.5])
def test_the_ttf_of_a_gaussian_blurred_insert_is_that_gaussian_s(blur):
    supersampled = disc(side=96 * 8, radius=15.0 * 8)[0]
    image = ndimage.gaussian_filter(supersampled, blur * 8).reshape(96, 8, 96, 8).mean(axis=(1, 3))
    noisy = image + np.random.default_rng(0).normal(0, 0.02, image.shape)
    f50, f10 = measures.edge_ttf(noisy[np.newaxis], Edge(((96 - 1) / 2, (96 - 1) / 2), 15.0))
    # A pixel's box adds its own blur (variance 1/12 pixel^2) to the Gaussian's.
    width = math.sqrt(blur**2 + 1 / 12)
    assert f50 == pytest.approx(math.sqrt(math.log(2) / (2 * math.pi**2 * width**2)), rel=0.08)
    assert f10 > f50


def test_the_nps_peak_is_where_the_noise_has_its_power():
    rng = np.random.default_rng(1)
    white = rng.normal(0, 1, (4, 128, 128))
    uniform = np.ones_like(white, dtype=bool)
    # Smoothed noise peaks at the lowest frequency; a difference of neighbours (a ramp-like filter,
    # as CT's) at high frequencies.
    smooth = ndimage.gaussian_filter(white, (0, 3, 3))
    sharp = white - ndimage.uniform_filter(white, (1, 3, 3))
    assert measures.nps_peak(smooth, uniform) == pytest.approx(1 / 32)
    assert measures.nps_peak(sharp, uniform) > 0.3
    assert measures.nps_peak(white, np.zeros_like(uniform)) is None  # no uniform patch


def test_noise_reduction_and_bias_in_uniform_regions():
    clean = disc(contrast=100.0)
    rng = np.random.default_rng(2)
    noisy = clean + rng.normal(0, 10, clean.shape)
    halved = clean + 3 + 0.5 * (noisy - clean)
    uniform = measures.uniform_mask(clean, noisy)
    assert 0.6 < uniform.mean() < 1  # all but the insert's edge
    assert measures.noise_reduction(clean, noisy, halved, uniform) == pytest.approx(50, abs=0.5)
    assert measures.bias(clean, halved, uniform) == pytest.approx(3, abs=0.2)


def test_anatomy_taken_out_with_the_noise_shows_in_the_residual():
    clean = ndimage.gaussian_filter(disc(contrast=100.0), (0, 1, 1))
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 10, clean.shape)
    noisy = clean + noise
    ideal = clean  # its residual is the noise alone
    blurred = ndimage.gaussian_filter(noisy, (0, 3, 3))  # takes the edge with the noise
    assert abs(measures.residual_edge_correlation(clean, noisy, ideal)) < 0.1
    assert measures.residual_edge_correlation(clean, noisy, blurred) > 0.3
