"""Orthanc with its DICOMweb plugin as the PACS: the node gets a series over DIMSE and sends the
derived series back with STOW-RS, as a user (basic auth, password from an environment variable).

Run by tests/integration/test_dicomweb_orthanc.py inside a fresh network namespace that has only
loopback (Orthanc 1.10 cannot be told to listen on 127.0.0.1 alone), so fixed ports are safe.
Usage: python -m tests.integration.dicomweb_scenario WORK_DIR ; exits 0 when the scenario holds.
"""

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from scp_server.destinations import DicomWebDestination
from scp_server.dicomweb import stow_files
from scp_server.outbox import Outbox
from tests.integration.orthanc_scenario import ORTHANC_DICOM, ORTHANC_HTTP, listening, wait
from tests.n2d_dicom.conftest import write_ct_series

NODE_PORT = 11112
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "n2d", "stow-Secret-42"
STOW_URL = f"http://127.0.0.1:{ORTHANC_HTTP}/dicom-web"


def rest(path: str, body: bytes | None = None) -> object:
    """Orthanc's REST API, as the registered user."""
    request = urllib.request.Request(f"http://127.0.0.1:{ORTHANC_HTTP}{path}", data=body)
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def web(url: str, password_env: str = "N2D_STOW_PASSWORD") -> DicomWebDestination:
    return DicomWebDestination.model_validate(
        {"dicomweb": {"url": url, "auth": "basic", "username": USER, "password": {"env": password_env}}}
    )


def write_configs(work: Path) -> None:
    orthanc_config = {
        "Name": "n2d-dicomweb-test",
        "StorageDirectory": str(work / "orthanc"),
        "IndexDirectory": str(work / "orthanc"),
        "HttpPort": ORTHANC_HTTP,
        "DicomPort": ORTHANC_DICOM,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "DicomModalities": {"n2d": ["N2D", "127.0.0.1", NODE_PORT]},
        "Plugins": [str(PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (work / "orthanc.json").write_text(json.dumps(orthanc_config))
    node_config = {
        "ae_title": "N2D",
        "port": NODE_PORT,
        "http_port": 0,
        "allowed_calling_aets": ["ORTHANC"],
        "spool_dir": str(work / "spool"),
        "quiet_period_s": 0.5,
        "device": "cpu",
        "dashboard": False,
        "routes": [
            {
                "name": "ct",
                "match": {"modalities": ["CT"]},
                "n2d": {"iterations": 3, "channels": 8, "mode": "per-series"},
                "destinations": [web(STOW_URL).model_dump(mode="json")],
            }
        ],
    }
    (work / "node.yaml").write_text(yaml.safe_dump(node_config))


def derived_series_reaches_the_source_study(work: Path, node: subprocess.Popen) -> None:
    """Orthanc sends a CT series to the node; the derived series comes back over STOW-RS."""
    folder = work / "modality"
    folder.mkdir()
    paths = write_ct_series(folder, [0.0, 2.5, 5.0])
    (source_series,) = {rest("/instances", path.read_bytes())["ParentSeries"] for path in paths}
    study = rest(f"/series/{source_series}")["ParentStudy"]
    wait(lambda: node.poll() is None and listening(NODE_PORT), "the node to listen")
    rest("/modalities/n2d/store", json.dumps([source_series]).encode())
    wait(lambda: len(rest(f"/studies/{study}")["Series"]) == 2, "the derived series in the same study")
    (derived,) = [s for s in rest(f"/studies/{study}")["Series"] if s != source_series]
    wait(lambda: len(rest(f"/series/{derived}")["Instances"]) == 3, "all derived instances")
    source_study_uid = rest(f"/studies/{study}")["MainDicomTags"]["StudyInstanceUID"]
    instance = rest(f"/series/{derived}")["Instances"][0]
    tags = rest(f"/instances/{instance}/simplified-tags")
    assert tags["StudyInstanceUID"] == source_study_uid, tags["StudyInstanceUID"]
    assert tags["ImageType"].startswith("DERIVED\\SECONDARY"), tags["ImageType"]
    print("dicomweb scenario: derived series", tags["SeriesInstanceUID"], "stored over STOW-RS in the study")


def answers_are_recorded(work: Path) -> None:
    """A 404 (wrong path) and a 401 (wrong password) are refused; a closed port stays pending."""
    files = sorted((work / "modality").iterdir())[:2]
    os.environ["N2D_WRONG_PASSWORD"] = "not-the-password"
    for url, env, expected in [
        (f"http://127.0.0.1:{ORTHANC_HTTP}/no-such-root", "N2D_STOW_PASSWORD", "HTTP 404"),
        (STOW_URL, "N2D_WRONG_PASSWORD", "HTTP 401"),
    ]:
        results = stow_files(files, web(url, env), attempts=3, sleep=lambda s: None)
        assert all(r.refused and (r.error or "").startswith(expected) for r in results), results
        print("dicomweb scenario:", url, "answered", results[0].error, "-> refused")
    results = stow_files(files, web("http://127.0.0.1:9"), attempts=2, sleep=lambda s: None)
    assert not any(r.delivered or r.refused for r in results), results
    print("dicomweb scenario: closed port ->", results[0].error, "-> pending")


def main(work: Path) -> None:
    assert PLUGIN.exists(), f"{PLUGIN} missing: apt-get install orthanc-dicomweb"
    write_configs(work)
    os.environ["N2D_STOW_PASSWORD"] = PASSWORD
    orthanc = subprocess.Popen([shutil.which("Orthanc") or "/usr/sbin/Orthanc", str(work / "orthanc.json")])
    node_log = (work / "node.log").open("w")
    node = subprocess.Popen(
        [str(Path(sys.executable).with_name("n2d")), "serve", "--config", str(work / "node.yaml")],
        stdout=node_log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait(lambda: rest("/system"), "Orthanc")
        derived_series_reaches_the_source_study(work, node)
        answers_are_recorded(work)
    finally:
        node.send_signal(signal.SIGINT)
        orthanc.terminate()
        for process in (node, orthanc):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        node_log.close()
    outbox = Outbox(work / "spool" / "outbox.sqlite3")
    try:
        assert outbox.counts() == {STOW_URL: {"delivered": 3}}, outbox.counts()
    finally:
        outbox.close()
    log = (work / "node.log").read_text()
    assert "send to " + STOW_URL in log, log[-3000:]
    assert PASSWORD not in log and base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() not in log
    print("dicomweb scenario: outbox delivered, no credentials in the node's log")


if __name__ == "__main__":
    started = time.monotonic()
    main(Path(sys.argv[1]))
    print(f"dicomweb scenario: {time.monotonic() - started:.0f} s")
