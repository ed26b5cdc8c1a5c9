"""The node as a site runs it: `n2d serve` in its own process, dcmtk's storescu as the modality,
a pynetdicom SCP as the PACS that receives the derived series. Loopback only; stops by itself."""

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest
import yaml
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from tests.conftest import dcmtk
from tests.n2d_dicom.conftest import write_ct_series
from tests.scp_server.test_scp import free_port

N2D = Path(sys.executable).with_name("n2d")


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else "node exited"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listening on {port} after {timeout} s")


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


def write_config(tmp_path: Path, pacs_port: int, **n2d: object) -> tuple[Path, dict]:
    config = {
        "ae_title": "N2D",
        "port": free_port(),
        "http_port": free_port(),
        "allowed_calling_aets": ["STORESCU"],
        "spool_dir": str(tmp_path / "spool"),
        "quiet_period_s": 0.5,
        "device": "cpu",
        "send_backoff_s": 0.2,
        "routes": [
            {
                "name": "ct",
                "match": {"modalities": ["CT"]},
                "n2d": {"iterations": 3, "channels": 8, "mode": "per-series", **n2d},
                "destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}],
            }
        ],
    }
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


def start_node(config_path: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [str(N2D), "serve", "--config", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_port(port, process)
    return process


def stop_node(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def send_series(port: int, folder: Path) -> None:
    sent = subprocess.run(
        [
            dcmtk("storescu"),
            "-aet",
            "STORESCU",
            "-aec",
            "N2D",
            "127.0.0.1",
            str(port),
            *map(str, folder.iterdir()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr


def wait_until(condition, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        assert process.poll() is None, "the node exited"
        time.sleep(0.1)
    assert condition()


def metrics(http_port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5).read().decode()


@pytest.fixture
def node(tmp_path, pacs):
    path, config = write_config(tmp_path, pacs[0])
    process = start_node(path, config["port"])
    yield config["port"], config["http_port"], process
    stop_node(process)


def send_with_pynetdicom(port: int, folder: Path) -> None:
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="N2D")
    assert assoc.is_established
    assert [assoc.send_c_store(path).Status for path in sorted(folder.iterdir())] == [0] * 4
    assoc.release()


@pytest.mark.parametrize("sender", [send_series, send_with_pynetdicom], ids=["dcmtk-storescu", "pynetdicom"])
def test_a_series_sent_by_a_modality_comes_back_as_a_derived_series(node, pacs, tmp_path, sender):
    port, http_port, process = node
    _, received = pacs
    folder = tmp_path / "modality"
    folder.mkdir()
    sources = [pydicom.dcmread(p) for p in write_ct_series(folder, [0.0, 2.5, 5.0, 7.5])]
    sender(port, folder)
    wait_until(lambda: len(received) == 4, process)

    assert {ds.StudyInstanceUID for ds in received} == {sources[0].StudyInstanceUID}
    assert len({ds.SeriesInstanceUID for ds in received}) == 1
    assert received[0].SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert {ds.SourceImageSequence[0].ReferencedSOPInstanceUID for ds in received} == {
        ds.SOPInstanceUID for ds in sources
    }
    assert all(list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"] for ds in received)

    health = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5).read()
    assert health == b"ok\n"
    figures = metrics(http_port)
    assert "n2d_instances_received_total 4.0" in figures
    assert "n2d_series_completed_total 1.0" in figures


def test_killed_mid_job_the_restarted_node_delivers_the_series_exactly_once(tmp_path, pacs):
    pacs_port, received = pacs
    path, config = write_config(tmp_path, pacs_port, iterations=150)  # a job of several seconds
    folder = tmp_path / "modality"
    folder.mkdir()
    sources = write_ct_series(folder, [0.0, 2.5, 5.0, 7.5])
    process = start_node(path, config["port"])
    try:
        send_series(config["port"], folder)
        wait_until(lambda: "n2d_series_completed_total 1.0" in metrics(config["http_port"]), process)
        time.sleep(1)  # the worker is denoising now
        process.kill()  # kill -9: no chance to clean up
        process.wait()
        assert received == []
        process = start_node(path, config["port"])
        wait_until(lambda: len(received) >= 4, process, timeout=180)
        time.sleep(2)  # anything sent twice would arrive now
    finally:
        stop_node(process)
    assert len(received) == 4
    assert len({ds.SOPInstanceUID for ds in received}) == 4
    assert {ds.SourceImageSequence[0].ReferencedSOPInstanceUID for ds in received} == {
        pydicom.dcmread(p).SOPInstanceUID for p in sources
    }


@pytest.mark.parametrize("pacs", [1.0], indirect=True)
def test_killed_mid_send_the_restarted_node_completes_delivery_without_duplicates(tmp_path, pacs):
    pacs_port, received = pacs
    path, config = write_config(tmp_path, pacs_port)
    folder = tmp_path / "modality"
    folder.mkdir()
    write_ct_series(folder, [0.0, 2.5, 5.0, 7.5])
    process = start_node(path, config["port"])
    try:
        send_series(config["port"], folder)
        wait_until(lambda: len(received) >= 2, process)  # the PACS answers one instance a second
        process.kill()
        process.wait()
        process = start_node(path, config["port"])
        wait_until(lambda: len({ds.SOPInstanceUID for ds in received}) == 4, process, timeout=180)
        time.sleep(2)
    finally:
        stop_node(process)
    assert len({ds.SeriesInstanceUID for ds in received}) == 1  # one derived series, not two
    assert len(received) <= 5  # at most the instance in flight at the kill arrives twice
