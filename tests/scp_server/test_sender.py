"""Delivering files to real receivers on loopback: a pynetdicom SCP and dcmtk's storescp."""

import socket
import ssl
import subprocess
import sys
import time

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from scp_server.destinations import Destination, DestinationTLS
from scp_server.sender import send_files
from tests.helpers import dcmtk, free_port
from tests.n2d_dicom.conftest import data_file, write_ct_series


def receiver(port: int, statuses: dict[str, int] | None = None, tls: ssl.SSLContext | None = None):
    """A pynetdicom SCP that records what it receives; answers ``statuses[sop_uid]`` if given."""
    received: list[str] = []

    def handle(event):
        uid = str(event.request.AffectedSOPInstanceUID)
        received.append(uid)
        return (statuses or {}).get(uid, 0x0000)

    ae = AE(ae_title="DEST")
    for sop_class in (CTImageStorage, MRImageStorage):
        ae.add_supported_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)], ssl_context=tls
    )
    return server, received


@pytest.fixture
def series_files(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return write_ct_series(folder, [0.0, 1.0, 2.0])


def test_all_files_are_delivered_to_a_pynetdicom_receiver(series_files):
    port = free_port()
    server, received = receiver(port)
    try:
        results = send_files(series_files, Destination(ae_title="DEST", host="127.0.0.1", port=port), "N2D")
    finally:
        server.shutdown()
    assert all(r.delivered for r in results)
    assert sorted(received) == sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in series_files)


@pytest.mark.slow
def test_dcmtk_storescp_receives_the_files(series_files, tmp_path):
    binary = dcmtk("storescp")
    port, incoming = free_port(), tmp_path / "incoming"
    incoming.mkdir()
    peer = subprocess.Popen([binary, "-aet", "DEST", "-od", str(incoming), "--fork", str(port)])
    try:
        time.sleep(0.5)
        results = send_files(
            series_files, Destination(ae_title="DEST", host="127.0.0.1", port=port), "N2D", backoff_s=0.5
        )
    finally:
        peer.terminate()
        peer.wait(timeout=10)
    assert all(r.delivered for r in results), results
    assert len(list(incoming.iterdir())) == 3


def test_a_refused_instance_is_recorded_with_its_status_and_not_retried(series_files):
    port = free_port()
    refused_uid = str(pydicom.dcmread(series_files[1]).SOPInstanceUID)
    server, received = receiver(port, {refused_uid: 0xC123})
    try:
        results = send_files(series_files, Destination(ae_title="DEST", host="127.0.0.1", port=port), "N2D")
    finally:
        server.shutdown()
    assert [r.status for r in results] == [0x0000, 0xC123, 0x0000]
    assert results[1].refused and not results[1].delivered
    assert received.count(refused_uid) == 1


def test_a_receiver_that_comes_up_late_still_gets_everything(series_files):
    port = free_port()
    naps: list[float] = []
    started: list = []

    def sleep_then_start(seconds: float) -> None:  # the receiver comes up during the first backoff
        naps.append(seconds)
        if not started:
            started.append(receiver(port))

    results = send_files(
        series_files,
        Destination(ae_title="DEST", host="127.0.0.1", port=port),
        "N2D",
        attempts=3,
        backoff_s=0.01,
        sleep=sleep_then_start,
    )
    server, received = started[0]
    server.shutdown()
    assert all(r.delivered for r in results) and len(received) == 3
    assert naps == [0.01]


def test_an_unreachable_destination_leaves_everything_undelivered(series_files):
    results = send_files(
        series_files,
        Destination(ae_title="DEST", host="127.0.0.1", port=free_port()),
        "N2D",
        attempts=2,
        backoff_s=0.01,
        timeout_s=2,
    )
    assert all(r.status is None and not r.refused and r.error == "no association" for r in results)


def test_mixed_sop_classes_and_transfer_syntaxes_in_one_batch(tmp_path):
    port = free_port()
    server, received = receiver(port)
    files = [data_file("CT_small.dcm"), data_file("MR_small_implicit.dcm")]
    try:
        results = send_files(files, Destination(ae_title="DEST", host="127.0.0.1", port=port), "N2D")
    finally:
        server.shutdown()
    assert all(r.delivered for r in results) and len(received) == 2


def test_tls_destination_gets_the_files_only_over_verified_tls(series_files, certificate):
    cert, key = certificate
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    port = free_port()
    server, received = receiver(port, tls=server_side)
    plain = Destination(ae_title="DEST", host="127.0.0.1", port=port)
    trusted = plain.model_copy(update={"tls": DestinationTLS(ca_file=cert)})
    untrusted = plain.model_copy(update={"tls": DestinationTLS()})  # system CAs did not sign it
    try:
        refused_plain = send_files(series_files, plain, "N2D", attempts=1, timeout_s=5)
        refused_unverified = send_files(series_files, untrusted, "N2D", attempts=1, timeout_s=5)
        assert received == []
        delivered = send_files(series_files, trusted, "N2D", attempts=1, timeout_s=5)
    finally:
        server.shutdown()
    assert not any(r.delivered for r in refused_plain + refused_unverified)
    assert all(r.delivered for r in delivered) and len(received) == len(series_files)


def test_unreadable_tls_files_leave_the_files_undelivered_with_the_reason(series_files, tmp_path):
    destination = Destination(
        ae_title="DEST", host="127.0.0.1", port=free_port(), tls=DestinationTLS(ca_file=tmp_path / "none.pem")
    )
    results = send_files(series_files, destination, "N2D", attempts=1)
    assert not any(r.delivered or r.refused for r in results)
    assert all(r.error and r.error.startswith("TLS set-up") for r in results)


@pytest.mark.slow
def test_a_destination_trickling_its_answers_is_cut_off_at_the_deadline_per_instance(series_files):
    """Round 3, finding 2, over DIMSE: each read of a trickled C-STORE-RSP came within send_timeout_s,
    so the sending thread waited as long as the destination liked."""
    port = free_port()
    peer = subprocess.Popen([sys.executable, "-m", "tests.peers.trickling_storescp", str(port), "0.3"])
    try:
        deadline = time.monotonic() + 30
        while True:  # until the peer listens
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "the trickling peer did not listen"
            time.sleep(0.1)
        started = time.monotonic()
        results = send_files(
            series_files[:2],
            Destination(ae_title="DEST", host="127.0.0.1", port=port),
            "N2D",
            attempts=1,
            timeout_s=10,
            deadline_s=1.5,
        )
        waited = time.monotonic() - started
    finally:
        peer.terminate()
        peer.wait(timeout=10)
    assert not any(r.delivered or r.refused for r in results)
    assert results[0].error == "no complete answer within 1.5 s"
    assert waited < 8  # not the minute a trickled answer takes
