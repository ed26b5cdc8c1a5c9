"""Atomic writes end with the permissions a plain ``open()`` would give (n2d_dicom/atomic.py)."""

import os
import stat

import pytest

from n2d_dicom.atomic import atomic_path, process_umask


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_written_file_is_as_readable_as_the_umask_allows(tmp_path, umask_022):
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    with atomic_path(tmp_path / "atomic.bin") as tmp:
        tmp.write_bytes(b"x")
    assert mode(tmp_path / "atomic.bin") == mode(plain) == 0o644


def test_a_private_file_stays_readable_by_its_owner_alone(tmp_path, umask_022):
    with atomic_path(tmp_path / "spooled.dcm", private=True) as tmp:
        tmp.write_bytes(b"x")
    assert mode(tmp_path / "spooled.dcm") == 0o600


def test_the_umask_is_read_without_being_changed(umask_022):
    assert process_umask() == 0o022
    assert os.umask(0o022) == 0o022
