"""Turn a user's device name into a ``torch.device``, at the edge of the program only."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import torch

from n2d_dicom.errors import N2DInputError
from n2d_dicom.settings import Precision, RanPrecision

#: CPU flags of native bfloat16 arithmetic: AVX512-BF16's dot products, AMX's tiles. With either,
#: oneDNN runs the networks' bfloat16 convolutions faster than float32 (docs/benchmarks.md);
#: without, it emulates them, slower than float32.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def resolve_device(name: str) -> torch.device:
    """``auto`` means the first CUDA GPU when one is usable, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise N2DInputError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise N2DInputError(f"device {name!r} asked for, but no CUDA GPU is usable here")
    if device.type not in ("cpu", "cuda"):
        raise N2DInputError(f"device type {device.type!r} is not supported (use cpu or cuda)")
    return device


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags as ``/proc/cpuinfo`` (or the text ``cpuinfo``) lists them; empty where
    there is none to read (other systems, some virtual machines)."""
    if cpuinfo is None:
        return _this_cpu_flags()
    found = re.search(r"^flags\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    return frozenset(found.group(1).split()) if found else frozenset()


@functools.cache
def _this_cpu_flags() -> frozenset[str]:
    """This machine's flags, read once: the engine asks at every training and inference pass."""
    source = Path("/proc/cpuinfo")
    return cpu_flags(source.read_text() if source.exists() else "")


def resolve_precision(
    precision: Precision, device: torch.device, flags: frozenset[str] | None = None
) -> RanPrecision:
    """``auto``: bf16 on a CPU with native bfloat16 arithmetic (:data:`BF16_CPU_FLAGS`, read from
    ``flags`` or the CPU's), fp32 elsewhere, GPUs included: there these small networks are bound by
    kernel launches, and bf16 measured no faster. Other precisions are kept as asked."""
    if precision != "auto":
        return precision
    native = BF16_CPU_FLAGS & (cpu_flags() if flags is None else flags)
    return "bf16" if device.type == "cpu" and native else "fp32"


#: Bytes per pixel and hidden channel that training one network on a slice keeps alive: four
#: activations per layer pair, their gradients, over the image and its two quarter-size
#: downsamples (1.5 pixels per pixel), float32 (2 x 4 x 4 x 1.5).
TRAINING_BYTES_PER_PIXEL_CHANNEL = 48
#: Share of the free memory a batch may plan to use (allocator slack, other tensors).
MEMORY_SHARE = 0.5


def free_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` now: CUDA's free memory, or the CPU's MemAvailable; None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def fit_slice_batch(wanted: int, rows: int, columns: int, channels: int, free: int | None) -> int:
    """The largest slice batch up to ``wanted`` whose training fits in half of ``free`` bytes (at least 1).

    A 1000-slice series then runs in batches that fit the GPU it lands on
    instead of failing with out-of-memory; ``free=None`` keeps ``wanted``.
    """
    if free is None:
        return wanted
    per_slice = TRAINING_BYTES_PER_PIXEL_CHANNEL * channels * rows * columns
    return max(1, min(wanted, int(free * MEMORY_SHARE) // per_slice))
