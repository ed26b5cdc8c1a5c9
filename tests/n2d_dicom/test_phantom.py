import numpy as np
import pytest

from n2d_dicom.phantom import SIGMA, add_noise, binomial_filtered_noise, ellipsoid_phantom


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
