"""Orthanc as the PACS: it sends a series to the node and receives the derived series back.

Run by tests/integration/test_orthanc.py inside a fresh network namespace that has only
loopback (Orthanc 1.10 cannot be told to listen on 127.0.0.1 alone), so fixed ports are safe.
Usage: python -m tests.integration.orthanc_scenario WORK_DIR ; exits 0 when the scenario holds.
"""

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from tests.n2d_dicom.conftest import write_ct_series

ORTHANC_HTTP, ORTHANC_DICOM, NODE_PORT = 8042, 4242, 11112


def rest(path: str, body: bytes | None = None) -> object:
    request = urllib.request.Request(f"http://127.0.0.1:{ORTHANC_HTTP}{path}", data=body)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"gave up waiting for {what}")


def main(work: Path) -> None:
    orthanc_config = {
        "Name": "n2d-test",
        "StorageDirectory": str(work / "orthanc"),
        "IndexDirectory": str(work / "orthanc"),
        "HttpPort": ORTHANC_HTTP,
        "DicomPort": ORTHANC_DICOM,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomModalities": {"n2d": ["N2D", "127.0.0.1", NODE_PORT]},
        "Plugins": [],
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
        "send_backoff_s": 0.5,
        "routes": [
            {
                "name": "ct",
                "match": {"modalities": ["CT"]},
                "n2d": {"iterations": 3, "channels": 8, "mode": "per-series"},
                "destinations": [{"ae_title": "ORTHANC", "host": "127.0.0.1", "port": ORTHANC_DICOM}],
            }
        ],
    }
    (work / "node.yaml").write_text(yaml.safe_dump(node_config))
    orthanc = subprocess.Popen([shutil.which("Orthanc") or "/usr/sbin/Orthanc", str(work / "orthanc.json")])
    node = subprocess.Popen(
        [str(Path(sys.executable).with_name("n2d")), "serve", "--config", str(work / "node.yaml")]
    )
    try:
        wait(lambda: rest("/system"), "Orthanc")
        folder = work / "modality"
        folder.mkdir()
        series_ids = {
            rest("/instances", path.read_bytes())["ParentSeries"]
            for path in write_ct_series(folder, [0.0, 2.5, 5.0])
        }
        (source_series,) = series_ids
        study = rest(f"/series/{source_series}")["ParentStudy"]
        wait(lambda: node.poll() is None and listening(NODE_PORT), "the node to listen")
        rest("/modalities/n2d/store", json.dumps([source_series]).encode())
        wait(lambda: len(rest(f"/studies/{study}")["Series"]) == 2, "the derived series in the same study")
        (derived,) = [s for s in rest(f"/studies/{study}")["Series"] if s != source_series]
        wait(lambda: len(rest(f"/series/{derived}")["Instances"]) == 3, "all derived instances")
        tags = rest(f"/series/{derived}")["MainDicomTags"]
        assert tags["SeriesDescription"].endswith("[N2D]"), tags
        instance = rest(f"/series/{derived}")["Instances"][0]
        image_type = rest(f"/instances/{instance}/simplified-tags")["ImageType"]
        assert image_type.startswith("DERIVED\\SECONDARY"), image_type
        print("orthanc scenario: derived series", tags.get("SeriesInstanceUID", derived), "in the same study")
    finally:
        node.send_signal(signal.SIGINT)
        orthanc.terminate()
        for process in (node, orthanc):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
