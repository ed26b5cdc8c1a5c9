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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from n2d_dicom.devices import fit_slice_batch, free_memory
from n2d_dicom.measured import Measured, Report
from n2d_dicom.model import StackedDenoiser
from n2d_dicom.nlm import blend_nlm
from n2d_dicom.noise import decorrelating_stride, keep_structure
from n2d_dicom.settings import N2DSettings
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
#: per-series early stopping holds out one slice in this many.
HELD_OUT_EVERY = 8

Progress = Callable[[int], None]
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
def _precision(device: torch.device, precision: str) -> Iterator[None]:
    """Run the enclosed forward passes in the requested precision."""
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
            singles.append(StackedDenoiser(1, settings.channels))
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
) -> StackedDenoiser:
    """Adam for ``settings.iterations`` steps (fewer if ``stop`` says so), lr halved at the half."""
    net.train()
    optimiser = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.StepLR(
        optimiser, step_size=max(1, settings.iterations // 2), gamma=0.5
    )
    for step in range(settings.iterations):
        if stop is not None and stop.should_stop(net, loss_fn, step):
            break
        inputs, targets = batches()
        with _precision(device, settings.precision):
            loss = loss_fn(net, inputs, targets)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
    net.eval()
    for param in net.parameters():
        param.requires_grad_(False)
    return net


def _denoise_residual(net: StackedDenoiser, x: Tensor) -> Tensor:
    return x - net(x).float()


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


def first_estimate(net: StackedDenoiser, noisy: Tensor, precision: str) -> Tensor:
    """Stage 1's output ``d1 = clamp(y - f(y), 0, 1)``."""
    with torch.inference_mode(), _precision(noisy.device, precision):
        return _denoise_residual(net, noisy).clamp(0, 1)


def refine(
    net: StackedDenoiser, noisy: Tensor, d1: Tensor, precision: str, nlm_weight: float = 0.0
) -> Tensor:
    """Stage 2: average ``d1`` with the pixel-unshuffle refinements at factors 2 and 4.

    With ``nlm_weight > 0`` a non-local means estimate of every image of ``noisy`` joins
    the smooth intermediate with that weight (see :mod:`n2d_dicom.nlm`).
    """
    estimates = [d1]
    with torch.inference_mode(), _precision(noisy.device, precision):
        for factor in REFINE_FACTORS:
            sub = _denoise_residual(net, _unshuffle_to_batch(noisy, factor))
            full = _shuffle_from_batch(sub, factor)
            estimates.append(_denoise_residual(net, full).clamp(0, 1))
    return blend_nlm(noisy, torch.stack(estimates).mean(dim=0), nlm_weight)


def restore_detail(net: StackedDenoiser, smooth: Tensor, precision: str) -> Tensor:
    """Stage 3's output ``clamp(g(d2), 0, 1)``."""
    with torch.inference_mode(), _precision(smooth.device, precision):
        return net(smooth).float().clamp(0, 1)


def pad_to_multiple(slices: Tensor, multiple: int = SIDE_MULTIPLE) -> tuple[Tensor, int, int]:
    """Reflect-pad ``(S, H, W)`` so both sides are multiples of ``multiple``."""
    _, h, w = slices.shape
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"image sides must be at least {MIN_SIDE} pixels, got {h}x{w}")
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h or pad_w:
        slices = F.pad(slices.unsqueeze(1), (0, pad_w, 0, pad_h), mode="reflect").squeeze(1)
    return slices, h, w


def denoise_slices(
    noisy: Tensor,
    settings: N2DSettings,
    device: torch.device,
    progress: Progress | None = None,
    report: Report | None = None,
) -> Tensor:
    """Denoise ``(S, H, W)`` float slices scaled to [0, 1]; returns the same shape on CPU.

    ``settings.anscombe`` may first stabilise signal-dependent noise
    (:mod:`n2d_dicom.variance`); ``settings.noise`` picks the sampling stride, at which
    the noise of the (sub-)images N2D sees is white; a non-local means estimate of them
    joins stage 2's smooth intermediate (``settings.nlm_blend``, :mod:`n2d_dicom.nlm`);
    with a stride above 1 structure the decorrelated output removed is put back
    (:mod:`n2d_dicom.noise`); last, an empirical Wiener filter with the output as its pilot
    (``settings.wiener``, :mod:`n2d_dicom.wiener`).

    ``settings.slice_batch`` is an upper bound: fewer slices go together when the
    device's free memory would not hold them (see :func:`fit_slice_batch`).

    ``progress`` is called with the number of slices finished since the last call, ``report``
    once with what was measured and chosen (:class:`Measured`).
    """
    if noisy.ndim != 3:
        raise ValueError(f"expected (slices, rows, columns), got shape {tuple(noisy.shape)}")
    stabiliser = stabiliser_for(noisy, settings.anscombe)
    stabilised = noisy if stabiliser is None else stabiliser.forward(noisy)
    out, stride, side = _denoise_stabilised(stabilised, settings, device, progress)
    if report:
        report(Measured(stride=stride, stabilised=stabiliser is not None, wiener_side=side))
    return out if stabiliser is None else stabiliser.inverse(out)


def _denoise_stabilised(
    noisy: Tensor, settings: N2DSettings, device: torch.device, progress: Progress | None
) -> tuple[Tensor, int, int | None]:
    """:func:`denoise_slices` on noise whose variance does not depend on the signal.

    Also returns the sampling stride and the Wiener step's window side (None: step off).
    """
    stride = sampling_stride(noisy, settings)
    padded, h, w = pad_to_multiple(noisy.to(device=device, dtype=torch.float32), SIDE_MULTIPLE * stride)
    fitted = fit_slice_batch(
        settings.slice_batch, padded.shape[1], padded.shape[2], settings.channels, free_memory(device)
    )
    settings = settings.model_copy(update={"slice_batch": fitted})
    if settings.mode == "per-series":
        sub = _unshuffle_to_batch(padded.unsqueeze(1), stride).squeeze(1)
        out = _shuffle_from_batch(_denoise_per_series(sub, settings, device).unsqueeze(1), stride)
        out = out.squeeze(1)
        if progress:
            progress(noisy.shape[0])
    else:
        out = _denoise_per_slice(padded, settings, device, progress, stride)
    out = out[:, :h, :w]
    if stride > 1:
        out = keep_structure(noisy.to(out.device, torch.float32), out)
    side = None
    if settings.wiener:
        out, side = wiener_refine(noisy, out, stride)
    return out.cpu(), stride, side


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
    slices: Tensor, settings: N2DSettings, device: torch.device, progress: Progress | None, stride: int = 1
) -> Tensor:
    """One network pair per slice; ``slice_batch`` slices train side by side.

    With ``stride > 1`` each slice's network trains on, and denoises, the slice's
    ``stride^2`` pixel-unshuffled sub-images (samples of one network), shuffled back after.
    """
    outputs = []
    for start in range(0, slices.shape[0], settings.slice_batch):
        chunk = slices[start : start + settings.slice_batch].unsqueeze(0)  # (1, K, H, W)
        seeds = [settings.seed + start + k for k in range(chunk.shape[1])]
        sub = _unshuffle_to_batch(chunk, stride)  # (stride^2, K, H/stride, W/stride)
        outputs.append(_shuffle_from_batch(_run_stages(sub, seeds, settings, device), stride)[0])
        if progress:
            progress(chunk.shape[1])
    return torch.cat(outputs)


def _run_stages(
    noisy: Tensor,
    seeds: list[int],
    settings: N2DSettings,
    device: torch.device,
) -> Tensor:
    """All stages on ``noisy`` held in memory at once (per-slice mode): every step sees every slice."""
    f = train(new_networks(seeds, settings, device), stage1_loss, lambda: (noisy, noisy), settings, device)
    d1 = first_estimate(f, noisy, settings.precision)
    if settings.pipeline == "stage1":
        return d1
    d2 = refine(f, noisy, d1, settings.precision, settings.nlm_blend)
    g_seeds = [s + DETAIL_SEED_OFFSET for s in seeds]
    g = train(new_networks(g_seeds, settings, device), stage3_loss, lambda: (d2, noisy), settings, device)
    return restore_detail(g, d2, settings.precision)


def random_crops(
    inputs: Tensor, targets: Tensor, generator: torch.Generator, count: int, side: int | None
) -> tuple[Tensor, Tensor]:
    """The same ``count`` random crops (``side`` square, at even offsets) of ``inputs`` and ``targets``.

    Crops come from slices drawn at random without replacement (all slices when there are
    fewer); ``side=None``, or a side not smaller than the slices, takes whole slices. Even
    offsets keep each crop's 2x2 blocks those of the slice, so its diagonal downsamples are
    crops of the slice's.
    """
    picks = torch.randperm(inputs.shape[0], generator=generator)[:count].tolist()
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


def _denoise_per_series(slices: Tensor, settings: N2DSettings, device: torch.device) -> Tensor:
    """One network pair for the whole series, trained on random slices, applied to all.

    The caller reports progress: ``slices`` may be pixel-unshuffled sub-images, not slices.
    """
    volume = slices.unsqueeze(1)  # (S, 1, H, W): slices are samples of one network
    sampler = torch.Generator().manual_seed(settings.seed)
    draw = functools.partial(
        random_crops, generator=sampler, count=settings.series_batch, side=settings.series_patch
    )
    trained, held_out = _held_out_split(volume.shape[0], settings.early_stop)

    def early_stop(inputs: Tensor, targets: Tensor) -> EarlyStop | None:
        if not held_out:
            return None
        fixed = torch.Generator().manual_seed(settings.seed + 1)
        count = 2 * settings.series_batch
        return EarlyStop(
            *random_crops(inputs[held_out], targets[held_out], fixed, count, settings.series_patch)
        )

    f = train(
        new_networks([settings.seed], settings, device),
        stage1_loss,
        lambda: draw(volume[trained], volume[trained]),
        settings,
        device,
        early_stop(volume, volume),
    )
    chunks = list(torch.split(volume, settings.slice_batch))
    d1 = [first_estimate(f, c, settings.precision) for c in chunks]
    if settings.pipeline == "stage1":
        return torch.cat(d1).squeeze(1)
    d2 = torch.cat([refine(f, c, e, settings.precision, settings.nlm_blend) for c, e in zip(chunks, d1)])
    g = train(
        new_networks([settings.seed + DETAIL_SEED_OFFSET], settings, device),
        stage3_loss,
        lambda: draw(d2[trained], volume[trained]),
        settings,
        device,
        early_stop(d2, volume),
    )
    outputs = [
        restore_detail(g, chunk, settings.precision) for chunk in torch.split(d2, settings.slice_batch)
    ]
    return torch.cat(outputs).squeeze(1)
