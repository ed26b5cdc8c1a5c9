"""What a run reports as it goes: work units done (each kind of work counted by what it costs) and
seconds per phase."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from n2d_dicom.settings import N2DSettings

Progress = Callable[[int, str], None]
"""Hears the work units done since the last call and what runs (e.g. ``training stage 1``)."""


#: Pixels of a slice that cost one work unit (about one per-series training step), by kind of work,
#: measured on a 2-core CPU (docs/benchmarks.md, "What the progress bar counts"): a pass over a
#: slice counts its pixels over this, at least 1, so that the bar's rate, and so its ETA, holds
#: from training to the Wiener step.
PIXELS_PER_UNIT = {
    "noise": 19_000,  # the noise measurement of a stack, by the pixels of one slice
    "slice step": 124_000,  # one Adam step of one slice's networks (per-slice mode)
    "inference": 190_000,  # one inference stage over one slice
    "nlm": 49_000,  # non-local means of one slice
    "wiener": 12_000,  # the Wiener step on one slice
}


@dataclass(frozen=True)
class WorkCost:
    """Work units of each kind of work on slices of ``pixels`` pixels (see :data:`PIXELS_PER_UNIT`)."""

    pixels: int

    def of(self, kind: str) -> int:
        return max(1, round(self.pixels / PIXELS_PER_UNIT[kind]))


def work_units(slices: int, settings: N2DSettings, pixels: int) -> int:
    """The work units of denoising a stack of ``slices`` slices of ``pixels`` pixels, known before it starts.

    Each kind of work counts what it costs (:class:`WorkCost`): the noise measurement; each Adam
    step of each network (per-series mode: one; per-slice mode: of each slice's network); each
    inference stage (stage 1's estimate, stage 2's refinement, stage 3's restoration), non-local
    means and the Wiener step, on each slice. Steps early stopping saved count as done when it
    stops, so the count always ends at this total.
    """
    cost = WorkCost(pixels)
    stage1 = settings.pipeline == "stage1"
    settings = settings.for_stack(slices)
    per_slice = settings.mode == "per-slice"
    step = cost.of("slice step") * slices if per_slice else 1
    steps = settings.steps * (1 if stage1 else 2) * step
    passes = (1 if stage1 else 3) * cost.of("inference")
    extras = int(settings.nlm_blend > 0 and not stage1) * cost.of("nlm") + int(settings.wiener) * cost.of(
        "wiener"
    )
    return cost.of("noise") + steps + slices * (passes + extras)


class Clock:
    """One stack's seconds per phase (for :class:`Measured`) and work units done (for ``progress``)."""

    def __init__(self, progress: Progress | None, cost: WorkCost) -> None:
        self.progress = progress
        self.cost = cost
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str, label: str) -> Iterator[None]:
        """Time the enclosed work as phase ``name`` of :data:`~n2d_dicom.measured.PHASES`;
        ``label`` (what runs, e.g. ``training stage 1``) goes to ``progress`` as it starts."""
        self.advance(0, label)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def advance(self, units: int, label: str) -> None:
        """Report ``units`` more work units done, in ``label``."""
        if self.progress is not None:
            self.progress(units, label)

    def share(self, label: str, units: int, parts: int) -> Callable[[], None]:
        """A callable that advances ``units`` in ``parts`` equal calls (rounded, summing to ``units``)."""
        done = [0, 0]

        def part() -> None:
            done[0] += 1
            reached = units * min(done[0], parts) // parts
            self.advance(reached - done[1], label)
            done[1] = reached

        return part
