"""BIDS derivatives: names, sidecars and ``n2d denoise-bids`` judged by the real BIDS validator.

The validator is the ``bids-validator`` npm package (1.15.0). Its node command line is the legacy
validator, which skips ``derivatives/`` and rejects ``desc`` in names; the same package ships the
schema-based validator (``dist/validator/bids-validator.js``), which knows derivative datasets and
runs under Deno (the ``deno`` npm package). ``.ci/run`` installs both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import nibabel as nib
import numpy as np
import pytest

from n2d_dicom.bids import (
    BidsImage,
    BidsName,
    check_derivative_folder,
    companion_files,
    dataset_link,
    derivative_name,
    find_images,
    require_dataset,
    source_metadata,
)
from n2d_dicom.errors import N2DInputError
from tests.helpers import N2D

ENGINE = ("--iterations", "2", "--mode", "per-series", "--no-wiener", "--nlm-blend", "0")


def image(path: str) -> BidsImage:
    name = BidsName.parse(PurePosixPath(path).name)
    assert name is not None
    return BidsImage(PurePosixPath(path), name)


def write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content), encoding="utf-8")


def write_nifti(path: Path, shape: tuple[int, ...], seed: int, tr: float | None = None) -> None:
    """Noisy int16 data with millimetre voxels (and seconds per volume for a 4-D image)."""
    data = (500 + np.random.default_rng(seed).normal(0, 50, shape)).astype(np.int16)
    nifti = nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]))
    nifti.header.set_xyzt_units("mm", "sec")
    if tr is not None:
        nifti.header["pixdim"][4] = tr
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nifti, path)


def raw_dataset(root: Path) -> Path:
    """A raw BIDS dataset that validates: one subject, a 3-D T1w, a 2-volume rest BOLD whose
    TaskName comes from the subject's sidecar and RepetitionTime from the dataset's top level, and
    a 2-volume DWI with its gradient table."""
    write_json(root / "dataset_description.json", {"Name": "tiny", "BIDSVersion": "1.9.0"})
    (root / "README").write_text("A tiny dataset the tests build to check n2d denoise-bids.\n")
    (root / "participants.tsv").write_text("participant_id\nsub-01\n")
    write_json(root / "task-rest_bold.json", {"RepetitionTime": 2.0, "TaskName": "rest"})
    anat = root / "sub-01" / "anat"
    write_nifti(anat / "sub-01_T1w.nii.gz", (16, 16, 4), seed=1)
    write_json(anat / "sub-01_T1w.json", {"MagneticFieldStrength": 3, "Manufacturer": "Acme"})
    func = root / "sub-01" / "func"
    write_nifti(func / "sub-01_task-rest_bold.nii.gz", (16, 16, 4, 2), seed=2, tr=2.0)
    write_json(func / "sub-01_task-rest_bold.json", {"TaskName": "rest", "EchoTime": 0.03})
    dwi = root / "sub-01" / "dwi"
    write_nifti(dwi / "sub-01_dwi.nii.gz", (16, 16, 4, 2), seed=3)
    (dwi / "sub-01_dwi.bval").write_text("0 1000\n")
    (dwi / "sub-01_dwi.bvec").write_text("0 1\n0 0\n0 0\n")
    write_json(dwi / "sub-01_dwi.json", {"PhaseEncodingDirection": "j"})
    return root


# Names


def test_a_name_parses_into_entities_suffix_and_extension():
    name = BidsName.parse("sub-01_ses-pre_task-rest_run-2_bold.nii.gz")
    assert name == BidsName(
        (("sub", "01"), ("ses", "pre"), ("task", "rest"), ("run", "2")), "bold", ".nii.gz"
    )
    assert str(name) == "sub-01_ses-pre_task-rest_run-2_bold.nii.gz"
    assert BidsName.parse("task-rest_bold.json") == BidsName((("task", "rest"),), "bold", ".json")


@pytest.mark.parametrize(
    "name",
    [
        "sub-01_colour-red_T1w.nii.gz",  # no such entity
        "sub-01_sub-02_T1w.nii.gz",  # an entity twice
        "sub-01_run_T1w.nii.gz",  # no value
        "sub-01_acq-fast+slow_T1w.nii.gz",  # not alphanumeric
        "sub-01_T1-w.nii.gz",  # suffix not alphanumeric
    ],
)
def test_names_that_are_not_bids_are_refused(name):
    assert BidsName.parse(name) is None


def test_desc_goes_after_every_other_entity_right_before_the_suffix():
    source = BidsName.parse("sub-01_ses-2_task-rest_acq-fast_run-1_echo-2_part-mag_bold.nii.gz")
    assert source is not None
    assert (
        str(derivative_name(source))
        == "sub-01_ses-2_task-rest_acq-fast_run-1_echo-2_part-mag_desc-n2d_bold.nii.gz"
    )


def test_a_derivative_source_keeps_its_desc_label_with_n2d_after_it():
    source = BidsName.parse("sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")
    assert source is not None
    assert (
        str(derivative_name(source))
        == "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preprocN2d_bold.nii.gz"
    )


def test_entities_are_put_in_bids_order_whatever_order_they_come_in():
    name = BidsName((("run", "1"), ("sub", "01")), "T1w", ".nii")
    assert str(name.with_entity("acq", "x")) == "sub-01_acq-x_run-1_T1w.nii"


# The dataset


def test_images_are_found_by_datatype_and_suffix_and_phase_images_are_left_out(tmp_path):
    for path in [
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-01/anat/sub-01_T2w.nii",
        "sub-01/ses-2/func/sub-01_ses-2_task-rest_part-mag_bold.nii.gz",
        "sub-01/ses-2/func/sub-01_ses-2_task-rest_part-phase_bold.nii.gz",
        "sub-01/ses-2/func/sub-01_ses-2_task-rest_events.tsv",
        "sub-01/fmap/sub-01_phasediff.nii.gz",
        "sub-01/anat/not_bids.nii.gz",
        "derivatives/other/sub-01/anat/sub-01_desc-x_T1w.nii.gz",
    ]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"")
    found = [str(i.path) for i in find_images(tmp_path)]
    assert found == [
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-01/anat/sub-01_T2w.nii",
        "sub-01/ses-2/func/sub-01_ses-2_task-rest_part-mag_bold.nii.gz",
    ]
    assert [str(i.path) for i in find_images(tmp_path, ["anat"], ["T2w"])] == ["sub-01/anat/sub-01_T2w.nii"]
    assert [i.datatype for i in find_images(tmp_path, ["func"])] == ["func"]


def test_sidecars_are_inherited_and_the_nearest_wins(tmp_path):
    write_json(tmp_path / "task-rest_bold.json", {"RepetitionTime": 3.0, "TaskName": "rest"})
    write_json(tmp_path / "task-nback_bold.json", {"TaskName": "nback"})  # another task: not applied
    write_json(tmp_path / "sub-01" / "sub-01_bold.json", {"EchoTime": 0.03})
    write_json(tmp_path / "sub-01" / "func" / "sub-01_task-rest_bold.json", {"RepetitionTime": 2.0})
    bold = image("sub-01/func/sub-01_task-rest_bold.nii.gz")
    assert source_metadata(tmp_path, bold) == {"RepetitionTime": 2.0, "TaskName": "rest", "EchoTime": 0.03}


def test_a_gradient_table_travels_with_its_dwi_image_wherever_inheritance_puts_it(tmp_path):
    (tmp_path / "dwi.bval").write_text("0 1000\n")
    (tmp_path / "sub-01" / "dwi").mkdir(parents=True)
    (tmp_path / "sub-01" / "dwi" / "sub-01_dwi.bvec").write_text("0 1\n0 0\n0 0\n")
    (tmp_path / "sub-01" / "dwi" / "sub-02_dwi.bval").write_text("another subject's\n")
    dwi = image("sub-01/dwi/sub-01_dwi.nii.gz")
    assert companion_files(tmp_path, dwi) == {
        ".bval": tmp_path / "dwi.bval",
        ".bvec": tmp_path / "sub-01" / "dwi" / "sub-01_dwi.bvec",
    }


def test_the_source_dataset_is_linked_relatively_from_inside_and_by_uri_from_outside(tmp_path):
    root = tmp_path / "ds"
    assert dataset_link(root, root / "derivatives" / "n2d") == "../.."
    assert dataset_link(root, tmp_path / "elsewhere") == root.resolve().as_uri()


def test_a_folder_holding_another_tools_dataset_is_refused(tmp_path):
    write_json(tmp_path / "dataset_description.json", {"Name": "x", "DatasetType": "derivative"})
    with pytest.raises(N2DInputError, match="not generated by n2d-dicom"):
        check_derivative_folder(tmp_path)


# The command, and the validator


def schema_validator() -> list[str]:
    """The command running bids-validator 1.15's schema-based validator under Deno."""
    npm, deno = shutil.which("npm"), shutil.which("deno")
    if npm is None or deno is None:
        pytest.skip("node/npm or deno missing: npm install -g bids-validator@1.15.0 deno (as .ci/run does)")
    modules = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, check=True).stdout.strip()
    bundle = Path(modules) / "bids-validator" / "dist" / "validator" / "bids-validator.js"
    if not bundle.is_file():
        pytest.skip(f"{bundle} missing: npm install -g bids-validator@1.15.0 (as .ci/run does)")
    return [deno, "run", "--allow-read", "--allow-env", str(bundle), "--json"]


def validation_errors(validator: list[str], dataset: Path) -> list[dict]:
    """The validator's errors on ``dataset`` (warnings, such as recommended keys, are left aside)."""
    result = subprocess.run(
        [*validator, str(dataset)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "DENO_NO_UPDATE_CHECK": "1", "NO_COLOR": "1"},
    )
    issues = json.loads(result.stdout)["issues"]["issues"]
    errors = [issue for issue in issues if issue["severity"] == "error"]
    assert (result.returncode != 0) == bool(errors), result.stderr
    return errors


def denoise_bids(*args: str) -> subprocess.CompletedProcess[str]:
    assert N2D.is_file(), f"{N2D} missing: install the package (pip install -e .)"
    command = [str(N2D), "denoise-bids", *args, *ENGINE, "--device", "cpu", "--no-progress"]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_denoise_bids_writes_a_derivative_dataset_the_validator_accepts(tmp_path):
    validator = schema_validator()
    root = raw_dataset(tmp_path / "ds")
    assert validation_errors(validator, root) == []  # the source itself is valid BIDS
    out = root / "derivatives" / "n2d"
    # A run stopped between an image and its sidecar: the image is not taken as done.
    half_done = out / "sub-01/anat/sub-01_desc-n2d_T1w.nii.gz"
    half_done.parent.mkdir(parents=True)
    half_done.write_bytes(b"half")

    first = denoise_bids(str(root))
    assert first.returncode == 0, first.stderr
    assert "skipped" not in first.stdout
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == [
        "dataset_description.json",
        "sub-01/anat/sub-01_desc-n2d_T1w.json",
        "sub-01/anat/sub-01_desc-n2d_T1w.nii.gz",
        "sub-01/dwi/sub-01_desc-n2d_dwi.bval",
        "sub-01/dwi/sub-01_desc-n2d_dwi.bvec",
        "sub-01/dwi/sub-01_desc-n2d_dwi.json",
        "sub-01/dwi/sub-01_desc-n2d_dwi.nii.gz",
        "sub-01/func/sub-01_task-rest_desc-n2d_bold.json",
        "sub-01/func/sub-01_task-rest_desc-n2d_bold.nii.gz",
    ]
    assert validation_errors(validator, out) == []

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["DatasetLinks"] == {"raw": "../.."}
    assert description["GeneratedBy"][0]["Name"] == "n2d-dicom"
    from n2d_dicom import __version__

    assert description["GeneratedBy"][0]["Version"] == __version__

    bold = json.loads((out / "sub-01/func/sub-01_task-rest_desc-n2d_bold.json").read_text())
    assert bold["Sources"] == ["bids:raw:sub-01/func/sub-01_task-rest_bold.nii.gz"]
    assert (bold["RepetitionTime"], bold["TaskName"], bold["EchoTime"]) == (2.0, "rest", 0.03)
    assert bold["SkullStripped"] is False
    assert bold["N2D"]["Settings"]["iterations"] == 2 and bold["N2D"]["Settings"]["mode"] == "per-series"
    assert len(bold["N2D"]["Measured"]) == 2  # one per volume
    assert {m["stride"] for m in bold["N2D"]["Measured"]} <= {1, 2, 3, 4}
    t1w = json.loads((out / "sub-01/anat/sub-01_desc-n2d_T1w.json").read_text())
    assert t1w["Sources"] == ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz"] and t1w["Manufacturer"] == "Acme"
    assert len(t1w["N2D"]["Measured"]) == 1
    dwi = out / "sub-01" / "dwi"
    assert (dwi / "sub-01_desc-n2d_dwi.bval").read_text() == "0 1000\n"
    assert (dwi / "sub-01_desc-n2d_dwi.bvec").read_text() == "0 1\n0 0\n0 0\n"
    assert len(json.loads((dwi / "sub-01_desc-n2d_dwi.json").read_text())["N2D"]["Measured"]) == 2

    source = nib.load(root / "sub-01/func/sub-01_task-rest_bold.nii.gz")
    denoised = nib.load(out / "sub-01/func/sub-01_task-rest_desc-n2d_bold.nii.gz")
    assert denoised.shape == source.shape and denoised.header["pixdim"][4] == 2.0
    assert not np.array_equal(np.asarray(denoised.dataobj), np.asarray(source.dataobj))

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    again = denoise_bids(str(root))
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skipped") == 3
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == stamps

    redo = denoise_bids(str(root), "--suffix", "T1w", "--overwrite")
    assert redo.returncode == 0, redo.stderr
    t1w_path = out / "sub-01/anat/sub-01_desc-n2d_T1w.nii.gz"
    assert "sub-01/anat/sub-01_T1w.nii.gz -> sub-01/anat/sub-01_desc-n2d_T1w.nii.gz" in redo.stdout
    assert t1w_path.stat().st_mtime_ns != stamps[t1w_path]


def test_a_folder_that_is_not_a_bids_dataset_is_refused(tmp_path):
    with pytest.raises(N2DInputError, match="not a BIDS dataset"):
        require_dataset(tmp_path)
