"""The ``n2d`` command as a user runs it: the installed console script, in a subprocess."""

import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from n2d_dicom.pipeline import denoise_nifti
from n2d_dicom.progress import work_units
from n2d_dicom.settings import N2DSettings
from tests.helpers import N2D
from tests.n2d_dicom.conftest import write_ct_series

pytestmark = pytest.mark.slow  # every test starts the n2d console script


def run(*args: str) -> subprocess.CompletedProcess[str]:
    assert N2D.is_file(), f"{N2D} missing: install the package (pip install -e .)"
    return subprocess.run([str(N2D), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    data = (1000 + rng.normal(0, 100, (16, 16, 2))).astype(np.int16)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def test_denoise_writes_the_output_and_reports_a_summary(volume, tmp_path):
    out = tmp_path / "ct_n2d.nii.gz"
    result = run("denoise", str(volume), str(out), "--iterations", "3", "--device", "cpu", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "denoised 2 slices (per-series, 3 iterations, cpu; sampling stride " in result.stdout
    assert "Anscombe " in result.stdout and "Wiener window " in result.stdout
    assert nib.load(out).shape == (16, 16, 2)


def test_noise_and_early_stop_options_reach_the_engine(tmp_path):
    """The command writes what the engine makes with exactly the settings asked for, not the defaults."""
    source = tmp_path / "ct.nii.gz"
    rng = np.random.default_rng(0)
    # 8 slices: per-series early stopping then holds one in 8 out of training, so the flag shows.
    nib.save(nib.Nifti1Image((1000 + rng.normal(0, 100, (16, 16, 8))).astype(np.int16), np.eye(4)), source)
    out = tmp_path / "ct_n2d.nii.gz"
    args = ("--iterations", "3", "--device", "cpu", "--no-progress", "--mode", "per-series")
    result = run("denoise", str(source), str(out), *args, "--noise", "correlated", "--no-early-stop")
    assert result.returncode == 0, result.stderr
    assert "sampling stride 2" in result.stdout  # correlated: at least 2, where white noise measures 1

    asked = N2DSettings(iterations=3, mode="per-series", noise="correlated", early_stop=False)
    engine_made = {}
    for name, settings in {
        "asked": asked,
        "early stop on": asked.model_copy(update={"early_stop": True}),
        "noise auto": asked.model_copy(update={"noise": "auto"}),
    }.items():
        denoise_nifti(source, tmp_path / f"{name}.nii.gz", settings, torch.device("cpu"))
        engine_made[name] = np.asarray(nib.load(tmp_path / f"{name}.nii.gz").dataobj)
    written = np.asarray(nib.load(out).dataobj)
    np.testing.assert_array_equal(written, engine_made["asked"])
    assert not np.array_equal(written, engine_made["early stop on"])
    assert not np.array_equal(written, engine_made["noise auto"])

    wrong = run("denoise", str(source), str(out), *args, "--noise", "pink")
    assert wrong.returncode != 0 and "pink" in wrong.stderr


def test_the_wiener_option_reaches_the_engine(volume, tmp_path):
    outputs = {}
    for flag in ("--wiener", "--no-wiener"):
        out = tmp_path / f"ct{flag}.nii.gz"
        result = run(
            "denoise", str(volume), str(out), "--iterations", "3", "--device", "cpu", "--no-progress", flag
        )
        assert result.returncode == 0, result.stderr
        outputs[flag] = np.asarray(nib.load(out).dataobj)
    assert not np.array_equal(outputs["--wiener"], outputs["--no-wiener"])  # same seed: only the step differs


def test_per_series_mode_and_progress_bar(volume, tmp_path):
    out = tmp_path / "ct_n2d.nii"
    result = run(
        "denoise", str(volume), str(out), "--iterations", "3", "--mode", "per-series", "--device", "cpu"
    )
    assert result.returncode == 0, result.stderr
    # The bar counts work units (steps, inference passes, non-local means, Wiener), not slices.
    total = work_units(2, N2DSettings(iterations=3, mode="per-series"), 16 * 16)
    assert f"{total}/{total}" in result.stderr  # tqdm's final count
    assert "Wiener step" in result.stderr  # the phase is the bar's description
    assert "per-series, 3 steps: training stage 1" in result.stderr  # the mode from the start
    assert out.exists()


def test_auto_mode_runs_per_series_from_8_slices_and_the_summary_says_so(tmp_path):
    path = tmp_path / "eight.nii.gz"
    nib.save(
        nib.Nifti1Image(np.random.default_rng(0).normal(100, 10, (16, 16, 8)).astype(np.int16), np.eye(4)),
        path,
    )
    args = ("--iterations", "2", "--device", "cpu", "--no-progress", "--nlm-blend", "0", "--no-wiener")
    result = run("denoise", str(path), str(tmp_path / "out.nii.gz"), *args)
    assert result.returncode == 0, result.stderr
    assert "denoised 8 slices (per-series, 2 iterations" in result.stdout
    assert "training " in result.stdout and "steps 2+2" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.nii.gz", "out.nii.gz"], "missing.nii.gz: no such file"),
        (["{volume}", "out.txt"], "out.txt: not a NIfTI file name"),
        (["{volume}", "out.nii.gz", "--iterations", "0"], "invalid setting: iterations"),
        (["{volume}", "out.nii.gz", "--device", "tpu"], "unknown device 'tpu'"),
        (["{volume}", "out.nii.gz", "--device", "mps"], "device type 'mps' is not supported"),
        (["{volume}", "out.nii.gz", "--axis", "7"], "slice axis must be 0, 1 or 2"),
        (["{volume}"], "1 path(s) given: give IN OUT, or inputs with --out-dir DIR and/or --out-suffix"),
    ],
)
def test_bad_input_gives_one_line_error_and_non_zero_exit(volume, tmp_path, args, message):
    args = [a.replace("{volume}", str(volume)) for a in args]
    result = run("denoise", *args, "--no-progress")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("n2d: error: ")
    assert message in result.stderr


def test_tiny_images_are_refused(tmp_path):
    path = tmp_path / "tiny.nii"
    nib.save(nib.Nifti1Image(np.ones((6, 30, 3), dtype=np.float32), np.eye(4)), path)
    result = run("denoise", str(path), str(tmp_path / "o.nii"), "--no-progress")
    assert result.returncode == 1
    assert "tiny.nii: slices are 6x30 pixels" in result.stderr


def test_several_inputs_are_named_after_themselves_and_a_bad_one_does_not_stop_the_rest(volume, tmp_path):
    second = tmp_path / "more" / "mr.nii"
    second.parent.mkdir()
    nib.save(nib.Nifti1Image(np.asarray(nib.load(volume).dataobj)[:, :, :1], np.eye(4)), second)
    broken = tmp_path / "more" / "broken.nii.gz"
    broken.write_bytes(b"not a NIfTI image")
    result = run(
        "denoise", str(tmp_path), "--out-suffix", "_n2d", "--iterations", "2", "--mode", "per-series",
        "--no-wiener", "--nlm-blend", "0", "--device", "cpu", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith(f"n2d: error: {broken}: cannot read as NIfTI")
    assert nib.load(tmp_path / "ct_n2d.nii.gz").shape == (16, 16, 2)
    assert nib.load(tmp_path / "more" / "mr_n2d.nii").shape == (16, 16, 1)
    assert f"{tmp_path / 'ct_n2d.nii.gz'}: denoised 2 slices" in result.stdout
    assert not (tmp_path / "more" / "broken_n2d.nii.gz").exists()


def test_demo_writes_noisy_and_denoised_volumes_and_reports_psnr(tmp_path):
    result = run("demo", str(tmp_path / "demo"), "--iterations", "3", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "PSNR" in result.stdout and "dB denoised (per-series, cpu)" in result.stdout
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["denoised.nii.gz", "noisy.nii.gz"]


def test_denoise_dicom_writes_one_folder_per_series_and_lists_bad_files(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    write_ct_series(source, [0.0, 5.0, 10.0])
    write_ct_series(source, [0.0, 2.0, 4.5, 6.5])
    (source / "scan.txt").write_text("not dicom")
    out = tmp_path / "out"
    result = run("denoise-dicom", str(source), str(out), "--iterations", "3", "--device", "cpu")
    assert result.returncode == 1  # one file was skipped
    assert "n2d: skipped" in result.stderr and "scan.txt: not a readable DICOM file" in result.stderr
    summaries = [line for line in result.stdout.splitlines() if line.startswith("series ")]
    assert len(summaries) == 2
    assert any("4 instances" in line and "uneven spacing" in line for line in summaries)
    assert sorted(len(list(folder.iterdir())) for folder in out.iterdir()) == [3, 4]


def test_denoise_dicom_can_pick_one_series_and_exits_zero_when_all_went_well(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    uid = "1.2.826.0.1.3680043.10.999.1"
    write_ct_series(source, [0.0, 5.0], series_uid=uid)
    write_ct_series(source, [0.0, 5.0])
    out = tmp_path / "out"
    result = run(
        "denoise-dicom",
        str(source),
        str(out),
        "--series",
        uid,
        "--iterations",
        "3",
        "--device",
        "cpu",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"series {uid} -> ")
    assert len(list(out.iterdir())) == 1


def test_denoise_dicom_refuses_a_folder_without_grayscale_series(tmp_path):
    (tmp_path / "in").mkdir()
    result = run("denoise-dicom", str(tmp_path / "in"), str(tmp_path / "out"), "--no-progress")
    assert result.returncode == 1
    assert "no grayscale DICOM series to denoise" in result.stderr


def test_bench_refuses_quick_together_with_another_plan():
    result = run("bench", "--quick", "--plan", "standard")
    assert result.returncode != 0
    assert "--quick and --plan standard ask for different plans" in result.stderr


def test_bench_takes_iterations_and_precision_from_the_settings_model():
    """Issue 28: bench declared --iterations and --precision itself; now the N2DSettings fields, checked
    the same way (one line, exit 1), applied to every N2D row of the plan."""
    from n2d_dicom.tools.bench import BenchPlan

    result = run("bench", "--precision", "fp64")
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "precision" in result.stderr
    plan = BenchPlan.named("quick").with_precision("bf16").with_iterations(7)
    assert (plan.settings.precision, plan.settings.iterations) == ("bf16", 7)


QUICK_DICOM = ("--iterations", "1", "--device", "cpu", "--no-progress", "--no-wiener", "--nlm-blend", "0")


def rewrite(path: Path, **raw_values: bytes) -> None:
    """Give attributes of ``path`` raw bytes as values (written implicit VR, so read back by their VR)."""
    import pydicom
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import DataElement

    ds = pydicom.dcmread(path)
    for keyword, raw in raw_values.items():
        tag = tag_for_keyword(keyword)
        ds[tag] = DataElement(tag, "OB", raw)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)


def test_denoise_dicom_skips_files_with_malformed_geometry_and_denoises_the_rest(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    paths = write_ct_series(source, [0.0, 5.0, 10.0, 15.0])
    rewrite(paths[0], ImagePositionPatient=b"abc ")
    rewrite(paths[1], ImagePositionPatient=b"1\\2 ")
    out = tmp_path / "out"
    result = run("denoise-dicom", str(source), str(out), *QUICK_DICOM)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    for path in paths[:2]:
        assert f"n2d: skipped {path}: Image Position (Patient)" in result.stderr
    (folder,) = out.iterdir()
    assert len(list(folder.iterdir())) == 2


def test_denoise_dicom_leaves_segmentations_and_dose_grids_alone(tmp_path):
    import shutil

    from tests.n2d_dicom.conftest import data_file

    source = tmp_path / "in"
    source.mkdir()
    write_ct_series(source, [0.0, 5.0])
    for name in ("liver.dcm", "rtdose.dcm"):
        shutil.copy(data_file(name), source / name)
    out = tmp_path / "out"
    result = run("denoise-dicom", str(source), str(out), *QUICK_DICOM)
    assert result.returncode == 0, result.stderr  # nothing went wrong: they are not ours to denoise
    assert f"n2d: not denoised {source / 'liver.dcm'}: Segmentation Storage objects" in result.stderr
    assert f"n2d: not denoised {source / 'rtdose.dcm'}: RT Dose Storage objects" in result.stderr
    (folder,) = out.iterdir()
    assert len(list(folder.iterdir())) == 2


def test_denoise_dicom_names_a_file_that_reuses_an_instance_uid_for_other_pixels(tmp_path):
    import pydicom

    source = tmp_path / "in"
    source.mkdir()
    kept = sorted(write_ct_series(source, [0.0, 5.0]))[0]
    ds = pydicom.dcmread(kept)
    ds.PixelData = (ds.pixel_array + 3).astype(ds.pixel_array.dtype).tobytes()
    ds.save_as(source / "zz_other.dcm")
    result = run("denoise-dicom", str(source), str(tmp_path / "out"), *QUICK_DICOM)
    assert result.returncode == 1
    assert (
        f"n2d: skipped {source / 'zz_other.dcm'}: same SOP Instance UID as {kept.name} "
        "but different pixel data" in result.stderr
    )


def test_denoise_dicom_speaks_to_users_not_programmers(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    paths = write_ct_series(source, [0.0, 5.0])
    rewrite(paths[0], StudyInstanceUID=b"1.2.840.01.5", AcquisitionNumber=b"x1")
    rewrite(paths[1], StudyInstanceUID=b"1.2.840.01.5")
    (source / "scan.txt").write_text("not dicom")
    result = run("denoise-dicom", str(source), str(tmp_path / "out"), *QUICK_DICOM)
    assert result.returncode == 1  # scan.txt was skipped
    assert "scan.txt: not a readable DICOM file (no DICM preamble: not a DICOM file)" in result.stderr
    assert "force=True" not in result.stderr
    assert "Warning" not in result.stderr and "warn" not in result.stderr
    assert "Acquisition Number (0020,0012): invalid value" in result.stdout


QUICK = ("--iterations", "3", "--device", "cpu", "--no-progress")


def one_error_line(result: subprocess.CompletedProcess[str], message: str) -> None:
    """Exit status 1 and a single ``n2d: error:`` line on stderr that says ``message``."""
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("n2d: error: ") and message in lines[0], result.stderr


@pytest.mark.parametrize("form", ["same", "./same", "symlink"])
def test_denoise_never_overwrites_its_input(volume, tmp_path, form):
    before = volume.read_bytes()
    output = {
        "same": str(volume),
        "./same": f"{tmp_path}/./{volume.name}",
        "symlink": str(tmp_path / "ln.nii.gz"),
    }
    if form == "symlink":
        (tmp_path / "ln.nii.gz").symlink_to(volume)
    one_error_line(run("denoise", str(volume), output[form], *QUICK), "this is the input itself")
    assert volume.read_bytes() == before


@pytest.mark.parametrize(
    ("where", "message"),
    [("afile/out.nii.gz", "afile: a file, not a folder"), ("typo/deeper/out.nii.gz", "no such folder")],
)
def test_an_output_that_cannot_be_written_is_refused_in_one_line_before_the_work(
    volume, tmp_path, where, message
):
    (tmp_path / "afile").write_bytes(b"")
    result = run("denoise", str(volume), str(tmp_path / where), *QUICK)
    one_error_line(result, message)
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--mode", "fast"), "Invalid value for '--mode'"),
        (("--no-such-option",), "No such option: --no-such-option"),
    ],
)
def test_option_errors_are_one_line_and_exit_1_as_the_docs_say(volume, tmp_path, args, message):
    one_error_line(run("denoise", str(volume), str(tmp_path / "o.nii.gz"), *args), message)


def test_mode_values_are_taken_in_any_case(volume, tmp_path):
    result = run("denoise", str(volume), str(tmp_path / "o.nii.gz"), "--mode", "PER-SLICE", *QUICK)
    assert result.returncode == 0, result.stderr


def test_outputs_are_as_readable_as_the_umask_allows(volume, tmp_path):
    out = tmp_path / "out.nii.gz"
    result = subprocess.run(
        ["sh", "-c", f'umask 022 && exec "{N2D}" denoise "{volume}" "{out}" ' + " ".join(QUICK)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert out.stat().st_mode & 0o777 == 0o644


def test_denoise_dicom_says_no_such_folder_and_refuses_an_output_inside_its_input(tmp_path):
    one_error_line(
        run("denoise-dicom", str(tmp_path / "nope"), str(tmp_path / "out")), "nope: no such folder"
    )
    source = tmp_path / "in"
    source.mkdir()
    write_ct_series(source, [0.0, 5.0])
    one_error_line(run("denoise-dicom", str(source), str(source / "out"), *QUICK), "inside the input folder")
    one_error_line(run("denoise-dicom", str(source), str(source), *QUICK), "inside the input folder")
    assert len(list(source.iterdir())) == 2


def test_denoise_dicom_run_again_into_the_same_output_skips_what_it_holds(tmp_path):
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    write_ct_series(source, [0.0, 5.0])
    first = run("denoise-dicom", str(source), str(out), *QUICK)
    assert first.returncode == 0, first.stderr
    [folder] = out.iterdir()
    names = sorted(p.name for p in folder.iterdir())
    again = run("denoise-dicom", str(source), str(out), *QUICK)
    assert again.returncode == 0, again.stderr
    assert "already holds its derived series from these settings (--overwrite" in again.stderr
    assert [p.name for p in out.iterdir()] == [folder.name]
    overwritten = run("denoise-dicom", str(source), str(out), "--overwrite", *QUICK)
    assert overwritten.returncode == 0 and overwritten.stdout.startswith("series ")
    assert [p.name for p in out.iterdir()] == [folder.name]
    assert sorted(p.name for p in folder.iterdir()) == names  # the same instances, written again
    other = run(
        "denoise-dicom", str(source), str(out), "--iterations", "4", "--device", "cpu", "--no-progress"
    )
    assert other.returncode == 0 and len(list(out.iterdir())) == 2  # other settings: another series


def test_a_nifti_of_an_unsupported_datatype_gives_our_line_alone(tmp_path):
    source = tmp_path / "binary.nii"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 2), np.uint8), np.eye(4)), source)
    header = bytearray(source.read_bytes())
    header[70:74] = (1).to_bytes(2, "little") + (1).to_bytes(2, "little")  # datatype 1 (binary), bitpix 1
    source.write_bytes(bytes(header))
    one_error_line(run("denoise", str(source), str(tmp_path / "o.nii"), *QUICK), "cannot read as NIfTI")


def test_the_preview_of_ct_is_drawn_in_the_soft_tissue_window_and_says_so(volume, tmp_path):
    hu = tmp_path / "hu.nii.gz"
    rng = np.random.default_rng(0)
    data = np.where(np.indices((16, 16, 2))[0] < 4, -1000, 40 + rng.normal(0, 20, (16, 16, 2))).astype(
        np.int16
    )
    nib.save(nib.Nifti1Image(data, np.eye(4)), hu)
    result = run("denoise", str(hu), str(tmp_path / "o.nii.gz"), "--preview", str(tmp_path / "p.png"), *QUICK)
    assert result.returncode == 0, result.stderr
    assert "soft-tissue window 40/400 HU" in result.stdout
