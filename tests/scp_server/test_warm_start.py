"""Warm starts per protocol: the key, the cache in the spool, its retention, the off switch, the tag."""

import os
import time
from pathlib import Path

import pydicom
import pytest
import torch
from pydicom.dataset import Dataset

from n2d_dicom.derive import PRIVATE_CREATOR, PRIVATE_GROUP
from n2d_dicom.measured import Measured
from n2d_dicom.warm_pair import weights_digest
from scp_server.config import WARM_START_KEY, NodeSettings
from scp_server.stores import Stores
from scp_server.tasks import SeriesProcessor
from scp_server.warm_start import WarmStartCache, protocol_key
from tests.n2d_dicom.conftest import write_ct_series
from tests.scp_server.test_processor import node_settings, received


@pytest.fixture
def stores():
    opened: list[Stores] = []

    def open_for(settings: NodeSettings) -> Stores:
        opened.append(Stores.open(settings))
        return opened[-1]

    yield open_for
    for each in opened:
        each.close()


def header(**values: object) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def pair(data: bytes) -> tuple[Measured, ...]:
    return (Measured(1, False, None, mode="per-series", trained=data),)


def test_the_key_is_the_configured_attributes_in_order_absent_ones_empty():
    ct = header(
        Modality="CT", StationName="CT01", ConvolutionKernel="B30f", PixelSpacing=[0.5, 0.5], Rows=512
    )
    key = protocol_key(ct, WARM_START_KEY)
    assert key.startswith("Modality=CT|StationName=CT01|Manufacturer=|")
    assert "ConvolutionKernel=B30f|Rows=512|Columns=|PixelSpacing=0.5\\0.5|" in key
    assert protocol_key(ct, ["Rows", "Modality"]) == "Rows=512|Modality=CT"
    other_kernel = header(
        Modality="CT", StationName="CT01", ConvolutionKernel="B70f", PixelSpacing=[0.5, 0.5]
    )
    assert protocol_key(other_kernel, WARM_START_KEY) != key


def test_a_stored_pair_is_loaded_for_its_key_only(tmp_path):
    cache = WarmStartCache(tmp_path, retention_s=3600)
    assert cache.load("a") is None
    assert cache.store("a", pair(b"weights of a"))
    assert cache.load("a") == b"weights of a" and cache.load("b") is None
    assert not cache.store("b", (Measured(1, False, None),))  # per-slice runs train no reusable pair
    assert cache.load("b") is None


def test_pairs_not_renewed_within_the_retention_time_are_deleted(tmp_path):
    cache = WarmStartCache(tmp_path, retention_s=3600)
    cache.store("old", pair(b"old"))
    cache.store("new", pair(b"new"))
    two_hours_ago = time.time() - 7200
    os.utime(cache.path("old"), (two_hours_ago, two_hours_ago))
    assert cache.load("old") is None and not cache.path("old").exists()
    assert cache.load("new") == b"new"
    kept = WarmStartCache(tmp_path, retention_s=None)
    kept.store("old", pair(b"old"))
    os.utime(kept.path("old"), (two_hours_ago, two_hours_ago))
    assert kept.load("old") == b"old"  # retention_hours null: kept


def test_warm_start_false_turns_the_cache_off(tmp_path):
    assert WarmStartCache.for_node(node_settings(tmp_path, 1, warm_start=False)) is None
    cache = WarmStartCache.for_node(node_settings(tmp_path, 1, retention_hours=2))
    assert cache is not None and cache.retention_s == 7200
    assert cache.folder == tmp_path / "spool" / "warm_start"


def ct_series(folder: Path) -> list[Path]:
    """A new 3-slice CT series of one protocol (CT_small.dcm's) in ``folder``."""
    folder.mkdir()
    return write_ct_series(folder, [0, 5, 10])


def warm_tags(folder: Path) -> set[tuple[str, str | None]]:
    """(xx11, xx12) of the private block of every derived file under ``folder``."""
    tags = set()
    for path in folder.rglob("*.dcm"):
        block = pydicom.dcmread(path).private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
        digest = str(block[0x12].value) if 0x12 in block else None
        tags.add((str(block[0x11].value), digest))
    return tags


@pytest.mark.slow
def test_the_second_series_of_a_protocol_is_warm_started_and_says_from_which_pair(tmp_path, stores, pacs):
    port, _ = pacs
    settings = node_settings(tmp_path, port)
    opened = stores(settings)
    derived = settings.spool_dir / "derived"
    first = received(opened, ct_series(tmp_path / "a"))
    SeriesProcessor(settings, opened, torch.device("cpu"))(*first)
    assert warm_tags(derived) == {("COLD", None)}
    (cached,) = (settings.spool_dir / "warm_start").iterdir()
    digest = weights_digest(cached.read_bytes())
    sources = ct_series(tmp_path / "b")
    SeriesProcessor(settings, opened, torch.device("cpu"))(*received(opened, sources))
    assert warm_tags(derived) == {("COLD", None), ("WARM", digest)}
    keys = set()
    for path in derived.rglob("*.dcm"):
        block = pydicom.dcmread(path).private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
        if 0x13 in block:
            keys.add(str(block[0x13].value))
    assert keys == {f"route=ct|{protocol_key(pydicom.dcmread(sources[0]), WARM_START_KEY)}"}


@pytest.mark.slow
def test_with_warm_start_off_every_series_starts_cold(tmp_path, stores, pacs):
    port, _ = pacs
    settings = node_settings(tmp_path, port, warm_start=False)
    opened = stores(settings)
    for name in ("a", "b"):
        SeriesProcessor(settings, opened, torch.device("cpu"))(*received(opened, ct_series(tmp_path / name)))
    assert warm_tags(settings.spool_dir / "derived") == {("COLD", None)}
    assert not (settings.spool_dir / "warm_start").exists()
