"""Turn a user's device name into a ``torch.device``, at the edge of the program only."""

from __future__ import annotations

import torch

from n2d_dicom.errors import N2DInputError


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
