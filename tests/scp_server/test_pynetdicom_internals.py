"""The pynetdicom internals the node relies on are there, in the release series they were read in."""

from __future__ import annotations

import os
import re
import resource
import select
import socket
from pathlib import Path

import pynetdicom
import pytest
from pynetdicom import AE, _config
from pynetdicom.acse import ACSE
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.transport import AssociationSocket

from scp_server.pynetdicom_internals import TESTED_SERIES, poll_for_readiness

ROOT = Path(__file__).parents[2]


def test_the_installed_pynetdicom_is_of_the_series_the_internals_were_read_in():
    installed = tuple(int(part) for part in pynetdicom.__version__.split(".")[:2])
    assert installed == TESTED_SERIES, f"pynetdicom {pynetdicom.__version__}: re-read pynetdicom_internals"


def test_pyproject_admits_only_that_series():
    (pin,) = re.findall(r'"(pynetdicom[^"]*)"', (ROOT / "pyproject.toml").read_text())
    major, minor = TESTED_SERIES
    assert re.fullmatch(rf"pynetdicom>=3\.0\.4,<{major}\.{minor + 1}", pin), pin


def test_each_internal_the_node_uses_exists():
    assert isinstance(AssociationSocket.__dict__["ready"], property)
    assert "UI" in _config.VALIDATORS
    assert callable(ACSE.is_release_requested)
    assert callable(DIMSEServiceProvider.receive_primitive)
    provider_fields = DIMSEServiceProvider.__init__.__code__.co_names
    assert "msg_queue" in provider_fields and "message" in provider_fields
    assert isinstance(AE()._servers, list)


def test_readiness_by_poll_sees_data_on_a_descriptor_above_1023():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1500:
        pytest.skip(f"the hard limit on open files ({hard}) allows no descriptor 1500")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    left, right = socket.socketpair()
    high = socket.socket(fileno=os.dup2(left.fileno(), 1500))
    try:
        wrapper = AssociationSocket.__new__(AssociationSocket)
        wrapper.socket, wrapper._is_connected = high, True
        poll_for_readiness()
        assert wrapper.ready is False
        right.sendall(b"x")
        assert wrapper.ready is True
        try:
            select.select([high], [], [], 0)
            raise AssertionError("select() took a descriptor above 1023 here; the test proves nothing")
        except ValueError:
            pass
    finally:
        high.close()
        left.close()
        right.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
