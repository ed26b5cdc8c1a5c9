"""Orthanc configured by docker/orthanc/ routes stable series to the node, but not the node's own.

Run by tests/docker/test_autoroute.py inside a fresh network namespace that has only loopback, as
tests/integration/orthanc_scenario.py is (whose helpers this uses): Orthanc 1.10 cannot be told to
listen on 127.0.0.1 alone, and the namespace makes the fixed ports safe.
Usage: python -m tests.docker.autoroute_scenario WORK_DIR ; exits 0 when the routing holds.

Orthanc runs with the committed orthanc.json and autoroute.lua; only what must differ outside
Docker is rewritten (paths, the node's host name, a short StableAge). A pynetdicom SCP stands in
for the node. Four series are C-STOREd into Orthanc: an original CT and a scanner's own DERIVED
reformat (both must be routed), a series the node derived from the CT with the real n2d_dicom
code, and the same with its private tags stripped (neither may be routed back).
"""

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import torch
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt

from n2d_dicom.derive import DerivationSettings, write_instances
from n2d_dicom.dicom_read import read_dicom_files
from n2d_dicom.pipeline import denoise_series
from n2d_dicom.settings import N2DSettings
from scp_server.destinations import Destination
from scp_server.sender import send_files
from tests.integration.orthanc_scenario import ORTHANC_DICOM, ORTHANC_HTTP, rest, wait
from tests.n2d_dicom.conftest import write_ct_series

ORTHANC_DIR = Path(__file__).resolve().parents[2] / "docker" / "orthanc"


def orthanc_settings() -> dict:
    """docker/orthanc/orthanc.json as JSON: Orthanc allows comments there, JSON does not."""
    lines = (ORTHANC_DIR / "orthanc.json").read_text().splitlines()
    return json.loads("\n".join(line for line in lines if not line.lstrip().startswith("//")))


def local_settings(work: Path) -> dict:
    """The committed settings, with what only makes sense in the compose network changed."""
    settings = orthanc_settings()
    node_ae, _service_name, node_port = settings["DicomModalities"]["n2d"]
    settings.update(
        StorageDirectory=str(work / "orthanc"),
        IndexDirectory=str(work / "orthanc"),
        HttpPort=ORTHANC_HTTP,
        DicomPort=ORTHANC_DICOM,
        RemoteAccessAllowed=False,
        StableAge=2,  # short, yet longer than any gap within one quick C-STORE association
        LuaScripts=[str(ORTHANC_DIR / "autoroute.lua")],
        DicomModalities={"n2d": [node_ae, "127.0.0.1", node_port]},
    )
    return settings


class NodeStandIn:
    """A C-STORE SCP with the node's AE title that records which series reach it, and from whom."""

    def __init__(self, ae_title: str, port: int) -> None:
        self.received: dict[str, list[str]] = {}
        ae = AE(ae_title=ae_title)
        ae.require_called_aet = True
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._stored)]
        )

    def _stored(self, event: evt.Event) -> int:
        series = str(event.dataset.SeriesInstanceUID)
        self.received.setdefault(series, []).append(event.assoc.requestor.ae_title)
        return 0x0000


def new_folder(path: Path) -> Path:
    path.mkdir()
    return path


def scanner_reformat(folder: Path) -> list[Path]:
    """A scanner's own derived series (an MPR): DERIVED, but not the node's, so it is routed."""
    paths = write_ct_series(folder, [0.0, 2.5, 5.0])
    for path in paths:
        dataset = pydicom.dcmread(path)
        dataset.ImageType = ["DERIVED", "SECONDARY", "MPR"]
        dataset.SeriesDescription = "Coronal MPR"
        dataset.save_as(path)
    return paths


def derived_by_node(source: list[Path]) -> list[Dataset]:
    """What the node sends back for ``source``: n2d_dicom's derived series (few iterations)."""
    (series,), _ = read_dicom_files(source)
    settings = N2DSettings(iterations=3, channels=8, mode="per-series")
    return denoise_series(series, settings, DerivationSettings(), torch.device("cpu")).datasets


def without_private_tags(datasets: list[Dataset]) -> list[Dataset]:
    """That series after a system that drops private tags; new UIDs, so Orthanc keeps both."""
    series_uid = generate_uid()
    stripped = []
    for dataset in map(copy.deepcopy, datasets):
        dataset.remove_private_tags()
        dataset.SeriesInstanceUID = series_uid
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        stripped.append(dataset)
    return stripped


def store(paths: list[Path], calling_ae: str) -> str:
    """C-STORE a series into Orthanc; its Series Instance UID."""
    orthanc = Destination(ae_title="ORTHANC", host="127.0.0.1", port=ORTHANC_DICOM)
    results = send_files(paths, orthanc, calling_ae)
    assert all(result.delivered for result in results), results
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)


def main(work: Path) -> None:
    settings = local_settings(work)
    (work / "orthanc.json").write_text(json.dumps(settings))
    node_ae, _, node_port = settings["DicomModalities"]["n2d"]
    node = NodeStandIn(node_ae, node_port)
    log = (work / "orthanc.log").open("w")
    orthanc = subprocess.Popen(
        [shutil.which("Orthanc") or "/usr/sbin/Orthanc", str(work / "orthanc.json")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait(lambda: rest("/system"), "Orthanc", timeout=30)
        ct = write_ct_series(new_folder(work / "ct"), [0.0, 2.5, 5.0])
        routed = {store(ct, "CT01"), store(scanner_reformat(new_folder(work / "mpr")), "CT01")}
        derived = derived_by_node(ct)
        kept = {
            store(write_instances(derived, new_folder(work / "derived")), node_ae),
            store(write_instances(without_private_tags(derived), new_folder(work / "stripped")), node_ae),
        }
        orthanc_ids = {uid: rest("/tools/lookup", uid.encode())[0]["ID"] for uid in routed | kept}

        def decided() -> set[str]:
            return set(re.findall(r"n2d autoroute: series (\S+)", (work / "orthanc.log").read_text()))

        wait(lambda: decided() >= set(orthanc_ids.values()), "autoroute.lua to decide on every series", 60)
        wait(lambda: all(job["State"] in ("Success", "Failure") for job in rest("/jobs?expand")), "the sends")
        assert set(node.received) == routed, (node.received, routed, kept, rest("/jobs?expand"))
        assert all(callers == ["ORTHANC"] * 3 for callers in node.received.values()), node.received
        print(f"autoroute scenario: {len(routed)} series routed to {node_ae}, {len(kept)} derived kept back")
    finally:
        orthanc.terminate()
        try:
            orthanc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            orthanc.kill()
        node.server.shutdown()
        log.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
