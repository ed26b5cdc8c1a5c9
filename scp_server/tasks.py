"""The job queue (huey, SQLite storage) and the job: one complete series in, derived series out.

The tracker is the source of truth for what must be processed; huey carries the
work to a worker. A job loads the series from the spool, picks its route,
denoises it with :mod:`n2d_dicom` (the same functions as ``n2d denoise-dicom``),
writes the derived instances under ``spool/derived/`` and sends them to every
destination of the route. One worker thread: one denoising job at a time per
device.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pydicom
import torch
from huey import SqliteHuey
from huey.api import TaskWrapper

from n2d_dicom.dicom_denoise import denoise_series, write_instances
from n2d_dicom.dicom_io import read_dicom_files
from scp_server.config import NodeSettings, Route, route_for
from scp_server.metrics import NodeMetrics
from scp_server.outbox import Outbox
from scp_server.spool import Spool
from scp_server.tracker import SeriesTracker

log = logging.getLogger(__name__)


def make_queue(settings: NodeSettings) -> SqliteHuey:
    """huey with SQLite storage in the spool: the embedded default, no server to run."""
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(name="n2d", filename=str(settings.spool_dir / "queue.sqlite3"))


class SeriesProcessor:
    """Everything a job needs, handed over once at start-up."""

    def __init__(
        self,
        settings: NodeSettings,
        spool: Spool,
        tracker: SeriesTracker,
        metrics: NodeMetrics,
        outbox: Outbox,
        device: torch.device,
    ) -> None:
        self.settings = settings
        self.outbox = outbox
        self.spool = spool
        self.tracker = tracker
        self.metrics = metrics
        self.device = device

    def __call__(self, series_uid: str, run: int) -> None:
        """Process run ``run`` of a complete series; the tracker hears when it is done."""
        started = time.perf_counter()
        files = self.spool.series_files(series_uid)
        calling = self.spool.calling_aet(series_uid)
        header = pydicom.dcmread(files[0], stop_before_pixels=True)
        route = route_for(self.settings, header, calling)
        if route is None:
            log.info("series %s run %d from %s: no route matches, not processed", series_uid, run, calling)
        else:
            self._denoise_and_send(series_uid, run, files, route)
        self.tracker.mark_done(series_uid, run)
        self.metrics.processing_seconds.observe(time.perf_counter() - started)

    def _denoise_and_send(self, series_uid: str, run: int, files: list[Path], route: Route) -> None:
        found, rejected = read_dicom_files(files)
        for skipped in rejected:
            log.warning("series %s: %s not denoised: %s", series_uid, skipped.path.name, skipped.reason)
        for series in found:
            derived = denoise_series(
                series, route.n2d, self.settings.derivation, self.device, identity=f"run {run}"
            )
            folder = self.spool.root / "derived" / derived.series_uid
            paths = write_instances(derived.datasets, folder)
            items = [(str(ds.SOPInstanceUID), path) for ds, path in zip(derived.datasets, paths)]
            for destination in route.destinations:
                self.outbox.add(items, destination)
            log.info(
                "series %s run %d (%s): %d instances -> derived %s in %.1f s",
                series_uid,
                run,
                route.name,
                len(paths),
                derived.series_uid,
                derived.seconds,
            )
        self.deliver_outbox()

    def deliver_outbox(self) -> None:
        """Send everything pending (this job's instances, and any left by earlier ones)."""
        results = self.outbox.deliver(
            self.settings.ae_title, self.settings.send_attempts, self.settings.send_backoff_s
        )
        failed = [r for r in results if not r.delivered]
        self.metrics.send_failures.inc(len(failed))
        for result in failed:
            log.error(
                "%s not delivered (status %s, %s): %s",
                result.sop_instance_uid,
                "none" if result.status is None else f"0x{result.status:04X}",
                result.error,
                "refused, kept in the outbox as refused" if result.refused else "kept for a later try",
            )


def register(queue: SqliteHuey, processor: SeriesProcessor) -> tuple[TaskWrapper, TaskWrapper]:
    """The ``process_series`` and ``deliver_outbox`` tasks on ``queue``, running ``processor``."""

    @queue.task(name="process_series")
    def process_series(series_uid: str, run: int) -> None:
        processor(series_uid, run)

    @queue.task(name="deliver_outbox")
    def deliver_outbox() -> None:
        processor.deliver_outbox()

    return process_series, deliver_outbox
