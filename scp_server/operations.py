"""What an operator asks of a node: its status, retrying what failed, purging, and spool retention.

Shared by the running node (``/status``, metrics, the retention sweep) and the
``n2d status``/``retry``/``purge`` commands, which open the same stores from
another process. Output names UIDs, AE titles and counts, never patient data.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from huey.api import Huey
from pydantic import BaseModel

from scp_server.run_summary import remove_previews
from scp_server.spool import remove_empty_folder
from scp_server.stores import Stores
from scp_server.tasks import Jobs
from scp_server.tracker import RunTimes

#: Finished runs the latency figures are computed over.
RECENT_RUNS = 1000


class InFlight(BaseModel):
    """A run a worker holds now, and the route and denoising settings it was claimed with."""

    series: str
    run: int
    worker: str
    running_s: float
    route: str | None = None
    n2d: dict[str, Any] | None = None


class Failure(BaseModel):
    """A failed run (``series``) or a failed delivery (``instance`` to ``destination``)."""

    when: float
    error: str
    series: str | None = None
    run: int | None = None
    instance: str | None = None
    destination: str | None = None

    @property
    def subject(self) -> str:
        """What failed, in words."""
        if self.series is not None:
            return f"series {self.series} run {self.run}"
        return f"{self.instance} -> {self.destination}"


class Spread(BaseModel):
    """Median, 95th percentile and maximum of some seconds."""

    p50: float
    p95: float
    max: float


class RunLatencies(BaseModel):
    """Over the latest finished runs: waiting in the queue, processing, and receive-to-delivered."""

    count: int
    queue_wait_s: Spread | None
    processing_s: Spread | None
    end_to_end_s: Spread | None


class NodeStatus(BaseModel):
    """What ``n2d status`` prints and ``/status`` serves."""

    queue_depth: int
    series: dict[str, int]
    in_flight: list[InFlight]
    outbox: dict[str, dict[str, int]]
    quarantined: int
    last_errors: list[Failure]
    recent_runs: RunLatencies


def node_status(stores: Stores, queue: Huey, errors: int = 10) -> NodeStatus:
    """Queue depth, series by state, runs in flight, outbox, quarantine, latest errors and latencies."""
    now = time.time()
    tracker, outbox = stores.tracker, stores.outbox
    failures = [Failure(when=w, error=e, series=uid, run=run) for uid, run, w, e in tracker.errors()] + [
        Failure(when=w, error=e, instance=uid, destination=dest) for uid, dest, w, e in outbox.errors()
    ]
    return NodeStatus(
        queue_depth=queue.pending_count(),
        series=tracker.counts(),
        in_flight=[
            InFlight(
                series=uid,
                run=run,
                worker=owner,
                running_s=round(now - started, 1),
                **planned(tracker.plan(uid, run)),
            )
            for uid, run, owner, started in tracker.in_flight()
        ],
        outbox=outbox.counts(),
        quarantined=stores.spool.quarantine_count(),
        last_errors=sorted(failures, key=lambda failure: -failure.when)[:errors],
        recent_runs=run_latencies(tracker.recent_runs(RECENT_RUNS), outbox.delivered_at()),
    )


def planned(plan: str | None) -> dict[str, Any]:
    """The route name and N2D settings of a recorded run plan (none where the run has no plan yet)."""
    if plan is None:
        return {}
    route = json.loads(plan).get("route")
    return (
        {"route": "no route", "n2d": None} if route is None else {"route": route["name"], "n2d": route["n2d"]}
    )


def run_latencies(runs: list[RunTimes], delivered_at: dict[str, float]) -> RunLatencies:
    """Median, 95th percentile and maximum of queue wait, processing and receive-to-delivered time.

    Receive-to-delivered counts only runs whose derived series reached every destination.
    """
    delivered = [
        (r, delivered_at[r.series_instance_uid]) for r in runs if r.series_instance_uid in delivered_at
    ]
    return RunLatencies(
        count=len(runs),
        queue_wait_s=spread([r.started_at - r.queued_at for r in runs]),
        processing_s=spread([r.finished_at - r.started_at for r in runs]),
        end_to_end_s=spread([max(when, r.finished_at) - r.first_received for r, when in delivered]),
    )


def spread(values: list[float]) -> Spread | None:
    """The :class:`Spread` of ``values`` (None when there are none)."""
    if not values:
        return None
    p95 = statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) > 1 else values[0]
    return Spread(p50=round(statistics.median(values), 3), p95=round(p95, 3), max=round(max(values), 3))


def retry(stores: Stores, jobs: Jobs, series_instance_uid: str | None = None) -> tuple[int, int]:
    """Queue failed runs again and make refused deliveries pending; returns ``(runs, deliveries)``.

    The node's sending threads pick the rows up within a poll (they are pending and never tried).
    """
    runs = stores.tracker.retry_failed(series_instance_uid)
    for due in runs:
        jobs.process_series(due.series_instance_uid, due.run)
    return len(runs), stores.outbox.retry_refused(series_instance_uid)


def purge(stores: Stores, quarantine: bool, refused: bool, older_than_s: float) -> tuple[int, int]:
    """Delete quarantined files and refused deliveries older than ``older_than_s``; returns both counts."""
    cutoff = time.time() - older_than_s
    quarantined = stores.spool.purge_quarantine(cutoff) if quarantine else 0
    dropped = stores.outbox.forget(state="refused", updated_before=cutoff) if refused else []
    delete_files(dropped)
    return quarantined, len(dropped)


def apply_retention(stores: Stores, retention_s: float) -> int:
    """Delete received and derived files (and thumbnails) of series done and delivered ``retention_s`` ago.

    Returns how many series were purged.

    A series with a delivery still pending or refused keeps its files (``n2d retry``
    may need them); the tracker keeps its row so a late instance starts a new run.
    """
    purged = 0
    for uid in stores.tracker.finished_before(time.time() - retention_s):
        if not stores.outbox.settled(uid):
            continue
        delete_files(stores.outbox.forget(uid))
        stores.spool.remove_series(uid)
        remove_previews(stores.spool.root, uid)
        stores.tracker.mark_purged(uid)
        purged += 1
    return purged


def delete_files(paths: list[Path]) -> None:
    """Delete files, and their folders once empty."""
    for path in paths:
        path.unlink(missing_ok=True)
        remove_empty_folder(path.parent)
