"""Build the derived (denoised) DICOM objects that go back next to their sources.

A radiologist opens the derived series beside the original, so it must be a
complete, valid object in the same study: every attribute of the source is
kept (patient, study, frame of reference, geometry, pixel format, windowing),
then the derived-image provenance is added on top:

- new Series and SOP Instance UIDs from a configurable root; series number and
  description marked; content and instance-creation date/time set;
- Image Type DERIVED\\SECONDARY (and Frame Type for Enhanced objects);
- Derivation Description and Derivation Code Sequence (DCM 113087 "Smoothing",
  CID 7203), Source Image Sequence (DCM 121322); Enhanced (functional group)
  objects carry them only where their IOD defines them, in the Derivation Image
  functional group: per frame (each frame referencing its source frame), or in
  the shared groups where the source has no per-frame groups, with Source Image
  Evidence; a source with no functional groups at all (non-conformant) is
  described in Contributing Equipment and the private block only;
- a Contributing Equipment item (DCM 109102 "Processing Equipment");
- a private block ``N2D_DICOM 1`` with the settings, device, a hash of the
  source pixel data and the processing time.

Icon images, all private tags of the source (we cannot tell which depend on
pixel values) and Smallest/Largest Pixel Value (no longer true) are dropped.
Burned In Annotation is kept as it is: denoising is not annotation removal.
Lossy Image Compression is kept, and where the source itself was stored in a
lossy transfer syntax (JPEG baseline/extended, JPEG-LS near-lossless, JPEG 2000
and its HT form), the derived object says so: Lossy Image Compression 01 with
the method and ratio of that compression appended to the source's own, since
its pixels went through that compression even though the derived object is
written uncompressed.
"""

from __future__ import annotations

import copy
import uuid
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from pydicom.dataset import Dataset, FileMetaDataset, PrivateBlock
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from n2d_dicom import __version__
from n2d_dicom.atomic import atomic_path
from n2d_dicom.identity import pixel_hash
from n2d_dicom.measured import (
    Measured,
    anscombe_applied,
    as_ran,
    describe_measured,
    mode_ran,
    rician_sigmas,
    sampling_strides,
    wiener_sides,
)
from n2d_dicom.pydicom_warnings import quiet_value_warnings
from n2d_dicom.settings import N2DSettings

TransferSyntaxName = Literal["explicit-little", "implicit-little"]
PRIVATE_CREATOR = "N2D_DICOM 1"
PRIVATE_GROUP = 0x0011
DERIVATION_CODE = codes.cid7203.Smoothing
SOURCE_PURPOSE = codes.DCM.SourceImageForImageProcessingOperation
EQUIPMENT_PURPOSE = codes.DCM.ProcessingEquipment
MANUFACTURER = "n2d-dicom"
MODEL_NAME = "n2d-dicom Noise2Detail denoiser"
#: Enhanced MR attributes that the IOD allows only on ORIGINAL or MIXED images (MR Pulse Sequence
#: module and Bulk Motion Synchronization, Type 1C): a DERIVED image must not carry them.
ORIGINAL_ONLY = (
    "MRAcquisitionType",
    "PulseSequenceName",
    "EchoPulseSequence",
    "MultipleSpinEcho",
    "MultiPlanarExcitation",
    "PhaseContrast",
    "TimeOfFlightContrast",
    "ArterialSpinLabelingContrast",
    "Spoiling",
    "SteadyStatePulseSequence",
    "EchoPlanarPulseSequence",
    "SaturationRecovery",
    "SpectrallySelectedSuppression",
    "OversamplingPhase",
    "GeometryOfKSpaceTraversal",
    "RectilinearPhaseEncodeReordering",
    "SegmentedKSpaceTraversal",
    "CoverageOfKSpace",
    "NumberOfKSpaceTrajectories",
    "BulkMotionCompensationTechnique",
)
#: Lossy transfer syntaxes and their Lossy Image Compression Method (PS3.3 C.7.6.1.1.5.1).
LOSSY_METHODS = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",  # JPEG baseline (process 1)
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",  # JPEG extended (processes 2 and 4)
    **{f"1.2.840.10008.1.2.4.{n}": "ISO_10918_1" for n in (52, 53, 54, 55, 56, 59, 60, 61, 62, 63, 64)},
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",  # JPEG 2000 (may be lossy: taken as lossy)
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",  # High-Throughput JPEG 2000 (may be lossy)
    "1.2.840.10008.1.2.4.112": "ISO_18181_1",  # JPEG XL
}
#: Attributes of the General Image module that Enhanced (functional group) IODs define only inside the
#: Derivation Image functional group.
DERIVATION_ATTRIBUTES = ("DerivationDescription", "DerivationCodeSequence", "SourceImageSequence")
#: Longest Contribution Description (ST).
ST_LENGTH = 1024
#: Source attributes whose values describe the old pixels and are not carried over.
PIXEL_DEPENDENT = (
    "IconImageSequence",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
)


class DerivationSettings(BaseModel):
    """How derived series are labelled and encoded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uid_root: str | None = Field(
        None,
        pattern=r"^([0-9]+\.)+$",
        max_length=40,
        description="Root for new UIDs, ending in '.'; default: 2.25 (UUID-derived) UIDs.",
    )
    series_number_offset: int = Field(1000, ge=0, le=100_000, description="Added to the source's number.")
    series_description_suffix: str = Field(
        " [N2D]", max_length=20, description="Appended to the series description."
    )
    transfer_syntax: TransferSyntaxName = Field(
        "explicit-little", description="Transfer syntax of the written files (uncompressed)."
    )

    @property
    def transfer_syntax_uid(self) -> UID:
        return ExplicitVRLittleEndian if self.transfer_syntax == "explicit-little" else ImplicitVRLittleEndian


class Provenance(BaseModel):
    """What produced a derived series: recorded in every instance."""

    model_config = ConfigDict(frozen=True)

    n2d: N2DSettings
    device: str
    seconds: float
    measured: tuple[Measured, ...] = ()
    """What the engine measured and chose, one entry per stack (frame size) of the series."""
    warm_key: str | None = None
    """The protocol key of the cached pair the networks were warm-started from; None: cold."""


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _source_reference(source: Dataset, frames: list[int] | None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frames:
        item.ReferencedFrameNumber = frames if len(frames) > 1 else frames[0]
    item.PurposeOfReferenceCodeSequence = Sequence([_code_item(SOURCE_PURPOSE)])
    return item


def derivation_description(provenance: Provenance) -> str:
    """Derivation Description in words (at most 1024 characters, ST)."""
    n2d = as_ran(provenance.measured, provenance.n2d)
    return (
        f"Noise2Detail self-supervised denoising (n2d-dicom {__version__}): "
        f"{mode_ran(provenance.measured, provenance.n2d.mode)} mode, "
        f"{n2d.pipeline} pipeline, {n2d.steps} iterations, seed {n2d.seed}, "
        f"{n2d.width} channels, noise {n2d.noise}, Anscombe {n2d.anscombe}, Rician {n2d.rician}, "
        f"non-local means weight {n2d.nlm_blend:g}, Wiener {'on' if n2d.wiener else 'off'}, "
        f"{n2d.precision} on {provenance.device}"
        + (f"; measured: {describe_measured(provenance.measured)}" if provenance.measured else "")
    )


def new_uid(settings: DerivationSettings, identity: str | None = None) -> str:
    """A new UID under ``uid_root``: random, or the same every time for the same ``identity``.

    Reproducible UIDs let a job that is run again (after a crash, say) write and
    send the *same* instances again rather than a second copy of the series.
    """
    if identity is None:
        return str(generate_uid(prefix=settings.uid_root))
    if settings.uid_root is None:  # 2.25: the UID must be a UUID's integer value
        return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, identity).int}"
    return str(generate_uid(prefix=settings.uid_root, entropy_srcs=[identity]))


def derive_instance(
    source: Dataset,
    pixels: np.ndarray,
    series_uid: str,
    provenance: Provenance,
    settings: DerivationSettings,
    now: datetime,
) -> Dataset:
    """The derived copy of ``source`` holding ``pixels`` (stored values, same shape and dtype).

    Its SOP Instance UID follows from ``series_uid`` and the source's, so the same
    derived series always holds the same instance UIDs.
    """
    original = source.pixel_array
    if pixels.shape != original.shape or pixels.dtype.itemsize != original.dtype.itemsize:
        raise ValueError(
            f"{source.SOPInstanceUID}: denoised pixels {pixels.shape}/{pixels.dtype} do not match "
            f"the source {original.shape}/{original.dtype}"
        )
    derived = Dataset()  # a plain dataset: the source's encoding (e.g. big endian) is not carried over
    with quiet_value_warnings():
        for element in source:
            derived.add(copy.deepcopy(element))
    derived.remove_private_tags()
    for keyword in PIXEL_DEPENDENT:
        if keyword in derived:
            delattr(derived, keyword)

    sop_uid = new_uid(settings, f"{series_uid}/{source.SOPInstanceUID}")
    derived.SOPInstanceUID = sop_uid
    derived.SeriesInstanceUID = series_uid
    derived.SeriesNumber = int(source.get("SeriesNumber") or 0) + settings.series_number_offset
    description = str(source.get("SeriesDescription") or "")
    # The suffix's separator only separates: a source without a description gets the suffix alone.
    suffix = (
        settings.series_description_suffix if description else settings.series_description_suffix.lstrip()
    )
    derived.SeriesDescription = description[: 64 - len(suffix)] + suffix
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    derived.ContentDate, derived.ContentTime = date, time
    derived.InstanceCreationDate, derived.InstanceCreationTime = date, time
    enhanced = is_enhanced(source)
    derived.ImageType = _derived_type(source.get("ImageType"), enhanced)
    if enhanced:
        for keyword in ORIGINAL_ONLY:
            if keyword in derived:
                delattr(derived, keyword)

    description = derivation_description(provenance)
    if enhanced:
        for keyword in DERIVATION_ATTRIBUTES:
            if keyword in derived:
                delattr(derived, keyword)
        _mark_frames_derived(derived, source, description)
    else:
        derived.DerivationDescription = description
        derived.DerivationCodeSequence = Sequence([_code_item(DERIVATION_CODE)])
        derived.SourceImageSequence = Sequence([_source_reference(source, None)])
    _mark_lossy_history(derived, source)
    _add_contributing_equipment(derived, provenance, now)
    _add_private_block(derived, source, provenance)

    derived.PixelData = np.ascontiguousarray(pixels, dtype=original.dtype.newbyteorder("<")).tobytes()
    derived["PixelData"].VR = "OW" if int(source.BitsAllocated) > 8 else "OB"
    derived.file_meta = _file_meta(derived, settings)
    return derived


def is_enhanced(source: Dataset) -> bool:
    """Enhanced (multi-frame functional group) IODs, which have stricter Image Type rules."""
    return "PerFrameFunctionalGroupsSequence" in source or "Enhanced" in source.SOPClassUID.name


def _derived_type(image_type: object, enhanced: bool = False) -> list[str]:
    """DERIVED\\SECONDARY followed by the source's values 3 onwards (value 3 is required).

    Enhanced CT/MR IODs allow only PRIMARY as value 2, so they get DERIVED\\PRIMARY.
    """
    if not image_type:
        values: list[str] = []
    elif isinstance(image_type, str):
        values = [image_type]
    else:
        values = [str(v) for v in image_type]  # type: ignore[attr-defined]
    rest = values[2:] or ["OTHER"]
    return ["DERIVED", "PRIMARY" if enhanced else "SECONDARY", *rest]


def _hierarchical_reference(source: Dataset) -> Dataset:
    """The source as a Hierarchical SOP Instance Reference (study, series, instance)."""
    instance = Dataset()
    instance.ReferencedSOPClassUID = source.SOPClassUID
    instance.ReferencedSOPInstanceUID = source.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = source.SeriesInstanceUID
    series.ReferencedSOPSequence = Sequence([instance])
    study = Dataset()
    study.StudyInstanceUID = source.StudyInstanceUID
    study.ReferencedSeriesSequence = Sequence([series])
    return study


def _derivation_image(source: Dataset, description: str, frames: list[int] | None) -> Sequence:
    """A Derivation Image functional group: the derivation and the source (frames) it came from."""
    image = Dataset()
    image.DerivationDescription = description
    image.DerivationCodeSequence = Sequence([_code_item(DERIVATION_CODE)])
    image.SourceImageSequence = Sequence([_source_reference(source, frames)])
    return Sequence([image])


def _mark_frames_derived(derived: Dataset, source: Dataset, description: str) -> None:
    """Functional-group objects: Frame Type DERIVED, the Derivation Image group, evidence.

    Each frame references its own source frame where the source has per-frame
    groups, else the shared groups reference the source. A functional group lives
    in the shared or the per-frame groups, never both. A source with neither
    (which its IOD requires, but some writers omit) gets shared groups holding the
    Derivation Image macro alone: the derived object must say what it came from, and
    that is the one place its IOD allows it (with Source Image Evidence beside it).
    """
    per_frame = derived.get("PerFrameFunctionalGroupsSequence")
    shared = derived.get("SharedFunctionalGroupsSequence") or []
    if not per_frame and not shared:
        shared = [Dataset()]
        derived.SharedFunctionalGroupsSequence = Sequence(shared)
    if per_frame:
        for index, frame in enumerate(per_frame, start=1):
            frame.DerivationImageSequence = _derivation_image(source, description, [index])
        for group in shared:
            if "DerivationImageSequence" in group:
                del group.DerivationImageSequence
    elif shared:
        shared[0].DerivationImageSequence = _derivation_image(source, description, None)
    derived.SourceImageEvidenceSequence = Sequence([_hierarchical_reference(source)])
    for groups in (shared, per_frame or []):
        for group in groups:
            for element in group:
                if element.VR != "SQ" or not element.keyword.endswith("FrameTypeSequence"):
                    continue
                for item in element.value:
                    if "FrameType" in item:
                        item.FrameType = _derived_type(item.FrameType, enhanced=True)


def _add_contributing_equipment(derived: Dataset, provenance: Provenance, now: datetime) -> None:
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = Sequence([_code_item(EQUIPMENT_PURPOSE)])
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = MODEL_NAME
    item.SoftwareVersions = __version__
    item.ContributionDateTime = now.strftime("%Y%m%d%H%M%S.%f")
    item.ContributionDescription = derivation_description(provenance)[:ST_LENGTH]
    existing = list(derived.get("ContributingEquipmentSequence") or [])
    derived.ContributingEquipmentSequence = Sequence([*existing, item])


def _mark_lossy_history(derived: Dataset, source: Dataset) -> None:
    """Lossy Image Compression 01, method and ratio, where the source's transfer syntax was lossy.

    The compression is appended to the source's own history, unless the source
    already records it last (a writer storing a lossy file usually does). A source that
    records it by its ratio alone (one ratio more than methods) gets the method added, so that
    methods and ratios pair up; no ratio is added, since n2d compressed nothing.
    """
    meta = getattr(source, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    method = LOSSY_METHODS.get(syntax)
    if method is None:
        return
    methods = [str(v) for v in _as_list(source.get("LossyImageCompressionMethod"))]
    ratios = [str(v) for v in _as_list(source.get("LossyImageCompressionRatio"))]
    if source.get("LossyImageCompression") == "01" and len(ratios) == len(methods) + 1:
        derived.LossyImageCompressionMethod = [*methods, method]
        return
    if source.get("LossyImageCompression") == "01" and methods[-1:] == [method]:
        return
    derived.LossyImageCompression = "01"
    derived.LossyImageCompressionMethod = [*methods, method]
    ratio = _compression_ratio(source)
    if ratio is not None:
        derived.LossyImageCompressionRatio = [*ratios, ratio]


def _as_list(value: object) -> list[object]:
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes | int | float):
        return [value]
    return list(value)  # type: ignore[call-overload]


def _compression_ratio(source: Dataset) -> str | None:
    """Uncompressed over compressed size of the source's pixel data, as a DS of 2 decimals."""
    frames = int(source.get("NumberOfFrames") or 1)
    samples = int(source.get("SamplesPerPixel") or 1)
    uncompressed = int(source.Rows) * int(source.Columns) * frames * samples * int(source.BitsAllocated) // 8
    compressed = len(source.PixelData)
    return f"{uncompressed / compressed:.2f}" if compressed else None


def _add_private_block(derived: Dataset, source: Dataset, provenance: Provenance) -> None:
    block = derived.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    n2d = as_ran(provenance.measured, provenance.n2d)
    block.add_new(0x01, "LO", __version__)
    ran = mode_ran(provenance.measured, provenance.n2d.mode)
    block.add_new(0x02, "CS", ran.upper().replace("-", "_").replace("/", "\\"))
    block.add_new(0x03, "UL", n2d.steps)
    block.add_new(0x04, "UL", n2d.seed)
    block.add_new(0x05, "LO", provenance.device[:64])
    block.add_new(0x06, "US", n2d.width)
    block.add_new(0x07, "LO", pixel_hash(source))
    block.add_new(0x08, "FD", float(provenance.seconds))
    block.add_new(0x09, "CS", n2d.pipeline.upper())
    block.add_new(0x0A, "CS", n2d.noise.upper())
    block.add_new(0x0B, "CS", n2d.anscombe.upper())
    block.add_new(0x0C, "FD", float(n2d.nlm_blend))
    block.add_new(0x0D, "CS", "ON" if n2d.wiener else "OFF")
    measured = provenance.measured
    if measured:
        block.add_new(0x0E, "US", sampling_strides(measured))
        block.add_new(0x0F, "CS", "YES" if anscombe_applied(measured) else "NO")
        sides = wiener_sides(measured)
        if sides:
            block.add_new(0x10, "US", sides)
    _add_warm_start(block, provenance)
    _add_rician(block, n2d, measured)


def _add_rician(block: PrivateBlock, n2d: N2DSettings, measured: tuple[Measured, ...]) -> None:
    """The ``rician`` setting (xx14), the receiver channels assumed (xx15) and the noise per channel
    of the magnitude floor taken out, in unit values of each stack (xx16; absent where none was)."""
    block.add_new(0x14, "CS", n2d.rician.upper())
    block.add_new(0x15, "US", n2d.coils)
    sigmas = rician_sigmas(measured)
    if sigmas:
        block.add_new(0x16, "FD", sigmas)


def _add_warm_start(block: PrivateBlock, provenance: Provenance) -> None:
    """Whether the networks were warm-started (xx11), from which cached pair (xx12, its digest) and
    protocol (xx13, the cache's key)."""
    warm = sorted({m.warm_from for m in provenance.measured if m.warm_from})
    block.add_new(0x11, "CS", "WARM" if warm else "COLD")
    if warm:
        block.add_new(0x12, "LO", warm)
        if provenance.warm_key:
            block.add_new(0x13, "LT", provenance.warm_key[:10240])


def _file_meta(derived: Dataset, settings: DerivationSettings) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = derived.SOPClassUID
    meta.MediaStorageSOPInstanceUID = derived.SOPInstanceUID
    meta.TransferSyntaxUID = settings.transfer_syntax_uid
    return meta


def write_instances(datasets: list[Dataset], folder: Path, private: bool = False) -> list[Path]:
    """Write each dataset as ``<SOP Instance UID>.dcm`` in ``folder``, atomically; readable as the
    umask allows, or by the owner alone where ``private`` (the node's spool).

    Values copied from the source are not warned about again
    (:func:`n2d_dicom.pydicom_warnings.quiet_value_warnings`).
    """
    paths = []
    for dataset in datasets:
        path = folder / f"{dataset.SOPInstanceUID}.dcm"
        with atomic_path(path, private=private) as tmp, quiet_value_warnings():
            dataset.save_as(tmp, enforce_file_format=True)
        paths.append(path)
    return paths
