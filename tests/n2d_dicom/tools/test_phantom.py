import numpy as np
import pytest

from n2d_dicom.tools.phantom import (
    SIGMA,
    add_noise,
    binomial_filtered_noise,
    ellipsoid_phantom,
    noise_spectrum,
)


def test_phantom_spans_the_unit_range_and_neighbouring_slices_share_structure():
    volume = ellipsoid_phantom(6, 64)
    assert volume.shape == (6, 64, 64)
    assert volume.min() == 0 and volume.max() == 1
    assert np.corrcoef(volume[2].ravel(), volume[3].ravel())[0, 1] > 0.9


def test_binomial_filtered_noise_has_unit_variance_and_correlated_neighbours():
    field = binomial_filtered_noise(np.random.default_rng(0), (4, 256, 256))
    assert field.std() == pytest.approx(1, abs=0.02)
    horizontal = np.corrcoef(field[..., :-1].ravel(), field[..., 1:].ravel())[0, 1]
    assert horizontal == pytest.approx(2 / 3, abs=0.02)


@pytest.mark.parametrize("noise", ["gaussian", "correlated"])
def test_noise_spectrum_is_the_power_of_the_noise_added(noise):
    clean = np.full((64, 48, 48), 0.5)  # far from 0 and 1: nothing clipped
    noise_field = add_noise(clean, noise, seed=1) - clean
    measured = (np.abs(np.fft.fft2(noise_field)) ** 2).mean(axis=0)  # periodogram, averaged
    spectrum = noise_spectrum(noise, (48, 48))
    assert spectrum.shape == (48, 48)
    assert spectrum.mean() / (48 * 48) == pytest.approx(SIGMA**2, rel=1e-9)  # Parseval: the variance
    # Averaged over 64 images and a 7x7 block of frequencies, the periodogram is within 10%
    # (or 1% of the peak, where the binomial kernel takes the power to nought).
    block = np.ones((7, 7)) / 49
    smooth = np.real(np.fft.ifft2(np.fft.fft2(measured) * np.fft.fft2(block, measured.shape)))
    expected = np.real(np.fft.ifft2(np.fft.fft2(spectrum) * np.fft.fft2(block, spectrum.shape)))
    np.testing.assert_allclose(smooth, expected, rtol=0.1, atol=0.01 * expected.max())


def test_poisson_noise_has_no_spectrum():
    assert noise_spectrum("poisson", (16, 16)) is None


@pytest.mark.parametrize("noise", ["gaussian", "poisson", "correlated"])
def test_noisy_images_stay_in_range_and_are_reproducible(noise):
    clean = np.full((1, 64, 64), 0.5)
    noisy = add_noise(clean, noise, seed=3)
    assert noisy.min() >= 0 and noisy.max() <= 1
    np.testing.assert_array_equal(noisy, add_noise(clean, noise, seed=3))
    assert 0.5 * SIGMA < (noisy - clean).std() < 2 * SIGMA


def test_unknown_noise_is_refused():
    with pytest.raises(ValueError, match="unknown noise"):
        add_noise(np.zeros((1, 8, 8)), "speckle", seed=0)
