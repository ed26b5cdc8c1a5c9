"""The engine's commands of ``n2d``: denoise NIfTI volumes and DICOM folders, benchmark, demo.

Engine and derivation options are generated from :class:`~n2d_dicom.settings.N2DSettings` and
:class:`~n2d_dicom.derive.DerivationSettings` (:mod:`n2d_dicom.options`), so both denoising
commands take the same options with the node's defaults. User errors end in one line on stderr
and exit code 1. The node's commands live in :mod:`scp_server.cli`; the console script that
assembles both is :mod:`scp_server.entry`.
"""

from __future__ import annotations

import functools
import hashlib
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from n2d_dicom.batch import check_writable, output_pairs
from n2d_dicom.bids import Datatype
from n2d_dicom.derive import DerivationSettings
from n2d_dicom.devices import resolve_device
from n2d_dicom.errors import N2DInputError
from n2d_dicom.measured import Measured, as_ran, describe_measured, describe_split, mode_ran
from n2d_dicom.nifti_io import default_slice_axis, read_nifti, slice_count
from n2d_dicom.options import fail, guarded, options_from
from n2d_dicom.settings import N2DSettings
from n2d_dicom.tools.bench import BenchPlan, PlanName, run_benchmark

app = typer.Typer(add_completion=False, no_args_is_help=True)

DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
ProgressOption = Annotated[bool, typer.Option(help="Show a progress bar on stderr.")]
#: The demo is a short run: a few hundred steps of the faster mode.
DEMO_DEFAULTS = {"mode": "per-series", "iterations": 500}
#: ``--description-suffix`` is shorter than the field's name and what users have typed so far.
DERIVATION_FLAGS = {"series_description_suffix": "--description-suffix"}


@contextmanager
def work_bar(total: int | None, enabled: bool, plan: str = "") -> Iterator[Callable[[int, str], None]]:
    """A tqdm bar on stderr over the engine's work units (training steps, inference passes, non-local
    means, the Wiener step, each counted by what it costs: :func:`~n2d_dicom.progress.work_units`),
    ``plan`` (the mode and steps that will run, known from the start) and what runs as its
    description; its rate, and so its ETA, comes from the first units done."""
    prefix = f"{plan}: " if plan else ""
    with tqdm(total=total, unit="unit", disable=not enabled, file=sys.stderr, dynamic_ncols=True) as bar:
        shown = [""]
        bar.set_description_str(plan, refresh=False)

        def advance(units: int, phase: str) -> None:
            if phase != shown[0]:
                shown[0] = phase
                bar.set_description_str(prefix + phase, refresh=False)
            bar.update(units)

        yield advance


@app.command()
@options_from(N2DSettings, "settings")
def denoise(
    paths: Annotated[
        list[Path],
        typer.Argument(
            metavar="PATHS",
            help="IN OUT (.nii or .nii.gz, 2-D to 4-D); with --out-dir or --out-suffix, input files and "
            "folders (searched recursively).",
        ),
    ],
    settings: N2DSettings,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            help="Write each output here, named as its input; a folder's files keep their sub-folders."
        ),
    ] = None,
    out_suffix: Annotated[
        str | None,
        typer.Option(
            help="Add this before each output's .nii/.nii.gz (e.g. _n2d); beside the input without --out-dir."
        ),
    ] = None,
    device: DeviceOption = "auto",
    axis: Annotated[
        int | None, typer.Option(help="Slice axis 0-2; default: the header's slice axis, else 2.")
    ] = None,
    progress: ProgressOption = True,
    preview: Annotated[
        Path | None,
        typer.Option(
            help="Also write the middle slice's input, output and residual side by side to this PNG."
        ),
    ] = None,
) -> None:
    """Denoise NIfTI volumes slice by slice, keeping their header, affine, dtype and scaling.

    IN OUT denoises one file; several inputs, or folders, take --out-dir and/or --out-suffix, which
    name each output after its input. A file that fails is reported and the others go on; the exit
    status is then 1.
    """
    pairs = guarded(lambda: output_pairs(paths, out_dir, out_suffix))
    for folder in sorted({output.parent for _, output in pairs}):  # before any compute
        guarded(functools.partial(check_writable, folder))
    guarded(lambda: resolve_device(device))  # a device that cannot be used fails once, not per file
    if preview is not None and len(pairs) > 1:
        fail("--preview draws one input's slice; give it with one input")
    failures = 0
    for source, output in pairs:
        try:
            denoise_file(source, output, settings, device, axis, progress, preview)
        except typer.Exit:  # fail() has said why on stderr
            failures += 1
    if failures:
        raise typer.Exit(1)


def denoise_file(
    source: Path,
    output: Path,
    settings: N2DSettings,
    device: str,
    axis: int | None,
    progress: bool,
    preview: Path | None,
) -> None:
    """Denoise a NIfTI volume slice by slice, keeping its header, affine, dtype and scaling."""
    from n2d_dicom.pipeline import denoise_nifti, volume_work
    from n2d_dicom.preview import nifti_preview

    if preview is not None and preview.suffix.lower() != ".png":
        fail(f"{preview}: --preview writes a PNG file; give it a .png name")
    torch_device = guarded(lambda: resolve_device(device))
    image = guarded(lambda: read_nifti(source))
    chosen_axis = default_slice_axis(image) if axis is None else axis
    total = slice_count(image.shape, chosen_axis) if 0 <= chosen_axis < 3 else None
    work = volume_work(image.shape, chosen_axis, settings) if total is not None else None
    started = time.perf_counter()
    measured: list[Measured] = []
    with work_bar(work, progress, run_plan(settings, total)) as advance:
        front_end = guarded(
            lambda: denoise_nifti(
                source, output, settings, torch_device, axis, progress=advance, report=measured.append
            )
        )
    ran = tuple(measured)
    typer.echo(
        f"{output}: denoised {total} slices ({mode_ran(ran, settings.mode)}, {as_ran(ran, settings).steps} "
        f"iterations, {torch_device}; {describe_measured(ran)}) in {time.perf_counter() - started:.1f} s "
        f"({describe_split(ran, **front_end)})"
    )
    if preview is not None:
        window = guarded(lambda: nifti_preview(source, output, chosen_axis, preview))
        typer.echo(f"{preview}: input, output and residual (input - output) of the middle slice, {window}")


def run_plan(settings: N2DSettings, slices: int | None) -> str:
    """The mode and steps a stack of ``slices`` slices will run with, e.g. ``per-series, 2000 steps``."""
    if slices is None:
        return ""
    decided = settings.for_stack(slices)
    return f"{decided.mode}, {decided.steps} steps"


def run_identity(settings: N2DSettings, derivation: DerivationSettings) -> str:
    """What makes a command-line run's derived UIDs: its settings, so that the same source denoised
    with the same settings gets the same derived series (and OUT can tell it already holds it)."""
    digest = hashlib.sha256(f"{settings.model_dump_json()}{derivation.model_dump_json()}".encode())
    return f"n2d denoise-dicom {digest.hexdigest()[:32]}"


@app.command("denoise-dicom")
@options_from(N2DSettings, "settings")
@options_from(DerivationSettings, "derivation", flags=DERIVATION_FLAGS)
def denoise_dicom(
    source: Annotated[
        Path, typer.Argument(help="Folder holding one or more DICOM series (searched recursively).")
    ],
    output: Annotated[Path, typer.Argument(help="Folder to write one sub-folder per derived series into.")],
    settings: N2DSettings,
    derivation: DerivationSettings,
    series: Annotated[
        list[str] | None, typer.Option("--series", help="Only this Series Instance UID (repeatable).")
    ] = None,
    nifti: Annotated[
        bool,
        typer.Option(
            "--nifti", help="Also write each derived series as OUT_DIR/<derived series UID>.nii.gz (RAS)."
        ),
    ] = False,
    device: DeviceOption = "auto",
    progress: ProgressOption = True,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Write a series again where OUT already holds its derived series from the same "
            "settings (the derived UIDs are the same for the same source and settings)."
        ),
    ] = False,
) -> None:
    """Denoise DICOM series into new derived series (same study, full provenance), one folder each.

    Files that cannot be used are listed and skipped; the exit status is 1 if any file was
    skipped or any series failed, 0 otherwise. Objects that are not images to denoise
    (segmentations, dose grids, reports...) are listed as not denoised and leave the
    exit status alone: nothing is wrong with them; a folder holding nothing to denoise
    at all is an error (exit status 1). A series whose derived series OUT already holds
    (same source, same settings) is skipped unless --overwrite. OUT may not lie inside IN,
    so that a second run never denoises the first one's output.
    """
    from n2d_dicom.derive import new_uid, write_instances
    from n2d_dicom.dicom_read import read_dicom_folder
    from n2d_dicom.nifti_io import write_series_nifti
    from n2d_dicom.pipeline import denoise_series, series_work

    torch_device = guarded(lambda: resolve_device(device))
    if not source.exists():
        fail(f"{source}: no such folder")
    if not source.is_dir():
        fail(f"{source}: a file, not a folder; give the folder holding the series")
    if output.resolve().is_relative_to(source.resolve()):
        fail(
            f"{output}: inside the input folder {source}; a later run would denoise these outputs, "
            "give another OUT"
        )
    guarded(lambda: check_writable(output))
    reading = time.perf_counter()
    found, rejected = read_dicom_folder(source)
    reading = time.perf_counter() - reading  # the folder's; told with the first series
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
    identity = run_identity(settings, derivation)
    for item in wanted:
        existing = output / new_uid(derivation, f"{item.series_uid}/{identity}")
        if not overwrite and any(existing.glob("*.dcm")):
            typer.echo(
                f"n2d: skipped series {item.series_uid}: {existing} already holds its derived series from "
                "these settings (--overwrite to write it again)",
                err=True,
            )
            continue
        with work_bar(series_work(item, settings), progress, run_plan(settings, len(item.frames))) as advance:
            try:
                derived = denoise_series(
                    item, settings, derivation, torch_device, progress=advance, identity=identity
                )
                folder = output / derived.series_uid
                writing = time.perf_counter()
                written = write_instances(derived.datasets, folder)
                if nifti:
                    write_series_nifti(written, output / f"{derived.series_uid}.nii.gz")
                writing = time.perf_counter() - writing
            except (N2DInputError, ValueError, OSError) as exc:
                failures += 1
                typer.echo(f"n2d: error: series {item.series_uid}: {exc}", err=True)
                continue
        notes = f"; {'; '.join(item.problems)}" if item.problems else ""
        split = describe_split(derived.measured, reading=reading, writing=writing)
        reading = 0.0
        typer.echo(
            f"series {item.series_uid} -> {derived.series_uid}: {len(derived.datasets)} instances, "
            f"{len(item.frames)} slices, {derived.seconds:.1f} s "
            f"({mode_ran(derived.measured, settings.mode)}, {describe_measured(derived.measured)}; {split}), "
            f"{folder}{notes}"
        )
    if failures:
        raise typer.Exit(1)


@app.command()
@options_from(N2DSettings, "settings", only=("iterations", "precision"))
def bench(
    quick: Annotated[bool, typer.Option(help="Short for --plan quick.")] = False,
    plan_name: Annotated[
        PlanName | None,
        typer.Option(
            "--plan",
            help="realistic (the default): the noise scanners make (low-dose CT, MR magnitude crops "
            "and a 3-D MR volume) against the peers users run, with the physics measures; quick: "
            "minutes on 2 CPU cores, one case per image; standard: every row on 96x96 crops; full: "
            "the paper's settings on 256x256 crops.",
        ),
    ] = None,
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
    *,
    settings: N2DSettings,
) -> None:
    """Quality and speed of N2D against ZS-N2N, BM3D and non-local means on noisy real images.

    --iterations and --precision apply to every N2D row (unset: each plan's own iterations).
    """
    iterations = settings.iterations
    if perf:
        from n2d_dicom.tools.perf import PerfPlan, run_perf

        torch_device = guarded(lambda: resolve_device(device))
        # N2D alone: non-local means and the Wiener step are timed on their own, after the rows, and
        # the Anscombe transform's measurement runs outside the networks.
        networks = N2DSettings(precision=settings.precision, nlm_blend=0, wiener=False, anscombe="off")
        perf_plan = PerfPlan.for_device(torch_device, networks)
        if volume_slices is not None:
            perf_plan = replace(perf_plan, volume_slices=volume_slices)
        if iterations is not None:
            perf_plan = perf_plan.with_iterations(iterations)
        guarded(lambda: run_perf(perf_plan, torch_device, typer.echo))
        return

    if quick and plan_name not in (None, "quick"):
        fail(f"--quick and --plan {plan_name} ask for different plans")
    plan = BenchPlan.named(plan_name or ("quick" if quick else "realistic")).with_precision(
        settings.precision
    )
    if iterations is not None:
        plan = plan.with_iterations(iterations)
    torch_device = guarded(lambda: resolve_device(device))
    guarded(lambda: run_benchmark(plan, torch_device, cases or [], methods or [], typer.echo))


@app.command()
@options_from(N2DSettings, "settings", only=("mode", "iterations"), defaults=DEMO_DEFAULTS)
def demo(
    directory: Annotated[
        Path, typer.Argument(help="Where to write noisy.nii.gz and denoised.nii.gz.")
    ] = Path("n2d-demo"),
    *,
    settings: N2DSettings,
    device: DeviceOption = "auto",
) -> None:
    """Make a noisy 8-slice CT-like phantom, denoise it, and print PSNR before and after."""
    from n2d_dicom.progress import work_units
    from n2d_dicom.tools.demo import DEMO_SIDE, DEMO_SLICES, run_demo

    torch_device = guarded(lambda: resolve_device(device))
    with work_bar(work_units(DEMO_SLICES, settings, DEMO_SIDE * DEMO_SIDE), True) as advance:
        output, before, after = run_demo(directory, settings, torch_device, progress=advance)
    typer.echo(
        f"{output}: PSNR {before:.2f} dB noisy -> {after:.2f} dB denoised ({settings.mode}, {torch_device})"
    )


@app.command("denoise-bids")
@options_from(N2DSettings, "settings")
def denoise_bids(
    root: Annotated[
        Path,
        typer.Argument(metavar="BIDS_ROOT", help="A BIDS dataset's root (holds dataset_description.json)."),
    ],
    settings: N2DSettings,
    out: Annotated[
        Path | None, typer.Option(help="The derivative dataset's folder; default ROOT/derivatives/n2d.")
    ] = None,
    datatypes: Annotated[
        list[Datatype] | None,
        typer.Option("--datatype", help="Only images of this datatype (repeatable); default all three."),
    ] = None,
    suffixes: Annotated[
        list[str] | None,
        typer.Option("--suffix", help="Only images with this BIDS suffix, e.g. T1w or bold (repeatable)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Denoise again images whose derivative exists.")] = False,
    device: DeviceOption = "auto",
    progress: ProgressOption = True,
) -> None:
    """Denoise a BIDS dataset's anat, func and dwi images into a BIDS derivative dataset.

    Each image gets a desc-n2d twin in the same place of the derivative dataset, with a JSON sidecar
    (the source's metadata, Sources, the settings and what was measured); 4-D images are denoised
    volume by volume. Images whose sidecar exists are skipped unless --overwrite, so an interrupted
    run resumes where it stopped. Exit status 1 if any image failed.
    """
    from n2d_dicom.bids import (
        DATATYPES,
        DEFAULT_OUT,
        check_derivative_folder,
        dataset_description,
        denoise_image,
        find_images,
        is_done,
        require_dataset,
        write_json,
    )

    torch_device = guarded(lambda: resolve_device(device))
    guarded(lambda: require_dataset(root))
    target = out if out is not None else root / DEFAULT_OUT
    guarded(lambda: check_derivative_folder(target))
    wanted = [d.value for d in datatypes] if datatypes else list(DATATYPES)
    images = find_images(root, wanted, suffixes or ())
    if not images:
        kinds = ", ".join(suffixes) if suffixes else "any suffix"
        fail(f"{root}: no NIfTI images in {'/'.join(wanted)} folders with {kinds}")
    write_json(target / "dataset_description.json", dataset_description(root, target))
    failures = 0
    for image in tqdm(images, unit="image", disable=not progress, file=sys.stderr):
        if not overwrite and is_done(target, image):
            typer.echo(f"{image.path}: skipped, {image.output} exists (--overwrite redoes it)")
            continue
        started = time.perf_counter()
        try:
            measured = tuple(denoise_image(root, target, image, settings, torch_device))
        except (N2DInputError, OSError) as exc:
            failures += 1
            typer.echo(f"n2d: error: {exc}", err=True)
            continue
        typer.echo(
            f"{image.path} -> {image.output}: {len(measured)} volume(s) ({describe_measured(measured)}) "
            f"in {time.perf_counter() - started:.1f} s"
        )
    typer.echo(f"{target}: BIDS derivative dataset of {root}")
    if failures:
        raise typer.Exit(1)
