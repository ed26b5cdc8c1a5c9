"""``n2d load``: drive a running node with many series from concurrent modalities, and measure it.

It plays both ends of the road: M modalities (C-STORE SCUs, one association per
series) send N synthetic CT series of a noisy phantom, and a receiving SCP
stands in for the PACS the node's route delivers to; with an interval between
series, later series arrive while workers are busy with earlier ones. It prints what a site
sizing a node asks: instances/s the node acknowledged, C-STORE round trips
while workers are busy (reception must never wait for denoising), series/s
completed, receive-to-delivered latency, and the node's own queue wait and
processing figures from its ``/status``. Point the node's route at the receiver
(``--receive-ae`` on ``--receive-port``) and allow ``--calling-ae``.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from n2d_dicom.tools.phantom import add_noise, ellipsoid_phantom
from scp_server.operations import RunLatencies, Spread, spread


class LoadPlan(BaseModel):
    """Who to load, how hard, and where the derived series come back."""

    host: str = "127.0.0.1"
    port: int = 11112
    called_ae: str = "N2D"
    calling_ae: str = "STORESCU"
    series: int = 20
    scus: int = 4
    slices: int = 8
    side: int = 128
    interval_s: float = 0.0
    receive_ae: str = "VIEWER"
    receive_port: int = 11113
    status_url: str | None = "http://127.0.0.1:8080/status"
    timeout_s: float = 1800


class LoadFigures(BaseModel):
    """What one load run measured."""

    series: int
    scus: int
    instances: int
    sending_s: float
    instances_per_s_received: float
    c_store_s: Spread | None
    series_completed: int
    series_per_s_completed: float
    end_to_end_s: Spread | None
    node: RunLatencies | None


@dataclass
class Timeline:
    """When each series was sent and delivered, and how long each C-STORE took."""

    sent: dict[str, tuple[float, float]] = field(default_factory=dict)  # series -> first, last ack
    delivered: dict[str, list[float]] = field(default_factory=dict)  # source series -> arrivals
    store_s: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def synthetic_series(slices: int, side: int, seed: int) -> list[Dataset]:
    """A noisy CT series (int16 HU) of the ellipsoid phantom, with fresh UIDs and no real patient."""
    hu = np.rint(add_noise(ellipsoid_phantom(slices, side), "gaussian", seed) * 2000 - 1000).astype(np.int16)
    study, series = generate_uid(), generate_uid()
    datasets = []
    for number, image in enumerate(hu):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID, ds.Modality = "LOAD^TEST", "LOAD", "CT"
        ds.SeriesNumber, ds.InstanceNumber = 1, number + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * number]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.8], 2.5
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = side
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = image.tobytes()
        datasets.append(ds)
    return datasets


def send_series(plan: LoadPlan, datasets: list[Dataset], timeline: Timeline, not_before: float) -> None:
    """One modality's association, from ``not_before`` (epoch s): C-STORE every instance, timing each."""
    time.sleep(max(0.0, not_before - time.time()))
    ae = AE(ae_title=plan.calling_ae)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(plan.host, plan.port, ae_title=plan.called_ae)
    if not assoc.is_established:
        raise ConnectionError(f"association to {plan.called_ae}@{plan.host}:{plan.port} not established")
    first = time.time()
    try:
        for ds in datasets:
            started = time.perf_counter()
            status = assoc.send_c_store(ds)
            with timeline.lock:
                timeline.store_s.append(time.perf_counter() - started)
            if status.get("Status") != 0x0000:
                raise ConnectionError(f"C-STORE answered {status.get('Status')}")
    finally:
        assoc.release()
    with timeline.lock:
        timeline.sent[str(datasets[0].SeriesInstanceUID)] = (first, time.time())


def start_pacs(ae_title: str, port: int, on_stored: Callable[[Dataset], None]) -> object:
    """A stand-in PACS on 127.0.0.1:``port`` that hands each dataset it is sent to ``on_stored``.

    It answers 0x0000 once ``on_stored`` returns; call ``shutdown()`` on the result to stop it.
    """

    def stored(event: evt.Event) -> int:
        on_stored(event.dataset)
        return 0x0000

    ae = AE(ae_title=ae_title)
    ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, "1.2.840.10008.1.2"])
    handlers: list[Any] = [(evt.EVT_C_STORE, stored)]
    return ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)


def start_receiver(plan: LoadPlan, timeline: Timeline, source_series: dict[str, str]) -> object:
    """The stand-in PACS: note when each derived instance arrives, by the series it came from."""

    def stored(derived: Dataset) -> None:
        source = source_series.get(str(derived.SourceImageSequence[0].ReferencedSOPInstanceUID), "?")
        with timeline.lock:
            timeline.delivered.setdefault(source, []).append(time.time())

    return start_pacs(plan.receive_ae, plan.receive_port, stored)


def run_load(plan: LoadPlan) -> LoadFigures:
    """Send, wait for every derived series, and return the figures (see :func:`describe`)."""
    all_series = [synthetic_series(plan.slices, plan.side, seed) for seed in range(plan.series)]
    source_series = {str(ds.SOPInstanceUID): str(ds.SeriesInstanceUID) for s in all_series for ds in s}
    timeline = Timeline()
    receiver = start_receiver(plan, timeline, source_series)
    try:
        started = time.time()
        with ThreadPoolExecutor(max_workers=plan.scus) as modalities:
            starts = [started + number * plan.interval_s for number in range(plan.series)]
            sends = [modalities.submit(send_series, plan, s, timeline, t) for s, t in zip(all_series, starts)]
            for sent in sends:
                sent.result()
        sending_s = time.time() - started
        deadline = time.monotonic() + plan.timeout_s
        while not _all_delivered(timeline, plan) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        receiver.shutdown()  # type: ignore[attr-defined]
    done = _complete(timeline, plan.slices)
    finished = max((max(timeline.delivered[s]) for s in done), default=time.time())
    instances = plan.series * plan.slices
    return LoadFigures(
        series=plan.series,
        scus=plan.scus,
        instances=instances,
        sending_s=round(sending_s, 2),
        instances_per_s_received=round(instances / sending_s, 1),
        c_store_s=spread(timeline.store_s),
        series_completed=len(done),
        series_per_s_completed=round(len(done) / (finished - started), 3),
        end_to_end_s=spread([max(timeline.delivered[s]) - timeline.sent[s][1] for s in done]),
        node=_node_runs(plan.status_url),
    )


def _complete(timeline: Timeline, slices: int) -> list[str]:
    """Source series whose derived instances have all arrived."""
    with timeline.lock:
        return [s for s, arrivals in timeline.delivered.items() if len(arrivals) >= slices]


def _all_delivered(timeline: Timeline, plan: LoadPlan) -> bool:
    return len(_complete(timeline, plan.slices)) >= plan.series


def _node_runs(status_url: str | None) -> RunLatencies | None:
    """The node's ``recent_runs`` (queue wait, processing), or None without a status URL."""
    if status_url is None:
        return None
    with urllib.request.urlopen(status_url, timeout=10) as answer:
        return RunLatencies.model_validate(json.load(answer)["recent_runs"])


def describe(figures: LoadFigures) -> str:
    """The figures as lines for a person."""
    node = figures.node
    return "\n".join(
        [
            f"sent {figures.series} series ({figures.instances} instances) from {figures.scus} SCUs "
            f"in {figures.sending_s} s: {figures.instances_per_s_received} instances/s received",
            f"C-STORE round trip: {_seconds(figures.c_store_s)}",
            f"completed {figures.series_completed}/{figures.series} series: "
            f"{figures.series_per_s_completed} series/s",
            f"last instance acknowledged -> derived series delivered: {_seconds(figures.end_to_end_s)}",
            f"node queue wait (recent runs): {_seconds(node.queue_wait_s if node else None)}",
            f"node processing (recent runs): {_seconds(node.processing_s if node else None)}",
        ]
    )


def _seconds(value: Spread | None) -> str:
    if value is None:
        return "n/a"
    return f"median {value.p50:.3f} s, p95 {value.p95:.3f} s, max {value.max:.3f} s"
