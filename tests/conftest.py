"""Shared fixtures: a CPU device, few-iteration settings and a small noisy phantom."""

from __future__ import annotations

import shutil
import socket
import time

import numpy as np
import pydicom
import pytest
import torch
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from n2d_dicom.settings import N2DSettings
from n2d_dicom.tools.phantom import add_noise, ellipsoid_phantom


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


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def dcmtk(tool: str) -> str:
    """Path of a dcmtk command-line tool (pynetdicom installs look-alikes into the venv's bin)."""
    path = shutil.which(tool, path="/usr/bin:/usr/local/bin")
    assert path, f"dcmtk's {tool} not found: apt-get install dcmtk"
    return path


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
