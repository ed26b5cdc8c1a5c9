"""The job queue (huey: SQLite in the spool, or Redis) and the job: one complete series in, derived out.

The tracker is the source of truth for what must be processed; huey carries the
work to a worker, which may be a thread of ``n2d serve`` or an ``n2d worker``
process on this or another machine. A job takes its run from the tracker
(exactly one worker gets it), follows the plan recorded when the run was
claimed (route, settings, destinations: see :class:`RunPlan`), denoises the
series with :mod:`n2d_dicom` (the same functions as ``n2d denoise-dicom``),
writes the derived instances under ``spool/derived/`` and queues them in the
outbox, renewing its lease all along; the node's sending threads deliver them
(:mod:`scp_server.delivery`), so no destination ever holds a worker.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
import time
from pathlib import Path

import pydicom
import torch
from huey import RedisHuey, SqliteHuey
from huey.api import Huey
from pydantic import BaseModel, ConfigDict, Field

from n2d_dicom.derive import DerivationSettings, write_instances
from n2d_dicom.dicom_read import DicomSeries, read_dicom_files
from n2d_dicom.measured import describe_measured, describe_split
from n2d_dicom.pipeline import DerivedSeries, denoise_series
from n2d_dicom.uids import printable
from scp_server.config import NodeSettings, Route, route_for
from scp_server.destinations import AnyDestination
from scp_server.health import Backoff
from scp_server.leases import new_owner, renewed
from scp_server.run_summary import record
from scp_server.spool import Spool
from scp_server.sqlite import is_transient as sqlite_transient
from scp_server.stores import Stores
from scp_server.warm_start import WarmStartCache, protocol_key

log = logging.getLogger(__name__)


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


class RunPlan(BaseModel):
    """What a run was claimed to do, recorded with the run so that editing the config never changes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    route: Route | None = Field(description="The route that took the series; None: no route matches.")
    forward_unmatched: list[AnyDestination] = Field(
        default_factory=list, description="Where objects no route denoises go unchanged."
    )
    derivation: DerivationSettings


def plan_run(settings: NodeSettings, spool: Spool, series_uid: str) -> RunPlan:
    """The plan for a series now: the first route that takes it (by its first instance and sender)."""
    instances = spool.series_instances(series_uid)
    if not instances:
        raise NoUsableImage("no stored instance of the series")
    header = pydicom.dcmread(instances[0][1], stop_before_pixels=True)
    return RunPlan(
        route=route_for(settings, header, spool.calling_aet(series_uid)),
        forward_unmatched=list(settings.forward_unmatched),
        derivation=settings.derivation,
    )


class NotOurs(Exception):
    """The run was superseded or taken over while this worker processed it."""


class NoUsableImage(Exception):
    """A run found nothing to denoise or forward; the message says why, for ``n2d status``."""


class SeriesProcessor:
    """What a worker does with a job; everything it needs is handed over once at start-up.

    A plain object: it runs and is tested without the queue (``processor(series, run)``).
    """

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
        with renewed(lambda: tracker.renew(series_uid, run, owner, lease_s), lease_s / 4) as lost:
            error, transient = self._run(series_uid, run, owner)
            if transient:
                recorded = not lost.is_set() and self._put_back(series_uid, run, owner)
            else:
                recorded = not lost.is_set() and self._finish(series_uid, run, owner, error, lost)
        if not recorded:
            log.warning("series %s run %d: %s", series_uid, run, self._not_ours_any_more(series_uid, run))
        log.info(
            "series %s run %d: %s in %.1f s",
            series_uid,
            run,
            printable(error, 300) if error else "done",
            time.perf_counter() - started,
        )

    def _not_ours_any_more(self, series_uid: str, run: int) -> str:
        """Why a run's outcome was not recorded, for the log."""
        now = self.stores.tracker.state(series_uid)
        if now is not None and now[1] > run:
            return f"superseded by run {now[1]} (new or changed instances); its derived series was not sent"
        return "lease lost while processing (the node queues it again)"

    def _run(self, series_uid: str, run: int, owner: str) -> tuple[str | None, bool]:
        """Process the run; returns ``(error, transient)``, ``(None, False)`` when it succeeded.

        A transient error (the spool's disk full, its database busy or full) says
        nothing about the series: the run is retried, not failed.
        """
        try:
            self._process(series_uid, run, owner)
        except NotOurs as exc:
            return str(exc), False
        except NoUsableImage as exc:
            return f"no usable image: {exc}", False
        except Exception as exc:  # the run is recorded as failed, with why, for `n2d retry`
            if is_transient(exc):
                return f"not finished, will be retried ({error_line(exc)})", True
            log.exception("series %s run %d failed", series_uid, run)
            return error_line(exc), False
        return None, False

    def _put_back(self, series_uid: str, run: int, owner: str) -> bool:
        """Queue the run again after a transient error; the node hands it to a worker after ``job_lease_s``.

        If even that cannot be written, the lease runs out and the node queues it all the same.
        """
        try:
            return self.stores.tracker.put_back(series_uid, run, owner)
        except sqlite3.Error as exc:
            log.error(
                "series %s run %d: not queued again yet (%s); its lease will run out", series_uid, run, exc
            )
            return True

    def _finish(
        self, series_uid: str, run: int, owner: str, error: str | None, lost: threading.Event
    ) -> bool:
        """Record the outcome, retrying while the database cannot be written and the lease holds.

        Returns ``False`` if the run is no longer ours; if the lease runs out first
        the node queues the run again, and the repeat sends nothing twice.
        """
        backoff = Backoff(0.5)
        while not lost.is_set():
            try:
                return self.stores.tracker.finish(series_uid, run, owner, error)
            except sqlite3.Error as exc:
                log.error("series %s run %d: outcome not recorded yet (%s); retrying", series_uid, run, exc)
                lost.wait(backoff.after(succeeded=False))
        return False

    def plan(self, series_uid: str, run: int) -> RunPlan:
        """The plan recorded when the run was claimed; made and recorded now if there is none."""
        recorded = self.stores.tracker.plan(series_uid, run)
        if recorded is not None:
            return RunPlan.model_validate_json(recorded)
        plan = plan_run(self.settings, self.stores.spool, series_uid)
        self.stores.tracker.record_plan(series_uid, run, plan.model_dump_json())
        return plan

    def _process(self, series_uid: str, run: int, owner: str) -> None:
        plan = self.plan(series_uid, run)
        instances = self.stores.spool.series_instances(series_uid)
        if plan.route is not None:
            self._denoise_and_queue(series_uid, run, instances, plan, owner)
        elif plan.forward_unmatched:
            self._forward_unchanged(series_uid, run, instances, plan.forward_unmatched, "no route matches")
        else:
            log.info("series %s run %d: no route matches, kept in the spool", series_uid, run)

    def _forward_unchanged(
        self,
        series_uid: str,
        run: int,
        instances: list[tuple[str, Path]],
        destinations: list[AnyDestination],
        why: str,
    ) -> None:
        """Queue received files themselves for ``destinations``."""
        for destination in destinations:
            self.stores.outbox.add(instances, destination, series_uid)
        log.info(
            "series %s run %d: %s, %d instance(s) forwarded unchanged", series_uid, run, why, len(instances)
        )

    def _denoise_and_queue(
        self, series_uid: str, run: int, instances: list[tuple[str, Path]], plan: RunPlan, owner: str
    ) -> None:
        """Denoise what can be, forward what is not an image to denoise, fail if nothing was either.

        A run superseded while it was denoised (a new or changed instance arrived)
        queues nothing: its derived series would be stale, and the next run sends
        the whole series.
        """
        assert plan.route is not None
        route = plan.route
        uid_of = {path: uid for uid, path in instances}
        reading = time.perf_counter()
        found, rejected = read_dicom_files(list(uid_of))
        reading = time.perf_counter() - reading
        for skipped in rejected:
            log.warning("series %s: %s not denoised: %s", series_uid, skipped.path.name, skipped.reason)
        derivation = derivation_for_run(plan.derivation, run)
        for series in found:
            for problem in series.problems:
                log.warning("series %s: %s", series_uid, printable(problem, 300))
            derived = self._denoise(series, route, derivation, run)
            folder = self.stores.spool.root / "derived" / derived.series_uid
            writing = time.perf_counter()
            paths = write_instances(derived.datasets, folder, private=True)
            split = describe_split(derived.measured, reading=reading, writing=time.perf_counter() - writing)
            reading = 0.0  # the run's files were read once, for all its series
            if not self.stores.tracker.holds(series_uid, run, owner):
                raise NotOurs(f"not queued for delivery: {self._not_ours_any_more(series_uid, run)}")
            items = [(str(ds.SOPInstanceUID), path) for ds, path in zip(derived.datasets, paths)]
            for destination in route.destinations:
                self.stores.outbox.add(items, destination, series_uid)
            if self.settings.dashboard:
                record(self.stores, self.settings, series_uid, run, series, derived)
            log.info(
                "series %s run %d (%s): %d instances -> derived %s in %.1f s (%s; %s)",
                series_uid,
                run,
                route.name,
                len(paths),
                derived.series_uid,
                derived.seconds,
                describe_measured(derived.measured),
                split,
            )
        others = [(uid_of[r.path], r.path) for r in rejected if r.forwardable]
        if others and plan.forward_unmatched:
            self._forward_unchanged(series_uid, run, others, plan.forward_unmatched, "not images to denoise")
        elif not found:
            reasons = sorted({r.reason for r in rejected})
            raise NoUsableImage(f"{len(rejected)} instance(s) skipped: {'; '.join(reasons)[:500]}")

    def _denoise(
        self, series: DicomSeries, route: Route, derivation: DerivationSettings, run: int
    ) -> DerivedSeries:
        """Denoise ``series`` as ``route`` says, warm-started from its protocol's cached pair where there is
        one (:mod:`scp_server.warm_start`), and keep the pair it trains for the protocol's next series."""
        cache = WarmStartCache.for_node(self.settings)
        key = f"route={route.name}|{protocol_key(series.datasets[0], self.settings.warm_start_key)}"
        start = None if cache is None else cache.load(key)
        derived = denoise_series(
            series, route.n2d, derivation, self.device, identity=f"run {run}", start=start, warm_key=key
        )
        if cache is not None:
            cache.store(key, derived.measured)
        return derived


#: errno values that say "the spool cannot be written now", not "this series is broken".
TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is the spool's disk or database failing for now."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
            return True
        if isinstance(exc, sqlite3.Error) and sqlite_transient(exc):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def error_line(exc: BaseException) -> str:
    """``Type: message`` on one line, for the run's error field: some libraries put a whole traceback
    in their message (pydicom's write errors do); the log keeps the traceback."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return printable(f"{type(exc).__name__}: {first}", 300)


def derivation_for_run(derivation: DerivationSettings, run: int) -> DerivationSettings:
    """Run 1 is labelled as configured; a later run's series says which run it is.

    A later run (a late or corrected instance arrived) is a new derived series
    with its own Series Instance UID that supersedes the earlier one; the PACS
    keeps both, and the description tells them apart.
    """
    if run == 1:
        return derivation
    return derivation.model_copy(
        update={"series_description_suffix": f"{derivation.series_description_suffix} run {run}"}
    )


class Jobs:
    """The queue's task; a process that only enqueues never sets a processor."""

    def __init__(self, queue: Huey) -> None:
        self.queue = queue
        self.processor: SeriesProcessor | None = None
        self.process_series = queue.task(name="process_series")(self._process_series)

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
