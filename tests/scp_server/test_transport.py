"""The node's listener, attacked and stressed over loopback with raw sockets and real pynetdicom peers.

Each test names the behaviour it pins down: associations reported closed exactly once however they
end, bounded memory and time before an association is negotiated, and ``max_associations`` counting
negotiated associations only.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from scp_server.config import NodeSettings, TLSSettings
from scp_server.scp import build_ae, start_scp
from scp_server.spool import Spool
from scp_server.transport import NodeServer, serve
from tests.helpers import CALLER, free_port
from tests.n2d_dicom.conftest import data_file
from tests.scp_server.raw_dicom import (
    PATIENCE_S,
    answer_to_request,
    answer_type,
    association_request,
    command_pdu,
    pdu,
    raw_associate,
    raw_store,
    read_pdu,
    read_status,
    store_request,
)

LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)  # rejected-transient, service-provider (presentation), diagnostic


def closed_by_peer(sock: socket.socket, within_s: float = PATIENCE_S, trickle: bool = False) -> bool:
    """Whether the node closes ``sock`` within ``within_s`` (reading and discarding what it sends).

    With ``trickle`` one byte is sent every 0.2 s meanwhile, as a slow peer would.
    """
    deadline = time.monotonic() + within_s
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            pass
        except OSError:  # reset
            return True
        if trickle:
            try:
                sock.send(b"\x00")
            except OSError:
                return True
    return False


def establish(settings: NodeSettings, calling: str = CALLER) -> Association:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = PATIENCE_S
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    return ae.associate("127.0.0.1", settings.port, ae_title=settings.ae_title)


def wait_for(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def node_settings(tmp_path: Path, **overrides: object) -> NodeSettings:
    return NodeSettings(
        port=free_port(),
        allowed_calling_aets=[CALLER],
        spool_dir=tmp_path / "spool",
        **overrides,  # type: ignore[arg-type]
    )


class Recorder:
    """Collects ``on_closed`` calls and the association objects the C-STORE handler saw."""

    def __init__(self) -> None:
        self.closed: list[tuple[Association, str]] = []
        self.stored_by: list[Association] = []
        self.aborted_events: list[Association] = []
        self.aborted_before_closed: list[bool] = []
        self.changed = threading.Condition()

    def on_closed(self, assoc: Association, how: str) -> None:
        with self.changed:
            self.closed.append((assoc, how))
            self.aborted_before_closed.append(assoc in self.aborted_events)
            self.changed.notify_all()

    def on_store(self, event: Event) -> int:
        self.stored_by.append(event.assoc)
        return 0x0000

    def on_aborted(self, event: Event) -> None:
        self.aborted_events.append(event.assoc)

    def wait_closed(self, count: int) -> list[tuple[Association, str]]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.closed) >= count, PATIENCE_S), (
                f"{len(self.closed)} association(s) reported closed, expected {count}"
            )
            return list(self.closed)


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[tuple[NodeSettings, Recorder, NodeServer]]:
    """A node (``build_ae`` + ``serve``) that records closes and C-STOREs; stopped after the test."""
    settings = node_settings(tmp_path, max_associations=3, acse_timeout_s=30)
    recorder = Recorder()
    handlers = [(evt.EVT_C_STORE, recorder.on_store), (evt.EVT_ABORTED, recorder.on_aborted)]
    server = serve(build_ae(settings), settings, handlers, on_closed=recorder.on_closed)
    yield settings, recorder, server
    server.shutdown()


def ct() -> pydicom.Dataset:
    return pydicom.dcmread(data_file("CT_small.dcm"))


# --- finding 2: every association that ends is reported exactly once -------------------------------


MALFORMED_COMMANDS = {
    "random bytes": random.Random(2).randbytes(96),
    # (0000,0800) CommandDataSetType only: a decodable command set without CommandField
    "no CommandField": struct.pack("<HHLH", 0x0000, 0x0800, 2, 0x0101),
    # CommandField 0x7777 is no DIMSE command
    "unknown CommandField": struct.pack("<HHLH", 0x0000, 0x0100, 2, 0x7777)
    + struct.pack("<HHLH", 0x0000, 0x0800, 2, 0x0101),
}


@pytest.mark.parametrize("command", MALFORMED_COMMANDS.values(), ids=MALFORMED_COMMANDS.keys())
def test_malformed_command_after_stores_ends_the_association_as_aborted_exactly_once(
    listening, command, caplog
):
    settings, recorder, _ = listening
    caplog.set_level(logging.WARNING, logger="scp_server.transport")
    sock = raw_associate(settings.port)
    assert [raw_store(sock, ct(), 1), raw_store(sock, ct(), 2)] == [0x0000, 0x0000]
    sock.sendall(command_pdu(command))
    assert read_pdu(sock)[0] == 0x07  # A-ABORT: the node's state machine is alive and ends it
    sock.close()
    ((assoc, how),) = recorder.wait_closed(1)
    assert how == "aborted"
    assert recorder.stored_by == [assoc, assoc]  # the very object the handlers saw
    assert recorder.aborted_events == [assoc] and recorder.aborted_before_closed == [True]
    assert any("DIMSE" in record.getMessage() for record in caplog.records), caplog.text
    # The node still serves, and the broken association is not reported a second time.
    follow_up = establish(settings)
    assert follow_up.is_established
    follow_up.release()
    closed = recorder.wait_closed(2)
    assert [how for _, how in closed] == ["aborted", "released"]
    assert closed[0][0] is assoc and closed[1][0] is not assoc


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_association_whose_reactor_dies_is_still_reported_aborted_once(listening, monkeypatch, caplog):
    """Second line of defence: without the DIMSE guard pynetdicom's reactor thread dies (no events);
    the end is still reported, from the association's lifetime, and logged."""
    from pynetdicom.dimse import DIMSEServiceProvider

    from scp_server import transport

    monkeypatch.setattr(transport._GuardedDIMSE, "receive_primitive", DIMSEServiceProvider.receive_primitive)
    settings, recorder, _ = listening
    caplog.set_level(logging.WARNING, logger="scp_server.transport")
    sock = raw_associate(settings.port)
    assert raw_store(sock, ct(), 1) == 0x0000
    sock.sendall(command_pdu(MALFORMED_COMMANDS["no CommandField"]))
    ((assoc, how),) = recorder.wait_closed(1)
    sock.close()
    assert how == "aborted" and recorder.stored_by == [assoc]
    assert any("without release or abort" in r.getMessage() for r in caplog.records), caplog.text


def test_released_association_is_reported_released_once(listening):
    settings, recorder, _ = listening
    assoc = establish(settings)
    assert assoc.send_c_store(ct()).Status == 0x0000
    assoc.release()
    ((node_side, how),) = recorder.wait_closed(1)
    assert how == "released" and recorder.stored_by == [node_side]


def test_peer_closing_the_connection_without_release_is_reported_aborted(listening):
    settings, recorder, _ = listening
    sock = raw_associate(settings.port)
    assert raw_store(sock, ct(), 1) == 0x0000
    sock.close()
    ((_, how),) = recorder.wait_closed(1)
    assert how == "aborted"


def test_peer_a_abort_is_reported_aborted(listening):
    settings, recorder, _ = listening
    assoc = establish(settings)
    assoc.abort()
    ((_, how),) = recorder.wait_closed(1)
    assert how == "aborted"


@pytest.mark.slow
def test_silent_peer_is_aborted_at_network_timeout_and_reported(tmp_path):
    settings = node_settings(tmp_path, network_timeout_s=1)
    recorder = Recorder()
    server = serve(build_ae(settings), settings, [], on_closed=recorder.on_closed)
    try:
        sock = raw_associate(settings.port)
        ((_, how),) = recorder.wait_closed(1)
        assert how == "aborted"
        sock.close()
    finally:
        server.shutdown()


@pytest.mark.slow
def test_peer_stalling_inside_a_pdu_is_aborted_at_network_timeout(tmp_path):
    """A PDU header promising more than ever comes must not pin the association (pynetdicom reads
    the rest of a PDU on a blocking socket)."""
    settings = node_settings(tmp_path, network_timeout_s=1)
    recorder = Recorder()
    server = serve(build_ae(settings), settings, [], on_closed=recorder.on_closed)
    try:
        sock = raw_associate(settings.port)
        sock.sendall(struct.pack(">BBL", 0x04, 0, 1000) + b"\x00" * 10)
        ((_, how),) = recorder.wait_closed(1)
        assert how == "aborted"
        sock.close()
    finally:
        server.shutdown()


def test_rejected_association_is_not_reported_closed(listening):
    settings, recorder, _ = listening
    assert answer_type(settings.port, calling="INTRUDER") == 0x03  # A-ASSOCIATE-RJ
    follow_up = establish(settings)  # an accepted one afterwards: only it is reported
    follow_up.release()
    assert [how for _, how in recorder.wait_closed(1)] == ["released"]


def test_start_scp_reports_the_end_of_a_broken_association_to_on_ended(tmp_path):
    """The symptom: the series tracker heard of an association whose reactor died, so it did not
    wait forever for its release."""
    settings = node_settings(tmp_path)
    spool = Spool(settings.spool_dir)
    stored: list[str] = []
    ended: list[tuple[object, ...]] = []
    server = start_scp(
        settings,
        spool,
        lambda _, key, *outcome: stored.append(key),
        lambda key, *how: ended.append((key, *how)),
    )
    try:
        sock = raw_associate(settings.port)
        assert [raw_store(sock, ct(), 1), raw_store(sock, ct(), 2)] == [0x0000, 0x0000]
        sock.sendall(command_pdu(MALFORMED_COMMANDS["no CommandField"]))
        sock.close()
        wait_for(lambda: ended, "on_ended")
        assert [entry[0] for entry in ended] == [stored[0]] and stored == [stored[0]] * 2
    finally:
        server.shutdown()
        spool.close()


# --- finding 6: bounded memory before the association is accepted ----------------------------------

NODE_PROCESS = """
import sys
from scp_server.config import NodeSettings
from scp_server.scp import start_scp
from scp_server.spool import Spool

settings = NodeSettings(port=int(sys.argv[1]), allowed_calling_aets=["STORESCU"], spool_dir=sys.argv[2])
spool = Spool(settings.spool_dir)
server = start_scp(settings, spool)
print("ready", flush=True)
sys.stdin.read()
server.shutdown()
spool.close()
"""


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


@pytest.mark.slow
def test_huge_association_request_is_refused_without_buffering_it(tmp_path):
    """A-ASSOCIATE-RQ declaring 0xFFFFFFF0 bytes, followed by 64 MiB: the node's peak memory must
    not follow what an unauthenticated peer sends."""
    port = free_port()
    node = subprocess.Popen(
        [sys.executable, "-c", NODE_PROCESS, str(port), str(tmp_path / "spool")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert node.stdout is not None and node.stdout.readline().strip() == "ready"
        before = peak_rss_kib(node.pid)
        with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S) as sock:
            sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0))
            chunk = bytes(1 << 20)
            try:
                for _ in range(64):
                    sock.sendall(chunk)
            except OSError:
                pass  # the node closed the connection: what we want
            closed_by_peer(sock)
        grown_mib = (peak_rss_kib(node.pid) - before) / 1024
        assert grown_mib < 16, f"the node's peak memory grew by {grown_mib:.0f} MiB"
        assoc = establish(NodeSettings(port=port, spool_dir=tmp_path))
        assert assoc.is_established  # still serving
        assoc.release()
    finally:
        node.communicate(input="", timeout=PATIENCE_S)


@pytest.mark.parametrize(
    ("pdu_type", "length"),
    [(0x01, 64 * 1024 + 1), (0x01, 0xFFFFFFF0), (0x04, 0xFFFFFFF0), (0x05, 0xFFFFFFF0), (0x09, 10)],
    ids=["request-just-over-limit", "huge-request", "p-data-first", "release-first", "unknown-type"],
)
def test_pdu_that_cannot_start_an_association_closes_the_connection_unread(
    listening, pdu_type, length, caplog
):
    """Only an A-ASSOCIATE-RQ within max_association_request_bytes is read before negotiation;
    anything else is closed after its 6-byte header, not after its declared length arrives."""
    settings, recorder, _ = listening
    caplog.set_level(logging.INFO, logger="scp_server.transport")
    with socket.create_connection(("127.0.0.1", settings.port), timeout=PATIENCE_S) as sock:
        sock.sendall(struct.pack(">BBL", pdu_type, 0, length) + bytes(1024))
        assert closed_by_peer(sock)  # acse_timeout_s is 30: closed for the PDU, not for slowness
    wait_for(lambda: any("127.0.0.1" in r.getMessage() for r in caplog.records), "the log line")
    assert recorder.closed == []
    follow_up = establish(settings)
    assert follow_up.is_established
    follow_up.release()


def test_undecodable_association_request_is_closed_without_taking_a_slot(listening, caplog):
    settings, _, server = listening
    caplog.set_level(logging.WARNING, logger="scp_server.transport")
    garbage = pdu(0x01, struct.pack(">HH", 1, 0) + bytes(64) + random.Random(3).randbytes(200))
    with socket.create_connection(("127.0.0.1", settings.port), timeout=PATIENCE_S) as sock:
        sock.sendall(garbage)
        assert closed_by_peer(sock)  # acse_timeout_s is 30: closed for the content
    assert any("cannot be decoded" in r.getMessage() for r in caplog.records), caplog.text
    assert server.negotiated_associations == 0


@pytest.mark.parametrize(("limit", "accepted"), [(64 * 1024, True), (16 * 1024, False)])
def test_association_request_is_read_whole_up_to_the_limit(tmp_path, limit, accepted):
    settings = node_settings(tmp_path, max_association_request_bytes=limit)
    server = serve(build_ae(settings), settings, [])
    try:
        request = association_request(padding=1500)
        assert 50_000 < len(request) < 64 * 1024
        with socket.create_connection(("127.0.0.1", settings.port), timeout=PATIENCE_S) as sock:
            sock.sendall(request)
            if not accepted:
                assert closed_by_peer(sock)
                return
            assert read_pdu(sock)[0] == 0x02  # A-ASSOCIATE-AC: read whole and negotiated
            sock.sendall(pdu(0x05, bytes(4)))  # A-RELEASE-RQ
            assert read_pdu(sock)[0] == 0x06
    finally:
        server.shutdown()


# --- finding 7: negotiation has its own short timeout ----------------------------------------------


@pytest.mark.slow
def test_connections_that_never_finish_negotiating_are_dropped_and_do_not_lock_peers_out(tmp_path, caplog):
    settings = node_settings(tmp_path, max_associations=2, acse_timeout_s=1)
    caplog.set_level(logging.WARNING, logger="scp_server.transport")
    server = serve(build_ae(settings), settings, [])
    slow = []
    try:
        for _ in range(12):
            sock = socket.create_connection(("127.0.0.1", settings.port), timeout=PATIENCE_S)
            sock.sendall(struct.pack(">BBL", 0x01, 0, 200) + b"\x00")
            slow.append(sock)
        assoc = establish(settings)
        assert assoc.is_established, "an allowed AE was locked out by connections that never negotiated"
        assoc.release()
        assert all(closed_by_peer(sock, trickle=True) for sock in slow)
        addresses = {f"127.0.0.1:{sock.getsockname()[1]}" for sock in slow}
        logged = {a for a in addresses if any(a in r.getMessage() for r in caplog.records)}
        assert logged == addresses
    finally:
        for sock in slow:
            sock.close()
        server.shutdown()


def test_silent_tls_peer_does_not_stall_the_listener(tmp_path, certificate):
    """The TLS handshake runs on the connection's own thread, under acse_timeout_s."""
    cert, key = certificate
    settings = node_settings(tmp_path, tls=TLSSettings(certificate=cert, private_key=key), acse_timeout_s=30)
    server = serve(build_ae(settings), settings, [])
    try:
        with socket.create_connection(("127.0.0.1", settings.port)):
            client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
            ae = AE(ae_title=CALLER)
            ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 5
            ae.add_requested_context(Verification)
            assoc = ae.associate(
                "127.0.0.1", settings.port, ae_title=settings.ae_title, tls_args=(client, "127.0.0.1")
            )
            assert assoc.is_established
            assoc.release()
    finally:
        server.shutdown()


def test_pending_connections_beyond_their_cap_are_closed_at_once_and_logged(tmp_path, caplog):
    settings = node_settings(tmp_path, max_pending_connections=3, acse_timeout_s=60)
    caplog.set_level(logging.WARNING, logger="scp_server.transport")
    server = serve(build_ae(settings), settings, [])
    idle = []
    try:
        for _ in range(3):
            idle.append(socket.create_connection(("127.0.0.1", settings.port)))
        wait_for(lambda: server.pending_connections == 3, "3 pending connections")
        with socket.create_connection(("127.0.0.1", settings.port), timeout=PATIENCE_S) as extra:
            assert closed_by_peer(extra)  # acse_timeout_s is 60: closed for the cap
        assert any("max_pending_connections" in r.getMessage() for r in caplog.records), caplog.text
        for sock in idle:
            sock.close()
        wait_for(lambda: server.pending_connections == 0, "the pending connections to go")
        assoc = establish(settings)
        assert assoc.is_established
        assoc.release()
    finally:
        for sock in idle:
            sock.close()
        server.shutdown()


# --- finding 8: max_associations is the number of negotiated associations served -------------------


def rejection(port: int) -> tuple[int, int, int]:
    """(result, source, diagnostic) of the A-ASSOCIATE-RJ the node answers a new request with."""
    sock, pdu_type, body = answer_to_request(port)
    sock.close()
    assert pdu_type == 0x03, f"expected A-ASSOCIATE-RJ, got PDU type {pdu_type:#04x}"
    return body[1], body[2], body[3]


def test_max_associations_counts_negotiated_associations_not_connections(tmp_path):
    settings = node_settings(tmp_path, max_associations=3, acse_timeout_s=60)
    server = serve(build_ae(settings), settings, [])
    idle = [socket.create_connection(("127.0.0.1", settings.port)) for _ in range(5)]
    held: list[Association] = []
    try:
        wait_for(lambda: server.pending_connections == 5, "5 pending connections")
        held = [establish(settings) for _ in range(3)]
        assert [assoc.is_established for assoc in held] == [True] * 3
        assert rejection(settings.port) == LOCAL_LIMIT_EXCEEDED
        held.pop().release()
        wait_for(lambda: server.negotiated_associations == 2, "the released slot to come back")
        again = establish(settings)
        assert again.is_established
        held.append(again)
    finally:
        for assoc in held:
            assoc.release()
        for sock in idle:
            sock.close()
        server.shutdown()


@pytest.mark.slow
def test_simultaneous_requests_beyond_the_limit_get_exactly_the_limit(tmp_path):
    limit = 10
    settings = node_settings(tmp_path, max_associations=limit)
    server = serve(build_ae(settings), settings, [])
    start = threading.Barrier(2 * limit)
    results: list[tuple[socket.socket, int, bytes]] = []
    lock = threading.Lock()

    def attempt() -> None:
        start.wait()
        answer = answer_to_request(settings.port)
        with lock:
            results.append(answer)

    threads = [threading.Thread(target=attempt) for _ in range(2 * limit)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(PATIENCE_S)
        accepted = [body for _, pdu_type, body in results if pdu_type == 0x02]
        rejected = [(body[1], body[2], body[3]) for _, pdu_type, body in results if pdu_type == 0x03]
        assert len(accepted) == limit
        assert len(rejected) == limit and set(rejected) == {LOCAL_LIMIT_EXCEEDED}
    finally:
        for sock, _, _ in results:
            sock.close()
        server.shutdown()


# --- what was kept ----------------------------------------------------------------------------------


def test_connections_from_outside_allowed_source_networks_are_closed_unread(tmp_path, caplog):
    settings = node_settings(tmp_path, allowed_source_networks=["10.0.0.0/8"])
    caplog.set_level(logging.WARNING)
    server = serve(build_ae(settings), settings, [])
    try:
        with socket.create_connection(("127.0.0.1", settings.port), timeout=PATIENCE_S) as sock:
            assert closed_by_peer(sock)
        assert server.pending_connections == 0
        assert any("allowed_source_networks" in r.getMessage() for r in caplog.records)
    finally:
        server.shutdown()


def test_settings_reject_nonsense_limits():
    with pytest.raises(ValueError):
        NodeSettings(acse_timeout_s=0)
    with pytest.raises(ValueError):
        NodeSettings(max_association_request_bytes=100)
    with pytest.raises(ValueError):
        NodeSettings(max_pending_connections=0)


# --- after acceptance: PDUs and instances bounded too (found by an adversarial review) -------------


def node_process(tmp_path: Path, port: int) -> subprocess.Popen:
    node = subprocess.Popen(
        [sys.executable, "-c", NODE_PROCESS, str(port), str(tmp_path / "spool")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert node.stdout is not None and node.stdout.readline().strip() == "ready"
    return node


def send_until_closed(sock: socket.socket, megabytes: int) -> None:
    chunk = bytes(1 << 20)
    try:
        for _ in range(megabytes):
            sock.sendall(chunk)
    except OSError:
        pass  # the node closed the connection: what we want
    closed_by_peer(sock)


@pytest.mark.slow
def test_a_huge_p_data_pdu_after_acceptance_is_refused_without_buffering_it(tmp_path):
    """An accepted peer sent P-DATA-TF PDUs declaring 700 MiB: the node buffered each whole."""
    port = free_port()
    node = node_process(tmp_path, port)
    try:
        before = peak_rss_kib(node.pid)
        sock = raw_associate(port)
        sock.sendall(struct.pack(">BBL", 0x04, 0, 0xFFFFFFF0))
        send_until_closed(sock, 96)
        sock.close()
        grown_mib = (peak_rss_kib(node.pid) - before) / 1024
        assert grown_mib < 32, f"the node's peak memory grew by {grown_mib:.0f} MiB"
    finally:
        node.communicate(input="", timeout=PATIENCE_S)


@pytest.mark.parametrize("limit_mib, stored", [(1, False), (1024, True)], ids=["over", "within"])
def test_an_instance_over_max_instance_bytes_aborts_its_association_as_it_grows(tmp_path, limit_mib, stored):
    """pynetdicom keeps every fragment of an instance in memory until the last one arrives."""
    settings = node_settings(tmp_path, max_instance_bytes=limit_mib << 20)
    stores: list[str] = []
    handlers = [(evt.EVT_C_STORE, lambda event: stores.append(event.request.AffectedSOPInstanceUID) or 0)]
    server = serve(build_ae(settings), settings, handlers)
    try:
        big = ct()
        big.Rows, big.Columns = 1024, 1536  # 3 MiB of 16-bit pixels
        big.PixelData = bytes(1024 * 1536 * 2)
        sock = raw_associate(settings.port)
        if stored:
            assert raw_store(sock, big, 1) == 0x0000
        else:
            with pytest.raises((OSError, ConnectionError, AssertionError, struct.error)):
                raw_store(sock, big, 1)
        sock.close()
        assert bool(stores) is stored
    finally:
        server.shutdown()


def test_a_flood_of_rejected_associations_is_a_line_and_a_count_not_a_line_each(tmp_path, caplog):
    """Found by an adversarial review: 398 warning lines in 36 s while max_associations were busy."""
    settings = node_settings(tmp_path, max_associations=1)
    server = serve(build_ae(settings), settings, [])
    held = establish(settings)
    try:
        with caplog.at_level(logging.WARNING, logger="scp_server.transport"):
            for _ in range(6):
                assert rejection(settings.port) == LOCAL_LIMIT_EXCEEDED
            held.release()
            wait_for(lambda: server.negotiated_associations == 0, "the slot to come back")
        lines = [r.getMessage() for r in caplog.records if "max_associations" in r.getMessage()]
        assert len(lines) == 2 and lines[1].startswith("5 more associations were rejected"), lines
    finally:
        server.shutdown()


# --- peers that ignore the asynchronous operations window, and releases --------------------------


def numbered_ct(number: int) -> pydicom.Dataset:
    dataset = ct()
    dataset.SOPInstanceUID = f"1.2.826.0.1.3680043.9.7433.3.{number}"
    dataset.InstanceNumber = number
    return dataset


def test_requests_sent_past_the_one_one_window_before_a_release_are_all_answered_before_it(listening):
    """A peer sends six C-STOREs back to back and releases at once: six answers, then the release."""
    settings, recorder, _ = listening
    sock = raw_associate(settings.port)
    sock.sendall(b"".join(store_request(numbered_ct(n), n) for n in range(1, 7)))
    sock.sendall(pdu(0x05, bytes(4)))  # A-RELEASE-RQ
    statuses = [read_status(sock) for _ in range(6)]
    assert read_pdu(sock)[0] == 0x06  # A-RELEASE-RP, after the last answer
    sock.close()
    assert statuses == [0x0000] * 6
    ((assoc, how),) = recorder.wait_closed(1)
    assert how == "released" and recorder.stored_by == [assoc] * 6


def test_a_release_is_reported_before_it_is_answered(tmp_path):
    """What the node records of a release is written before the peer hears A-RELEASE-RP: a crash right
    after the peer's release cannot turn it into an abort."""
    settings = node_settings(tmp_path)
    recorder = Recorder()

    def slow_record(assoc: Association, how: str) -> None:  # a disk taking its time to sync
        time.sleep(0.3)
        recorder.on_closed(assoc, how)

    server = serve(build_ae(settings), settings, [], on_closed=slow_record)
    try:
        assoc = establish(settings)
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        assert [how for _, how in recorder.closed] == ["released"]  # no waiting: already reported
        time.sleep(0.5)
        assert [how for _, how in recorder.closed] == ["released"]  # and only once
    finally:
        server.shutdown()


def test_associations_are_served_when_the_process_has_descriptors_above_1024(listening):
    """select() cannot watch a descriptor above 1023: with many open (HTTP connections, say), the
    node's and the peer's sockets get such numbers, and reception must go on."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard limit on open files ({hard}) is too low to open 1100")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    held = [open("/dev/null", "rb") for _ in range(1100)]  # noqa: SIM115 (closed below)
    try:
        settings, recorder, _ = listening
        assoc = establish(settings)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(ct()).Status == 0x0000
        assoc.release()
        ((_, how),) = recorder.wait_closed(1)
        assert how == "released"
    finally:
        for handle in held:
            handle.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_peer_waiting_for_answers_to_a_pipelined_burst_is_not_aborted_as_silent(tmp_path):
    """Found by an adversarial review: 4000 pipelined C-STOREs and a release, the peer reading every
    answer: network_timeout_s after the peer's last PDU the node aborted it, 2671 requests unanswered."""
    settings = node_settings(tmp_path, network_timeout_s=3)  # slack for a loaded machine's sending
    recorder = Recorder()

    def slow_store(event: Event) -> int:
        time.sleep(0.15)  # a disk syncing each instance
        return recorder.on_store(event)

    server = serve(
        build_ae(settings), settings, [(evt.EVT_C_STORE, slow_store)], on_closed=recorder.on_closed
    )
    try:
        sock = raw_associate(settings.port)
        sock.sendall(b"".join(store_request(numbered_ct(n), n) for n in range(1, 41)))  # 6 s of work
        sock.sendall(pdu(0x05, bytes(4)))  # A-RELEASE-RQ, then silence while the answers come
        statuses = [read_status(sock) for _ in range(40)]
        assert read_pdu(sock)[0] == 0x06
        sock.close()
    finally:
        server.shutdown()
    assert statuses == [0x0000] * 40
    ((_, how),) = recorder.wait_closed(1)
    assert how == "released"
