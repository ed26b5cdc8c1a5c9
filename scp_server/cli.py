"""The node's commands of ``n2d``: run the node and a worker, look at it, retry, purge, load it.

The console script that puts these beside the engine's commands is :mod:`scp_server.entry`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from n2d_dicom.errors import N2DInputError
from n2d_dicom.options import fail

if TYPE_CHECKING:  # the node's heavier modules load only when a command runs
    from scp_server.config import NodeSettings
    from scp_server.operations import NodeStatus
    from scp_server.stores import Stores

app = typer.Typer(add_completion=False, no_args_is_help=True)

ConfigOption = Annotated[
    Path | None, typer.Option(help="Node configuration (YAML); N2D_* env vars override.")
]
LogLevelOption = Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")]


def node_settings(config: Path | None, log_level: str = "WARNING") -> NodeSettings:
    """The node's settings (or a one-line error and exit 1), with logging set up."""
    from scp_server.config import ConfigError, load_settings
    from scp_server.logs import configure_logging

    configure_logging(log_level)
    try:
        return load_settings(config)
    except ConfigError as exc:
        fail(str(exc))


def run_service(action: Callable[[NodeSettings], None], settings: NodeSettings) -> None:
    """Run a long-lived part of the node; start-up problems become a one-line error."""
    try:
        action(settings)
    except (OSError, ValueError, N2DInputError) as exc:
        fail(str(exc))


@app.command()
def serve(config: ConfigOption = None, log_level: LogLevelOption = "INFO") -> None:
    """Run the DICOM node: receive series over C-STORE, denoise them, send derived series back."""
    from scp_server.service import serve as run_node

    run_service(run_node, node_settings(config, log_level))


@app.command()
def worker(config: ConfigOption = None, log_level: LogLevelOption = "INFO") -> None:
    """Run a worker: take series jobs from the node's queue (Redis or the spool's SQLite), denoise, send."""
    from scp_server.service import work

    run_service(work, node_settings(config, log_level))


@app.command()
def status(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a summary.")] = False,
) -> None:
    """Queue depth, series by state, jobs in flight, outbox, quarantine, last errors and latencies."""
    from scp_server.operations import node_status
    from scp_server.tasks import make_queue

    settings = node_settings(config)
    with open_stores(settings) as stores:
        report = node_status(stores, make_queue(settings))
    typer.echo(report.model_dump_json(indent=2) if as_json else describe_status(report))


@app.command()
def retry(
    config: ConfigOption = None,
    series: Annotated[str | None, typer.Option(help="Only this Series Instance UID.")] = None,
) -> None:
    """Queue failed series again and make refused deliveries pending again (after fixing the cause)."""
    from scp_server.operations import retry as retry_failed
    from scp_server.tasks import Jobs, make_queue

    settings = node_settings(config)
    with open_stores(settings) as stores:
        runs, deliveries = retry_failed(stores, Jobs(make_queue(settings)), series)
    typer.echo(f"{runs} series run(s) queued again, {deliveries} delivery(ies) pending again")


@app.command()
def purge(
    config: ConfigOption = None,
    quarantine: Annotated[bool, typer.Option(help="Delete quarantined instances.")] = False,
    refused: Annotated[bool, typer.Option(help="Delete refused deliveries and their files.")] = False,
    older_than_hours: Annotated[float, typer.Option(min=0, help="Only what is older than this.")] = 0,
) -> None:
    """Delete quarantined instances and/or refused deliveries, for good."""
    from scp_server.operations import purge as purge_spool

    if not (quarantine or refused):
        fail("nothing to purge: say --quarantine and/or --refused")
    settings = node_settings(config)
    with open_stores(settings) as stores:
        files, rows = purge_spool(stores, quarantine, refused, older_than_hours * 3600)
    typer.echo(f"{files} quarantined instance(s) and {rows} refused delivery(ies) deleted")


@app.command()
def load(
    host: Annotated[str, typer.Option(help="The node's address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The node's DICOM port.")] = 11112,
    called_ae: Annotated[str, typer.Option(help="The node's AE title.")] = "N2D",
    calling_ae: Annotated[
        str, typer.Option(help="AE title of the modalities (allowed by the node).")
    ] = "STORESCU",
    series: Annotated[int, typer.Option(min=1, help="Series to send.")] = 20,
    scus: Annotated[int, typer.Option(min=1, help="Modalities sending at once.")] = 4,
    slices: Annotated[int, typer.Option(min=1, help="Instances per series.")] = 8,
    side: Annotated[int, typer.Option(min=8, help="Rows and columns of each image.")] = 128,
    interval: Annotated[float, typer.Option(min=0, help="Seconds between the starts of two series.")] = 0,
    receive_ae: Annotated[str, typer.Option(help="AE title of the stand-in PACS.")] = "VIEWER",
    receive_port: Annotated[int, typer.Option(help="Port of the stand-in PACS (127.0.0.1).")] = 11113,
    status_url: Annotated[
        str | None, typer.Option(help="The node's /status, for queue wait; empty: skip.")
    ] = "http://127.0.0.1:8080/status",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every derived series.")] = 1800,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a summary.")] = False,
) -> None:
    """Load a running node with N synthetic CT series from M modalities at once; print throughput."""
    from scp_server.tools.load import LoadPlan, describe, run_load

    plan = LoadPlan(
        host=host,
        port=port,
        called_ae=called_ae,
        calling_ae=calling_ae,
        series=series,
        scus=scus,
        slices=slices,
        side=side,
        interval_s=interval,
        receive_ae=receive_ae,
        receive_port=receive_port,
        status_url=status_url or None,
        timeout_s=timeout,
    )
    try:
        figures = run_load(plan)
    except (OSError, ConnectionError) as exc:
        fail(str(exc))
    typer.echo(figures.model_dump_json(indent=2) if as_json else describe(figures))
    if figures.series_completed < series:
        fail(f"only {figures.series_completed} of {series} series came back within {timeout:g} s")


@contextmanager
def open_stores(settings: NodeSettings) -> Iterator[Stores]:
    """The node's stores, closed afterwards; a spool that does not exist is an error, not created."""
    from scp_server.sqlite import SchemaMismatch
    from scp_server.stores import Stores

    if not settings.spool_dir.is_dir():
        fail(f"{settings.spool_dir}: no spool here (is --config the node's configuration?)")
    try:
        stores = Stores.open(settings)
    except SchemaMismatch as exc:
        fail(str(exc))
    try:
        yield stores
    finally:
        stores.close()


def describe_status(report: NodeStatus) -> str:
    """``n2d status`` for a person: one line per topic."""
    runs = report.recent_runs
    lines = [
        f"queue: {report.queue_depth} job(s) waiting",
        "series: " + (", ".join(f"{n} {state}" for state, n in sorted(report.series.items())) or "none"),
        f"in flight: {len(report.in_flight)}",
        *(
            f"  {job.series} run {job.run} ({job.route or 'not planned'}) on {job.worker}, "
            f"{job.running_s:.0f} s"
            for job in report.in_flight
        ),
        "outbox: " + ("none" if not report.outbox else ""),
        *(
            f"  {destination}: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
            for destination, states in sorted(report.outbox.items())
        ),
        f"quarantined: {report.quarantined}",
        f"recent runs: {runs.count}",
        *(
            f"  {name}: median {spread.p50:.1f} s, p95 {spread.p95:.1f} s, max {spread.max:.1f} s"
            for name, spread in (
                ("queue wait", runs.queue_wait_s),
                ("processing", runs.processing_s),
                ("received to delivered", runs.end_to_end_s),
            )
            if spread is not None
        ),
        f"last errors: {len(report.last_errors)}",
        *(
            f"  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(f.when))} {f.subject}: {f.error}"
            for f in report.last_errors
        ),
    ]
    return "\n".join(lines)
