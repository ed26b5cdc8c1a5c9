"""Warm starts per protocol: the network pair trained on the last series of a protocol, kept in the spool.

N2D's networks are tiny and self-supervised on each series; a pair trained on the
previous series of the same protocol (same scanner, kernel, slice size and
spacing, description) is a far better start than random weights, and early
stopping on the series' held-out slices then decides how many steps this series
still needs. The method stays data-free: nothing but the node's own earlier
output is reused, and every series still trains on itself.

The key is built from header attributes of the series' first instance
(``warm_start_key`` in the node's configuration). A pair is a file under
``spool/warm_start/``, named by a hash of its key, written atomically; pairs not
renewed within ``retention_hours`` are deleted when the cache is next used.
``warm_start: false`` turns it all off. The derived series records, in its
private block, whether and from which pair (digest and key) it was warm-started.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset

from n2d_dicom.atomic import atomic_path
from n2d_dicom.measured import Measured
from scp_server.config import NodeSettings

log = logging.getLogger(__name__)

#: Folder of the cached pairs, under the spool.
FOLDER = "warm_start"
#: Suffix of a cached pair's file.
SUFFIX = ".pair"


def protocol_key(header: Dataset, keywords: Sequence[str]) -> str:
    """The protocol key of a series whose first instance is ``header``: ``Keyword=value`` pairs joined
    by ``|``, in the order configured; an attribute that is absent is empty."""
    parts = []
    for keyword in keywords:
        value = header.get(keyword)
        if value is None:
            text = ""
        elif isinstance(value, str | int | float):
            text = str(value)
        else:  # multi-valued (PixelSpacing, ConvolutionKernel)
            text = "\\".join(str(v) for v in value) if hasattr(value, "__iter__") else str(value)
        parts.append(f"{keyword}={text.strip()}")
    return "|".join(parts)


class WarmStartCache:
    """The cached pairs of one spool, one per protocol key."""

    def __init__(self, root: Path, retention_s: float | None) -> None:
        self.folder = root / FOLDER
        self.retention_s = retention_s

    @classmethod
    def for_node(cls, settings: NodeSettings) -> WarmStartCache | None:
        """The node's cache, or None where ``warm_start`` is off."""
        if not settings.warm_start:
            return None
        retention = None if settings.retention_hours is None else settings.retention_hours * 3600
        return cls(settings.spool_dir, retention)

    def path(self, key: str) -> Path:
        """Where the pair of ``key`` is kept."""
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}{SUFFIX}"

    def load(self, key: str) -> bytes | None:
        """The pair last trained on a series of protocol ``key``, None if there is none (or it expired)."""
        self.prune()
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("warm start: %s cannot be read (%s); starting cold", self.path(key).name, exc)
            return None

    def store(self, key: str, measured: tuple[Measured, ...]) -> bool:
        """Keep the pair a run trained (the first stack's that has one) for the next series of ``key``.

        Returns whether a pair was stored (per-slice runs train no reusable pair). A pair that cannot
        be written is logged and left out: the next series starts cold.
        """
        weights = next((m.trained for m in measured if m.trained), None)
        if weights is None:
            return False
        try:
            with atomic_path(self.path(key), private=True) as tmp:
                tmp.write_bytes(weights)
        except OSError as exc:
            log.warning("warm start: the trained pair was not kept (%s)", exc)
            return False
        return True

    def prune(self, now: float | None = None) -> int:
        """Delete pairs not renewed within the retention time; returns how many went."""
        if self.retention_s is None or not self.folder.is_dir():
            return 0
        cutoff = (time.time() if now is None else now) - self.retention_s
        removed = 0
        for path in self.folder.glob(f"*{SUFFIX}"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # another worker pruned it first
                continue
        return removed
