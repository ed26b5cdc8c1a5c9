"""Noise2Detail on a stack of 2-D slices: pure tensors in, tensors out.

The three stages (Chobola et al., MICCAI 2025):

1. Stage 1 trains ``f`` (predicting the noise residual) on the noisy image alone:
   a Noise2Noise loss between its two diagonal 2x downsamples plus a consistency
   term tying the downsampled full-size prediction to the sub-image predictions.
   ``d1 = clamp(y - f(y), 0, 1)``.
2. Stage 2 (``f`` frozen) pixel-unshuffles ``y`` by 2 and 4, denoises every
   sub-image, shuffles back and denoises once more at full size; the average of
   ``d1`` and the two results is ``d2``, a smooth image in which spatially
   correlated noise has been broken up.
3. Stage 3 trains a fresh ``g`` (predicting the image) with the same two terms,
   inputs being downsamples of ``d2`` and targets downsamples of ``y``, so that
   ``g(d2)`` brings back the detail that stage 2 smoothed away.

Tensors are laid out ``(N, K, H, W)``: ``K`` independent networks (grouped
convolutions, see :class:`~n2d_dicom.model.StackedDenoiser`) each see ``N``
images. Per-slice mode puts slices on ``K``; per-series mode puts them on ``N``
with ``K = 1``. Every function takes its ``torch.device``; nothing picks one here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from n2d_dicom.devices import fit_slice_batch, free_memory, resolve_precision
from n2d_dicom.inference import (
    MIN_SIDE,
    SIDE_MULTIPLE,
    first_estimate,
    pad_to_multiple,
    refinements,
    restore_detail,
    shuffle_from_batch,
    unshuffle_to_batch,
)
from n2d_dicom.losses import stage1_loss, stage3_loss
from n2d_dicom.magnitude import magnitude_noise
from n2d_dicom.measured import PHASE_NAMES, Measured, Report
from n2d_dicom.model import StackedDenoiser
from n2d_dicom.nlm import blend_nlm
from n2d_dicom.noise import decorrelating_stride, keep_structure, spread_slices
from n2d_dicom.progress import Clock, Progress, WorkCost
from n2d_dicom.settings import WARM_CHECK_EVERY, WARM_PATIENCE, N2DSettings
from n2d_dicom.training import (
    DETAIL_SEED_OFFSET,
    EarlyStop,
    held_out_split,
    new_networks,
    random_crops,
    slice_crops,
    train,
)
from n2d_dicom.variance import stabiliser_for
from n2d_dicom.warm_pair import pack_pair, unpack_pair, weights_digest
from n2d_dicom.wiener import wiener_refine

Batches = Callable[[], tuple[Tensor, Tensor]]


def denoise_slices(
    noisy: Tensor,
    settings: N2DSettings,
    device: torch.device,
    progress: Progress | None = None,
    report: Report | None = None,
    start: bytes | None = None,
) -> Tensor:
    """Denoise ``(S, H, W)`` float slices scaled to [0, 1]; returns the same shape on CPU.

    ``settings.anscombe`` may first stabilise signal-dependent noise
    (:mod:`n2d_dicom.variance`); ``settings.noise`` picks the sampling stride, at which
    the noise of the (sub-)images N2D sees is white; a non-local means estimate of them
    joins stage 2's smooth intermediate (``settings.nlm_blend``, :mod:`n2d_dicom.nlm`);
    with a stride above 1 structure the decorrelated output removed is put back
    (:mod:`n2d_dicom.noise`); last, an empirical Wiener filter with the output as its pilot
    (``settings.wiener``, :mod:`n2d_dicom.wiener`). ``settings.mode`` ``auto`` and the default
    steps are decided here, on the number of slices (:meth:`N2DSettings.for_stack`).

    ``settings.slice_batch`` is an upper bound: fewer slices go together when the
    device's free memory would not hold them (see :func:`fit_slice_batch`).

    ``start``: a network pair trained before (:attr:`Measured.trained` of an earlier run) to start
    from instead of random weights (a warm start, per-series mode only; a pair of another width
    or pipeline is not used).

    ``progress`` hears the work units done (see :func:`work_units`, its total) and what runs;
    ``report`` once with what was measured, chosen and timed (:class:`Measured`), the trained
    pair included in per-series mode.
    """
    if noisy.ndim != 3:
        raise ValueError(f"expected (slices, rows, columns), got shape {tuple(noisy.shape)}")
    clock = Clock(progress, WorkCost(noisy.shape[1] * noisy.shape[2]))
    precision = resolve_precision(settings.precision, device)
    settings = settings.for_stack(noisy.shape[0]).model_copy(update={"precision": precision})
    with clock.phase("noise", PHASE_NAMES["noise"]):
        sample = spread_slices(noisy)
        magnitude = magnitude_noise(sample, settings.rician, settings.coils)
        stabiliser = None if magnitude else stabiliser_for(sample, settings.anscombe)
        stabilised = noisy if stabiliser is None else stabiliser.forward(noisy)
        stride = sampling_stride(spread_slices(stabilised), settings)
    clock.advance(clock.cost.of("noise"), PHASE_NAMES["noise"])
    out, trained, side = _denoise_stabilised(stabilised, stride, settings, device, clock, start)
    if report:
        report(
            Measured(
                stride=stride,
                stabilised=stabiliser is not None,
                rician_sigma=None if magnitude is None else magnitude.sigma,
                wiener_side=side,
                mode=settings.mode_for(noisy.shape[0]),
                precision=precision,
                iterations=settings.steps,
                steps=trained.steps,
                seconds=dict(clock.seconds),
                warm_from=trained.warm_from,
                trained=trained.weights,
            )
        )
    if magnitude is not None:
        return magnitude.inverse(out)
    return out if stabiliser is None else stabiliser.inverse(out)


@dataclass(frozen=True)
class Trained:
    """What training did: the steps each network took, the warm start used, the pair for the next one."""

    steps: tuple[int, ...]
    warm_from: str | None = None
    weights: bytes | None = None


def _denoise_stabilised(
    noisy: Tensor,
    stride: int,
    settings: N2DSettings,
    device: torch.device,
    clock: Clock,
    start: bytes | None,
) -> tuple[Tensor, Trained, int | None]:
    """:func:`denoise_slices` on noise whose variance does not depend on the signal, sampled at ``stride``.

    Also returns what training did and the Wiener step's window side (None: step off).
    """
    padded, h, w = pad_to_multiple(noisy.to(device=device, dtype=torch.float32), SIDE_MULTIPLE * stride)
    fitted = fit_slice_batch(
        settings.slice_batch, padded.shape[1], padded.shape[2], settings.width, free_memory(device)
    )
    settings = settings.model_copy(update={"slice_batch": fitted})
    if settings.mode == "per-series":
        sub = unshuffle_to_batch(padded.unsqueeze(1), stride).squeeze(1)
        denoised, trained = _denoise_per_series(sub, settings, device, clock, noisy.shape[0], start)
        out = shuffle_from_batch(denoised.unsqueeze(1), stride).squeeze(1)
    else:
        out, trained = _denoise_per_slice(padded, settings, device, clock, stride)
    out = out[:, :h, :w]
    if stride > 1:
        with clock.phase("noise", "structure check"):
            out = keep_structure(noisy.to(out.device, torch.float32), out)
    side = None
    if settings.wiener:
        with clock.phase("wiener", PHASE_NAMES["wiener"]):
            out, side = wiener_refine(noisy, out, stride)
        clock.advance(noisy.shape[0] * clock.cost.of("wiener"), PHASE_NAMES["wiener"])
    return out.cpu(), trained, side


def sampling_stride(noisy: Tensor, settings: N2DSettings) -> int:
    """Pixel spacing at which N2D samples the image: 1 for white noise, more for correlated noise.

    Capped so that sub-images keep sides of at least :data:`MIN_SIDE`.
    """
    if settings.noise == "white":
        return 1
    stride = decorrelating_stride(noisy)
    if settings.noise == "correlated":
        stride = max(2, stride)
    return max(1, min(stride, min(noisy.shape[-2:]) // MIN_SIDE))


@dataclass
class Stages:
    """How a mode runs N2D's stages (:func:`run_stages`): which networks, what each training step
    sees, when training stops early, and in which chunks inference goes.

    ``networks(stage)`` gives stage 1's ``f`` or stage 3's ``g``; ``batches(inputs, targets)``
    draws a step's pair; ``early_stop(inputs, targets)`` the held-out check, or None;
    ``step_units`` is what one step counts on the progress bar; ``units`` the slices inference
    counts; ``chunk`` the images that go through a network at once.
    """

    networks: Callable[[int], StackedDenoiser]
    batches: Callable[[Tensor, Tensor], Batches]
    early_stop: Callable[[Tensor, Tensor], EarlyStop | None]
    step_units: int
    units: int
    chunk: int
    warm: bool = False


def run_stages(
    noisy: Tensor, stages: Stages, settings: N2DSettings, device: torch.device, clock: Clock
) -> tuple[Tensor, tuple[int, ...], StackedDenoiser, StackedDenoiser | None]:
    """N2D's stages on ``(N, K, H, W)`` ``noisy``, as ``stages`` say for the mode.

    Returns the output, the steps each network took, and the networks (``g`` None for the
    stage-1 pipeline).
    """
    chunks = list(torch.split(noisy, stages.chunk))

    def each_chunk(label: str, kind: str = "inference") -> Callable[[], None]:
        return clock.share(label, stages.units * clock.cost.of(kind), len(chunks))

    def trained(stage: int, label: str, inputs: Tensor) -> tuple[StackedDenoiser, int]:
        net = stages.networks(stage)
        loss = stage1_loss if stage == 1 else stage3_loss
        steps = train(
            net,
            loss,
            stages.batches(inputs, noisy),
            settings,
            device,
            stages.early_stop(inputs, noisy),
            lambda n: clock.advance(n * stages.step_units, label),
            stages.warm,
        )
        return net, steps

    with clock.phase("training", "training stage 1"):
        f, f_steps = trained(1, "training stage 1", noisy)
    with clock.phase("inference", "stage 1 estimate"):
        done = each_chunk("stage 1 estimate")
        d1 = []
        for chunk in chunks:
            d1.append(first_estimate(f, chunk, settings.precision))
            done()
    if settings.pipeline == "stage1":
        return torch.cat(d1), (f_steps,), f, None
    with clock.phase("inference", "stage 2 refinement"):
        done = each_chunk("stage 2 refinement")
        smooth = []
        for chunk, estimate in zip(chunks, d1):
            smooth.append(refinements(f, chunk, estimate, settings.precision))
            done()
    if settings.nlm_blend > 0:
        with clock.phase("nlm", PHASE_NAMES["nlm"]):
            done = each_chunk(PHASE_NAMES["nlm"], "nlm")
            for i, chunk in enumerate(chunks):
                smooth[i] = blend_nlm(chunk, smooth[i], settings.nlm_blend)
                done()
    d2 = torch.cat(smooth)
    with clock.phase("training", "training stage 3"):
        g, g_steps = trained(3, "training stage 3", d2)
    with clock.phase("inference", "stage 3 restoration"):
        done = each_chunk("stage 3 restoration")
        outputs = []
        for chunk in torch.split(d2, stages.chunk):
            outputs.append(restore_detail(g, chunk, settings.precision))
            done()
    return torch.cat(outputs), (f_steps, g_steps), f, g


def _denoise_per_slice(
    slices: Tensor, settings: N2DSettings, device: torch.device, clock: Clock, stride: int = 1
) -> tuple[Tensor, Trained]:
    """One network pair per slice; ``slice_batch`` slices train side by side, every step on all of them.

    With ``stride > 1`` each slice's network trains on, and denoises, the slice's
    ``stride^2`` pixel-unshuffled sub-images (samples of one network), shuffled back after.
    """
    outputs = []
    steps: tuple[int, ...] = ()
    for start in range(0, slices.shape[0], settings.slice_batch):
        chunk = slices[start : start + settings.slice_batch].unsqueeze(0)  # (1, K, H, W)
        seeds = [settings.seed + start + k for k in range(chunk.shape[1])]
        sub = unshuffle_to_batch(chunk, stride)  # (stride^2, K, H/stride, W/stride)
        denoised, steps, _, _ = run_stages(
            sub, _per_slice_stages(sub, seeds, settings, device, clock), settings, device, clock
        )
        outputs.append(shuffle_from_batch(denoised, stride)[0])
    return torch.cat(outputs), Trained(steps)


def _per_slice_stages(
    noisy: Tensor, seeds: list[int], settings: N2DSettings, device: torch.device, clock: Clock
) -> Stages:
    """Per-slice mode: fresh networks per slice, steps on crops of every slice, all images at once."""
    k = noisy.shape[1]
    sampler = torch.Generator().manual_seed(settings.seed)
    count, side = slice_crops(noisy.shape, settings.slice_patch)

    def batches(inputs: Tensor, targets: Tensor) -> Batches:
        if side is None:
            return lambda: (inputs, targets)
        return lambda: random_crops(inputs, targets, sampler, count, side)

    def networks(stage: int) -> StackedDenoiser:
        offset = 0 if stage == 1 else DETAIL_SEED_OFFSET
        return new_networks([seed + offset for seed in seeds], settings, device)

    return Stages(
        networks=networks,
        batches=batches,
        early_stop=lambda inputs, targets: None,
        step_units=k * clock.cost.of("slice step"),
        units=k,
        chunk=noisy.shape[0],
    )


def _denoise_per_series(
    slices: Tensor,
    settings: N2DSettings,
    device: torch.device,
    clock: Clock,
    count: int,
    start: bytes | None = None,
) -> tuple[Tensor, Trained]:
    """One network pair for the whole series, trained on random slices, applied to all.

    ``slices`` may be pixel-unshuffled sub-images of the ``count`` slices of the series; progress
    counts slices. ``start``: the pair to start from (a warm start), see :func:`denoise_slices`.
    """
    volume = slices.unsqueeze(1)  # (S, 1, H, W): slices are samples of one network
    sampler = torch.Generator().manual_seed(settings.seed)
    draw = functools.partial(
        random_crops, generator=sampler, count=settings.series_batch, side=settings.series_patch
    )
    trained, held_out = held_out_split(volume.shape[0], settings.early_stop)
    warm = None if start is None else unpack_pair(start, settings, device)
    warm_from = None if warm is None or start is None else weights_digest(start)

    def early_stop(inputs: Tensor, targets: Tensor) -> EarlyStop | None:
        if not held_out:
            return None
        fixed = torch.Generator().manual_seed(settings.seed + 1)
        crops = random_crops(
            inputs, targets, fixed, 2 * settings.series_batch, settings.series_patch, held_out
        )
        return (
            EarlyStop(*crops, every=WARM_CHECK_EVERY, patience=WARM_PATIENCE) if warm else EarlyStop(*crops)
        )

    def networks(stage: int) -> StackedDenoiser:
        if stage == 1:
            return warm[0] if warm else new_networks([settings.seed], settings, device)
        if warm and warm[1] is not None:
            return warm[1]
        return new_networks([settings.seed + DETAIL_SEED_OFFSET], settings, device)

    stages = Stages(
        networks=networks,
        batches=lambda inputs, targets: lambda: draw(inputs, targets, among=trained),
        early_stop=early_stop,
        step_units=1,
        units=count,
        chunk=settings.slice_batch,
        warm=warm is not None,
    )
    out, steps, f, g = run_stages(volume, stages, settings, device, clock)
    return out.squeeze(1), Trained(steps, warm_from, pack_pair(f, g))
