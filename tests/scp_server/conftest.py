"""Fixtures the node's tests share, and the helpers that go with them."""

import subprocess
from pathlib import Path

import pydicom
import pytest

from scp_server.destinations import DicomWebDestination
from scp_server.outbox import Outbox
from tests.peers.stow_rs import StowPeer


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1, made with openssl."""
    key, cert = tmp_path / "node.key", tmp_path / "node.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def outbox(tmp_path):
    """An outbox of the test's own, closed after it."""
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    yield outbox
    outbox.close()


@pytest.fixture
def peer():
    """A STOW-RS receiver on loopback (tests/peers/stow_rs.py), stopped after the test."""
    peer = StowPeer().start()
    yield peer
    peer.stop()


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def web(url: str, **target: object) -> DicomWebDestination:
    """A DICOMweb destination at ``url`` with the given target fields."""
    return DicomWebDestination.model_validate({"dicomweb": {"url": url, **target}})
