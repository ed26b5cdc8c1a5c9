"""Where ``n2d denoise`` writes each output for several inputs or folders (n2d_dicom/batch.py)."""

from pathlib import Path

import pytest

from n2d_dicom.batch import check_writable, output_pairs
from n2d_dicom.errors import N2DInputError


def touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_in_out_without_options_is_one_pair_as_it_always_was(tmp_path):
    assert output_pairs([tmp_path / "a.nii.gz", tmp_path / "b.nii"], None, None) == [
        (tmp_path / "a.nii.gz", tmp_path / "b.nii")
    ]


@pytest.mark.parametrize("count", [1, 3])
def test_other_counts_without_options_say_how_to_give_several_inputs(tmp_path, count):
    paths = [tmp_path / f"{i}.nii.gz" for i in range(count)]
    with pytest.raises(
        N2DInputError, match=rf"{count} path\(s\) given: give IN OUT, or inputs with --out-dir"
    ):
        output_pairs(paths, None, None)


def test_a_folder_as_in_of_in_out_is_refused(tmp_path):
    with pytest.raises(N2DInputError, match="a folder; denoise a folder's files with --out-dir"):
        output_pairs([tmp_path, tmp_path / "out.nii.gz"], None, None)


def test_out_suffix_writes_beside_each_input_keeping_the_extension(tmp_path):
    a, b = tmp_path / "a.nii.gz", tmp_path / "sub" / "b.nii"
    assert output_pairs([a, b], None, "_n2d") == [
        (a, tmp_path / "a_n2d.nii.gz"),
        (b, tmp_path / "sub" / "b_n2d.nii"),
    ]


def test_a_folder_is_searched_below_and_mirrored_under_out_dir(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    touch(data / "x.nii.gz", data / "s1" / "y.nii", data / "notes.txt", data / ".x.nii.gz.abc.tmp.nii.gz")
    assert output_pairs([data], out, None) == [
        (data / "s1" / "y.nii", out / "s1" / "y.nii"),
        (data / "x.nii.gz", out / "x.nii.gz"),
    ]


def test_a_rerun_in_place_leaves_earlier_outputs_and_an_inner_out_dir_alone(tmp_path):
    touch(tmp_path / "x.nii.gz", tmp_path / "x_n2d.nii.gz", tmp_path / "den" / "x_n2d.nii.gz")
    assert output_pairs([tmp_path], tmp_path / "den", "_n2d") == [
        (tmp_path / "x.nii.gz", tmp_path / "den" / "x_n2d.nii.gz")
    ]
    assert output_pairs([tmp_path], None, "_n2d") == [(tmp_path / "x.nii.gz", tmp_path / "x_n2d.nii.gz")]


def test_an_output_never_overwrites_an_input(tmp_path):
    touch(tmp_path / "x.nii.gz")
    with pytest.raises(N2DInputError, match="would overwrite an input"):
        output_pairs([tmp_path / "x.nii.gz"], tmp_path, None)


def test_two_inputs_never_share_an_output(tmp_path):
    a, b = tmp_path / "a" / "x.nii.gz", tmp_path / "b" / "x.nii.gz"
    with pytest.raises(N2DInputError, match="would both write"):
        output_pairs([a, b], tmp_path / "out", None)


def test_a_folder_without_nifti_files_is_an_error(tmp_path):
    touch(tmp_path / "notes.txt")
    with pytest.raises(N2DInputError, match="no .nii or .nii.gz files below this folder"):
        output_pairs([tmp_path], None, "_n2d")


def test_an_input_that_is_not_a_nifti_name_is_an_error(tmp_path):
    with pytest.raises(N2DInputError, match="not a NIfTI file name"):
        output_pairs([tmp_path / "scan.dcm"], tmp_path / "out", None)


@pytest.mark.parametrize("form", ["same path", "dot slash", "symbolic link", "hard link"])
def test_in_out_naming_the_input_itself_is_refused(tmp_path, monkeypatch, form):
    source = tmp_path / "same.nii.gz"
    touch(source)
    monkeypatch.chdir(tmp_path)
    output = {
        "same path": Path("same.nii.gz"),
        "dot slash": Path("./same.nii.gz"),
        "symbolic link": tmp_path / "link.nii.gz",
        "hard link": tmp_path / "hard.nii.gz",
    }[form]
    if form == "symbolic link":
        output.symlink_to(source)
    if form == "hard link":
        output.hardlink_to(source)
    with pytest.raises(N2DInputError, match="this is the input itself; n2d never overwrites its input"):
        output_pairs([Path("same.nii.gz"), output], None, None)


def test_an_output_folder_is_checked_before_any_work(tmp_path):
    (tmp_path / "afile").write_bytes(b"")
    with pytest.raises(N2DInputError, match="afile: a file, not a folder"):
        check_writable(tmp_path / "afile" / "sub")
    with pytest.raises(N2DInputError, match="no such folder .n2d creates only the last folder"):
        check_writable(tmp_path / "typo" / "deeper")
    check_writable(tmp_path / "new")  # the last folder: made when written
    check_writable(tmp_path)
    assert not (tmp_path / "new").exists()  # checking makes nothing
