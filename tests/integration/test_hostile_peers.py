"""The node (`n2d serve`, its own process) against what a hospital network does to it.

Each test reproduces a finding of the reliability review over loopback: a node
killed during reception, a full disk, log injection, a destination that is
down, re-sent and aborted series. Findings 2 and 6-8 (malformed PDUs, oversized
and slow association requests, association slots) are reproduced with raw
sockets in tests/scp_server/test_transport.py, findings 4, 5 and 12-13 in
tests/scp_server/test_scp.py and test_processor.py. Every test stops by itself.
"""

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest
import yaml
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from scp_server.pynetdicom_internals import poll_for_readiness
from tests.helpers import free_port
from tests.integration.conftest import N2D, send_series, start_node, stop_node, wait_until, write_config
from tests.n2d_dicom.conftest import write_ct_series

pytestmark = pytest.mark.slow  # every test starts the node (n2d serve) or its peers in processes of their own

ROOT = Path(__file__).parents[2]


def node_config(tmp_path: Path, pacs_port: int, **overrides: object) -> tuple[Path, dict]:
    path, config = write_config(tmp_path, pacs_port)
    config.update(overrides)
    path.write_text(yaml.safe_dump(config))
    return path, config


def modality_series(tmp_path: Path, slices: int, name: str = "modality") -> list[Path]:
    folder = tmp_path / name
    folder.mkdir()
    return write_ct_series(folder, [2.5 * i for i in range(slices)])


def open_association(port: int):
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="N2D")
    assert assoc.is_established
    return assoc


def status(config_path: Path) -> dict:
    shown = subprocess.run(
        [str(N2D), "status", "--config", str(config_path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def derived_series(received: list[pydicom.Dataset]) -> dict[str, int]:
    """Instances received by the PACS per derived Series Instance UID."""
    counts: dict[str, int] = {}
    for dataset in received:
        counts[dataset.SeriesInstanceUID] = counts.get(dataset.SeriesInstanceUID, 0) + 1
    return counts


def test_a_series_interrupted_by_a_node_crash_completes_once_the_modality_sends_it_again(tmp_path, pacs):
    """Finding 1: the dead process's association kept the series `receiving` until max_wait_s."""
    pacs_port, received = pacs
    path, config = node_config(tmp_path, pacs_port, max_wait_s=3600, aborted_grace_s=3600)
    files = modality_series(tmp_path, 6)
    node = start_node(path, config["port"])
    assoc = open_association(config["port"])
    assert [assoc.send_c_store(f).Status for f in files[:3]] == [0, 0, 0]
    node.send_signal(signal.SIGKILL)
    node.wait()
    assoc.abort()
    node = start_node(path, config["port"])
    try:
        send_series(config["port"], files[0].parent)  # the modality sends the whole series again
        wait_until(lambda: len(received) == 6, node, timeout=90)
        time.sleep(1)
        assert list(derived_series(received).values()) == [6]
    finally:
        stop_node(node)


def test_an_aborted_association_waits_for_the_resend_and_gives_one_complete_derived_series(tmp_path, pacs):
    """Finding 11: a modality killed after 21 of 50 instances produced a 21-instance derived series."""
    pacs_port, received = pacs
    path, config = node_config(tmp_path, pacs_port, aborted_grace_s=3600)
    files = modality_series(tmp_path, 6)
    node = start_node(path, config["port"])
    try:
        assoc = open_association(config["port"])
        assert [assoc.send_c_store(f).Status for f in files[:2]] == [0, 0]
        assoc.abort()
        time.sleep(3)  # six quiet periods: an aborted series is not complete
        assert received == []
        assert status(path)["series"] == {"receiving": 1}
        send_series(config["port"], files[0].parent)
        wait_until(lambda: len(received) == 6, node, timeout=90)
        time.sleep(1)
        assert list(derived_series(received).values()) == [6]
    finally:
        stop_node(node)


def test_a_resent_instance_starts_no_second_run_and_a_changed_one_supersedes(tmp_path, pacs):
    """Finding 11: re-sending one stored file queued run 2 and the PACS got a second derived series."""
    pacs_port, received = pacs
    path, config = node_config(tmp_path, pacs_port)
    files = modality_series(tmp_path, 3)
    node = start_node(path, config["port"])
    try:
        send_series(config["port"], files[0].parent)
        wait_until(lambda: len(received) == 3, node, timeout=90)
        resend = tmp_path / "resend"
        resend.mkdir()
        shutil.copy(files[1], resend)
        send_series(config["port"], resend)
        time.sleep(3)  # six quiet periods
        assert len(received) == 3 and status(path)["series"] == {"done": 1}
        changed = pydicom.dcmread(files[1])
        changed.PixelData = bytes(len(changed.PixelData))
        changed.save_as(resend / files[1].name, enforce_file_format=True)
        send_series(config["port"], resend)
        wait_until(lambda: len(received) == 6, node, timeout=90)
        first, second = derived_series(received)
        descriptions = {ds.SeriesInstanceUID: str(ds.SeriesDescription) for ds in received}
        assert descriptions[second] == descriptions[first] + " run 2"
    finally:
        stop_node(node)


def test_a_newline_in_a_uid_cannot_forge_a_log_line_and_a_refusal_is_one_line(tmp_path, pacs):
    """Finding 9: a SOP Instance UID with a newline wrote a forged line; ~8 lines per refused instance."""
    path, config = node_config(tmp_path, pacs[0])
    forged = "2026-12-02 12:00:00,000 INFO scp_server.scp: FORGED"
    source = pydicom.dcmread(modality_series(tmp_path, 1)[0])
    source.SOPInstanceUID = f"1.2.3\n{forged}"
    sent = tmp_path / "bad.dcm"
    source.save_as(sent, enforce_file_format=True)
    node = start_node(path, config["port"])
    try:
        peer = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.peers.lax_storescu",
                str(config["port"]),
                "STORESCU",
                "N2D",
                str(sent),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert peer.stdout.split() == ["C211"], peer.stderr
    finally:
        stop_node(node)
    log = node.stderr.read().splitlines()
    assert not [line for line in log if line.startswith(forged)]
    about_it = [line for line in log if "FORGED" in line]
    assert len(about_it) == 1 and "quarantined" in about_it[0], log


def test_a_destination_that_is_down_shows_in_status_with_every_attempt_and_its_reason(tmp_path):
    """Finding 10: rows that failed with 'no association' kept attempts=0 and no error in `n2d status`."""
    path, config = node_config(tmp_path, free_port(), outbox_retry_s=0.5, send_attempts=1)
    node = start_node(path, config["port"])
    try:
        send_series(config["port"], modality_series(tmp_path, 2)[0].parent)
        wait_until(lambda: status(path)["outbox"], node, timeout=90)
        wait_until(lambda: len(status(path)["last_errors"]) == 2, node, timeout=30)
        shown = status(path)
        assert {error["error"] for error in shown["last_errors"]} == {"no association"}
        assert shown["recent_runs"]["end_to_end_s"] is None  # nothing was delivered
    finally:
        stop_node(node)
    text = subprocess.run(
        [str(N2D), "status", "--config", str(path)], capture_output=True, text=True, timeout=60
    ).stdout
    assert "no association" in text


def unshare_mount_works() -> bool:
    return subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0


def in_node_namespace(node: subprocess.Popen, *command: str) -> None:
    subprocess.run(["nsenter", "--target", str(node.pid), "--mount", *command], check=True, timeout=30)


def healthz(http_port: int) -> int:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5).status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.skipif(not unshare_mount_works(), reason="needs root for a tmpfs in a mount namespace")
def test_the_node_survives_a_full_disk_and_recovers_by_itself_once_space_returns(tmp_path, pacs):
    """Finding 3: 'database or disk is full' ended the node's background threads for good."""
    pacs_port, received = pacs
    spool = tmp_path / "spool"
    spool.mkdir()
    path, config = node_config(tmp_path, pacs_port, spool_dir=str(spool))
    script = f"mount -t tmpfs -o size=8m tmpfs {spool} && exec {N2D} serve --config {path}"
    node = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    from tests.integration.conftest import wait_for_port

    wait_for_port(config["port"], node)
    try:
        first = modality_series(tmp_path, 3, "first")
        assoc = open_association(config["port"])
        assert [assoc.send_c_store(f).Status for f in first] == [0, 0, 0]
        in_node_namespace(node, "sh", "-c", f"cat /dev/zero > {spool}/filler 2>/dev/null; true")
        assoc.release()  # the series is complete while the disk is full: it cannot be queued yet
        wait_until(lambda: healthz(config["http_port"]) == 503, node, timeout=30)
        time.sleep(2)
        assert received == []
        in_node_namespace(node, "rm", "-f", f"{spool}/filler")
        wait_until(lambda: healthz(config["http_port"]) == 200, node, timeout=60)
        wait_until(lambda: len(received) == 3, node, timeout=90)
        second = modality_series(tmp_path, 2, "second")
        send_series(config["port"], second[0].parent)
        wait_until(lambda: len(received) == 5, node, timeout=90)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{config['http_port']}/metrics", timeout=5).read()
        assert b"n2d_background_errors_total" in metrics
    finally:
        stop_node(node)


def test_a_node_killed_right_after_a_release_still_counts_it_a_release(tmp_path, pacs):
    """Round 3, finding 4: the release was recorded after it was answered, so a kill within ~2 s made it
    an abort on restart and the series waited aborted_grace_s."""
    pacs_port, received = pacs
    path, config = node_config(tmp_path, pacs_port, aborted_grace_s=3600, quiet_period_s=3)
    modality_series(tmp_path, 4)
    node = start_node(path, config["port"])
    try:
        send_series(config["port"], tmp_path / "modality")  # storescu: 4 instances, then A-RELEASE
        node.send_signal(signal.SIGKILL)
        node.wait()
        node = start_node(path, config["port"])
        wait_until(lambda: len(received) == 4, node, timeout=120)
        assert list(derived_series(received).values()) == [4]
    finally:
        stop_node(node)


def node_threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def answered_ok(http_port: int) -> bool:
    try:
        return healthz(http_port) == 200
    except OSError:  # closed at once: the cap is still reached
        return False


def test_idle_http_connections_cannot_lock_out_dicom_reception(tmp_path, pacs):
    """Round 3, finding 1: ~1,100 half-sent HTTP requests took the node past descriptor 1024, where every
    new association was aborted at once; 3,000 of them made 3,000 threads."""
    import resource
    import socket

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1300:
        pytest.skip(f"the hard limit on open files ({hard}) is too low for the flood")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    poll_for_readiness()  # this test's own association, from a process holding 1,100 sockets too
    pacs_port, _ = pacs
    path, config = node_config(tmp_path, pacs_port, http_timeout_s=3, http_max_connections=16)
    node = start_node(path, config["port"])
    flood: list[socket.socket] = []
    try:
        for _ in range(1100):
            sock = socket.create_connection(("127.0.0.1", config["http_port"]), timeout=10)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
            flood.append(sock)
        assert node_threads(node.pid) < 100
        assoc = open_association(config["port"])
        assert assoc.send_c_store(modality_series(tmp_path, 1)[0]).Status == 0x0000
        assoc.release()
        wait_until(lambda: answered_ok(config["http_port"]), node, timeout=60)  # the stalled ones cut off
    finally:
        for sock in flood:
            sock.close()
        stop_node(node)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
