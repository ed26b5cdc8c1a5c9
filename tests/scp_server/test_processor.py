"""The job's core without the queue: route, denoise, write, outbox, lease, on real stores and a real peer."""

import errno
from pathlib import Path

import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from scp_server import tasks
from scp_server.config import NodeSettings
from scp_server.delivery import deliver
from scp_server.spool import instance_of
from scp_server.stores import Stores
from scp_server.tasks import SeriesProcessor, plan_run
from tests.helpers import database_full, free_port
from tests.n2d_dicom.conftest import write_ct_series

CALLER = "CT01"


def node_settings(tmp_path: Path, pacs_port: int, **overrides: object) -> NodeSettings:
    values: dict = {
        "spool_dir": tmp_path / "spool",
        "allowed_calling_aets": [CALLER],
        "send_attempts": 3,
        "send_backoff_s": 0.1,
        "routes": [
            {
                "name": "ct",
                "match": {"modalities": ["CT"]},
                "n2d": {"iterations": 3, "channels": 8, "mode": "per-series"},
                "destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}],
            }
        ],
    }
    values.update(overrides)
    return NodeSettings(**values)


@pytest.fixture
def stores(tmp_path):
    opened: list[Stores] = []

    def open_for(settings: NodeSettings) -> Stores:
        opened.append(Stores.open(settings))
        return opened[-1]

    yield open_for
    for each in opened:
        each.close()


def received(stores: Stores, files: list[Path]) -> tuple[str, int]:
    """Store ``files`` as one association would, and claim their series; returns ``(series, run)``."""
    for path in files:
        instance = instance_of(pydicom.dcmread(path))
        outcome = stores.spool.store(path.read_bytes(), instance, CALLER)
        stores.tracker.instance_received(instance.series_instance_uid, "a", outcome.starts_run)
    stores.tracker.association_released("a")
    stores.tracker.quiet_period_s = 0
    (due,) = stores.tracker.claim_due()
    return due.series_instance_uid, due.run


@pytest.mark.slow
def test_a_complete_series_is_denoised_and_delivered_without_any_queue(tmp_path, stores, pacs):
    port, delivered = pacs
    settings = node_settings(tmp_path, port)
    opened = stores(settings)
    series, run = received(opened, write_ct_series(tmp_path, [0, 5, 10]))
    SeriesProcessor(settings, opened, torch.device("cpu"))(series, run)
    assert opened.tracker.state(series) == ("done", 1)
    deliver(settings, opened.outbox, attempts=1)  # the node's sending thread
    assert len(delivered) == 3 and {ds.SeriesInstanceUID for ds in delivered} != {series}


@pytest.mark.slow
def test_a_run_follows_the_plan_it_was_claimed_with_not_a_config_edited_since(tmp_path, stores, pacs):
    port, delivered = pacs
    claimed_with = node_settings(tmp_path, port)
    opened = stores(claimed_with)
    series, run = received(opened, write_ct_series(tmp_path, [0, 5]))
    opened.tracker.record_plan(series, run, plan_run(claimed_with, opened.spool, series).model_dump_json())
    edited = node_settings(tmp_path, free_port(), routes=[])  # the route is gone, the PACS moved
    SeriesProcessor(edited, opened, torch.device("cpu"))(series, run)
    deliver(edited, opened.outbox, attempts=1)
    assert len(delivered) == 2
    assert {row.destination for row in opened.outbox.rows()} == {f"PACS@127.0.0.1:{port}"}


def test_a_series_with_no_usable_image_fails_with_the_reason(tmp_path, stores, pacs):
    """Finding 12: such a series ended `done`, with nothing sent and no error."""
    port, delivered = pacs
    settings = node_settings(tmp_path, port)
    opened = stores(settings)
    files = write_ct_series(tmp_path, [0, 5])
    for path in files:
        dataset = pydicom.dcmread(path)
        dataset.PixelData = dataset.PixelData[:100]  # truncated: cannot be decoded
        dataset.save_as(path, enforce_file_format=True)
    series, run = received(opened, files)
    SeriesProcessor(settings, opened, torch.device("cpu"))(series, run)
    assert opened.tracker.state(series) == ("failed", 1)
    ((_, _, _, error),) = opened.tracker.errors()
    assert error.startswith("no usable image: 2 instance(s) skipped: ") and "Pixel Data" in error
    assert delivered == []


@pytest.mark.slow
def test_a_destination_that_is_down_costs_the_job_nothing(tmp_path, stores):
    """Finding 13: the single worker spent every send attempt's backoff per series while others waited;
    round 3, finding 2: even one attempt let a trickling destination hold the worker. Jobs never send."""
    settings = node_settings(tmp_path, free_port(), send_attempts=5, send_backoff_s=0.2)
    opened = stores(settings)
    series, run = received(opened, write_ct_series(tmp_path, [0, 5]))
    SeriesProcessor(settings, opened, torch.device("cpu"))(series, run)
    assert opened.tracker.state(series) == ("done", 1)
    rows = opened.outbox.rows()
    assert [(row.state, row.attempts, row.last_error) for row in rows] == [("pending", 0, None)] * 2


def test_objects_that_are_not_images_to_denoise_are_forwarded_unchanged(tmp_path, stores, pacs):
    """Finding 16, the node's side: a route that matches any modality got an RT Dose grid denoised."""
    port, delivered = pacs
    viewer = {"ae_title": "VIEWER", "host": "127.0.0.1", "port": port}
    any_modality = {
        "name": "any",
        "n2d": {"iterations": 3, "channels": 8},
        "destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": port}],
    }
    settings = node_settings(tmp_path, port, forward_unmatched=[viewer], routes=[any_modality])
    opened = stores(settings)
    dose = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    series, run = received(opened, [Path(get_testdata_file("rtdose.dcm"))])
    SeriesProcessor(settings, opened, torch.device("cpu"))(series, run)
    assert opened.tracker.state(series) == ("done", 1)
    assert [(row.destination, row.sop_instance_uid) for row in opened.outbox.rows()] == [
        (settings.forward_unmatched[0].key, dose.SOPInstanceUID)
    ]


@pytest.mark.slow
def test_an_outcome_that_cannot_be_recorded_at_once_is_recorded_when_the_database_takes_it(
    tmp_path, stores, pacs
):
    """Finding 3: a full disk during finish() left the run `processing` for good."""
    port, delivered = pacs
    settings = node_settings(tmp_path, port)
    opened = stores(settings)
    series, run = received(opened, write_ct_series(tmp_path, [0, 5]))
    real, calls = opened.tracker.finish, []

    def full_then_free(*args, **kwargs):
        calls.append(1)
        if len(calls) <= 2:
            raise database_full()
        return real(*args, **kwargs)

    opened.tracker.finish = full_then_free
    SeriesProcessor(settings, opened, torch.device("cpu"))(series, run)
    assert len(calls) == 3 and opened.tracker.state(series) == ("done", 1)


@pytest.mark.slow
def test_a_full_disk_while_writing_the_derived_series_puts_the_run_back_instead_of_failing_it(
    tmp_path, stores, pacs, monkeypatch
):
    """Found by the soak: a disk that filled while a worker wrote a derived series failed the run for good."""
    port, delivered = pacs
    settings = node_settings(tmp_path, port)
    opened = stores(settings)
    series, run = received(opened, write_ct_series(tmp_path, [0, 5]))
    real, calls = tasks.write_instances, []

    def full_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks, "write_instances", full_once)
    processor = SeriesProcessor(settings, opened, torch.device("cpu"))
    processor(series, run)
    assert opened.tracker.state(series) == ("queued", 1) and delivered == []
    processor(series, run)  # the node queues it again after job_lease_s; the space is back
    deliver(settings, opened.outbox, attempts=1)
    assert opened.tracker.state(series) == ("done", 1) and len(delivered) == 2


@pytest.mark.slow
def test_a_run_superseded_while_it_was_denoised_sends_nothing(tmp_path, stores, pacs, monkeypatch):
    """Found by an adversarial review: a superseded run's partial derived series reached the PACS."""
    port, delivered = pacs
    settings = node_settings(tmp_path, port)
    opened = stores(settings)
    files = write_ct_series(tmp_path, [0, 5, 10])
    series, run = received(opened, files[:2])
    real = tasks.write_instances

    def late_instance_meanwhile(*args, **kwargs):
        late = pydicom.dcmread(files[2])
        opened.spool.store(files[2].read_bytes(), instance_of(late), CALLER)
        opened.tracker.instance_received(series, "b")  # run 2 begins
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks, "write_instances", late_instance_meanwhile)
    SeriesProcessor(settings, opened, torch.device("cpu"))(series, run)
    assert opened.tracker.state(series) == ("receiving", 2)
    assert opened.outbox.rows() == [] and delivered == []
