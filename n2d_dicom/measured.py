"""What the engine measured on an image and chose from it: plain data, no torch.

The settings say what was asked (``noise auto``, ``anscombe auto``, ``wiener``); :class:`Measured`
says what was done, which depends on the image. The writer records it as provenance and the node
logs it, so it lives apart from the engine: loading the node's configuration, the DICOM writer or
the status pages does not load torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Measured:
    """What the engine measured on one stack of slices and chose from it."""

    stride: int
    """Pixel spacing N2D sampled the slices at: 1 for white noise, more for correlated noise."""
    stabilised: bool
    """Whether the generalised Anscombe transform ran (noise measured as signal-dependent)."""
    wiener_side: int | None
    """Window side of the Wiener step; None where the step is off."""


Report = Callable[[Measured], None]


def sampling_strides(measured: tuple[Measured, ...]) -> list[int]:
    """The distinct sampling strides N2D used (1: white noise)."""
    return sorted({m.stride for m in measured})


def wiener_sides(measured: tuple[Measured, ...]) -> list[int]:
    """The distinct window sides of the Wiener step (empty where it is off)."""
    return sorted({m.wiener_side for m in measured if m.wiener_side is not None})


def anscombe_applied(measured: tuple[Measured, ...]) -> bool:
    """Whether the generalised Anscombe transform ran on any stack."""
    return any(m.stabilised for m in measured)


def describe_measured(measured: tuple[Measured, ...]) -> str:
    """What the images decided, in words: the settings' ``auto`` choices as they came out."""
    sides = wiener_sides(measured)
    return (
        f"sampling stride {'/'.join(map(str, sampling_strides(measured)))}, "
        f"Anscombe {'applied' if anscombe_applied(measured) else 'not applied'}"
        + (f", Wiener window {'/'.join(map(str, sides))}" if sides else "")
    )
