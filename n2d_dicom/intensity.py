"""Stored values <-> [0, 1] floats and back, exactly.

The networks want images in [0, 1]; scanners store integers (or floats) with a
rescale slope and intercept on top. The map is linear in stored values and
ignores slope/intercept on purpose: a linear rescale changes nothing for a
denoiser, and staying in stored values means the header's scaling is written
back untouched. Unit values are float64 so that the round trip is exact for
every integer type and for float32; the output is clipped to the input's own
range (never wider than what the source could hold) and cast back once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from n2d_dicom.errors import N2DInputError


@dataclass(frozen=True)
class IntensityMap:
    """The linear map taking ``[low, high]`` stored values onto ``[0, 1]``."""

    low: float
    high: float
    dtype: np.dtype

    @classmethod
    def from_array(cls, stored: np.ndarray, keep_zero: bool = False) -> IntensityMap:
        """The map spanning the values of ``stored``; refuses NaN or infinite data.

        ``keep_zero``: where ``stored`` is non-negative the map starts at 0, so that unit 0 is
        stored 0 (no signal, for magnitude data: :mod:`n2d_dicom.magnitude`)."""
        if stored.size == 0:
            raise N2DInputError("the image holds no pixels")
        if not np.issubdtype(stored.dtype, np.number) or np.issubdtype(stored.dtype, np.complexfloating):
            raise N2DInputError(f"pixel type {stored.dtype} is not a real number type")
        if np.issubdtype(stored.dtype, np.floating) and not np.isfinite(stored).all():
            raise N2DInputError("the image contains NaN or infinite values; fill or mask them first")
        low = float(stored.min())
        return cls(0.0 if keep_zero and low >= 0 else low, float(stored.max()), stored.dtype)

    @property
    def span(self) -> float:
        """``high - low``, or 1 for a constant image (which then maps to all zeros)."""
        return (self.high - self.low) or 1.0

    def to_unit(self, stored: np.ndarray) -> np.ndarray:
        """Stored values as float64 in [0, 1]."""
        return (stored.astype(np.float64) - self.low) / self.span

    def to_stored(self, unit: np.ndarray) -> np.ndarray:
        """Unit values back to stored values of the original dtype, within ``[low, high]``."""
        stored = np.clip(unit.astype(np.float64) * self.span + self.low, self.low, self.high)
        if np.issubdtype(self.dtype, np.integer):
            stored = np.rint(stored)
        return stored.astype(self.dtype)
