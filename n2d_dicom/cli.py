"""The ``n2d`` command: denoise NIfTI volumes from the shell, and benchmark N2D.

Every command turns its flags into an :class:`~n2d_dicom.settings.N2DSettings`
and calls the library; user errors end in one line on stderr and exit code 1.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from tqdm import tqdm

from n2d_dicom import __version__
from n2d_dicom.bench import BenchPlan, PlanName, run_benchmark
from n2d_dicom.derive import TransferSyntaxName as TransferSyntax
from n2d_dicom.derive import describe_measured
from n2d_dicom.devices import resolve_device
from n2d_dicom.errors import N2DInputError
from n2d_dicom.n2d import Measured
from n2d_dicom.nifti_io import default_slice_axis, denoise_nifti, read_nifti, slice_count
from n2d_dicom.settings import Anscombe, Mode, N2DSettings, Noise, Pipeline, Precision

if TYPE_CHECKING:  # the node's modules load only for the node's commands
    from scp_server.config import NodeSettings
    from scp_server.operations import NodeStatus
    from scp_server.stores import Stores

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Noise2Detail denoising for medical images."
)

T = TypeVar("T")

#: The engine's defaults, which the flags of ``denoise`` and ``denoise-dicom`` take, so that the
#: command line, the node and the library cannot drift apart.
DEFAULTS = N2DSettings()

ModeOption = Annotated[Mode, typer.Option(help="per-slice (paper quality) or per-series (faster).")]
IterationsOption = Annotated[int, typer.Option(help="Adam steps for each of the two networks.")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
SeedOption = Annotated[int, typer.Option(help="Random seed; same seed and device, same result.")]
SliceBatchOption = Annotated[int, typer.Option(help="Slices processed together (bounds memory).")]
ProgressOption = Annotated[bool, typer.Option(help="Show a progress bar on stderr.")]
EarlyStopOption = Annotated[
    bool, typer.Option(help="per-series: stop a network once its loss on held-out slices stalls.")
]
NoiseOption = Annotated[
    Noise,
    typer.Option(help="auto (measure), white (the paper's sampling) or correlated (CT-kernel noise)."),
]
AnscombeOption = Annotated[
    Anscombe,
    typer.Option(
        help="Signal-dependent noise: on (generalised Anscombe transform fitted on the image), "
        "auto (only where the noise measures signal-dependent) or off."
    ),
]
NlmBlendOption = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=1.0,
        help="Weight of non-local means in stage 2's smooth intermediate; 0: N2D alone.",
    ),
]

WienerOption = Annotated[
    bool,
    typer.Option(help="Last step: Wiener filter in sliding DCT windows with N2D's output as pilot."),
]


def fail(message: str) -> NoReturn:
    """One line on stderr, exit status 1."""
    typer.echo(f"n2d: error: {message}", err=True)
    raise typer.Exit(1)


def guarded(action: Callable[[], T]) -> T:
    """Run ``action``, turning user errors into :func:`fail`."""
    try:
        return action()
    except N2DInputError as exc:
        fail(str(exc))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        fail(f"invalid setting: {problems}")


@app.command()
def denoise(
    source: Annotated[Path, typer.Argument(help="Input .nii or .nii.gz (2-D, 3-D or 4-D).")],
    output: Annotated[Path, typer.Argument(help="Output .nii or .nii.gz; written atomically.")],
    mode: ModeOption = DEFAULTS.mode,
    iterations: IterationsOption = DEFAULTS.iterations,
    device: DeviceOption = "auto",
    seed: SeedOption = DEFAULTS.seed,
    axis: Annotated[
        int | None, typer.Option(help="Slice axis 0-2; default: the header's slice axis, else 2.")
    ] = None,
    pipeline: Annotated[
        Pipeline, typer.Option(help="n2d (all stages) or stage1 (ZS-N2N).")
    ] = DEFAULTS.pipeline,
    precision: Annotated[Precision, typer.Option(help="fp32, tf32 or bf16 (GPU).")] = DEFAULTS.precision,
    slice_batch: SliceBatchOption = DEFAULTS.slice_batch,
    noise: NoiseOption = DEFAULTS.noise,
    anscombe: AnscombeOption = DEFAULTS.anscombe,
    nlm_blend: NlmBlendOption = DEFAULTS.nlm_blend,
    wiener: WienerOption = DEFAULTS.wiener,
    early_stop: EarlyStopOption = DEFAULTS.early_stop,
    progress: ProgressOption = True,
) -> None:
    """Denoise a NIfTI volume slice by slice, keeping its header, affine, dtype and scaling."""
    settings = guarded(
        lambda: N2DSettings(
            mode=mode,
            iterations=iterations,
            seed=seed,
            pipeline=pipeline,
            precision=precision,
            slice_batch=slice_batch,
            noise=noise,
            anscombe=anscombe,
            nlm_blend=nlm_blend,
            wiener=wiener,
            early_stop=early_stop,
        )
    )
    torch_device = guarded(lambda: resolve_device(device))
    image = guarded(lambda: read_nifti(source))
    chosen_axis = default_slice_axis(image) if axis is None else axis
    total = slice_count(image.shape, chosen_axis) if 0 <= chosen_axis < 3 else None
    started = time.perf_counter()
    measured: list[Measured] = []
    with tqdm(total=total, unit="slice", disable=not progress, file=sys.stderr) as bar:
        guarded(
            lambda: denoise_nifti(
                source, output, settings, torch_device, axis, progress=bar.update, report=measured.append
            )
        )
    typer.echo(
        f"{output}: denoised {total} slices ({settings.mode}, {settings.iterations} iterations, "
        f"{torch_device}; {describe_measured(tuple(measured))}) in {time.perf_counter() - started:.1f} s"
    )


@app.command("denoise-dicom")
def denoise_dicom(
    source: Annotated[
        Path, typer.Argument(help="Folder holding one or more DICOM series (searched recursively).")
    ],
    output: Annotated[Path, typer.Argument(help="Folder to write one sub-folder per derived series into.")],
    series: Annotated[
        list[str] | None, typer.Option("--series", help="Only this Series Instance UID (repeatable).")
    ] = None,
    mode: ModeOption = DEFAULTS.mode,
    iterations: IterationsOption = DEFAULTS.iterations,
    device: DeviceOption = "auto",
    seed: SeedOption = DEFAULTS.seed,
    slice_batch: SliceBatchOption = DEFAULTS.slice_batch,
    noise: NoiseOption = DEFAULTS.noise,
    anscombe: AnscombeOption = DEFAULTS.anscombe,
    nlm_blend: NlmBlendOption = DEFAULTS.nlm_blend,
    wiener: WienerOption = DEFAULTS.wiener,
    early_stop: EarlyStopOption = DEFAULTS.early_stop,
    uid_root: Annotated[str | None, typer.Option(help="Root for new UIDs, ending in '.'.")] = None,
    series_number_offset: Annotated[int, typer.Option(help="Added to the source Series Number.")] = 1000,
    description_suffix: Annotated[str, typer.Option(help="Appended to the Series Description.")] = " [N2D]",
    transfer_syntax: Annotated[
        TransferSyntax, typer.Option(help="Transfer syntax of the written files.")
    ] = "explicit-little",
    progress: ProgressOption = True,
) -> None:
    """Denoise DICOM series into new derived series (same study, full provenance), one folder each.

    Files that cannot be used are listed and skipped; the exit status is 1 if any file was
    skipped or any series failed, 0 otherwise. Objects that are not images to denoise
    (segmentations, dose grids, reports...) are listed as not denoised and leave the
    exit status alone: nothing is wrong with them.
    """
    from n2d_dicom.derive import DerivationSettings
    from n2d_dicom.dicom_denoise import denoise_series, write_instances
    from n2d_dicom.dicom_io import read_dicom_folder

    settings = guarded(
        lambda: N2DSettings(
            mode=mode,
            iterations=iterations,
            seed=seed,
            slice_batch=slice_batch,
            noise=noise,
            anscombe=anscombe,
            nlm_blend=nlm_blend,
            wiener=wiener,
            early_stop=early_stop,
        )
    )
    derivation = guarded(
        lambda: DerivationSettings(
            uid_root=uid_root,
            series_number_offset=series_number_offset,
            series_description_suffix=description_suffix,
            transfer_syntax=transfer_syntax,
        )
    )
    torch_device = guarded(lambda: resolve_device(device))
    if not source.is_dir():
        fail(f"{source}: not a folder")
    found, rejected = read_dicom_folder(source)
    for skipped in rejected:
        verb = "not denoised" if skipped.forwardable else "skipped"
        typer.echo(f"n2d: {verb} {skipped.path}: {skipped.reason}", err=True)
    wanted = [s for s in found if not series or s.series_uid in series]
    missing = sorted(set(series or []) - {s.series_uid for s in found})
    if missing:
        typer.echo(f"n2d: error: series not found in {source}: {', '.join(missing)}", err=True)
    if not wanted:
        fail(f"{source}: no grayscale DICOM series to denoise")
    failures = sum(not skipped.forwardable for skipped in rejected) + len(missing)
    for item in wanted:
        with tqdm(total=len(item.frames), unit="slice", disable=not progress, file=sys.stderr) as bar:
            try:
                derived = denoise_series(item, settings, derivation, torch_device, progress=bar.update)
                folder = output / derived.series_uid
                write_instances(derived.datasets, folder)
            except (N2DInputError, ValueError, OSError) as exc:
                failures += 1
                typer.echo(f"n2d: error: series {item.series_uid}: {exc}", err=True)
                continue
        notes = f"; {'; '.join(item.problems)}" if item.problems else ""
        typer.echo(
            f"series {item.series_uid} -> {derived.series_uid}: {len(derived.datasets)} instances, "
            f"{len(item.frames)} slices, {derived.seconds:.1f} s ({describe_measured(derived.measured)}), "
            f"{folder}{notes}"
        )
    if failures:
        raise typer.Exit(1)


@app.command()
def bench(
    quick: Annotated[bool, typer.Option(help="Short for --plan quick.")] = False,
    plan_name: Annotated[
        PlanName | None,
        typer.Option(
            "--plan",
            help="quick: minutes on 2 CPU cores, the rows users compare; standard: every row on "
            "96x96 crops; full (the default): the paper's settings on 256x256 crops.",
        ),
    ] = None,
    iterations: Annotated[int | None, typer.Option(help="Override the iteration count.")] = None,
    device: DeviceOption = "auto",
    cases: Annotated[
        list[str] | None, typer.Option("--case", help="Run only cases whose name contains this.")
    ] = None,
    methods: Annotated[
        list[str] | None,
        typer.Option("--method", help="Run only the method named this, else those whose name contains it."),
    ] = None,
    perf: Annotated[
        bool, typer.Option(help="Speed against the one-slice-at-a-time reference, and a CT-sized series.")
    ] = False,
    volume_slices: Annotated[
        int | None, typer.Option(min=1, help="--perf: slices of the 512x512 per-series volume.")
    ] = None,
    precision: Annotated[Precision, typer.Option(help="--perf: fp32, tf32 or bf16 (GPU).")] = "fp32",
) -> None:
    """Quality and speed of N2D against ZS-N2N, BM3D and non-local means on noisy real images."""
    if perf:
        from n2d_dicom.perf import PerfPlan, run_perf

        torch_device = guarded(lambda: resolve_device(device))
        perf_plan = PerfPlan.for_device(torch_device)
        if volume_slices is not None:
            perf_plan = replace(perf_plan, volume_slices=volume_slices)
        if iterations is not None:
            perf_plan = replace(perf_plan, iterations=iterations)
        # N2D alone: non-local means, the Wiener step and the Anscombe transform's measurement run
        # outside the networks (the first two timed in README; the transform is on by default).
        settings = N2DSettings(
            precision=precision, iterations=iterations or 2000, nlm_blend=0, wiener=False, anscombe="off"
        )
        guarded(lambda: run_perf(perf_plan, torch_device, settings, typer.echo))
        return

    if quick and plan_name not in (None, "quick"):
        fail(f"--quick and --plan {plan_name} ask for different plans")
    plan = BenchPlan.named(plan_name or ("quick" if quick else "full"))
    if iterations is not None:
        plan = plan.with_iterations(iterations)
    torch_device = guarded(lambda: resolve_device(device))
    guarded(lambda: run_benchmark(plan, torch_device, cases or [], methods or [], typer.echo))


@app.command()
def demo(
    directory: Annotated[
        Path, typer.Argument(help="Where to write noisy.nii.gz and denoised.nii.gz.")
    ] = Path("n2d-demo"),
    mode: ModeOption = "per-series",
    iterations: IterationsOption = 500,
    device: DeviceOption = "auto",
) -> None:
    """Make a noisy 8-slice CT-like phantom, denoise it, and print PSNR before and after."""
    from n2d_dicom.demo import DEMO_SLICES, run_demo

    settings = guarded(lambda: N2DSettings(mode=mode, iterations=iterations))
    torch_device = guarded(lambda: resolve_device(device))
    with tqdm(total=DEMO_SLICES, unit="slice", file=sys.stderr) as bar:
        output, before, after = run_demo(directory, settings, torch_device, progress=bar.update)
    typer.echo(f"{output}: PSNR {before:.2f} dB noisy -> {after:.2f} dB denoised ({mode}, {torch_device})")


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
    from scp_server.load import LoadPlan, describe, run_load

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
    from scp_server.stores import Stores

    if not settings.spool_dir.is_dir():
        fail(f"{settings.spool_dir}: no spool here (is --config the node's configuration?)")
    stores = Stores.open(settings)
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


@app.command()
def version() -> None:
    """Print the n2d-dicom version."""
    typer.echo(__version__)


def main() -> None:
    """Console-script entry point."""
    app()
