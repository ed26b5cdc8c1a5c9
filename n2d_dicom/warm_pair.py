"""A per-series network pair kept for a warm start: serialised, named by a digest, loaded back."""

from __future__ import annotations

import hashlib
import io
import logging
import pickle

import torch

from n2d_dicom.model import StackedDenoiser
from n2d_dicom.settings import N2DSettings
from n2d_dicom.training import DETAIL_SEED_OFFSET, new_networks

log = logging.getLogger(__name__)


def pack_pair(f: StackedDenoiser, g: StackedDenoiser | None) -> bytes:
    """A per-series network pair serialised (``torch.save`` of both state dicts), for a later warm start."""
    buffer = io.BytesIO()
    state = {"channels": f.channels, "f": f.state_dict(), "g": None if g is None else g.state_dict()}
    torch.save(state, buffer)
    return buffer.getvalue()


def weights_digest(weights: bytes) -> str:
    """A short name of serialised weights: the first 16 hex digits of their SHA-256."""
    return hashlib.sha256(weights).hexdigest()[:16]


def unpack_pair(
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
