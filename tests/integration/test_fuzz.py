"""The node (`n2d serve`) under a short fuzzing campaign, and the known cases of pynetdicom's tracker.

The campaign (tests/integration/fuzz_campaign.py) plays seeded, stateful mutations of
associations, P-DATA and DIMSE command sets over loopback; ``python -m
tests.integration.fuzz_campaign --cases 3000`` is the long one. The other tests each
send one case pynetdicom's tracker knows (non-DICOM bytes, an AE title of all spaces,
state-machine exceptions around Sta2, UIDs over 64 characters, invalid UIDs) and check
what the node answered and that it still answers C-ECHO. The tests of findings 1 and 2 reproduce
what the campaign found (they failed before the fixes); every node is stopped by its fixture.
"""

from __future__ import annotations

import json
import random
import time
import urllib.request
from collections.abc import Iterator

import pytest
from pynetdicom.pdu import A_ASSOCIATE_AC

from tests.integration.fuzz_campaign import (
    CONTEXT_CT,
    CONTEXT_ECHO,
    IMPLICIT,
    LONG_UIDS,
    NON_DICOM,
    PIXEL_DATA_TAG,
    Node,
    Peer,
    abort,
    associate_rq,
    checkpoint,
    command_set,
    context_item,
    dimse_answers,
    echo_command,
    instance,
    item,
    message,
    own_node,
    p_data,
    pdu,
    pdv,
    release_rq,
    run_campaign,
    standard_items,
    store_command,
    stored_uids,
    ui,
    us,
    user_information,
)
from tests.scp_server.raw_dicom import PATIENCE_S

pytestmark = pytest.mark.slow  # every test starts the node (n2d serve) in a process of its own

# A-ABORT source 2 (service provider) and its reasons (PS3.8 9.3.8)
UNRECOGNIZED_PDU, UNEXPECTED_PDU, INVALID_PARAMETER = bytes([2, 1]), bytes([2, 2]), bytes([2, 6])
SERIES = "2.25.27008000000000000000000000000000001"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One node for the known cases (each leaves it as it found it, or the next one fails)."""
    with own_node(tmp_path_factory.mktemp("fuzz-node")) as running:
        yield running


def still_answers(node: Node) -> None:
    assert node.alive(), node.log_text()[-3000:]
    echoed, _ = checkpoint(node.port, None)
    assert echoed, "no C-ECHO answer after the case"


def converse(node: Node, *sends: bytes, answers: int = 4) -> list[tuple[int, bytes]]:
    """Send each of ``sends`` after the node's answer to the one before (when it gives one), then
    half-close; the node must close within PATIENCE_S. Its PDUs."""
    peer = Peer(node.port, PATIENCE_S)
    try:
        for data in sends:
            if not peer.send(data) or peer.next_pdu(PATIENCE_S if answers else 0.5) is None:
                break
        while answers and len(peer.pdus) < answers and peer.next_pdu(0.5) is not None:
            pass
        assert peer.closes_within(PATIENCE_S), "the node kept the connection open"
    finally:
        peer.close()
    return peer.pdus


def types(pdus: list[tuple[int, bytes]]) -> list[int]:
    return [pdu_type for pdu_type, _ in pdus]


def contexts(pdus: list[tuple[int, bytes]]) -> dict[int, int]:
    """Presentation context results (id: result) of the A-ASSOCIATE-AC among ``pdus``."""
    body = next(body for pdu_type, body in pdus if pdu_type == 0x02)
    accept = A_ASSOCIATE_AC()
    accept.decode(pdu(0x02, body))
    return {context.context_id: context.result for context in accept.presentation_context}


def statuses(pdus: list[tuple[int, bytes]]) -> list[tuple[int, int]]:
    """(CommandField, Status) of each DIMSE answer."""
    return [(int(c.CommandField), int(c.Status)) for c in dimse_answers(pdus) if not isinstance(c, str)]


def store_on_association(node: Node, sop_instance: str | None, cut_pixels: int | None = None) -> tuple:
    """A C-STORE and a C-ECHO on one association, released: the PDUs and the SOP Instance UID."""
    uid, data = instance(random.Random(sop_instance or "valid"), SERIES, sop_instance)
    if cut_pixels is not None:
        data = data[: data.index(PIXEL_DATA_TAG) + 8 + cut_pixels]
    stored = b"".join(message(CONTEXT_CT, command_set(store_command(1, uid)), data))
    echo = b"".join(message(CONTEXT_ECHO, command_set(echo_command(2))))
    return converse(node, associate_rq(), stored, echo, release_rq()), uid


def quarantined(node: Node) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/status", timeout=10) as answer:
        return int(json.load(answer)["quarantined"])


# --- the campaign ---------------------------------------------------------------------------------


def test_a_short_fuzzing_campaign_crashes_nothing_hangs_nothing_and_loses_nothing(tmp_path):
    """150 cases of seed 7 (about 45 s on 2 cores), a C-ECHO and a valid C-STORE every 25."""
    with own_node(tmp_path) as running:
        figures = run_campaign(running, cases=150, seed=7, check_every=25)
        block = figures.describe()
        print(block)
        assert running.alive(), block
    assert figures.crashes == 0 and figures.hangs == [] and figures.stalls == 0, block
    assert figures.echo_checks == 6 and figures.echo_failures == [], block
    assert len(figures.acknowledged) >= 6 and figures.stored is not None, block
    assert figures.lost == set() and figures.acknowledged <= figures.stored, block
    assert figures.anomalies == [] and figures.unexpected_errors == 0, block
    assert set(figures.kinds) == {"request", "first_pdu", "established", "odd_state", "concurrent"}, block


# --- pynetdicom's tracker: non-DICOM bytes --------------------------------------------------------


@pytest.mark.parametrize("name", ["HTTP request", "TLS ClientHello", "SSH banner", "random bytes"])
def test_non_dicom_bytes_are_aborted_as_an_unrecognized_pdu_and_closed(node, name):
    pdus = converse(node, NON_DICOM[name](random.Random(27)), answers=1)
    assert types(pdus) == [0x07] and pdus[0][1][2:4] == UNRECOGNIZED_PDU
    still_answers(node)


# --- pynetdicom's tracker: AE titles of all spaces (pynetdicom#646) -------------------------------


@pytest.mark.parametrize("which", ["calling", "called"])
def test_an_ae_title_of_all_spaces_is_refused_before_any_association(node, which):
    request = associate_rq(**{which: b" " * 16})  # type: ignore[arg-type]
    pdus = converse(node, request, answers=1)
    assert types(pdus) == [0x07] and pdus[0][1][2:4] == INVALID_PARAMETER  # cannot be decoded
    assert "A-ASSOCIATE-RQ cannot be decoded" in node.log_text()
    still_answers(node)


@pytest.mark.parametrize("title", ["ÄRZTEHAUS".encode(), bytes([0xC4, 0xD6, 0xDC]), b"STORE\\SCU"])
def test_a_non_ascii_or_backslash_calling_ae_title_is_never_accepted(node, title):
    pdus = converse(node, associate_rq(calling=title), answers=1)
    assert 0x02 not in types(pdus) and types(pdus) in ([0x03], [0x07])
    still_answers(node)


# --- pynetdicom's tracker: state-machine exceptions in Sta2 (pynetdicom#721) ----------------------


@pytest.mark.parametrize("pdu_type", [0x02, 0x03, 0x04, 0x05, 0x06])
def test_another_pdu_before_the_association_request_is_aborted_as_unexpected(node, pdu_type):
    pdus = converse(node, pdu(pdu_type, bytes(4)), answers=1)
    assert types(pdus) == [0x07] and pdus[0][1][2:4] == UNEXPECTED_PDU
    still_answers(node)


def test_an_abort_before_the_association_request_is_closed_without_an_answer(node):
    assert converse(node, abort(), answers=1) == []
    still_answers(node)


@pytest.mark.parametrize("then", ["A-ABORT", "A-RELEASE-RQ"])
def test_a_request_followed_at_once_by_abort_or_release_ends_without_an_association(node, then):
    """Sta2/Sta3: the PDU after the A-ASSOCIATE-RQ arrives before the node has answered it.

    PS3.8's state table: A-ABORT in Sta3 closes (AA-3), A-RELEASE-RQ in Sta3 is answered
    A-ABORT (AA-8). pynetdicom then raises InvalidEventError in its reactor thread when the
    acceptance it had already decided on arrives (Evt7 in Sta13): logged, and the node
    reports the association aborted.
    """
    follow = {"A-ABORT": abort(), "A-RELEASE-RQ": release_rq()}[then]
    pdus = converse(node, associate_rq() + follow, answers=2)
    assert 0x04 not in types(pdus) and 0x06 not in types(pdus)
    assert types(pdus) in ([], [0x07], [0x02], [0x02, 0x07])
    still_answers(node)


def test_an_abort_with_an_invalid_source_after_a_store_keeps_the_acknowledged_instance(node):
    """pynetdicom's reactor thread dies on an A-ABORT whose source is 1 or 3 (ValueError in AA-3);
    the node reports the association aborted and keeps what it acknowledged."""
    uid, data = instance(random.Random("abort source"), SERIES)
    stored = b"".join(message(CONTEXT_CT, command_set(store_command(1, uid)), data))
    pdus = converse(node, associate_rq(), stored, abort(source=3), answers=2)
    assert statuses(pdus) == [(0x8001, 0x0000)]
    assert uid in stored_uids(node.spool)  # type: ignore[arg-type]
    still_answers(node)


# --- pynetdicom's tracker: UIDs over 64 characters ------------------------------------------------


def test_a_store_with_a_uid_over_64_characters_is_answered_c211_and_the_association_goes_on(node):
    before = quarantined(node)
    pdus, uid = store_on_association(node, LONG_UIDS[0])
    assert len(uid) > 64
    assert statuses(pdus) == [(0x8001, 0xC211), (0x8030, 0x0000)]  # then the C-ECHO on it
    assert types(pdus)[-1] == 0x06 and uid not in stored_uids(node.spool)  # type: ignore[arg-type]
    assert quarantined(node) == before + 1
    still_answers(node)


@pytest.mark.parametrize("where", ["abstract syntax", "implementation class", "application context"])
def test_an_association_request_with_a_uid_over_64_characters_is_answered(node, where):
    """The context proposing such an abstract syntax is refused (3: abstract syntax not supported);
    a long Implementation Class or application context UID is tolerated."""
    items = standard_items()
    if where == "abstract syntax":
        items.insert(1, context_item(5, LONG_UIDS[0], [IMPLICIT]))
    elif where == "implementation class":
        items[-1] = user_information(implementation=LONG_UIDS[1])
    else:
        items[0] = item(0x10, LONG_UIDS[0].encode())
    pdus = converse(node, associate_rq(items=items), release_rq())
    assert types(pdus) == [0x02, 0x06]
    results = contexts(pdus)
    assert results[CONTEXT_CT] == 0 and results[CONTEXT_ECHO] == 0
    assert results.get(5, 3) == 3
    still_answers(node)


def test_a_c_echo_whose_sop_class_uid_is_over_64_characters_is_aborted(node):
    echo = [(0x0002, ui(LONG_UIDS[0])), (0x0100, us(0x0030)), (0x0110, us(1)), (0x0800, us(0x0101))]
    pdus = converse(node, associate_rq(), p_data(pdv(CONTEXT_ECHO, 0x03, command_set(echo))), answers=2)
    assert types(pdus) == [0x02, 0x07]
    still_answers(node)


def test_a_transfer_syntax_uid_over_64_characters_is_answered_with_that_context_refused(node):
    """Finding 2 of the campaign: an A-ASSOCIATE-RQ proposing a transfer syntax UID over 64
    characters kills pynetdicom's reactor in AE-6 while in Sta2 (pynetdicom/presentation.py:
    "'transfer_syntax' contains an invalid UID", raised converting the PDU to a primitive,
    pynetdicom#721's kind). The node survives and frees the slot, but the peer gets no answer:
    the TCP connection is closed without A-ASSOCIATE-AC, -RJ or A-ABORT. A 64-character
    invalid one (1.2.abc.4) is answered as expected: AC with that context refused (4)."""
    items = standard_items()
    items.insert(1, context_item(5, "1.2.840.10008.5.1.4.1.1.2", [LONG_UIDS[0]]))
    try:
        pdus = converse(node, associate_rq(items=items), release_rq())
    finally:
        still_answers(node)
    assert types(pdus) == [0x02, 0x06] and contexts(pdus)[5] == 4


# --- pynetdicom's tracker: invalid UIDs -----------------------------------------------------------


@pytest.mark.parametrize("uid", ["1.2.abc.4", "1..2", "1.2.3\n4"])
def test_a_store_with_an_invalid_uid_is_answered_c211_and_quarantined(node, uid):
    before = quarantined(node)
    pdus, _ = store_on_association(node, uid)
    assert statuses(pdus) == [(0x8001, 0xC211), (0x8030, 0x0000)]
    assert quarantined(node) == before + 1 and uid not in stored_uids(node.spool)  # type: ignore[arg-type]
    still_answers(node)


def test_a_uid_with_a_leading_zero_is_stored_as_the_node_chooses_to_be_lenient(node):
    """n2d_dicom.uids: leading zeros (1.2.840.01.5) are accepted on purpose, as modalities write them."""
    pdus, uid = store_on_association(node, "1.2.826.0.1.3680043.9.7433.027")
    assert statuses(pdus) == [(0x8001, 0x0000), (0x8030, 0x0000)]
    assert uid in stored_uids(node.spool)  # type: ignore[arg-type]


def test_an_invalid_abstract_syntax_uid_refuses_that_context_only(node):
    items = standard_items()
    items.insert(1, context_item(5, "1.2.abc.4", [IMPLICIT]))
    pdus = converse(node, associate_rq(items=items), release_rq())
    assert types(pdus) == [0x02, 0x06] and contexts(pdus) == {1: 0, 3: 0, 5: 3}
    still_answers(node)


# --- findings -------------------------------------------------------------------------------------


def test_a_store_whose_pixel_data_is_cut_short_is_not_acknowledged(node):
    """Finding 1 of the campaign: Pixel Data declared 32768 bytes long, 2000 sent (the last
    fragment flagged last, so the DIMSE message is complete). scp_server.scp.handle_store
    decodes the dataset and spool.instance_of checks identifiers only; the node answers 0x0000
    and stores a file whose pixel_array raises (fewer bytes than Rows x Columns x 2). The
    modality takes it as delivered; the run that denoises the series cannot read it."""
    pdus, uid = store_on_association(node, None, cut_pixels=2000)
    still_answers(node)
    assert statuses(pdus)[0] != (0x8001, 0x0000), f"{uid} acknowledged"


def test_requests_with_a_long_transfer_syntax_uid_hold_no_association_slot(tmp_path):
    """Finding 2, its consequence: the connection whose request killed pynetdicom's reactor (see
    above) keeps its association slot until acse_timeout_s, though its AE title was never checked.
    Ten such 300-byte requests from a calling AE that is not allowed (EVIL) lock a
    max_associations: 10 node out for acse_timeout_s: the modality's C-ECHO is rejected."""
    items = standard_items()
    items.insert(1, context_item(5, "1.2.840.10008.5.1.4.1.1.2", [LONG_UIDS[0]]))
    with own_node(tmp_path, acse_timeout_s=20) as running:
        peers = [Peer(running.port, PATIENCE_S) for _ in range(10)]
        try:
            for peer in peers:
                peer.send(associate_rq(calling=b"EVIL", items=items))
            time.sleep(0.5)
            echoed, _ = checkpoint(running.port, None)
        finally:
            for peer in peers:
                peer.close()
    assert echoed, "C-ECHO rejected: every association slot is held"
