"""What the engine measured on an image and chose from it: plain data, no torch.

The settings say what was asked (``noise auto``, ``anscombe auto``, ``wiener``); :class:`Measured`
says what was done, which depends on the image. The writer records it as provenance and the node
logs it, so it lives apart from the engine: loading the node's configuration, the DICOM writer or
the status pages does not load torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from n2d_dicom.settings import EARLY_STOP_FROM, N2DSettings, RanMode, RanPrecision

#: The phases of a run, in order: what a run's seconds are split into. The engine times the middle
#: five; the front ends (``n2d denoise``, ``denoise-dicom``, the node) time reading and writing.
PHASES = ("reading", "noise", "training", "inference", "nlm", "wiener", "writing")
#: The phases' names in a table's header or a log line.
PHASE_NAMES = {
    "reading": "read",
    "noise": "noise measurement",
    "training": "training",
    "inference": "inference passes",
    "nlm": "non-local means",
    "wiener": "Wiener step",
    "writing": "write",
}


@dataclass(frozen=True)
class Measured:
    """What the engine measured on one stack of slices and chose from it, and what it cost."""

    stride: int
    """Pixel spacing N2D sampled the slices at: 1 for white noise, more for correlated noise."""
    stabilised: bool
    """Whether the generalised Anscombe transform ran (noise measured as signal-dependent)."""
    wiener_side: int | None
    """Window side of the Wiener step; None where the step is off."""
    rician_sigma: float | None = None
    """Noise per channel (unit values) of the magnitude floor taken out; None where it was not."""
    mode: RanMode = "per-slice"
    """The mode that ran: ``per-slice`` or ``per-series`` (``auto`` decided on the stack's size)."""
    precision: RanPrecision = "fp32"
    """The precision the networks ran in (``auto`` decided on the device)."""
    iterations: int | None = None
    """The most steps each network could take (``iterations`` as decided for the stack)."""
    steps: tuple[int, ...] = ()
    """Adam steps each network took (stage 1, then stage 3), fewer than asked where early stopping
    cut training short; in per-slice mode those of every slice's networks."""
    seconds: Mapping[str, float] = field(default_factory=dict, compare=False)
    """Seconds spent in each of :data:`PHASES` the engine ran (reading and writing are not its)."""
    warm_from: str | None = None
    """Digest of the weights training started from (a warm start), None for a cold start."""
    trained: bytes | None = field(default=None, repr=False, compare=False)
    """The trained network pair, serialised (per-series mode), for a later warm start; else None."""


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


def rician_sigmas(measured: tuple[Measured, ...]) -> list[float]:
    """The noise levels (per channel, unit values) of the magnitude floors taken out (empty: none)."""
    return [m.rician_sigma for m in measured if m.rician_sigma is not None]


def mode_ran(measured: tuple[Measured, ...], asked: str) -> str:
    """The mode(s) that ran, e.g. ``per-series`` for ``auto`` on a long stack; ``asked`` where
    nothing was measured."""
    return "/".join(sorted({m.mode for m in measured})) or asked


def as_ran(measured: tuple[Measured, ...], settings: N2DSettings) -> N2DSettings:
    """``settings`` as they ran on the first stack (:meth:`~n2d_dicom.settings.N2DSettings.for_mode`),
    iterations, channels and precision decided; as they would run on a series where nothing was measured."""
    if not measured:
        return settings.for_stack(EARLY_STOP_FROM)
    first = measured[0]
    decided = settings.for_mode(first.mode).model_copy(update={"precision": first.precision})
    if first.iterations is None:
        return decided
    return decided.model_copy(update={"iterations": first.iterations})


def steps_taken(measured: tuple[Measured, ...]) -> str:
    """The steps each network took, per stack, e.g. ``"700+400"`` or ``"700+400, 2000+2000"``."""
    return ", ".join("+".join(map(str, m.steps)) for m in measured if m.steps)


def split_seconds(measured: tuple[Measured, ...], **front_end: float) -> dict[str, float]:
    """Seconds per phase of :data:`PHASES`, summed over stacks, with the front end's own (reading,
    writing) added; phases that did not run are left out."""
    total: dict[str, float] = {}
    for m in measured:
        for phase, seconds in m.seconds.items():
            total[phase] = total.get(phase, 0.0) + seconds
    for phase, seconds in front_end.items():
        total[phase] = total.get(phase, 0.0) + seconds
    return {phase: total[phase] for phase in PHASES if phase in total}


def describe_split(measured: tuple[Measured, ...], **front_end: float) -> str:
    """Where a run's time went and the steps its networks took, in words, for log and summary lines."""
    split = split_seconds(measured, **front_end)
    parts = [f"{PHASE_NAMES[phase]} {seconds:.1f} s" for phase, seconds in split.items()]
    steps = steps_taken(measured)
    warm = sorted({m.warm_from for m in measured if m.warm_from})
    return (
        "; ".join(parts)
        + (f"; steps {steps}" if steps else "")
        + (f"; warm start from {'/'.join(warm)}" if warm else "")
    )


def describe_measured(measured: tuple[Measured, ...]) -> str:
    """What the images decided, in words: the settings' ``auto`` choices as they came out."""
    sides = wiener_sides(measured)
    return (
        f"sampling stride {'/'.join(map(str, sampling_strides(measured)))}, "
        f"Anscombe {'applied' if anscombe_applied(measured) else 'not applied'}"
        + (
            f", Rician floor removed (sigma {'/'.join(f'{s:.4g}' for s in rician)})"
            if (rician := rician_sigmas(measured))
            else ", no Rician correction"
        )
        + (f", Wiener window {'/'.join(map(str, sides))}" if sides else "")
    )
