"""Shared fixtures: a CPU device, few-iteration settings, a small noisy phantom, a PACS.

Tests marked ``gpu`` are skipped, with the reason, where torch sees no CUDA GPU. Plain helpers
(``free_port``, ``dcmtk``, ``N2D``) live in :mod:`tests.helpers`; they are imported here too for
test modules that still import them from this one.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from n2d_dicom.settings import N2DSettings
from n2d_dicom.tools.phantom import add_noise, ellipsoid_phantom
from tests.helpers import dcmtk, descendants, free_port, stop_processes

__all__ = ["dcmtk", "free_port"]


@pytest.fixture(autouse=True)
def no_process_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Stop every process a test started and left running (a node, an Orthanc, a dcmtk peer), pass or
    fail, after the test's own fixtures have torn down; a leak is a warning naming the test."""
    before = set(descendants(os.getpid()))
    yield
    left = [pid for pid in descendants(os.getpid()) if pid not in before]
    if left:
        commands = [command_line(pid) for pid in left]
        stop_processes(left)
        warnings.warn(f"{request.node.nodeid} left {len(left)} process(es) running: {commands}", stacklevel=1)


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return str(pid)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``gpu`` where there is no CUDA GPU, saying so."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def cpu() -> torch.device:
    return torch.device("cpu")


@pytest.fixture
def fast_settings() -> N2DSettings:
    """Few iterations: enough to show the algorithm working, quick on 2 cores."""
    return N2DSettings(iterations=300, channels=32)


@pytest.fixture(scope="session")
def phantom() -> np.ndarray:
    """Clean (4, 64, 64) ellipsoid phantom in [0, 1]."""
    return ellipsoid_phantom(4, 64)


@pytest.fixture(scope="session")
def noisy_phantom(phantom: np.ndarray) -> np.ndarray:
    return add_noise(phantom, "gaussian", seed=1)


@pytest.fixture
def pacs(request):
    """A receiving SCP standing in for the PACS; collects the datasets it is sent.

    Parametrise with a number of seconds to make it answer each C-STORE that slowly.
    """
    received: list[pydicom.Dataset] = []
    delay = getattr(request, "param", 0)

    def handle(event):
        received.append(event.dataset)
        time.sleep(delay)
        return 0x0000

    ae = AE(ae_title="PACS")
    ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)])
    yield port, received
    server.shutdown()
