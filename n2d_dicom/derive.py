"""Build the derived (denoised) DICOM objects that go back next to their sources.

A radiologist opens the derived series beside the original, so it must be a
complete, valid object in the same study: every attribute of the source is
kept (patient, study, frame of reference, geometry, pixel format, windowing),
then the derived-image provenance is added on top:

- new Series and SOP Instance UIDs from a configurable root; series number and
  description marked; content and instance-creation date/time set;
- Image Type DERIVED\\SECONDARY (and Frame Type for Enhanced objects);
- Derivation Description and Derivation Code Sequence (DCM 113087 "Smoothing",
  CID 7203), Source Image Sequence (DCM 121322), per frame for Enhanced objects
  through the Derivation Image functional group;
- a Contributing Equipment item (DCM 109102 "Processing Equipment");
- a private block ``N2D_DICOM 1`` with the settings, device, a hash of the
  source pixel data and the processing time.

Icon images, all private tags of the source (we cannot tell which depend on
pixel values) and Smallest/Largest Pixel Value (no longer true) are dropped.
Lossy Image Compression and Burned In Annotation are kept as they are:
denoising is neither compression nor annotation removal.
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from datetime import datetime
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from n2d_dicom import __version__
from n2d_dicom.n2d import Measured
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


def sampling_strides(measured: tuple[Measured, ...]) -> list[int]:
    """The distinct sampling strides N2D used (1: white noise)."""
    return sorted({m.stride for m in measured})


def wiener_sides(measured: tuple[Measured, ...]) -> list[int]:
    """The distinct window sides of the Wiener step (empty where it is off)."""
    return sorted({m.wiener_side for m in measured if m.wiener_side is not None})


def anscombe_applied(measured: tuple[Measured, ...]) -> bool:
    """Whether the generalised Anscombe transform ran on any stack."""
    return any(m.stabilised for m in measured)


def describe_measured(measured: tuple[Measured, ...]) -> str:
    """What the images decided, in words: the settings' ``auto`` choices as they came out."""
    sides = wiener_sides(measured)
    return (
        f"sampling stride {'/'.join(map(str, sampling_strides(measured)))}, "
        f"Anscombe {'applied' if anscombe_applied(measured) else 'not applied'}"
        + (f", Wiener window {'/'.join(map(str, sides))}" if sides else "")
    )


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
    n2d = provenance.n2d
    return (
        f"Noise2Detail self-supervised denoising (n2d-dicom {__version__}): {n2d.mode} mode, "
        f"{n2d.pipeline} pipeline, {n2d.iterations} iterations, seed {n2d.seed}, "
        f"{n2d.channels} channels, noise {n2d.noise}, Anscombe {n2d.anscombe}, "
        f"non-local means weight {n2d.nlm_blend:g}, Wiener {'on' if n2d.wiener else 'off'}, "
        f"{n2d.precision} on {provenance.device}"
        + (f"; measured: {describe_measured(provenance.measured)}" if provenance.measured else "")
    )


def pixel_hash(source: Dataset) -> str:
    """SHA-256 of the source's Pixel Data as stored (hex, 64 characters)."""
    return hashlib.sha256(bytes(source.PixelData)).hexdigest()


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
    suffix = settings.series_description_suffix
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

    derived.DerivationDescription = derivation_description(provenance)
    derived.DerivationCodeSequence = Sequence([_code_item(DERIVATION_CODE)])
    if "PerFrameFunctionalGroupsSequence" in source:
        _mark_frames_derived(derived, source)
    else:
        derived.SourceImageSequence = Sequence([_source_reference(source, None)])
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


def _mark_frames_derived(derived: Dataset, source: Dataset) -> None:
    """Functional-group objects: Frame Type DERIVED, a Derivation Image item per frame, evidence."""
    for index, frame in enumerate(derived.PerFrameFunctionalGroupsSequence, start=1):
        image = Dataset()
        image.DerivationDescription = derived.DerivationDescription
        image.DerivationCodeSequence = Sequence([_code_item(DERIVATION_CODE)])
        image.SourceImageSequence = Sequence([_source_reference(source, [index])])
        frame.DerivationImageSequence = Sequence([image])
    derived.SourceImageEvidenceSequence = Sequence([_hierarchical_reference(source)])
    shared = derived.get("SharedFunctionalGroupsSequence") or []
    for groups in (shared, derived.PerFrameFunctionalGroupsSequence):
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
    item.ContributionDescription = derivation_description(provenance)[:64]
    existing = list(derived.get("ContributingEquipmentSequence") or [])
    derived.ContributingEquipmentSequence = Sequence([*existing, item])


def _add_private_block(derived: Dataset, source: Dataset, provenance: Provenance) -> None:
    block = derived.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    n2d = provenance.n2d
    block.add_new(0x01, "LO", __version__)
    block.add_new(0x02, "CS", n2d.mode.upper().replace("-", "_"))
    block.add_new(0x03, "UL", n2d.iterations)
    block.add_new(0x04, "UL", n2d.seed)
    block.add_new(0x05, "LO", provenance.device[:64])
    block.add_new(0x06, "US", n2d.channels)
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


def _file_meta(derived: Dataset, settings: DerivationSettings) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = derived.SOPClassUID
    meta.MediaStorageSOPInstanceUID = derived.SOPInstanceUID
    meta.TransferSyntaxUID = settings.transfer_syntax_uid
    return meta
