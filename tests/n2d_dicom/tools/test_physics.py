"""The scanner-made noises of ``n2d bench``: low-dose CT and Rician MR, checked by their physics."""

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from n2d_dicom.tools.phantom import ellipsoid_phantom
from n2d_dicom.tools.physics import (
    MU_WATER_PER_MM,
    attenuation,
    hounsfield,
    low_dose_scan,
    rician_magnitude,
    scan_circle,
)
from tests.n2d_dicom.conftest import data_file

PHOTONS = 1e5


@pytest.fixture(scope="module")
def head_hu() -> tuple[np.ndarray, float]:
    """The real CT head slice in HU, binned 4x4 to 128x128 to keep the projections quick."""
    ds = pydicom.dcmread(data_file("693_UNCI.dcm"))
    hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    return hu.reshape(128, 4, 128, 4).mean(axis=(1, 3)), 4 * float(ds.PixelSpacing[0])


@pytest.fixture(scope="module")
def scans(head_hu):
    """The slice scanned at a dose and at a quarter of it (the same seed)."""
    hu, pixel_mm = head_hu
    return [low_dose_scan(hu, pixel_mm, photons, seed=1, views=180) for photons in (PHOTONS, PHOTONS / 4)]


def test_attenuation_is_water_at_zero_hu_and_nothing_below_air():
    assert attenuation(np.array([0.0]))[0] == pytest.approx(MU_WATER_PER_MM)
    assert attenuation(np.array([-1000.0, -3000.0])).tolist() == [0.0, 0.0]
    hu = np.array([-500.0, 40.0, 1500.0])
    np.testing.assert_allclose(hounsfield(attenuation(hu)), hu)


def test_the_back_projection_of_noiseless_projections_is_close_to_the_source_slice(head_hu, scans):
    hu, _ = head_hu
    source, reference, inside = np.clip(hu, -1000, None), scans[0].reference_hu, scans[0].inside
    error = reference[inside] - source[inside]
    assert np.sqrt(np.mean(error**2)) < 0.03 * np.ptp(source[inside])
    assert np.corrcoef(reference[inside], source[inside])[0, 1] > 0.99
    assert (reference[~inside] == -1000).all()  # outside the scanned circle: air


def test_low_dose_noise_is_zero_mean_and_its_std_follows_the_dose(scans):
    full, quarter = (scan.noise_hu[scan.inside] for scan in scans)
    for noise in (full, quarter):
        assert noise.std() > 0
        assert abs(noise.mean()) < 0.05 * noise.std()
    # Poisson counts: a quarter of the photons doubles the noise's standard deviation.
    assert quarter.std() / full.std() == pytest.approx(2, rel=0.15)
    # Both scans share the reference; the seed makes a scan reproducible.
    np.testing.assert_array_equal(scans[0].reference_hu, scans[1].reference_hu)


def test_low_dose_noise_has_the_ramp_filters_spectrum_not_white_noises(scans):
    noise = scans[1].noise_hu[32:96, 32:96]  # inside the head
    power = np.abs(np.fft.fft2(noise)) ** 2
    frequency = np.hypot(*np.meshgrid(np.fft.fftfreq(64), np.fft.fftfreq(64)))
    low, middle = power[frequency < 0.1].mean(), power[(frequency >= 0.2) & (frequency < 0.3)].mean()
    assert low < 0.75 * middle  # white noise: equal power; the ramp filter takes the lowest down


def test_a_slice_that_is_not_square_is_refused():
    with pytest.raises(ValueError, match="square"):
        low_dose_scan(np.zeros((8, 16)), 1.0, PHOTONS, seed=0)


def test_the_scan_circle_is_inscribed_in_the_square():
    circle = scan_circle(9)
    assert circle[4, 0] and circle[0, 4] and not circle[0, 0] and circle.sum() < 81


def test_rician_noise_lifts_the_background_and_leaves_bright_tissue_nearly_gaussian():
    clean = ellipsoid_phantom(4, 64)
    sigma = 0.05
    noisy = rician_magnitude(clean, sigma, seed=2)
    background, bright = clean == 0, clean > 10 * sigma
    assert background.sum() > 1000 and bright.sum() > 1000
    # Rayleigh where there is no signal: the mean is sigma * sqrt(pi / 2), not zero.
    assert noisy[background].mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.05)
    assert (noisy >= 0).all()
    difference = noisy[bright] - clean[bright]
    assert abs(difference.mean()) < 0.1 * sigma
    assert difference.std() == pytest.approx(sigma, rel=0.05)
    np.testing.assert_array_equal(noisy, rician_magnitude(clean, sigma, seed=2))
