"""Derived series written to disk, read back with pydicom and checked by dciodvfy."""

import hashlib
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from n2d_dicom.derive import (
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    DerivationSettings,
    Provenance,
    derivation_description,
    derive_instance,
    write_instances,
)
from n2d_dicom.dicom_read import read_dicom_files, read_dicom_folder
from n2d_dicom.measured import Measured
from n2d_dicom.pipeline import denoise_series
from n2d_dicom.settings import N2DSettings
from tests.n2d_dicom.conftest import data_file, write_ct_series

QUICK = N2DSettings(iterations=3, channels=8)
DEFAULT_DERIVATION = DerivationSettings()
KEPT = (
    "PatientName",
    "PatientID",
    "StudyInstanceUID",
    "FrameOfReferenceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "RescaleSlope",
    "RescaleIntercept",
    "WindowCenter",
    "WindowWidth",
    "InstanceNumber",
    "SOPClassUID",
    "Modality",
)


def derive_folder(folder: Path, out: Path, settings=QUICK, derivation=DEFAULT_DERIVATION):
    (series,), rejected = read_dicom_folder(folder)
    assert not rejected
    derived = denoise_series(series, settings, derivation, torch.device("cpu"))
    paths = write_instances(derived.datasets, out / derived.series_uid)
    return series, derived, [pydicom.dcmread(p) for p in paths]


@pytest.fixture
def ct_series(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    paths = write_ct_series(folder, [0.0, 5.0, 10.0])
    for path in paths:  # give the source what a real scanner writes, to see what survives
        ds = pydicom.dcmread(path)
        ds.LossyImageCompression = "00"
        ds.BurnedInAnnotation = "NO"
        ds.IconImageSequence = [pydicom.Dataset()]
        ds.add_new(0x00280106, "SS", int(ds.pixel_array.min()))  # Smallest Image Pixel Value
        ds.private_block(0x0029, "SCANNER VENDOR", create=True).add_new(0x10, "LO", "vendor detail")
        ds.save_as(path)
    return folder


@pytest.mark.slow
def test_derived_series_keeps_the_source_metadata_and_gets_new_uids(ct_series, tmp_path):
    series, derived, written = derive_folder(ct_series, tmp_path / "out")
    sources = {str(f.dataset.InstanceNumber): f.dataset for f in series.frames}
    assert len(written) == 3
    assert {ds.SeriesInstanceUID for ds in written} == {derived.series_uid} != {series.series_uid}
    for ds in written:
        source = sources[str(ds.InstanceNumber)]
        for keyword in KEPT:
            assert ds.get(keyword) == source.get(keyword), keyword
        assert ds.SOPInstanceUID != source.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SeriesNumber == source.SeriesNumber + 1000
        assert ds.SeriesDescription == f"{source.get('SeriesDescription') or ''} [N2D]".lstrip()
        assert ds.ContentDate and ds.InstanceCreationDate and ds.InstanceCreationTime
        assert ds.LossyImageCompression == "00" and ds.BurnedInAnnotation == "NO"
        for dropped in ("IconImageSequence", "SmallestImagePixelValue"):
            assert dropped not in ds
        assert all(elem.tag.group != 0x0029 for elem in ds)


@pytest.mark.slow
def test_pixels_are_denoised_stored_values_of_the_same_format(ct_series, tmp_path):
    series, _, written = derive_folder(ct_series, tmp_path / "out")
    sources = {str(f.dataset.InstanceNumber): f.dataset.pixel_array for f in series.frames}
    for ds in written:
        before, after = sources[str(ds.InstanceNumber)], ds.pixel_array
        assert after.dtype == before.dtype and after.shape == before.shape
        assert not np.array_equal(after, before)
    volume = np.stack(list(sources.values()))
    denoised = np.stack([ds.pixel_array for ds in written])
    assert volume.min() <= denoised.min() and denoised.max() <= volume.max()


@pytest.mark.slow
def test_provenance_is_recorded(ct_series, tmp_path):
    series, _, written = derive_folder(ct_series, tmp_path / "out")
    by_number = {str(f.dataset.InstanceNumber): f.dataset for f in series.frames}
    for ds in written:
        source = by_number[str(ds.InstanceNumber)]
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", *list(source.ImageType)[2:]]
        assert "Noise2Detail" in ds.DerivationDescription and "3 iterations" in ds.DerivationDescription
        code = ds.DerivationCodeSequence[0]
        assert (code.CodeValue, code.CodingSchemeDesignator) == ("113087", "DCM")
        (reference,) = ds.SourceImageSequence
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert reference.ReferencedSOPClassUID == source.SOPClassUID
        assert reference.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        equipment = ds.ContributingEquipmentSequence[-1]
        assert equipment.Manufacturer == "n2d-dicom" and equipment.SoftwareVersions
        assert equipment.ContributionDateTime and equipment.ContributionDescription
        assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
        assert block[0x02].value == "PER_SERIES" and block[0x03].value == 3 and block[0x06].value == 8
        assert block[0x05].value == "cpu"
        assert block[0x07].value == hashlib.sha256(source.PixelData).hexdigest()
        assert block[0x08].value > 0
        assert block[0x0A].value == "AUTO" and block[0x0B].value == "AUTO"  # noise, anscombe settings
        assert block[0x0C].value == 0.5  # non-local means weight
        assert block[0x0D].value == "ON"  # Wiener step
        # what the image decided: stride, Anscombe applied, Wiener window
        assert block[0x0E].value in (1, 2, 3, 4) and block[0x0F].value in ("YES", "NO")
        assert block[0x10].value in (8, 16, 24)
        assert block[0x14].value == "OFF" and block[0x15].value == 1  # rician: auto is off for CT
        assert 0x16 not in block  # no magnitude floor taken out
        assert "; measured: sampling stride" in ds.DerivationDescription


def test_a_magnitude_floor_taken_out_is_recorded_with_its_sigma():
    measured = (Measured(stride=1, stabilised=False, wiener_side=8, rician_sigma=0.0125),)
    provenance = Provenance(
        n2d=QUICK.model_copy(update={"rician": "on"}), device="cpu", seconds=1.0, measured=measured
    )
    source = pydicom.dcmread(data_file("MR_small.dcm"))
    derived = derive_instance(
        source,
        source.pixel_array,
        pydicom.uid.generate_uid(),
        provenance,
        DerivationSettings(),
        datetime.now(),
    )
    block = derived.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    assert (block[0x14].value, block[0x15].value, block[0x16].value) == ("ON", 1, 0.0125)
    assert "Rician on" in derived.DerivationDescription
    assert derived.DerivationDescription.endswith("Rician floor removed (sigma 0.0125), Wiener window 8")


def test_provenance_says_what_each_stack_measured():
    measured = (Measured(stride=3, stabilised=False, wiener_side=16), Measured(1, True, 8))
    provenance = Provenance(n2d=QUICK, device="cpu", seconds=1.0, measured=measured)
    assert derivation_description(provenance).endswith(
        "; measured: sampling stride 1/3, Anscombe applied, no Rician correction, Wiener window 8/16"
    )
    off = Provenance(n2d=QUICK, device="cpu", seconds=1.0, measured=(Measured(1, False, None),))
    assert derivation_description(off).endswith(
        "; measured: sampling stride 1, Anscombe not applied, no Rician correction"
    )


@pytest.mark.slow
def test_uid_root_and_labels_are_configurable(ct_series, tmp_path):
    derivation = DerivationSettings(
        uid_root="1.2.826.0.1.3680043.10.999.", series_number_offset=5, series_description_suffix=" denoised"
    )
    _, derived, written = derive_folder(ct_series, tmp_path / "out", derivation=derivation)
    assert derived.series_uid.startswith("1.2.826.0.1.3680043.10.999.")
    assert all(ds.SOPInstanceUID.startswith("1.2.826.0.1.3680043.10.999.") for ds in written)
    assert all(ds.SeriesDescription == "denoised" for ds in written)  # the source has none


@pytest.mark.slow
def test_enhanced_ct_frames_reference_their_source_frames(tmp_path):
    (series,), _ = read_dicom_files([data_file("eCT_Supplemental.dcm")])
    derived = denoise_series(series, QUICK, DerivationSettings(), torch.device("cpu"))
    (ds,) = derived.datasets
    assert list(ds.ImageType)[:2] == ["DERIVED", "PRIMARY"]
    for number, frame in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert source.ReferencedFrameNumber == number
        assert source.ReferencedSOPInstanceUID == series.datasets[0].SOPInstanceUID
    assert ds.pixel_array.shape == series.datasets[0].pixel_array.shape


DCIODVFY = shutil.which("dciodvfy")
VALIDATED = [
    "CT_small.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "emri_small_jpeg_ls_lossless.dcm",
    "eCT_Supplemental.dcm",
    "693_J2KR.dcm",
    "JPGExtended.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm",
]


def dciodvfy_errors(path: Path) -> set[str]:
    assert DCIODVFY, "dciodvfy not found: apt-get install dicom3tools"
    result = subprocess.run([DCIODVFY, "-new", str(path)], capture_output=True, text=True, timeout=60)
    return {line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")}


@pytest.mark.slow
@pytest.mark.parametrize("name", VALIDATED)
def test_derived_objects_add_no_dciodvfy_error_to_their_source(name, tmp_path):
    (series,), _ = read_dicom_files([data_file(name)])
    derived = denoise_series(series, QUICK, DerivationSettings(), torch.device("cpu"))
    (path,) = write_instances(derived.datasets, tmp_path)
    assert added_errors(path, data_file(name)) == set()


def added_errors(derived: Path, source: Path) -> set[str]:
    """The dciodvfy errors of ``derived`` its ``source`` does not have, less those of shared
    functional groups made for a source that had none (they lack the macros the source lacked)."""
    added = dciodvfy_errors(derived) - dciodvfy_errors(source)
    if "SharedFunctionalGroupsSequence" in pydicom.dcmread(source, stop_before_pixels=True):
        return added
    made = "</SharedFunctionalGroupsSequence(5200,9229)[1]/"
    return {e for e in added if not (made in e and "Missing attribute for Type 1" in e)}


@pytest.mark.slow
def test_implicit_little_endian_output_can_be_chosen(ct_series, tmp_path):
    derivation = DerivationSettings(transfer_syntax="implicit-little")
    _, _, written = derive_folder(ct_series, tmp_path / "out", derivation=derivation)
    assert {ds.file_meta.TransferSyntaxUID for ds in written} == {pydicom.uid.ImplicitVRLittleEndian}


def provenance_for_tests() -> Provenance:
    return Provenance(n2d=QUICK, device="cpu", seconds=1.0)


def lossy_source(name: str, tmp_path: Path, **attributes) -> Path:
    """A real lossy-compressed file with the identifiers a derived series needs (pixel data untouched)."""
    ds = pydicom.dcmread(data_file(name))
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        if keyword not in ds:
            setattr(ds, keyword, pydicom.uid.generate_uid())
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    path = tmp_path / name
    ds.save_as(path)
    return path


@pytest.mark.parametrize(
    "name, method",
    [
        ("JPEGLSNearLossless_16.dcm", "ISO_14495_1"),
        ("JPGExtended.dcm", "ISO_10918_1"),
        ("MR2_J2KI.dcm", "ISO_15444_1"),
    ],
)
def test_sources_in_a_lossy_transfer_syntax_give_derived_objects_marked_lossy(name, method, tmp_path):
    path = lossy_source(name, tmp_path)
    source = pydicom.dcmread(path)
    derived = derive_instance(
        source, source.pixel_array, "1.2.3", provenance_for_tests(), DEFAULT_DERIVATION, datetime.now()
    )
    assert derived.LossyImageCompression == "01"
    methods = derived.LossyImageCompressionMethod
    assert (methods if isinstance(methods, str) else list(methods)[-1]) == method
    ratios = derived.LossyImageCompressionRatio
    last_ratio = float(ratios if not isinstance(ratios, pydicom.multival.MultiValue) else ratios[-1])
    assert last_ratio > 1
    (written,) = write_instances([derived], tmp_path / "out")
    assert dciodvfy_errors(written) - dciodvfy_errors(path) == set()


def test_a_lossy_compression_recorded_by_its_ratio_alone_gets_its_method_and_no_second_ratio(tmp_path):
    source = pydicom.dcmread(data_file("693_J2KI.dcm"))  # 01, a ratio, no method
    derived = derive_instance(
        source,
        source.pixel_array,
        pydicom.uid.generate_uid(),
        provenance_for_tests(),
        DerivationSettings(),
        datetime.now(),
    )
    assert derived.LossyImageCompression == "01"
    assert derived.LossyImageCompressionMethod == "ISO_15444_1"
    assert float(derived.LossyImageCompressionRatio) == pytest.approx(
        float(source.LossyImageCompressionRatio)
    )


def test_a_lossy_history_is_extended_not_replaced(tmp_path):
    path = lossy_source(
        "JPEGLSNearLossless_16.dcm",
        tmp_path,
        LossyImageCompression="01",
        LossyImageCompressionMethod="ISO_10918_1",
        LossyImageCompressionRatio="10",
    )
    source = pydicom.dcmread(path)
    derived = derive_instance(
        source, source.pixel_array, "1.2.3", provenance_for_tests(), DEFAULT_DERIVATION, datetime.now()
    )
    assert list(derived.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_14495_1"]
    assert len(derived.LossyImageCompressionRatio) == 2 and derived.LossyImageCompressionRatio[0] == 10


def test_a_lossy_compression_already_recorded_is_not_recorded_twice(tmp_path):
    path = lossy_source(
        "JPEGLSNearLossless_16.dcm",
        tmp_path,
        LossyImageCompression="01",
        LossyImageCompressionMethod="ISO_14495_1",
        LossyImageCompressionRatio="3",
    )
    source = pydicom.dcmread(path)
    derived = derive_instance(
        source, source.pixel_array, "1.2.3", provenance_for_tests(), DEFAULT_DERIVATION, datetime.now()
    )
    assert derived.LossyImageCompressionMethod == "ISO_14495_1"
    assert derived.LossyImageCompressionRatio == 3


@pytest.mark.slow
def test_the_contribution_description_is_the_whole_derivation_description(ct_series, tmp_path):
    _, _, written = derive_folder(ct_series, tmp_path / "out")
    for ds in written:
        description = ds.ContributingEquipmentSequence[-1].ContributionDescription
        assert len(description) > 64
        assert description == ds.DerivationDescription


NOT_IN_IOD = "Attribute is not present in standard DICOM IOD"


def dciodvfy_not_in_iod(path: Path) -> set[str]:
    assert DCIODVFY, "dciodvfy not found: apt-get install dicom3tools"
    result = subprocess.run([DCIODVFY, "-new", str(path)], capture_output=True, text=True, timeout=60)
    return {line for line in (result.stdout + result.stderr).splitlines() if NOT_IN_IOD in line}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["emri_small.dcm", "eCT_Supplemental.dcm"])
def test_enhanced_objects_carry_their_derivation_only_in_the_functional_groups(name, tmp_path):
    (series,), _ = read_dicom_files([data_file(name)])
    derived = denoise_series(series, QUICK, DerivationSettings(), torch.device("cpu"))
    (ds,) = derived.datasets
    for keyword in ("DerivationDescription", "DerivationCodeSequence", "SourceImageSequence"):
        assert keyword not in ds
    source = series.datasets[0]
    assert "Noise2Detail" in ds.ContributingEquipmentSequence[-1].ContributionDescription
    if "PerFrameFunctionalGroupsSequence" in source:
        groups = list(ds.PerFrameFunctionalGroupsSequence)
        assert "DerivationImageSequence" not in ds.SharedFunctionalGroupsSequence[0]
        evidence = ds.SourceImageEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        assert evidence.ReferencedSOPInstanceUID == source.SOPInstanceUID
    else:  # emri_small has no functional groups at all: the shared groups say what it came from
        groups = list(ds.SharedFunctionalGroupsSequence)
        assert len(groups) == 1 and "PerFrameFunctionalGroupsSequence" not in ds
    evidence = ds.SourceImageEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert evidence.ReferencedSOPInstanceUID == source.SOPInstanceUID
    for group in groups:
        (image,) = group.DerivationImageSequence
        assert "Noise2Detail" in image.DerivationDescription
        assert image.DerivationCodeSequence[0].CodeValue == "113087"
        assert image.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    (path,) = write_instances(derived.datasets, tmp_path)
    assert dciodvfy_not_in_iod(path) - dciodvfy_not_in_iod(data_file(name)) == set()
    assert added_errors(path, data_file(name)) == set()


@pytest.mark.parametrize(
    ("description", "expected"), [(None, "[N2D]"), ("", "[N2D]"), ("Head", "Head [N2D]")]
)
def test_the_series_description_suffix_has_no_leading_space_without_a_description(description, expected):
    source = pydicom.dcmread(data_file("CT_small.dcm"))
    if description is not None:
        source.SeriesDescription = description
    derived = derive_instance(
        source, source.pixel_array, "1.2.3", provenance_for_tests(), DEFAULT_DERIVATION, datetime.now()
    )
    assert derived.SeriesDescription == expected
