"""Sending what the outbox holds: claim, send, record, on real peers; each destination on its own thread."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom

from scp_server.config import NodeSettings
from scp_server.delivery import Courier, deliver
from scp_server.destinations import Destination
from scp_server.outbox import MISSING
from tests.helpers import free_port
from tests.n2d_dicom.conftest import data_file, write_ct_series
from tests.peers.stow_rs import StowPeer, stored
from tests.scp_server.conftest import uid_of, web

PACS = Destination(ae_title="PACS", host="127.0.0.1", port=104)


def settings(tmp_path: Path, **overrides: object) -> NodeSettings:
    return NodeSettings(spool_dir=tmp_path / "spool", send_backoff_s=0, **overrides)  # type: ignore[arg-type]


def write_ct(path: Path, sop_instance_uid: str) -> None:
    dataset = pydicom.dcmread(data_file("CT_small.dcm"))
    dataset.SOPInstanceUID = sop_instance_uid
    dataset.save_as(path, enforce_file_format=True)


def test_a_missing_file_is_refused_without_a_send(outbox, tmp_path):
    outbox.add([("1.1", tmp_path / "1.1.dcm")], PACS, "9.1")
    (result,) = deliver(settings(tmp_path), outbox, attempts=1)
    assert (result.sop_instance_uid, result.error) == ("1.1", MISSING)
    assert outbox.counts() == {"PACS@127.0.0.1:104": {"refused": 1}}


def test_every_failed_attempt_is_recorded_with_its_reason(outbox, tmp_path):
    """Finding 10: rows that failed with 'no association' kept attempts=0 and no error."""
    down = Destination(ae_title="PACS", host="127.0.0.1", port=free_port())
    path = tmp_path / "1.1.dcm"
    write_ct(path, "1.1")
    outbox.add([("1.1", path)], down, "9.1")
    (result,) = deliver(settings(tmp_path), outbox, attempts=2)
    assert not result.delivered
    (row,) = outbox.rows()
    assert (row.state, row.attempts, row.last_error) == ("pending", 2, "no association")
    assert [error for *_, error in outbox.errors()] == ["no association"]


def test_outbox_sends_dicomweb_rows_and_keys_them_by_url(outbox, peer, tmp_path):
    series_files = write_ct_series(tmp_path, [0.0, 1.0, 2.0, 3.0, 4.0])
    destination = web(f"http://127.0.0.1:{peer.port}/dicom-web")
    outbox.add([(uid_of(p), p) for p in series_files], destination, "9.1")
    peer.answer = lambda uids: (503, None)
    deliver(settings(tmp_path), outbox, attempts=1)
    assert outbox.counts() == {f"http://127.0.0.1:{peer.port}/dicom-web": {"pending": 5}}
    peer.answer = stored
    results = deliver(settings(tmp_path), outbox, attempts=1)  # from stored JSON
    assert len(results) == 5 and outbox.settled("9.1")
    assert [row.attempts for row in outbox.rows()] == [2] * 5


def wait_for(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.05)


def test_a_trickling_destination_holds_neither_the_caller_nor_another_destination(outbox, tmp_path):
    """Round 3, finding 2: a STOW-RS endpoint answering a byte a second held the worker (all denoising)."""
    slow, fast = StowPeer(trickle_s=0.5).start(), StowPeer().start()
    try:
        for folder, peer_ in (("slow", slow), ("fast", fast)):
            (tmp_path / folder).mkdir()
            files = write_ct_series(tmp_path / folder, [0.0, 1.0])
            outbox.add([(uid_of(p), p) for p in files], web(f"http://127.0.0.1:{peer_.port}"), folder)
        problems: list[str] = []

        def guard(name: str, step) -> bool:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 (the test records what the node would log)
                problems.append(f"{name}: {exc}")
                return False
            return True

        courier = Courier(settings(tmp_path, send_attempts=1, send_deadline_s=2), outbox, guard)
        started = time.monotonic()
        assert sorted(courier.dispatch()) == sorted(
            [f"http://127.0.0.1:{slow.port}", f"http://127.0.0.1:{fast.port}"]
        )
        assert time.monotonic() - started < 1  # dispatching sends nothing itself
        wait_for(lambda: outbox.settled("fast"))  # while the slow one still trickles
        assert not outbox.settled("slow")
        assert courier.dispatch() == []  # one delivery per destination at a time
        wait_for(lambda: all(row.attempts for row in outbox.rows("slow")))
        courier.shutdown()
        assert {(row.state, row.last_error) for row in outbox.rows("slow")} == {
            ("pending", "no complete answer within 2 s")
        }
        assert problems == []
    finally:
        slow.stop()
        fast.stop()


def test_healthz_names_a_destination_that_has_not_answered_past_the_deadline(outbox, tmp_path, monkeypatch):
    """What /healthz shows when a send outlives every bound (a DIMSE peer trickling its PDUs, say)."""
    from scp_server import delivery

    release = __import__("threading").Event()
    monkeypatch.setattr(delivery, "deliver", lambda *args: release.wait(30))
    outbox.add([("1.1", tmp_path / "1.1.dcm")], PACS, "9.1")
    courier = Courier(
        settings(tmp_path, send_timeout_s=0.2, send_deadline_s=0.2), outbox, lambda name, step: bool(step())
    )
    try:
        assert courier.dispatch() == ["PACS@127.0.0.1:104"]
        assert courier.stuck() == []
        wait_for(lambda: courier.stuck() != [], 10)
        assert courier.stuck()[0].startswith("sending to PACS@127.0.0.1:104: no answer for ")
    finally:
        release.set()
        courier.shutdown()
    wait_for(lambda: courier.stuck() == [], 10)


def test_many_destinations_that_hang_hold_up_no_other_destination(outbox, tmp_path, monkeypatch):
    """Found by an adversarial review: 9 destinations that never answered took all 8 sending threads,
    and the one that worked waited a whole round of theirs."""
    import threading

    from scp_server import delivery

    release, sent = threading.Event(), []

    def fake_deliver(settings, outbox, attempts, series, key, heard) -> list:
        if key.startswith("DEAD"):
            release.wait(30)
        else:
            sent.append(key)
        return []

    monkeypatch.setattr(delivery, "deliver", fake_deliver)
    for number in range(9):
        dead = Destination(ae_title=f"DEAD{number}", host="127.0.0.1", port=104)
        outbox.add([(f"1.{number}", tmp_path / f"1.{number}.dcm")], dead, "9.1")
    outbox.add([("2.1", tmp_path / "2.1.dcm")], PACS, "9.1")
    courier = Courier(settings(tmp_path), outbox, lambda name, step: bool(step() or True))
    try:
        assert len(courier.dispatch()) == 10
        wait_for(lambda: sent == ["PACS@127.0.0.1:104"], 5)
    finally:
        release.set()
        courier.shutdown()
