"""Shared fixtures: a CPU device, few-iteration settings and a small noisy phantom."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from n2d_dicom.phantom import add_noise, ellipsoid_phantom
from n2d_dicom.settings import N2DSettings


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


def dcmtk(tool: str) -> str:
    """Path of a dcmtk command-line tool (pynetdicom installs look-alikes into the venv's bin)."""
    path = shutil.which(tool, path="/usr/bin:/usr/local/bin")
    assert path, f"dcmtk's {tool} not found: apt-get install dcmtk"
    return path
