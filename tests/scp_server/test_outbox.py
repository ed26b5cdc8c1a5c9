import socket
import subprocess
from pathlib import Path

from scp_server.destinations import Destination, DestinationTLS
from scp_server.sender import SendResult

PACS = Destination(ae_title="PACS", host="127.0.0.1", port=104)
VIEWER = Destination(ae_title="VIEWER", host="127.0.0.1", port=105)


def items(tmp_path: Path, *uids: str) -> list[tuple[str, Path]]:
    return [(uid, tmp_path / f"{uid}.dcm") for uid in uids]


def test_two_workers_never_claim_the_same_row(outbox, tmp_path):
    outbox.add(items(tmp_path, "1.1", "1.2"), PACS, "9.1")
    outbox.add(items(tmp_path, "1.1"), VIEWER, "9.1")
    first = outbox.claim("here:1:a", 60)
    assert {d: sorted(p.name for p in paths) for d, paths in first.items()} == {
        PACS: ["1.1.dcm", "1.2.dcm"],
        VIEWER: ["1.1.dcm"],
    }
    assert outbox.claim("here:2:b", 60) == {}


def test_a_claim_runs_out_or_dies_with_its_owner(outbox, tmp_path):
    outbox.add(items(tmp_path, "1.1"), PACS, "9.1")
    outbox.claim("elsewhere:1:a", 0)  # expires at once
    assert list(outbox.claim("elsewhere:2:b", 60)) == [PACS]
    dead = subprocess.Popen(["true"])
    dead.wait()
    outbox.add(items(tmp_path, "1.2"), PACS, "9.1")
    outbox.claim(f"{socket.gethostname()}:{dead.pid}:c", 600)
    assert [p.name for p in outbox.claim("elsewhere:3:d", 60)[PACS]] == ["1.2.dcm"]


def test_answers_are_recorded_and_release_the_claim(outbox, tmp_path):
    outbox.add(items(tmp_path, "1.1", "1.2", "1.3"), PACS, "9.1")
    outbox.claim("w:1:a", 600)
    outbox.record(
        [
            SendResult(tmp_path / "1.1.dcm", "1.1", 0x0000),
            SendResult(tmp_path / "1.2.dcm", "1.2", 0xA900, "refused"),
            SendResult(tmp_path / "1.3.dcm", "1.3", None, "no association"),
        ],
        PACS,
    )
    assert outbox.counts() == {"PACS@127.0.0.1:104": {"delivered": 1, "refused": 1, "pending": 1}}
    assert outbox.pending_count() == 1
    assert [p.name for p in outbox.claim("w:2:b", 600)[PACS]] == ["1.3.dcm"]  # free again
    assert [(uid, error) for uid, _, _, error in outbox.errors()] == [
        ("1.2", "status 0xA900 (refused)"),  # the destination's own status, as n2d status shows it
        ("1.3", "no association"),
    ]
    assert not outbox.settled("9.1")


def test_refused_rows_can_be_retried_or_forgotten(outbox, tmp_path):
    outbox.add(items(tmp_path, "1.1"), PACS, "9.1")
    outbox.add(items(tmp_path, "2.1"), PACS, "9.2")
    outbox.record(
        [
            SendResult(tmp_path / "1.1.dcm", "1.1", 0xC000, "no"),
            SendResult(tmp_path / "2.1.dcm", "2.1", 0xC000, "no"),
        ],
        PACS,
    )
    assert outbox.retry_refused("9.1") == 1
    assert outbox.pending_count() == 1
    assert outbox.forget(state="refused") == [tmp_path / "2.1.dcm"]
    assert outbox.settled("9.2")  # nothing left for it
    outbox.record([SendResult(tmp_path / "1.1.dcm", "1.1", 0x0000)], PACS)
    assert outbox.settled("9.1")
    assert outbox.forget("9.1") == [tmp_path / "1.1.dcm"]
    assert outbox.counts() == {}


def test_rows_name_their_destination_by_a_stable_key_so_config_edits_keep_them(outbox, tmp_path):
    """Editing a destination's other fields (here its TLS) must not orphan its pending rows."""
    outbox.add(items(tmp_path, "1.1"), PACS, "9.1")
    edited = PACS.model_copy(update={"tls": DestinationTLS(server_name="pacs.example")})
    claimed = outbox.claim("w:1:a", 60, current={edited.key: edited})
    assert list(claimed) == [edited]
    assert outbox.counts() == {"PACS@127.0.0.1:104": {"pending": 1}}


def test_a_claim_can_be_limited_to_one_series(outbox, tmp_path):
    outbox.add(items(tmp_path, "1.1"), PACS, "9.1")
    outbox.add(items(tmp_path, "2.1"), PACS, "9.2")
    assert [p.name for p in outbox.claim("w:1:a", 60, series_instance_uid="9.2")[PACS]] == ["2.1.dcm"]
