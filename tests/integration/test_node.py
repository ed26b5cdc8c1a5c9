"""The node as a site runs it: `n2d serve` in its own process, dcmtk's storescu as the modality,
a pynetdicom SCP as the PACS that receives the derived series. Loopback only; stops by itself."""

import time
import urllib.request

import pydicom
import pytest
import yaml

from tests.integration.conftest import (
    metrics,
    send_series,
    send_with_pynetdicom,
    start_node,
    stop_node,
    wait_until,
    write_config,
)
from tests.n2d_dicom.conftest import write_ct_series

pytestmark = pytest.mark.slow  # every test starts the node (n2d serve) or its peers in processes of their own


@pytest.fixture
def node(tmp_path, pacs):
    path, config = write_config(tmp_path, pacs[0])
    process = start_node(path, config["port"])
    yield config["port"], config["http_port"], process
    stop_node(process)


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


def test_a_series_no_route_takes_is_forwarded_unchanged_where_configured(tmp_path, pacs):
    pacs_port, received = pacs
    path, config = write_config(tmp_path, pacs_port)
    config["routes"][0]["match"] = {"modalities": ["MR"]}  # the CT series below matches no route
    config["forward_unmatched"] = [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}]
    path.write_text(yaml.safe_dump(config))
    folder = tmp_path / "modality"
    folder.mkdir()
    sources = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, write_ct_series(folder, [0.0, 2.5]))}
    process = start_node(path, config["port"])
    try:
        send_series(config["port"], folder)
        wait_until(lambda: len(received) == 2, process)
    finally:
        stop_node(process)
    assert {str(ds.SOPInstanceUID) for ds in received} == set(sources)
    for ds in received:
        source = sources[str(ds.SOPInstanceUID)]
        assert ds.SeriesInstanceUID == source.SeriesInstanceUID and ds.PixelData == source.PixelData


@pytest.mark.parametrize("taken", ["port", "http_port"])
def test_a_port_in_use_is_one_line_naming_it_and_exit_1(tmp_path, taken):
    """Round 3, finding 6: "Address already in use" did not say which port."""
    import socket
    import subprocess

    from tests.helpers import N2D

    path, config = write_config(tmp_path, 104)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", config[taken]))
        holder.listen()
        run = subprocess.run(
            [str(N2D), "serve", "--config", str(path)], capture_output=True, text=True, timeout=120
        )
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if "error" in line]
    assert errors == [
        f"n2d: error: cannot listen for {'DICOM' if taken == 'port' else 'HTTP'} on port "
        f"{config[taken]}: Address already in use"
    ], run.stderr
