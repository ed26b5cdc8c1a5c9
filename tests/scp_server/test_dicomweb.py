"""DICOMweb destinations: STOW-RS requests to a real HTTP(S) receiver on loopback, and what is recorded."""

import logging
import socket
import ssl
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from scp_server.config import NodeSettings, load_settings
from scp_server.destinations import DicomWebDestination, parse_destination
from scp_server.dicomweb import stow_files
from scp_server.tasks import RunPlan
from tests.conftest import free_port
from tests.n2d_dicom.conftest import write_ct_series
from tests.peers.stow_rs import StowPeer, referenced, stored
from tests.scp_server.conftest import web


@pytest.fixture
def series_files(tmp_path):
    folder = tmp_path / "derived"
    folder.mkdir()
    return write_ct_series(folder, [0.0, 1.0, 2.0, 3.0, 4.0])


def test_files_are_posted_as_they_are_in_bounded_multipart_requests(series_files, peer):
    destination = web(f"http://127.0.0.1:{peer.port}/dicom-web/", instances_per_request=2)
    results = stow_files(series_files, destination)
    assert [r.status for r in results] == [0x0000] * 5 and all(r.delivered for r in results)
    assert [len(request.uids) for request in peer.requests] == [2, 2, 1]
    assert {request.path for request in peer.requests} == {"/dicom-web/studies"}
    assert [part for request in peer.requests for part in request.parts] == [
        path.read_bytes() for path in series_files
    ]
    assert peer.requests[0].headers["Accept"] == "application/dicom+json"


def test_failed_sop_sequence_refuses_only_what_it_lists_and_retries_out_of_resources(series_files, peer):
    uids = [None] * 5

    def answer(sent):
        uids[: len(sent)] = sent
        failed = [referenced(sent[0], failure=0xC122), referenced(sent[1], failure=0xA700)]
        stored_ = [referenced(uid, warning=0xB000) for uid in sent[2:]]
        return 202, {"00081198": {"vr": "SQ", "Value": failed}, "00081199": {"vr": "SQ", "Value": stored_}}

    peer.answer = answer
    results = stow_files(series_files, web(f"http://127.0.0.1:{peer.port}"), attempts=1)
    assert [(r.status, r.delivered, r.refused) for r in results] == [
        (0xC122, False, True),
        (0xA700, False, False),
        (0xB000, True, False),
        (0xB000, True, False),
        (0xB000, True, False),
    ]
    assert "202" in (results[0].error or "")


def test_a_4xx_answer_is_refused_and_not_retried(series_files, peer):
    peer.answer = lambda uids: (404, None)
    slept: list[float] = []
    results = stow_files(series_files, web(f"http://127.0.0.1:{peer.port}/wrong"), sleep=slept.append)
    assert all(r.refused and r.status is None for r in results)
    assert {r.error for r in results} == {"HTTP 404 Not Found"}
    assert len(peer.requests) == 1 and slept == []


def test_a_200_without_a_stow_rs_answer_or_a_redirect_marks_nothing_delivered(series_files, peer):
    peer.answer = lambda uids: (200, b"<html>Please log in</html>")
    results = stow_files(series_files[:2], web(f"http://127.0.0.1:{peer.port}"), attempts=2, backoff_s=0)
    assert not any(r.delivered for r in results) and len(peer.requests) == 2  # retried, then refused
    assert "without a STOW-RS answer" in (results[0].error or "")
    peer.answer = lambda uids: (302, None)
    results = stow_files(series_files[:2], web(f"http://127.0.0.1:{peer.port}"), attempts=1)
    assert all(r.refused for r in results) and results[0].error == "HTTP 302 Found"


def test_a_200_that_does_not_list_the_instances_is_retried_then_refused_with_the_reason(series_files, peer):
    """Round 3, finding 7: a 200 whose body is {} counted as delivered, and retention deleted the files."""
    peer.answer = lambda uids: (200, b"{}")
    results = stow_files(series_files[:2], web(f"http://127.0.0.1:{peer.port}"), attempts=3, backoff_s=0)
    assert len(peer.requests) == 3
    assert all(r.refused and not r.delivered for r in results)
    assert results[0].error == "HTTP 200 OK: the answer does not list the instance as stored (3 attempts)"


@pytest.mark.parametrize("headers_too", [False, True], ids=["body", "status line and headers"])
def test_a_destination_trickling_its_answer_is_cut_off_at_the_request_deadline(
    series_files, peer, headers_too
):
    """Round 3, finding 2: headers, then a byte a second, held the worker for as long as it liked;
    an adversarial review then found the status line and headers trickled past the deadline too."""
    peer.trickle_s, peer.trickle_headers = 0.2, headers_too
    destination = web(f"http://127.0.0.1:{peer.port}", timeout_s=5)
    started = time.monotonic()
    results = stow_files(series_files[:2], destination, attempts=1, deadline_s=1.0)
    assert time.monotonic() - started < 4
    assert not any(r.delivered or r.refused for r in results)
    assert {r.error for r in results} == {"no complete answer within 1 s"}


def test_a_5xx_answer_is_retried_with_backoff_then_left_pending(series_files, peer):
    peer.answer = lambda uids: (503, None)
    slept: list[float] = []
    results = stow_files(
        series_files, web(f"http://127.0.0.1:{peer.port}"), attempts=3, backoff_s=0.5, sleep=slept.append
    )
    assert not any(r.delivered or r.refused for r in results)
    assert {r.error for r in results} == {"HTTP 503 Service Unavailable"}
    assert len(peer.requests) == 3 and slept == [0.5, 1.0]
    peer.answer = stored
    assert all(r.delivered for r in stow_files(series_files, web(f"http://127.0.0.1:{peer.port}")))


def test_a_closed_port_leaves_every_instance_pending(series_files):
    heard = []
    results = stow_files(
        series_files,
        web(f"http://127.0.0.1:{free_port()}"),
        attempts=2,
        sleep=lambda s: None,
        on_result=heard.append,
    )
    assert not any(r.delivered or r.refused for r in results)
    assert all((r.error or "").startswith("no connection") for r in results)
    assert len(heard) == 2 * len(series_files)  # every failed attempt is heard, for the outbox


def test_a_server_that_never_answers_costs_the_timeout_and_leaves_instances_pending(series_files):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        destination = web(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout_s=0.5)
        started = time.monotonic()
        results = stow_files(series_files, destination, attempts=1)
        waited = time.monotonic() - started
    assert not any(r.delivered or r.refused for r in results)
    assert {r.error for r in results} == {"no answer within 0.5 s"} and 0.5 <= waited < 5


def test_credentials_come_from_env_or_file_and_are_never_stored_or_logged(
    series_files, peer, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("PACS_PASSWORD", "s3cret-pw")
    token = tmp_path / "token"
    token.write_text("t0ken-value\n")
    basic = web(
        f"http://127.0.0.1:{peer.port}", auth="basic", username="n2d", password={"env": "PACS_PASSWORD"}
    )
    bearer = web(f"http://127.0.0.1:{peer.port}/b", auth="bearer", token={"file": str(token)})
    with caplog.at_level(logging.DEBUG):
        assert all(r.delivered for r in stow_files(series_files[:1], basic))
        assert all(r.delivered for r in stow_files(series_files[:1], bearer))
    assert peer.requests[0].headers["Authorization"] == "Basic bjJkOnMzY3JldC1wdw=="  # n2d:s3cret-pw
    assert peer.requests[1].headers["Authorization"] == "Bearer t0ken-value"
    for secret in ("s3cret-pw", "t0ken-value", "bjJkOnMzY3JldC1wdw"):
        assert secret not in basic.model_dump_json() + bearer.model_dump_json() + caplog.text


def test_a_credential_that_cannot_be_read_refuses_and_says_where_it_was_looked_for(series_files, peer):
    destination = web(f"http://127.0.0.1:{peer.port}", auth="bearer", token={"env": "N2D_TEST_UNSET_TOKEN"})
    results = stow_files(series_files, destination)
    assert all(r.refused for r in results) and peer.requests == []
    assert "N2D_TEST_UNSET_TOKEN is not set" in (results[0].error or "")


def test_https_is_verified_by_default_and_trusts_the_configured_ca(series_files, certificate):
    cert, key = certificate
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    peer = StowPeer().start(tls)
    try:
        unverified = stow_files(series_files[:1], web(f"https://127.0.0.1:{peer.port}"), attempts=1)
        assert not unverified[0].delivered and "CERTIFICATE_VERIFY_FAILED" in (unverified[0].error or "")
        assert peer.requests == []
        trusted = stow_files(series_files[:1], web(f"https://127.0.0.1:{peer.port}", ca_file=str(cert)))
        assert trusted[0].delivered and len(peer.requests) == 1
    finally:
        peer.stop()


def test_a_destination_is_dimse_or_dicomweb_and_its_url_holds_no_credentials():
    settings = NodeSettings(
        routes=[
            {
                "name": "ct",
                "destinations": [
                    {"ae_title": "PACS", "host": "pacs", "port": 104},
                    {"dicomweb": {"url": "https://pacs/dicom-web/", "auth": "bearer", "token": {"env": "T"}}},
                ],
            }
        ]
    )
    dimse, dicomweb = settings.routes[0].destinations
    assert [d.key for d in (dimse, dicomweb)] == ["PACS@pacs:104", "https://pacs/dicom-web"]
    assert parse_destination(dicomweb.model_dump_json()) == dicomweb
    assert isinstance(dicomweb, DicomWebDestination) and dicomweb.dicomweb.verify
    for bad, why in [
        ({"url": "https://user:pw@pacs/dicom-web"}, "holds credentials"),
        ({"url": "https://pacs", "auth": "basic", "username": "n2d"}, "auth basic takes password, username"),
        ({"url": "https://pacs", "token": {"env": "T"}}, "auth none takes no credentials"),
        ({"url": "https://pacs", "verify": False, "ca_file": "ca.pem"}, "verify is false"),
        ({"url": "pacs/dicom-web"}, "is not an http.s. URL with a host"),
    ]:
        with pytest.raises(ValidationError, match=why):
            web(**bad)


def test_the_commented_example_config_loads_with_both_kinds_of_destination():
    example = Path(__file__).resolve().parents[2] / "config" / "dicomweb.yaml"
    destinations = load_settings(example).routes[0].destinations
    assert [d.key for d in destinations] == [
        "https://pacs.example.org/dicom-web",
        "https://research.example.org/dicomweb",
        "VIEWER@viewer.example.org:104",
    ]


def test_a_run_plan_keeps_dicomweb_destinations_through_its_stored_json():
    target = {"url": "https://pacs/dicom-web", "auth": "bearer", "token": {"file": "/run/secrets/t"}}
    plan = RunPlan.model_validate(
        {
            "route": {"name": "ct", "destinations": [{"dicomweb": target}]},
            "forward_unmatched": [{"ae_title": "PACS", "host": "pacs", "port": 104}, {"dicomweb": target}],
            "derivation": {},
        }
    )
    assert RunPlan.model_validate_json(plan.model_dump_json()) == plan
    assert isinstance(plan.forward_unmatched[1], DicomWebDestination)
