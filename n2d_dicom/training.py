"""Training N2D's networks: fresh or warm stacks, Adam with a halving schedule, early stopping,
the precision forward passes run in, and the crops each step sees."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from n2d_dicom.devices import resolve_precision
from n2d_dicom.losses import LossFn
from n2d_dicom.model import StackedDenoiser
from n2d_dicom.settings import (
    EARLY_STOP_EVERY,
    EARLY_STOP_FROM,
    EARLY_STOP_MIN_IMPROVEMENT,
    EARLY_STOP_PATIENCE,
    N2DSettings,
    Precision,
)

#: Added to a stage-1 seed to seed its stage-3 network, so that ``f`` and ``g`` start differently.
DETAIL_SEED_OFFSET = 1_000_003
#: per-series early stopping holds out one slice in this many (series of at least as many slices).
HELD_OUT_EVERY = EARLY_STOP_FROM
#: A warm-started network takes at most this share of ``iterations``, its schedule compressed to them.
WARM_FRACTION = 0.5


@contextmanager
def in_precision(device: torch.device, precision: Precision) -> Iterator[None]:
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
    every: int = EARLY_STOP_EVERY
    patience: int = EARLY_STOP_PATIENCE
    min_improvement: float = EARLY_STOP_MIN_IMPROVEMENT
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
    the cold one compressed (the alternatives measured: docs/benchmarks.md). ``on_step(n)`` hears every
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
        with in_precision(device, settings.precision):
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


def held_out_split(slices: int, early_stop: bool) -> tuple[list[int], list[int]]:
    """Slices trained on, and every 8th slice held out for early stopping (series of 8 or more)."""
    if not early_stop or slices < HELD_OUT_EVERY:
        return list(range(slices)), []
    held_out = list(range(HELD_OUT_EVERY // 2, slices, HELD_OUT_EVERY))
    return [k for k in range(slices) if k not in held_out], held_out
