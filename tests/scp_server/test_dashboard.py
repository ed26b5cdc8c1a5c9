"""The dashboard and the run summaries it shows, on real stores after a real run (no HTTP here)."""

import io
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from huey import MemoryHuey
from PIL import Image

from scp_server.config import NodeSettings
from scp_server.dashboard import Dashboard, PageData, render
from scp_server.delivery import deliver
from scp_server.operations import NodeStatus, apply_retention, node_status
from scp_server.run_summary import RunSummary, preview_folder, preview_key
from scp_server.service import Node
from scp_server.spool import StoredInstance, instance_of
from scp_server.stores import Stores
from scp_server.tasks import SeriesProcessor
from scp_server.tracker import RunRecord
from tests.conftest import free_port
from tests.n2d_dicom.conftest import write_ct_series

CALLER = "CT01"


def node_settings(tmp_path: Path, pacs_port: int, **overrides: object) -> NodeSettings:
    values: dict = {
        "spool_dir": tmp_path / "spool",
        "allowed_calling_aets": [CALLER],
        "send_backoff_s": 0.1,
        "routes": [
            {
                "name": "ct-route",
                "match": {"modalities": ["CT"]},
                "n2d": {
                    "iterations": 3,
                    "channels": 8,
                    "mode": "per-series",
                    "nlm_blend": 0.0,
                    "wiener": False,
                },
                "destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}],
            }
        ],
    }
    values.update(overrides)
    return NodeSettings(**values)


def process(tmp_path: Path, **overrides: object) -> tuple[NodeSettings, Stores, str, list[pydicom.Dataset]]:
    """A four-slice CT series received and processed (its PACS is down: the delivery stays pending)."""
    settings = node_settings(tmp_path, free_port(), **overrides)
    stores = Stores.open(settings)
    (tmp_path / "modality").mkdir()
    sources = write_ct_series(tmp_path / "modality", [0, 5, 10, 15])
    for path in sources:
        instance = instance_of(pydicom.dcmread(path))
        outcome = stores.spool.store(path.read_bytes(), instance, CALLER)
        stores.tracker.instance_received(instance.series_instance_uid, "a", outcome.starts_run)
    stores.tracker.association_released("a")
    stores.tracker.quiet_period_s = 0
    (due,) = stores.tracker.claim_due()
    SeriesProcessor(settings, stores, torch.device("cpu"))(due.series_instance_uid, due.run)
    deliver(settings, stores.outbox, attempts=1)  # the node's sending thread, to a PACS that is down
    return settings, stores, due.series_instance_uid, [pydicom.dcmread(p) for p in sources]


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """One run, shared by the tests that only look at it: ``(settings, stores, series, sources)``."""
    settings, stores, series, sources = process(tmp_path_factory.mktemp("node"))
    yield settings, stores, series, sources
    stores.close()


def dashboard(settings: NodeSettings, stores: Stores, problems: list[str] | None = None) -> Dashboard:
    queue = MemoryHuey()
    return Dashboard(settings, stores, lambda: node_status(stores, queue), lambda: problems or [])


def page(board: Dashboard) -> str:
    answer = board.answer("/")
    assert answer is not None and answer.code == 200 and answer.content_type.startswith("text/html")
    return answer.body.decode()


@pytest.mark.slow
def test_a_run_records_what_its_series_is_and_the_noise_before_and_after_in_hu(processed):
    _, stores, series, sources = processed
    (run,) = stores.tracker.latest()
    summary = RunSummary.model_validate_json(run.summary or "")
    assert (summary.modality, summary.slices, summary.rows, summary.columns) == ("CT", 4, 128, 128)
    assert summary.unit == "HU" and len(summary.measured) == 1 and summary.measured[0]["stride"] >= 1
    assert summary.sigma_before is not None and summary.sigma_after is not None
    assert 0 < summary.sigma_after < summary.sigma_before
    assert summary.accession_number is None  # off by default
    assert {p.name for p in preview_folder(stores.spool.root, series).iterdir()} == {
        "input.png",
        "output.png",
        "residual.png",
    }
    middle = Image.open(preview_folder(stores.spool.root, series) / "input.png")
    assert middle.size == (128, 128) and np.asarray(middle).std() > 5


@pytest.mark.slow
def test_the_page_shows_the_run_and_no_patient_name_or_id(processed):
    settings, stores, series, sources = processed
    html = page(dashboard(settings, stores))
    assert series[-12:] in html and series not in html  # shortened
    assert "ct-route" in html and "CT, 4 slices, 128&times;128" in html and "HU" in html
    assert f"/runs/{preview_key(series)}/residual.png" in html
    assert "PACS@127.0.0.1" in html and "no association" in html and "healthy" in html
    for source in sources:
        assert str(source.PatientName) not in html and str(source.PatientID) not in html
    assert "CompressedSamples" not in html


@pytest.mark.slow
def test_thumbnails_are_served_and_nothing_else_under_runs(processed):
    settings, stores, series, _ = processed
    board = dashboard(settings, stores)
    key = preview_key(series)
    answer = board.answer(f"/runs/{key}/residual.png")
    assert answer is not None and answer.content_type == "image/png"
    assert Image.open(io.BytesIO(answer.body)).size == (128, 128)
    assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
    stray = stores.spool.root / "previews" / key / "secret.png"
    stray.write_bytes(b"x")
    for path in (
        f"/runs/{key}/secret.png",
        f"/runs/{key}/../{key}/input.png",
        f"/runs/{key.upper()}/input.png",
        f"/runs/{'0' * 16}/input.png",
        f"/runs/{key}/input.png/",
        "/runs/../index.sqlite3",
        "/index.html",
    ):
        assert board.answer(path) is None, path
    stray.unlink()


def test_retention_deletes_the_thumbnails_with_the_series(tmp_path):
    settings = NodeSettings(spool_dir=tmp_path / "spool", allowed_calling_aets=[CALLER])
    stores = Stores.open(settings)
    try:
        instance = StoredInstance("1.1.1", "1.1", "1.2", "1.2.840.10008.5.1.4.1.1.2")
        stores.spool.store(b"DICM", instance, CALLER)
        stores.tracker.instance_received("1.1", "a")
        stores.tracker.association_released("a")
        stores.tracker.quiet_period_s = 0
        (due,) = stores.tracker.claim_due()
        assert stores.tracker.start("1.1", due.run, "w", 60) and stores.tracker.finish("1.1", due.run, "w")
        folder = preview_folder(stores.spool.root, "1.1")
        folder.mkdir(parents=True)
        (folder / "input.png").write_bytes(b"png")
        time.sleep(0.01)
        assert apply_retention(stores, retention_s=0) == 1
        assert not folder.exists() and stores.tracker.state("1.1") == ("purged", 1)
    finally:
        stores.close()


@pytest.mark.slow
def test_with_the_dashboard_off_no_thumbnail_or_summary_is_kept(tmp_path):
    _, stores, series, _ = process(tmp_path, dashboard=False)
    try:
        assert stores.tracker.state(series) == ("done", 1)
        assert stores.tracker.latest()[0].summary is None
        assert not preview_folder(stores.spool.root, series).exists()
    finally:
        stores.close()


def test_everything_from_headers_peers_and_config_is_escaped():
    evil = "<script>alert(1)</script>"
    summary = RunSummary(
        modality=evil,
        slices=1,
        rows=2,
        columns=2,
        derived_series="1.2",
        measured=[{"stride": 1, "stabilised": False, "wiener_side": None, "mode": evil}],
        sigma_before=2.0,
        sigma_after=1.0,
        unit=evil,
        accession_number=evil,
    )
    plan = '{"route": {"name": "' + evil.replace("/", "\\/") + '", "n2d": {}}}'
    run = RunRecord(evil, 1, "failed", 1.0, 2.0, 3.0, 4.0, evil, plan, summary.model_dump_json())
    status = NodeStatus(
        queue_depth=0,
        series={evil: 1},
        in_flight=[],
        outbox={evil: {"pending": 1}},
        quarantined=0,
        last_errors=[],
        recent_runs={"count": 0, "queue_wait_s": None, "processing_s": None, "end_to_end_s": None},
    )
    data = PageData(evil, [evil], status, {evil: evil}, [run], {}, set(), time.time())
    html = render(data, accession_numbers=True)
    assert "<script" not in html and html.count("&lt;script&gt;") >= 9


def test_the_accession_number_is_shown_only_when_asked_for():
    summary = RunSummary(
        modality="CT",
        slices=1,
        rows=2,
        columns=2,
        derived_series="1.2",
        measured=[],
        sigma_before=None,
        sigma_after=None,
        unit="HU",
        accession_number="ACC-7731",
    )
    run = RunRecord("1.2.3", 1, "done", 1.0, 2.0, 3.0, 4.0, None, None, summary.model_dump_json())
    status = NodeStatus(
        queue_depth=0,
        series={"done": 1},
        in_flight=[],
        outbox={},
        quarantined=0,
        last_errors=[],
        recent_runs={"count": 0, "queue_wait_s": None, "processing_s": None, "end_to_end_s": None},
    )
    data = PageData("N2D", [], status, {}, [run], {}, set(), time.time())
    assert "ACC-7731" in render(data, accession_numbers=True)
    assert "ACC-7731" not in render(data, accession_numbers=False)


def http_get(url: str) -> tuple[int, str, bytes]:
    """Status, content type and body of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


@pytest.mark.parametrize("enabled", [True, False], ids=["dashboard", "no-dashboard"])
def test_the_node_serves_the_page_on_its_http_port_only_when_enabled(tmp_path, enabled):
    settings = NodeSettings(
        spool_dir=tmp_path / "spool",
        workers=0,
        port=free_port(),
        http_port=free_port(),
        allowed_calling_aets=[CALLER],
        dashboard=enabled,
    )
    node = Node(settings)
    node.start()
    try:
        base = f"http://127.0.0.1:{settings.http_port}"
        code, content_type, body = http_get(f"{base}/")
        missing = http_get(f"{base}/runs/{'0' * 16}/input.png")[0]
        metrics = http_get(f"{base}/metrics")[0]
    finally:
        node.stop()
    if enabled:
        assert code == 200 and content_type == "text/html; charset=utf-8"
        assert b"n2d-dicom node N2D" in body and b"No series received yet." in body
    else:
        assert code == 404
    assert missing == 404 and metrics == 200


def test_a_run_s_decisions_say_whether_a_magnitude_floor_was_taken_out():
    from scp_server.dashboard import describe

    taken = describe({"stride": 1, "stabilised": False, "wiener_side": 8, "rician_sigma": 0.0125})
    assert "Rician floor removed (sigma 0.0125)" in taken and "rician sigma" not in taken
    assert "no Rician correction" in describe({"stride": 1, "stabilised": False, "wiener_side": 8})
