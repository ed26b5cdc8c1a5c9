"""Malformed, foreign and conflicting files: each is skipped with its reason and the rest is denoised.

The files are real (pydicom's CT_small and eCT_Supplemental) with one header
attribute broken the way a modality or a bad converter breaks it: text in a
number, the wrong count of values, an empty value, an absurd value. They are
written in implicit VR so that the broken bytes are read back under the
attribute's own VR, as a PACS would send them.
"""

import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.datadict import dictionary_description, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from n2d_dicom.derive import DerivationSettings, write_instances
from n2d_dicom.dicom_read import read_dicom_files, read_dicom_folder
from n2d_dicom.pipeline import denoise_series
from n2d_dicom.settings import N2DSettings
from n2d_dicom.sop_classes import DENOISABLE_SOP_CLASSES, is_denoisable
from n2d_dicom.uids import uid_problem
from tests.n2d_dicom.conftest import data_file, write_ct_series

#: Enough of N2D to show a series goes through; the engine itself is tested elsewhere.
TINY = N2DSettings(iterations=1, channels=4, wiener=False, nlm_blend=0, noise="white", anscombe="off")


def put_raw(item: pydicom.Dataset, keyword: str, raw: bytes) -> None:
    """Give ``keyword`` the bytes ``raw`` as its value, whatever its VR says they should be."""
    tag = tag_for_keyword(keyword)
    item[tag] = DataElement(tag, "OB", raw)


def save_implicit(ds: pydicom.Dataset, path: Path) -> None:
    """Write ``ds`` in implicit VR little endian: read back, each value is parsed by its dictionary VR."""
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)


def enhanced_ct(folder: Path) -> Path:
    """eCT_Supplemental (2 frames, functional groups) as a series of its own in ``folder``."""
    ds = pydicom.dcmread(data_file("eCT_Supplemental.dcm"))
    ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    path = folder / "enhanced.dcm"
    save_implicit(ds, path)
    return path


def shared(ds: pydicom.Dataset, macro: str) -> pydicom.Dataset:
    return ds.SharedFunctionalGroupsSequence[0][macro][0]


def top(ds: pydicom.Dataset) -> pydicom.Dataset:
    return ds


def frame_2_position(ds: pydicom.Dataset) -> pydicom.Dataset:
    return ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence[0]


def shared_orientation(ds: pydicom.Dataset) -> pydicom.Dataset:
    return shared(ds, "PlaneOrientationSequence")


def shared_rescale(ds: pydicom.Dataset) -> pydicom.Dataset:
    return shared(ds, "PixelValueTransformationSequence")


def shared_window(ds: pydicom.Dataset) -> pydicom.Dataset:
    return shared(ds, "FrameVOILUTSequence")


#: (case, file broken, where in it, the attribute broken and named in the reason, its new raw value)
MALFORMED = [
    ("position-text", "ct", top, "ImagePositionPatient", b"abc "),
    ("position-two-values", "ct", top, "ImagePositionPatient", b"1\\2 "),
    ("position-nan", "ct", top, "ImagePositionPatient", b"nan\\0\\0 "),
    ("orientation-five", "ct", top, "ImageOrientationPatient", b"1\\0\\0\\0\\1 "),
    ("orientation-text", "ct", top, "ImageOrientationPatient", b"a\\b\\c\\d\\e\\f "),
    ("orientation-parallel", "ct", top, "ImageOrientationPatient", b"1\\0\\0\\1\\0\\0 "),
    ("orientation-zero", "ct", top, "ImageOrientationPatient", b"0\\0\\0\\0\\0\\0 "),
    ("spacing-text", "ct", top, "PixelSpacing", b"abc "),
    ("spacing-one-value", "ct", top, "PixelSpacing", b"0.5 "),
    ("spacing-negative", "ct", top, "PixelSpacing", b"-1\\-1 "),
    ("thickness-text", "ct", top, "SliceThickness", b"thin"),
    ("thickness-negative", "ct", top, "SliceThickness", b"-5"),
    ("instance-number-text", "ct", top, "InstanceNumber", b"x1"),
    ("series-number-text", "ct", top, "SeriesNumber", b"x1"),
    ("series-number-absurd", "ct", top, "SeriesNumber", b"2147483647 "),
    ("rows-zero", "ct", top, "Rows", b"\x00\x00"),
    ("rows-two-values", "ct", top, "Rows", b"\x80\x00\x80\x00"),
    ("rows-empty", "ct", top, "Rows", b""),
    ("rows-not-the-data", "ct", top, "Rows", b"\x40\x00"),
    ("columns-zero", "ct", top, "Columns", b"\x00\x00"),
    ("frames-text", "ct", top, "NumberOfFrames", b"x1"),
    ("frames-zero", "ct", top, "NumberOfFrames", b"0 "),
    ("frames-absurd", "ct", top, "NumberOfFrames", b"99999999"),
    ("photometric-unknown", "ct", top, "PhotometricInterpretation", b"MONOCHROME3 "),
    ("photometric-empty", "ct", top, "PhotometricInterpretation", b""),
    ("photometric-two", "ct", top, "PhotometricInterpretation", b"MONOCHROME2\\RGB "),
    ("samples-zero", "ct", top, "SamplesPerPixel", b"\x00\x00"),
    ("samples-three", "ct", top, "SamplesPerPixel", b"\x03\x00"),
    ("bits-allocated-zero", "ct", top, "BitsAllocated", b"\x00\x00"),
    ("bits-allocated-12", "ct", top, "BitsAllocated", b"\x0c\x00"),
    ("bits-allocated-32", "ct", top, "BitsAllocated", b"\x20\x00"),
    ("bits-stored-above", "ct", top, "BitsStored", b"\x11\x00"),
    ("bits-stored-empty", "ct", top, "BitsStored", b""),
    ("representation-two", "ct", top, "PixelRepresentation", b"\x02\x00"),
    ("slope-text", "ct", top, "RescaleSlope", b"abc "),
    ("slope-zero", "ct", top, "RescaleSlope", b"0 "),
    ("slope-two-values", "ct", top, "RescaleSlope", b"1\\2 "),
    ("intercept-text", "ct", top, "RescaleIntercept", b"abc "),
    ("window-center-text", "ct", top, "WindowCenter", b"abc "),
    ("window-width-zero", "ct", top, "WindowWidth", b"0 "),
    ("window-counts-differ", "ct", top, "WindowCenter", b"40\\400 "),  # and no Window Width
    ("pixel-data-short", "ct", top, "PixelData", bytes(100)),
    ("frame-position-text", "enhanced", frame_2_position, "ImagePositionPatient", b"abc "),
    ("frame-orientation-five", "enhanced", shared_orientation, "ImageOrientationPatient", b"1\\0\\0\\0\\1 "),
    ("frame-groups-short", "enhanced", top, "PerFrameFunctionalGroupsSequence", None),  # one item dropped
    ("frame-spacing-text", "enhanced", frame_2_position, "PixelSpacing", b"abc "),
    ("frame-slope-zero", "enhanced", shared_rescale, "RescaleSlope", b"0 "),
    ("frame-window-text", "enhanced", shared_window, "WindowWidth", b"abc "),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "target, where, keyword, raw", [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED]
)
def test_a_malformed_header_skips_its_file_with_the_attribute_named_and_the_rest_is_denoised(
    tmp_path, target, where, keyword, raw
):
    ct = write_ct_series(tmp_path, [0.0, 5.0, 10.0])
    enhanced = enhanced_ct(tmp_path)
    broken = ct[1] if target == "ct" else enhanced
    ds = pydicom.dcmread(broken)
    if raw is None:
        del where(ds)[keyword].value[-1]
    else:
        put_raw(where(ds), keyword, raw)
    save_implicit(ds, broken)

    series, rejected = read_dicom_folder(tmp_path)

    assert [r.path for r in rejected] == [broken]
    assert dictionary_description(keyword) in rejected[0].reason, rejected[0].reason
    assert not rejected[0].forwardable
    instances = sorted(len(s.datasets) for s in series)
    assert instances == ([1, 2] if target == "ct" else [3])
    for item in series:
        derived = denoise_series(item, TINY, DerivationSettings(), torch.device("cpu"))
        shapes = [ds.pixel_array.shape for ds in derived.datasets]
        assert shapes == [ds.pixel_array.shape for ds in item.datasets]


def test_a_slice_with_empty_geometry_is_placed_by_instance_number_with_a_warning(tmp_path):
    paths = write_ct_series(tmp_path, [0.0, 5.0, 10.0])
    ds = pydicom.dcmread(paths[1])
    put_raw(ds, "ImagePositionPatient", b"")
    save_implicit(ds, paths[1])
    (series,), rejected = read_dicom_folder(tmp_path)
    assert not rejected
    assert [int(f.dataset.InstanceNumber) for f in series.frames] == [1, 2, 3]
    (note,) = [p for p in series.problems if "Instance Number" in p]
    assert "Image Position (Patient)" in note and paths[1].name in note


@pytest.mark.slow
def test_unreadable_values_of_attributes_not_used_are_noted_not_printed(tmp_path, caplog):
    paths = write_ct_series(tmp_path, [0.0, 5.0])
    ds = pydicom.dcmread(paths[0])
    put_raw(ds, "AcquisitionNumber", b"x1")
    put_raw(ds, "StudyInstanceUID", b"1.2.840.01.5")  # a leading zero: accepted, as the node accepts it
    save_implicit(ds, paths[0])
    ds = pydicom.dcmread(paths[1])
    put_raw(ds, "StudyInstanceUID", b"1.2.840.01.5")
    save_implicit(ds, paths[1])
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning reaching the caller fails the test
        (series,), rejected = read_dicom_folder(tmp_path)
        derived = denoise_series(series, TINY, DerivationSettings(), torch.device("cpu"))
        write_instances(derived.datasets, tmp_path / "out")
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("pydicom")]
    assert not rejected and len(derived.datasets) == 2
    (note,) = [p for p in series.problems if "Acquisition Number" in p]
    assert "x1" in note and "Please see" not in note
    assert not any("UI" in p for p in series.problems)


def test_a_text_file_is_named_not_dicom_in_our_words(tmp_path):
    (tmp_path / "notes.txt").write_text("not dicom")
    (tmp_path / "empty.dcm").write_bytes(b"")
    _, rejected = read_dicom_folder(tmp_path)
    reasons = {r.path.name: r.reason for r in rejected}
    assert reasons["notes.txt"] == "not a readable DICOM file (no DICM preamble: not a DICOM file)"
    assert reasons["empty.dcm"].startswith("not a readable DICOM file (")
    assert not any("force" in reason for reason in reasons.values())


@pytest.mark.parametrize(
    "keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]
)
@pytest.mark.parametrize("bad", [b"1.2.abc ", b"1..2", b"1.2.3." + b"4" * 64])
def test_invalid_identifiers_are_refused_with_the_reason(tmp_path, keyword, bad):
    paths = write_ct_series(tmp_path, [0.0, 5.0])
    ds = pydicom.dcmread(paths[0])
    put_raw(ds, keyword, bad)
    save_implicit(ds, paths[0])
    (series,), rejected = read_dicom_folder(tmp_path)
    (refused,) = rejected
    assert refused.path == paths[0] and not refused.forwardable
    assert refused.reason.startswith(f"{dictionary_description(keyword)} '")
    assert "is not a valid UID" in refused.reason
    assert len(series.frames) == 1


def test_objects_that_are_not_images_to_denoise_are_skipped_and_forwardable(tmp_path):
    write_ct_series(tmp_path, [0.0, 5.0])
    for name in ("liver.dcm", "rtdose.dcm", "rtplan.dcm", "SC_rgb.dcm"):
        shutil.copy(data_file(name), tmp_path / name)
    (tmp_path / "notes.txt").write_text("not dicom")
    bad_uid = pydicom.dcmread(data_file("rtdose.dcm"))
    put_raw(bad_uid, "SOPInstanceUID", b"1.2.abc ")
    save_implicit(bad_uid, tmp_path / "rtdose_bad_uid.dcm")

    series, rejected = read_dicom_folder(tmp_path)

    assert [len(s.frames) for s in series] == [2]
    by_name = {r.path.name: r for r in rejected}
    assert (
        by_name["liver.dcm"].reason
        == "Segmentation Storage objects are not denoised (not an image to denoise)"
    )
    assert (
        by_name["rtdose.dcm"].reason == "RT Dose Storage objects are not denoised (not an image to denoise)"
    )
    assert by_name["rtplan.dcm"].reason == "no pixel data (not an image)"
    forwardable = {name for name, r in by_name.items() if r.forwardable}
    assert forwardable == {"liver.dcm", "rtdose.dcm", "rtplan.dcm"}


def test_the_denoisable_classes_are_valid_image_storage_uids():
    assert len(DENOISABLE_SOP_CLASSES) >= 20
    for uid in DENOISABLE_SOP_CLASSES:
        assert uid_problem(uid) is None
        assert "Image Storage" in pydicom.uid.UID(uid).name, uid
        assert is_denoisable(uid) and is_denoisable(pydicom.uid.UID(uid))
    assert is_denoisable(pydicom.uid.CTImageStorage) and is_denoisable(pydicom.uid.EnhancedMRImageStorage)
    for uid in (pydicom.uid.SegmentationStorage, pydicom.uid.RTDoseStorage, "1.2.3", ""):
        assert not is_denoisable(uid)


def test_a_second_file_with_the_same_instance_uid_and_other_pixels_is_skipped_by_name(tmp_path):
    paths = write_ct_series(tmp_path, [0.0, 5.0, 10.0])
    kept = sorted(paths)[0]
    ds = pydicom.dcmread(kept)
    ds.PixelData = (ds.pixel_array + 7).astype(ds.pixel_array.dtype).tobytes()
    conflict = tmp_path / "zz_conflict.dcm"
    ds.save_as(conflict)
    shutil.copy(kept, tmp_path / "zz_identical.dcm")

    (series,), rejected = read_dicom_folder(tmp_path)

    (refused,) = rejected
    assert refused.path == conflict and not refused.forwardable
    assert (
        refused.reason == f"same SOP Instance UID as {kept.name} but different pixel data; {kept.name} kept"
    )
    assert "1 duplicate instance(s) ignored" in series.problems
    assert len(series.frames) == 3
    first = next(f for f in series.frames if f.path == kept)
    np.testing.assert_array_equal(first.pixels, pydicom.dcmread(kept).pixel_array)


def test_reading_never_raises_on_a_truncated_file(tmp_path):
    paths = write_ct_series(tmp_path, [0.0, 5.0])
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) // 2])
    (series,), rejected = read_dicom_files(paths)
    assert [r.path for r in rejected] == [paths[0]]
    assert len(series.frames) == 1
