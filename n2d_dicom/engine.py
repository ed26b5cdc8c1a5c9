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
import hashlib
import io
import logging
import pickle
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from n2d_dicom.devices import fit_slice_batch, free_memory, resolve_precision
from n2d_dicom.magnitude import magnitude_noise
from n2d_dicom.measured import PHASE_NAMES, Measured, Report
from n2d_dicom.model import StackedDenoiser
from n2d_dicom.nlm import blend_nlm
from n2d_dicom.noise import decorrelating_stride, keep_structure, spread_slices
from n2d_dicom.settings import EARLY_STOP_FROM, N2DSettings, Precision
from n2d_dicom.variance import stabiliser_for
from n2d_dicom.wiener import wiener_refine

#: Images are padded to a multiple of this (the largest pixel-unshuffle factor).
SIDE_MULTIPLE = 4
#: The smallest side accepted: the 4x unshuffle must leave sub-images of 2x2 or more.
MIN_SIDE = 8
#: Pixel-unshuffle factors of stage 2.
REFINE_FACTORS = (2, 4)
#: Added to a stage-1 seed to seed its stage-3 network, so that ``f`` and ``g`` start differently.
DETAIL_SEED_OFFSET = 1_000_003
#: per-series early stopping holds out one slice in this many (series of at least as many slices).
HELD_OUT_EVERY = EARLY_STOP_FROM

#: Pixels (times networks) of one inference call on a CPU: strips of about this many keep the hidden
#: activations in cache, about twice as fast as whole slices (docs/benchmarks.md).
STRIP_PIXELS = 96 * 512
#: Rows a strip reads beyond its own on each side: the network's reach (two 3x3 convolutions).
HALO = 2

#: A warm-started network takes at most this share of ``iterations``, its schedule compressed to them.
WARM_FRACTION = 0.5
#: A warm-started network's early stopping checks the held-out loss this many steps apart.
WARM_CHECK_EVERY = 25
#: A warm-started network stops after this many checks in a row without improvement.
WARM_PATIENCE = 2

log = logging.getLogger(__name__)

Progress = Callable[[int, str], None]
"""Hears the work units done since the last call and what runs (e.g. ``training stage 1``)."""
LossFn = Callable[[StackedDenoiser, Tensor, Tensor], Tensor]


def diagonal_downsamples(x: Tensor) -> tuple[Tensor, Tensor]:
    """The two diagonal 2x downsamples of ``(..., H, W)`` with even ``H`` and ``W``.

    ``D1`` averages the top-left and bottom-right pixel of every 2x2 block, ``D2``
    the top-right and bottom-left one; their noise is independent for white noise.
    """
    d1 = (x[..., 0::2, 0::2] + x[..., 1::2, 1::2]) / 2
    d2 = (x[..., 0::2, 1::2] + x[..., 1::2, 0::2]) / 2
    return d1, d2


def per_model_mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error of each network (channel), summed over networks.

    Summing keeps every stacked network's gradient equal to what it would be alone.
    """
    return (a.float() - b.float()).square().mean(dim=(0, 2, 3)).sum()


def _consistency(predict: Callable[[Tensor], Tensor], inputs: Tensor, p1: Tensor, p2: Tensor) -> Tensor:
    """Downsampled full-size estimate against the sub-image estimates ``p1``, ``p2``."""
    full1, full2 = diagonal_downsamples(predict(inputs))
    return 0.5 * (per_model_mse(p1, full1) + per_model_mse(p2, full2))


def stage1_loss(net: StackedDenoiser, noisy: Tensor, _unused: Tensor) -> Tensor:
    """Stage-1 loss: ``net`` predicts the noise, trained on ``noisy`` alone.

    Residual term: the estimate from one downsample must match the *other*
    downsample, whose noise is independent (Noise2Noise), so the network cannot
    learn the identity.
    """

    def predict(x: Tensor) -> Tensor:
        return x - net(x)

    y1, y2 = diagonal_downsamples(noisy)
    p1, p2 = predict(y1), predict(y2)
    residual = 0.5 * (per_model_mse(y1, p2) + per_model_mse(y2, p1))
    return residual + _consistency(predict, noisy, p1, p2)


def stage3_loss(net: StackedDenoiser, smooth: Tensor, noisy: Tensor) -> Tensor:
    """Stage-3 loss: ``net`` predicts the image from downsamples of ``smooth``, against ``noisy``.

    Pairs cross diagonals as in stage 1. Pairing each estimate with the noisy
    downsample on the *same* diagonal was tried and rejected: it gains where ``d2``
    is very smooth but learns the noise back wherever ``d2`` keeps some (figures in
    docs/benchmarks.md).
    """
    s1, s2 = diagonal_downsamples(smooth)
    y1, y2 = diagonal_downsamples(noisy)
    p1, p2 = net(s1), net(s2)
    residual = 0.5 * (per_model_mse(y1, p2) + per_model_mse(y2, p1))
    return residual + _consistency(net, smooth, p1, p2)


@contextmanager
def _precision(device: torch.device, precision: Precision) -> Iterator[None]:
    """Run the enclosed forward passes in the requested precision (``auto`` decided on ``device``)."""
    precision = resolve_precision(precision, device)
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    elif precision == "tf32" and device.type == "cuda":
        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    else:
        yield


def new_networks(seeds: list[int], settings: N2DSettings, device: torch.device) -> StackedDenoiser:
    """A stack of freshly initialised networks, copy ``k`` seeded by ``seeds[k]``.

    Seeding each copy on its own makes a slice's result independent of which
    batch it was trained in. The global RNG state is left untouched. Weights are
    channels-last, so the convolutions run channels-last, the layout oneDNN runs
    fastest on CPU for these 48-channel layers.
    """
    singles = []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            singles.append(StackedDenoiser(1, settings.width))
    net = singles[0] if len(singles) == 1 else StackedDenoiser.stack(singles)
    return net.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]


@dataclass
class EarlyStop:
    """Stop when the loss on held-out data stops improving (per-series mode, ``early_stop``).

    The loss is self-supervised, so it needs no clean image: on slices the network
    never trains on, it rises or stalls once the network starts fitting noise.
    """

    inputs: Tensor
    targets: Tensor
    every: int = 100
    patience: int = 3
    min_improvement: float = 0.005
    best: float = float("inf")
    stale: int = 0

    def should_stop(self, net: StackedDenoiser, loss_fn: LossFn, step: int) -> bool:
        """Check every ``every`` steps; True once ``patience`` checks in a row brought no improvement."""
        if (step + 1) % self.every:
            return False
        with torch.no_grad():
            loss = float(loss_fn(net, self.inputs, self.targets).sum())
        if loss < self.best * (1 - self.min_improvement):
            self.best, self.stale = loss, 0
        else:
            self.stale += 1
        return self.stale >= self.patience


def train(
    net: StackedDenoiser,
    loss_fn: LossFn,
    batches: Callable[[], tuple[Tensor, Tensor]],
    settings: N2DSettings,
    device: torch.device,
    stop: EarlyStop | None = None,
    on_step: Callable[[int], None] | None = None,
    warm: bool = False,
) -> int:
    """Train ``net`` with Adam for ``settings.steps`` steps (fewer if ``stop`` says so).

    The learning rate ``settings.learning_rate`` is halved at the half of the steps: of ``steps``
    cold (random weights), of :func:`warm_steps` ``warm`` (weights trained before), whose schedule is
    the cold one compressed (a quarter of the steps at half the rate and a cosine decay lost 0.75 dB
    against cold on another protocol's weights; docs/benchmarks.md). ``on_step(n)`` hears every
    ``n`` steps done, and at a stop the steps left,
    so that a progress count reaches its total. Returns the steps taken; ``net`` is left frozen in
    eval mode.
    """
    steps = warm_steps(settings) if warm else settings.steps
    net.train()
    optimiser = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.StepLR(optimiser, step_size=max(1, steps // 2), gamma=0.5)
    taken = 0
    first = batches()
    for step in range(steps):
        if stop is not None and stop.should_stop(net, loss_fn, step):
            break
        inputs, targets = first if step == 0 else batches()
        with _precision(device, settings.precision):
            loss = loss_fn(net, inputs, targets)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        taken += 1
        if on_step:
            on_step(1)
    if on_step and settings.steps > taken:
        on_step(settings.steps - taken)
    net.eval()
    for param in net.parameters():
        param.requires_grad_(False)
    return taken


def warm_steps(settings: N2DSettings) -> int:
    """The most steps a warm-started network takes: :data:`WARM_FRACTION` of ``settings.steps``."""
    return max(1, int(settings.steps * WARM_FRACTION))


def apply_in_strips(net: StackedDenoiser, x: Tensor) -> Tensor:
    """``net(x)`` for ``(N, K, H, W)``, on a CPU one image and one strip of rows at a time.

    Each strip reads :data:`HALO` rows beyond its own, so every output pixel sees the same
    neighbours as in one pass over the image and the result is the same. Whole images would
    run the hidden layers out of cache; on a GPU one call is faster, so it gets one.
    """
    n, k, h, w = x.shape
    rows = max(1, STRIP_PIXELS // (k * w))
    if x.device.type != "cpu" or (n == 1 and rows >= h):
        return net(x)

    def strips(image: Tensor) -> Iterator[Tensor]:
        for top in range(0, h, rows):
            first, last = max(0, top - HALO), min(h, top + rows + HALO)
            yield net(image[..., first:last, :])[..., top - first : top - first + rows, :]

    return torch.cat([torch.cat(list(strips(image)), dim=2) for image in x.split(1)])


def _denoise_residual(net: StackedDenoiser, x: Tensor) -> Tensor:
    return x - apply_in_strips(net, x).float()


def _unshuffle_to_batch(x: Tensor, factor: int) -> Tensor:
    """``(N, K, H, W)`` -> ``(factor^2 * N, K, H/factor, W/factor)`` sub-images."""
    n, k, h, w = x.shape
    sub = F.pixel_unshuffle(x, factor).view(n, k, factor * factor, h // factor, w // factor)
    return sub.permute(2, 0, 1, 3, 4).reshape(factor * factor * n, k, h // factor, w // factor)


def _shuffle_from_batch(sub: Tensor, factor: int) -> Tensor:
    """Inverse of :func:`_unshuffle_to_batch`."""
    ss_n, k, h, w = sub.shape
    n = ss_n // (factor * factor)
    grid = sub.view(factor * factor, n, k, h, w).permute(1, 2, 0, 3, 4)
    return F.pixel_shuffle(grid.reshape(n, k * factor * factor, h, w), factor)


def first_estimate(net: StackedDenoiser, noisy: Tensor, precision: Precision) -> Tensor:
    """Stage 1's output ``d1 = clamp(y - f(y), 0, 1)``."""
    with torch.inference_mode(), _precision(noisy.device, precision):
        return _denoise_residual(net, noisy).clamp(0, 1)


def refinements(net: StackedDenoiser, noisy: Tensor, d1: Tensor, precision: Precision) -> Tensor:
    """Stage 2's network passes: the mean of ``d1`` and the pixel-unshuffle refinements at factors 2 and 4."""
    estimates = [d1]
    with torch.inference_mode(), _precision(noisy.device, precision):
        for factor in REFINE_FACTORS:
            sub = _denoise_residual(net, _unshuffle_to_batch(noisy, factor))
            full = _shuffle_from_batch(sub, factor)
            estimates.append(_denoise_residual(net, full).clamp(0, 1))
    return torch.stack(estimates).mean(dim=0)


def refine(
    net: StackedDenoiser, noisy: Tensor, d1: Tensor, precision: Precision, nlm_weight: float = 0.0
) -> Tensor:
    """Stage 2: average ``d1`` with the pixel-unshuffle refinements at factors 2 and 4.

    With ``nlm_weight > 0`` a non-local means estimate of every image of ``noisy`` joins
    the smooth intermediate with that weight (see :mod:`n2d_dicom.nlm`).
    """
    return blend_nlm(noisy, refinements(net, noisy, d1, precision), nlm_weight)


def restore_detail(net: StackedDenoiser, smooth: Tensor, precision: Precision) -> Tensor:
    """Stage 3's output ``clamp(g(d2), 0, 1)``."""
    with torch.inference_mode(), _precision(smooth.device, precision):
        return apply_in_strips(net, smooth).float().clamp(0, 1)


def pad_to_multiple(slices: Tensor, multiple: int = SIDE_MULTIPLE) -> tuple[Tensor, int, int]:
    """Reflect-pad ``(S, H, W)`` so both sides are multiples of ``multiple``."""
    _, h, w = slices.shape
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"image sides must be at least {MIN_SIDE} pixels, got {h}x{w}")
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h or pad_w:
        slices = F.pad(slices.unsqueeze(1), (0, pad_w, 0, pad_h), mode="reflect").squeeze(1)
    return slices, h, w


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
        sub = _unshuffle_to_batch(padded.unsqueeze(1), stride).squeeze(1)
        denoised, trained = _denoise_per_series(sub, settings, device, clock, noisy.shape[0], start)
        out = _shuffle_from_batch(denoised.unsqueeze(1), stride).squeeze(1)
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


def _denoise_per_slice(
    slices: Tensor, settings: N2DSettings, device: torch.device, clock: Clock, stride: int = 1
) -> tuple[Tensor, Trained]:
    """One network pair per slice; ``slice_batch`` slices train side by side.

    With ``stride > 1`` each slice's network trains on, and denoises, the slice's
    ``stride^2`` pixel-unshuffled sub-images (samples of one network), shuffled back after.
    """
    outputs = []
    steps: tuple[int, ...] = ()
    for start in range(0, slices.shape[0], settings.slice_batch):
        chunk = slices[start : start + settings.slice_batch].unsqueeze(0)  # (1, K, H, W)
        seeds = [settings.seed + start + k for k in range(chunk.shape[1])]
        sub = _unshuffle_to_batch(chunk, stride)  # (stride^2, K, H/stride, W/stride)
        denoised, steps = _run_stages(sub, seeds, settings, device, clock)
        outputs.append(_shuffle_from_batch(denoised, stride)[0])
    return torch.cat(outputs), Trained(steps)


def _run_stages(
    noisy: Tensor, seeds: list[int], settings: N2DSettings, device: torch.device, clock: Clock
) -> tuple[Tensor, tuple[int, ...]]:
    """All stages on ``noisy`` held in memory at once (per-slice mode): every step sees every slice.

    Returns the output and the steps each network took.
    """
    k = noisy.shape[1]
    sampler = torch.Generator().manual_seed(settings.seed)
    count, side = slice_crops(noisy.shape, settings.slice_patch)

    def draw(inputs: Tensor, targets: Tensor) -> Callable[[], tuple[Tensor, Tensor]]:
        if side is None:
            return lambda: (inputs, targets)
        return lambda: random_crops(inputs, targets, sampler, count, side)

    def stepped(label: str) -> Callable[[int], None]:
        return lambda n: clock.advance(n * k * clock.cost.of("slice step"), label)

    with clock.phase("training", "training stage 1"):
        f = new_networks(seeds, settings, device)
        f_steps = train(
            f, stage1_loss, draw(noisy, noisy), settings, device, None, stepped("training stage 1")
        )
    with clock.phase("inference", "stage 1 estimate"):
        d1 = first_estimate(f, noisy, settings.precision)
    clock.advance(k * clock.cost.of("inference"), "stage 1 estimate")
    if settings.pipeline == "stage1":
        return d1, (f_steps,)
    with clock.phase("inference", "stage 2 refinement"):
        d2 = refinements(f, noisy, d1, settings.precision)
    clock.advance(k * clock.cost.of("inference"), "stage 2 refinement")
    if settings.nlm_blend > 0:
        with clock.phase("nlm", PHASE_NAMES["nlm"]):
            d2 = blend_nlm(noisy, d2, settings.nlm_blend)
        clock.advance(k * clock.cost.of("nlm"), PHASE_NAMES["nlm"])
    g_seeds = [s + DETAIL_SEED_OFFSET for s in seeds]
    with clock.phase("training", "training stage 3"):
        g = new_networks(g_seeds, settings, device)
        g_steps = train(g, stage3_loss, draw(d2, noisy), settings, device, None, stepped("training stage 3"))
    with clock.phase("inference", "stage 3 restoration"):
        out = restore_detail(g, d2, settings.precision)
    clock.advance(k * clock.cost.of("inference"), "stage 3 restoration")
    return out, (f_steps, g_steps)


def slice_crops(shape: torch.Size, patch: int | None) -> tuple[int, int | None]:
    """How a per-slice step samples ``(N, K, H, W)`` (``N`` sub-images of each of ``K`` slices):
    ``count`` crops of ``side`` per slice holding about ``patch^2`` pixels, or ``side=None``, all
    pixels, where the slice holds no more (or ``patch`` is None).

    A step on whole slices costs what their pixels cost: on a 1024x1024 slice a step of the
    paper's network took seconds, and its 2000 steps hours. Its 5x5 view learns as much per
    pixel from crops.
    """
    n, _, h, w = shape
    if patch is None or n * h * w <= patch * patch:
        return n, None
    side = min(patch, h, w) // 2 * 2  # even, so that crops keep the slice's 2x2 blocks
    return min(n, max(1, patch * patch // (side * side))), side


def random_crops(
    inputs: Tensor,
    targets: Tensor,
    generator: torch.Generator,
    count: int,
    side: int | None,
    among: list[int] | None = None,
) -> tuple[Tensor, Tensor]:
    """The same ``count`` random crops (``side`` square, at even offsets) of ``inputs`` and ``targets``.

    Crops come from slices drawn at random without replacement from ``among`` (all slices when
    None; all of them when there are fewer than ``count``); ``side=None``, or a side not smaller
    than the slices, takes whole slices. Only the crops are copied, never the volume. Even offsets
    keep each crop's 2x2 blocks those of the slice, so its diagonal downsamples are crops of the
    slice's.
    """
    pool = list(range(inputs.shape[0])) if among is None else among
    picks = [pool[i] for i in torch.randperm(len(pool), generator=generator)[:count].tolist()]
    _, _, h, w = inputs.shape
    if side is None or side >= min(h, w):
        return inputs[picks], targets[picks]
    tops = (torch.randint(0, (h - side) // 2 + 1, (len(picks),), generator=generator) * 2).tolist()
    lefts = (torch.randint(0, (w - side) // 2 + 1, (len(picks),), generator=generator) * 2).tolist()
    windows = [(k, t, lf) for k, t, lf in zip(picks, tops, lefts)]
    crop_in = torch.stack([inputs[k, :, t : t + side, lf : lf + side] for k, t, lf in windows])
    crop_out = torch.stack([targets[k, :, t : t + side, lf : lf + side] for k, t, lf in windows])
    return crop_in, crop_out


def _held_out_split(slices: int, early_stop: bool) -> tuple[list[int], list[int]]:
    """Slices trained on, and every 8th slice held out for early stopping (series of 8 or more)."""
    if not early_stop or slices < HELD_OUT_EVERY:
        return list(range(slices)), []
    held_out = list(range(HELD_OUT_EVERY // 2, slices, HELD_OUT_EVERY))
    return [k for k in range(slices) if k not in held_out], held_out


def pack_pair(f: StackedDenoiser, g: StackedDenoiser | None) -> bytes:
    """A per-series network pair serialised (``torch.save`` of both state dicts), for a later warm start."""
    buffer = io.BytesIO()
    state = {"channels": f.channels, "f": f.state_dict(), "g": None if g is None else g.state_dict()}
    torch.save(state, buffer)
    return buffer.getvalue()


def weights_digest(weights: bytes) -> str:
    """A short name of serialised weights: the first 16 hex digits of their SHA-256."""
    return hashlib.sha256(weights).hexdigest()[:16]


def _unpack_pair(
    weights: bytes, settings: N2DSettings, device: torch.device
) -> tuple[StackedDenoiser, StackedDenoiser | None] | None:
    """The pair :func:`pack_pair` wrote, as networks on ``device``; None where it cannot start these
    settings (another width, a missing stage-3 network, unreadable)."""
    try:
        state = torch.load(io.BytesIO(weights), map_location=device, weights_only=True)
        if state["channels"] != settings.width:
            return None
        f = new_networks([settings.seed], settings, device)
        f.load_state_dict(state["f"])
        g = None
        if settings.pipeline != "stage1":
            if state["g"] is None:
                return None
            g = new_networks([settings.seed + DETAIL_SEED_OFFSET], settings, device)
            g.load_state_dict(state["g"])
    except (RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        log.warning("warm start: the weights cannot be used (%s); starting cold", exc)
        return None
    return f, g


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
    trained, held_out = _held_out_split(volume.shape[0], settings.early_stop)
    warm = None if start is None else _unpack_pair(start, settings, device)
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

    def stepped(label: str) -> Callable[[int], None]:
        return lambda n: clock.advance(n, label)

    chunks = list(torch.split(volume, settings.slice_batch))

    def each_chunk(label: str, kind: str = "inference") -> Callable[[], None]:
        return clock.share(label, count * clock.cost.of(kind), len(chunks))

    with clock.phase("training", "training stage 1"):
        f = warm[0] if warm else new_networks([settings.seed], settings, device)
        f_steps = train(
            f,
            stage1_loss,
            lambda: draw(volume, volume, among=trained),
            settings,
            device,
            early_stop(volume, volume),
            stepped("training stage 1"),
            warm is not None,
        )
    with clock.phase("inference", "stage 1 estimate"):
        done = each_chunk("stage 1 estimate")
        d1 = []
        for c in chunks:
            d1.append(first_estimate(f, c, settings.precision))
            done()
    if settings.pipeline == "stage1":
        return torch.cat(d1).squeeze(1), Trained((f_steps,), warm_from, pack_pair(f, None))
    with clock.phase("inference", "stage 2 refinement"):
        done = each_chunk("stage 2 refinement")
        smooth = []
        for c, e in zip(chunks, d1):
            smooth.append(refinements(f, c, e, settings.precision))
            done()
    if settings.nlm_blend > 0:
        with clock.phase("nlm", PHASE_NAMES["nlm"]):
            done = each_chunk(PHASE_NAMES["nlm"], "nlm")
            for i, c in enumerate(chunks):
                smooth[i] = blend_nlm(c, smooth[i], settings.nlm_blend)
                done()
    d2 = torch.cat(smooth)
    with clock.phase("training", "training stage 3"):
        g = (
            warm[1]
            if warm and warm[1] is not None
            else new_networks([settings.seed + DETAIL_SEED_OFFSET], settings, device)
        )
        g_steps = train(
            g,
            stage3_loss,
            lambda: draw(d2, volume, among=trained),
            settings,
            device,
            early_stop(d2, volume),
            stepped("training stage 3"),
            warm is not None,
        )
    with clock.phase("inference", "stage 3 restoration"):
        done = each_chunk("stage 3 restoration")
        outputs = []
        for chunk in torch.split(d2, settings.slice_batch):
            outputs.append(restore_detail(g, chunk, settings.precision))
            done()
    return torch.cat(outputs).squeeze(1), Trained((f_steps, g_steps), warm_from, pack_pair(f, g))
