"""The N2D knobs, as one validated, immutable object.

The command line builds it from flags and the node builds it from its routing
rules; the engine only ever sees this object, so every knob is documented here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["auto", "per-slice", "per-series"]
#: The mode that ran: ``auto`` is decided on the stack's size.
RanMode = Literal["per-slice", "per-series"]
Pipeline = Literal["n2d", "stage1"]
Precision = Literal["auto", "fp32", "tf32", "bf16"]
#: The precision that ran: ``auto`` is decided on the device (:func:`n2d_dicom.devices.resolve_precision`).
RanPrecision = Literal["fp32", "tf32", "bf16"]
Noise = Literal["auto", "white", "correlated"]
Anscombe = Literal["off", "on", "auto"]
Rician = Literal["off", "on", "auto"]

#: Per-series mode holds slices out for early stopping on stacks of at least this many slices.
EARLY_STOP_FROM = 8
#: Early stopping checks the held-out loss this many steps apart, and stops after this many checks
#: in a row that did not improve it by this share (a warm-started network: its own two).
EARLY_STOP_EVERY, EARLY_STOP_PATIENCE, EARLY_STOP_MIN_IMPROVEMENT = 100, 3, 0.005
WARM_CHECK_EVERY, WARM_PATIENCE = 25, 2
#: The most Adam steps of each network where ``iterations`` is not set, by the mode that runs.
DEFAULT_ITERATIONS: dict[RanMode, int] = {"per-slice": 2000, "per-series": 1000}
#: Per-series steps on a stack too small to hold slices out (no early stopping): those of per-slice
#: mode, whose quality they match on single slices (docs/benchmarks.md) at a fraction of the cost
#: on several (one network pair for the stack, not one per slice).
SMALL_STACK_ITERATIONS = 2000
#: Hidden channels of each network where ``channels`` is not set, by the mode that runs.
DEFAULT_CHANNELS: dict[RanMode, int] = {"per-slice": 48, "per-series": 32}


class N2DSettings(BaseModel):
    """How to denoise one volume with Noise2Detail."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = Field(
        "auto",
        description="per-slice: one network pair per slice (the paper's setting). "
        "per-series: one pair trained on random crops of the whole stack, then applied to "
        "every slice (the cost follows the steps, not the slices; as good on the bench's realistic "
        "cases, single slices included). auto: per-series.",
    )
    pipeline: Pipeline = Field(
        "n2d",
        description="n2d: all three stages. stage1: the Noise2Noise network alone "
        "(the ZS-N2N baseline; half the training, less detail recovered).",
    )
    noise: Noise = Field(
        "auto",
        description="white: sample every pixel, as the paper (with nlm_blend 0, wiener false and "
        "anscombe off: the "
        "paper's pipeline). "
        "correlated: noise spread over neighbouring pixels "
        "(a CT reconstruction kernel): N2D runs on pixel-unshuffled sub-images whose pixels are far "
        "enough apart for their noise to be independent (the spacing is measured on the image, at "
        "least 2). auto: measure, and sample as the paper does (stride 1) where the noise is white.",
    )
    anscombe: Anscombe = Field(
        "auto",
        description="Signal-dependent (Poisson-Gaussian) noise: on: denoise after the generalised "
        "Anscombe transform, fitted to the noise measured on the image (its variance against "
        "intensity), and map back with the unbiased inverse. auto: only where the variance measures "
        "at least 2x higher in the brightest areas than in the darkest, since forcing it on noise "
        "that is not signal-dependent loses a little. off: as the paper.",
    )
    rician: Rician = Field(
        "auto",
        description="MR magnitude data, whose noise (Rician, or non-central chi over several coils) "
        "lifts air and dark tissue by a floor that denoising does not remove: on: measure the noise "
        "per channel (in the background, else in the tissue) and map the denoised image back "
        "through the exact inverse of the magnitude's mean (n2d_dicom/magnitude.py); the Anscombe "
        "transform is then not used. auto: in DICOM, on for MR magnitude images and off for the "
        "rest; elsewhere (NIfTI), on where the image shows a background with a magnitude's "
        "statistics whose noise agrees with the tissue's. off: as the paper.",
    )
    coils: int = Field(
        1,
        ge=1,
        le=128,
        description="rician: receiver channels combined by sum of squares (1: Rician noise, as in "
        "an image combined with phase, e.g. adaptive combination or SENSE).",
    )
    nlm_blend: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Weight of a non-local means estimate (scikit-image, h = 0.8 x the noise sigma "
        "estimated per image) in stage 2's smooth intermediate, from which stage 3 restores detail; "
        "it averages pixels N2D's 5x5 view cannot. It runs on the images stage 2 sees (slices, or "
        "the decorrelated sub-images of correlated noise). 0: N2D alone, as the paper.",
    )
    wiener: bool = Field(
        True,
        description="A last step: the empirical Wiener filter of BM3D's second step, in sliding "
        "DCT windows, with N2D's output as its pilot (n2d_dicom/wiener.py): each noisy "
        "coefficient is shrunk by how much of it N2D's output says is signal. The noise variance "
        "is measured on the image (by intensity, or per frequency where the noise is correlated); "
        "the window side (8, 16 or 24) is chosen per series by Stein's unbiased risk estimate. "
        "false: N2D alone.",
    )
    iterations: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Adam steps for each of the two networks (the most, where early stopping may stop "
        f"sooner). null: {DEFAULT_ITERATIONS['per-slice']} per-slice (the paper's); per-series, where "
        f"every step draws new crops of the stack, {DEFAULT_ITERATIONS['per-series']} on stacks of "
        f"{EARLY_STOP_FROM} slices or more (early stopping on) and {SMALL_STACK_ITERATIONS} on "
        "smaller ones (the choice against time is in docs/benchmarks.md).",
    )
    learning_rate: float = Field(1e-3, gt=0, le=1, description="Adam learning rate; halved at the half.")
    channels: int | None = Field(
        None,
        ge=4,
        le=512,
        description=f"Hidden channels of each network. null: {DEFAULT_CHANNELS['per-slice']} per-slice "
        f"(the paper's), {DEFAULT_CHANNELS['per-series']} per-series, which measured as good there "
        "at half the time (docs/benchmarks.md).",
    )
    seed: int = Field(0, ge=0, description="Seeds network initialisation and slice sampling.")
    precision: Precision = Field(
        "auto",
        description="auto: bf16 on CPUs with native bfloat16 arithmetic (AVX512-BF16 or AMX), where "
        "it is faster at the same PSNR (docs/benchmarks.md), fp32 elsewhere, GPUs included; fp32: "
        "float32 throughout; tf32: CUDA matmuls and convolutions may use TF32; bf16: the networks run "
        "under bfloat16 autocast (losses and weights stay float32).",
    )
    slice_batch: int = Field(
        8,
        ge=1,
        le=4096,
        description="Slices processed together: per-slice mode trains this many networks at "
        "once; both modes run inference in chunks of this size. Bounds memory.",
    )
    series_batch: int = Field(
        4, ge=1, le=256, description="per-series mode: slices (or crops) drawn at random for each step."
    )
    early_stop: bool = Field(
        True,
        description=f"per-series mode: hold out every {EARLY_STOP_FROM}th slice (series of "
        f"{EARLY_STOP_FROM} or more) and stop training a network once its loss on them has not "
        f"improved by {EARLY_STOP_MIN_IMPROVEMENT:.1%} for {EARLY_STOP_PATIENCE} checks "
        f"{EARLY_STOP_EVERY} steps apart ({WARM_PATIENCE} checks {WARM_CHECK_EVERY} steps apart for "
        "a warm-started network); iterations is then the most steps taken.",
    )
    slice_patch: int | None = Field(
        256,
        ge=8,
        le=4096,
        multiple_of=4,
        description="per-slice mode: each step trains a slice's network on about this side squared "
        "of its pixels, random crops of this side (or whole sub-images where they are smaller); "
        "a slice holding no more trains on all of it at every step, as in the paper. Bounds the "
        "cost of a step on large slices. null: whole slices at every step.",
    )
    series_patch: int | None = Field(
        128,
        ge=8,
        le=4096,
        multiple_of=4,
        description="per-series mode: train on random square crops of this side (a multiple of 4) "
        "instead of whole slices; the networks see 5x5 pixels, so crops teach them as much per "
        "pixel at a fraction of the cost. null: whole slices.",
    )

    def mode_for(self, slices: int) -> RanMode:
        """The mode that runs on a stack of ``slices`` slices (``auto``: per-series, whatever its size)."""
        return "per-series" if self.mode == "auto" else self.mode

    def for_mode(self, mode: RanMode, slices: int = EARLY_STOP_FROM) -> N2DSettings:
        """These settings as they run in ``mode`` on ``slices`` slices: ``iterations`` and
        ``channels`` the mode's defaults where they are not set."""
        small = mode == "per-series" and slices < EARLY_STOP_FROM
        steps = SMALL_STACK_ITERATIONS if small else DEFAULT_ITERATIONS[mode]
        return self.model_copy(
            update={
                "mode": mode,
                "iterations": self.iterations or steps,
                "channels": self.channels or DEFAULT_CHANNELS[mode],
            }
        )

    def for_stack(self, slices: int) -> N2DSettings:
        """These settings as they run on a stack of ``slices`` slices (:meth:`for_mode`)."""
        return self.for_mode(self.mode_for(slices), slices)

    @property
    def steps(self) -> int:
        """The most Adam steps of each network, of settings :meth:`for_mode` decided."""
        if self.iterations is None:
            raise ValueError("steps of undecided settings: call for_mode or for_stack first")
        return self.iterations

    @property
    def width(self) -> int:
        """Hidden channels of each network, of settings :meth:`for_mode` decided."""
        if self.channels is None:
            raise ValueError("width of undecided settings: call for_mode or for_stack first")
        return self.channels
