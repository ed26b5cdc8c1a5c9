import numpy as np
import pytest

from n2d_dicom.errors import N2DInputError
from n2d_dicom.intensity import IntensityMap

ROUND_TRIP_CASES = {
    "int16 CT with negative values": np.array([[-1024, -1000, 0], [1, 2047, 3071]], dtype=np.int16),
    "int16 full range": np.array([[-32768, -1], [0, 32767]], dtype=np.int16),
    "uint16 12-bit": np.array([[0, 1, 4095], [2048, 17, 3]], dtype=np.uint16),
    "uint16 full range": np.array([[0, 65535], [1, 65534]], dtype=np.uint16),
    "float32 CT in HU": np.random.default_rng(0).uniform(-1024, 3071, (32, 32)).astype(np.float32),
    "float32 PET SUV": np.array([[0.0, 0.1, 1e-3], [15.3, 2.0, 12.125]], dtype=np.float32),
    "uint8": np.array([[0, 255], [3, 4]], dtype=np.uint8),
}


@pytest.mark.parametrize("stored", ROUND_TRIP_CASES.values(), ids=ROUND_TRIP_CASES.keys())
def test_round_trip_through_unit_range_is_exact(stored):
    intensity = IntensityMap.from_array(stored)
    unit = intensity.to_unit(stored)
    assert unit.min() == 0 and unit.max() == 1
    back = intensity.to_stored(unit)
    assert back.dtype == stored.dtype
    np.testing.assert_array_equal(back, stored)


@pytest.mark.parametrize("slope, intercept", [(1.0, -1024.0), (2.5, -3.0), (0.001, 0.0)])
def test_real_world_values_survive_with_slope_and_intercept(slope, intercept):
    stored = np.array([[0, 100, 4095], [7, 2000, 1]], dtype=np.uint16)
    intensity = IntensityMap.from_array(stored)
    back = intensity.to_stored(intensity.to_unit(stored))
    np.testing.assert_array_equal(back * slope + intercept, stored * slope + intercept)


def test_output_is_clipped_to_the_input_range_and_rounded():
    intensity = IntensityMap.from_array(np.array([100, 200], dtype=np.int16))
    out = intensity.to_stored(np.array([-0.5, 0.0149, 0.016, 1.7]))
    np.testing.assert_array_equal(out, np.array([100, 101, 102, 200], dtype=np.int16))


def test_constant_image_maps_to_zero_and_back():
    stored = np.full((4, 4), 37, dtype=np.int16)
    intensity = IntensityMap.from_array(stored)
    assert not intensity.to_unit(stored).any()
    np.testing.assert_array_equal(intensity.to_stored(np.full((4, 4), 0.7)), stored)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_are_refused(bad):
    with pytest.raises(N2DInputError, match="NaN or infinite"):
        IntensityMap.from_array(np.array([0.0, bad, 1.0], dtype=np.float32))


def test_complex_data_is_refused():
    with pytest.raises(N2DInputError, match="not a real number type"):
        IntensityMap.from_array(np.array([1 + 1j], dtype=np.complex64))
