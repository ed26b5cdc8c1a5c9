"""The job queue (huey: SQLite in the spool, or Redis) and the job: one complete series in, derived out.

The tracker is the source of truth for what must be processed; huey carries the
work to a worker, which may be a thread of ``n2d serve`` or an ``n2d worker``
process on this or another machine. A job takes its run from the tracker
(exactly one worker gets it), loads the series from the spool, picks its route,
denoises it with :mod:`n2d_dicom` (the same functions as ``n2d denoise-dicom``),
writes the derived instances under ``spool/derived/`` and sends them to every
destination of the route, renewing its lease all along.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pydicom
import torch
from huey import RedisHuey, SqliteHuey
from huey.api import Huey

from n2d_dicom.derive import describe_measured
from n2d_dicom.dicom_denoise import denoise_series, write_instances
from n2d_dicom.dicom_io import read_dicom_files
from scp_server.config import NodeSettings, Route, route_for
from scp_server.leases import new_owner, renewed
from scp_server.stores import Stores

log = logging.getLogger(__name__)

#: How long a delivery may hold its outbox rows before another worker may send them.
SEND_CLAIM_S = 900.0


def make_queue(settings: NodeSettings) -> Huey:
    """huey on the configured storage: SQLite in the spool (embedded default) or a Redis server."""
    if settings.queue.backend == "redis":
        try:
            import redis  # noqa: F401 (huey's Redis storage needs it)
        except ImportError as exc:
            raise ValueError(
                "queue.backend redis needs the redis client: pip install 'n2d-dicom[redis]'"
            ) from exc
        return RedisHuey(name=settings.queue.name, url=settings.queue.redis_url, results=False)
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(
        name=settings.queue.name, filename=str(settings.spool_dir / "queue.sqlite3"), results=False
    )


class SeriesProcessor:
    """What a worker does with a job; everything it needs is handed over once at start-up."""

    def __init__(self, settings: NodeSettings, stores: Stores, device: torch.device) -> None:
        self.settings = settings
        self.stores = stores
        self.device = device

    def __call__(self, series_uid: str, run: int) -> None:
        """Process run ``run`` of a complete series, unless another worker has it or had it."""
        tracker, lease_s = self.stores.tracker, self.settings.job_lease_s
        owner = new_owner()
        if not tracker.start(series_uid, run, owner, lease_s):
            log.info("series %s run %d: not queued any more (done, taken or superseded)", series_uid, run)
            return
        started = time.perf_counter()
        error = None
        with renewed(lambda: tracker.renew(series_uid, run, owner, lease_s), lease_s / 4) as lost:
            try:
                self._process(series_uid, run)
            except Exception as exc:  # the run is recorded as failed, with why, for `n2d retry`
                log.exception("series %s run %d failed", series_uid, run)
                error = f"{type(exc).__name__}: {exc}"
        if lost.is_set() or not tracker.finish(series_uid, run, owner, error):
            log.warning(
                "series %s run %d: lease lost while processing (another worker redid it?)", series_uid, run
            )
        log.info(
            "series %s run %d: %s in %.1f s", series_uid, run, error or "done", time.perf_counter() - started
        )

    def _process(self, series_uid: str, run: int) -> None:
        instances = self.stores.spool.series_instances(series_uid)
        files = [path for _, path in instances]
        calling = self.stores.spool.calling_aet(series_uid)
        header = pydicom.dcmread(files[0], stop_before_pixels=True)
        route = route_for(self.settings, header, calling)
        if route is not None:
            self._denoise_and_queue(series_uid, run, files, route)
        elif self.settings.forward_unmatched:
            self._forward_unchanged(series_uid, run, instances)
        else:
            log.info("series %s run %d from %s: no route matches, not processed", series_uid, run, calling)
            return
        self.deliver_outbox()

    def _forward_unchanged(self, series_uid: str, run: int, instances: list[tuple[str, Path]]) -> None:
        """Queue the received files themselves for every ``forward_unmatched`` destination."""
        for destination in self.settings.forward_unmatched:
            self.stores.outbox.add(instances, destination, series_uid)
        log.info(
            "series %s run %d: no route matches, %d instances forwarded unchanged",
            series_uid,
            run,
            len(instances),
        )

    def _denoise_and_queue(self, series_uid: str, run: int, files: list[Path], route: Route) -> None:
        found, rejected = read_dicom_files(files)
        for skipped in rejected:
            log.warning("series %s: %s not denoised: %s", series_uid, skipped.path.name, skipped.reason)
        for series in found:
            derived = denoise_series(
                series, route.n2d, self.settings.derivation, self.device, identity=f"run {run}"
            )
            folder = self.stores.spool.root / "derived" / derived.series_uid
            paths = write_instances(derived.datasets, folder)
            items = [(str(ds.SOPInstanceUID), path) for ds, path in zip(derived.datasets, paths)]
            for destination in route.destinations:
                self.stores.outbox.add(items, destination, series_uid)
            log.info(
                "series %s run %d (%s): %d instances -> derived %s in %.1f s (%s)",
                series_uid,
                run,
                route.name,
                len(paths),
                derived.series_uid,
                derived.seconds,
                describe_measured(derived.measured),
            )

    def deliver_outbox(self) -> None:
        """Send everything pending that no other worker is sending (this job's, and any left before)."""
        settings = self.settings
        results = self.stores.outbox.deliver(
            settings.ae_title, settings.send_attempts, settings.send_backoff_s, new_owner(), SEND_CLAIM_S
        )
        for result in results:
            if not result.delivered:
                log.error(
                    "%s not delivered (status %s, %s): %s",
                    result.sop_instance_uid,
                    "none" if result.status is None else f"0x{result.status:04X}",
                    result.error,
                    "refused, kept in the outbox as refused" if result.refused else "kept for a later try",
                )


class Jobs:
    """The queue's two tasks; a process that only enqueues never sets a processor."""

    def __init__(self, queue: Huey) -> None:
        self.queue = queue
        self.processor: SeriesProcessor | None = None
        self.process_series = queue.task(name="process_series")(self._process_series)
        self.deliver_outbox = queue.task(name="deliver_outbox")(self._deliver_outbox)

    def waiting_runs(self) -> set[tuple[str, int]]:
        """``(series, run)`` of every series job still waiting in the queue."""
        return {
            (str(task.args[0]), int(task.args[1]))
            for task in self.queue.pending()
            if task.name == "process_series"
        }

    def _worker(self) -> SeriesProcessor:
        if self.processor is None:
            raise RuntimeError("this process only enqueues; jobs run in a worker")
        return self.processor

    def _process_series(self, series_uid: str, run: int) -> None:
        self._worker()(series_uid, run)

    def _deliver_outbox(self) -> None:
        self._worker().deliver_outbox()
