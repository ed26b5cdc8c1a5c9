"""Denoise a BIDS dataset's images into a BIDS derivative dataset (``n2d denoise-bids``).

A source image ``sub-01/anat/sub-01_T1w.nii.gz`` becomes
``<out>/sub-01/anat/sub-01_desc-n2d_T1w.nii.gz`` with a JSON sidecar that carries the source's
metadata (denoising changes no acquisition parameter, and BIDS requires a derivative to keep its
source's required fields), ``Sources`` as a BIDS URI into the raw dataset, ``SkullStripped``, and
what N2D was asked and what it measured. ``<out>/dataset_description.json`` declares the
derivative dataset, who generated it, and where ``raw`` (the source dataset) lies.

A job is done when its sidecar exists: the image is written first (atomically), its sidecar after,
so an interrupted run redoes only the image it was writing. BIDS names are parsed here with a small
parser rather than pybids, which brings pandas, SQLAlchemy and formulaic for what is a split on
``_`` and ``-``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from n2d_dicom import __version__
from n2d_dicom.atomic import atomic_path
from n2d_dicom.errors import N2DInputError
from n2d_dicom.measured import Measured
from n2d_dicom.nifti_io import NIFTI_SUFFIXES

if TYPE_CHECKING:
    import torch

    from n2d_dicom.settings import N2DSettings


class Datatype(str, Enum):  # noqa: UP042 (StrEnum would change what str() and f-strings give)
    """The datatypes whose images are denoised; others (fmap phase maps, perf...) are left alone."""

    ANAT = "anat"
    FUNC = "func"
    DWI = "dwi"


DATATYPES = tuple(d.value for d in Datatype)
#: The ``desc`` label the derivative images carry.
DESC = "n2d"
#: Where the derivative dataset goes, relative to the source dataset's root, unless told.
DEFAULT_OUT = PurePosixPath("derivatives") / DESC
#: The key of the source dataset in BIDS URIs (``bids:raw:sub-01/...``) and in ``DatasetLinks``.
SOURCE_KEY = "raw"
#: The BIDS version this module writes to.
BIDS_VERSION = "1.9.0"
#: The tool's name in ``GeneratedBy``.
GENERATOR = "n2d-dicom"
#: Images that are not magnitudes: denoising them as intensities would corrupt them.
NOT_MAGNITUDE_SUFFIXES = frozenset({"phase", "defacemask"})
#: Files that travel with an image, unchanged by denoising: DWI gradient tables.
COMPANION_EXTENSIONS = (".bval", ".bvec")
#: The entities in the order BIDS requires (its schema's ``rules.entities``), by their short keys;
#: ``desc`` is the last, so a derivative's ``desc`` goes right before the suffix.
ENTITY_ORDER = (
    "sub", "ses", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc", "stain", "rec",
    "dir", "run", "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi", "space", "split",
    "recording", "chunk", "seg", "res", "den", "label", "desc",
)  # fmt: skip


@dataclass(frozen=True)
class BidsName:
    """A BIDS file name: ``key-value`` entities joined by ``_``, then ``_suffix`` and the extension."""

    entities: tuple[tuple[str, str], ...]
    suffix: str
    extension: str

    @classmethod
    def parse(cls, name: str) -> BidsName | None:
        """The parts of ``name``, or None where it is not a BIDS name (keys and values must be
        alphanumeric, every entity known, each at most once)."""
        stem, dot, rest = name.partition(".")
        *pairs, suffix = stem.split("_")
        if not suffix.isalnum() or not suffix.isascii():
            return None
        entities = []
        for pair in pairs:
            key, dash, value = pair.partition("-")
            if not dash or key not in ENTITY_ORDER or not (value.isalnum() and value.isascii()):
                return None
            entities.append((key, value))
        if len({key for key, _ in entities}) != len(entities):
            return None
        return cls(tuple(entities), suffix, dot + rest)

    def get(self, key: str) -> str | None:
        """The value of entity ``key``, None where the name has none."""
        return dict(self.entities).get(key)

    def with_entity(self, key: str, value: str) -> BidsName:
        """This name with entity ``key`` set to ``value``, placed where BIDS' entity order puts it."""
        merged = {**dict(self.entities), key: value}
        ordered = tuple((k, merged[k]) for k in ENTITY_ORDER if k in merged)
        return BidsName(ordered, self.suffix, self.extension)

    def with_extension(self, extension: str) -> BidsName:
        """This name with another extension (``.json`` for the sidecar)."""
        return BidsName(self.entities, self.suffix, extension)

    def applies_to(self, image: BidsName) -> bool:
        """Whether this (sidecar or companion) name applies to ``image`` by BIDS' inheritance
        principle: same suffix, and every entity it names has the image's value."""
        return self.suffix == image.suffix and set(self.entities) <= set(image.entities)

    def __str__(self) -> str:
        return "_".join([*(f"{k}-{v}" for k, v in self.entities), self.suffix]) + self.extension


def derivative_name(source: BidsName) -> BidsName:
    """The derivative's name: ``desc-n2d``, or the source's own ``desc`` label with ``N2d`` after
    it (``desc-preprocN2d``) where the source is itself a derivative."""
    existing = source.get("desc")
    return source.with_entity("desc", DESC if existing is None else f"{existing}N2d")


@dataclass(frozen=True)
class BidsImage:
    """One NIfTI image of a BIDS dataset to denoise."""

    path: PurePosixPath
    """Relative to the dataset's root: ``sub-01/[ses-1/]anat/sub-01_T1w.nii.gz``."""
    name: BidsName

    @property
    def datatype(self) -> str:
        """The folder it lies in: ``anat``, ``func``, ``dwi``..."""
        return self.path.parent.name

    @property
    def output(self) -> PurePosixPath:
        """Its derivative's path, relative to the derivative dataset's root."""
        return self.path.parent / str(derivative_name(self.name))

    @property
    def sidecar(self) -> PurePosixPath:
        """Its derivative's JSON sidecar, relative to the derivative dataset's root."""
        return self.path.parent / str(derivative_name(self.name).with_extension(".json"))


def require_dataset(root: Path) -> dict[str, Any]:
    """The source dataset's ``dataset_description.json``; raises where ``root`` is not a BIDS dataset."""
    description = root / "dataset_description.json"
    if not description.is_file():
        raise N2DInputError(f"{root}: not a BIDS dataset (no dataset_description.json)")
    return _read_json(description)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise N2DInputError(f"{path}: cannot read as JSON ({exc})") from exc
    if not isinstance(content, dict):
        raise N2DInputError(f"{path}: expected a JSON object")
    return content


def _data_folders(root: Path) -> Iterator[Path]:
    """``sub-*/<datatype>`` and ``sub-*/ses-*/<datatype>`` folders, in name order."""
    for subject in sorted(root.glob("sub-*")):
        if not subject.is_dir():
            continue
        for level in [subject, *sorted(p for p in subject.glob("ses-*") if p.is_dir())]:
            yield from sorted(p for p in level.iterdir() if p.is_dir() and not p.name.startswith("ses-"))


def find_images(
    root: Path, datatypes: Collection[str] = DATATYPES, suffixes: Collection[str] = ()
) -> list[BidsImage]:
    """The NIfTI images of ``datatypes`` (and ``suffixes``, where given) below the dataset's subjects.

    Phase images (``part-phase``, ``_phase``) and deface masks are not magnitudes and are left out;
    so are files whose names are not BIDS names. ``derivatives/``, ``sourcedata/`` and ``code/``
    are never searched: only ``sub-*`` folders hold a dataset's data.
    """
    images = []
    for folder in _data_folders(root):
        if folder.name not in datatypes:
            continue
        for path in sorted(folder.iterdir()):
            name = BidsName.parse(path.name)
            if name is None or name.extension not in NIFTI_SUFFIXES or not path.is_file():
                continue
            if name.suffix in NOT_MAGNITUDE_SUFFIXES or name.get("part") == "phase":
                continue
            if suffixes and name.suffix not in suffixes:
                continue
            images.append(BidsImage(PurePosixPath(path.relative_to(root).as_posix()), name))
    return images


def _applicable(root: Path, image: BidsImage, extension: str) -> list[Path]:
    """Files with ``extension`` that apply to ``image`` by the inheritance principle, from the
    dataset's root down to the image's folder (the nearest last, so it wins)."""
    parts = image.path.parent.parts
    found: list[Path] = []
    for folder in [root.joinpath(*parts[:depth]) for depth in range(len(parts) + 1)]:
        level: list[tuple[int, Path]] = []
        for path in folder.glob(f"*{extension}"):
            name = BidsName.parse(path.name)
            if name is not None and name.extension == extension and name.applies_to(image.name):
                level.append((len(name.entities), path))
        found.extend(path for _, path in sorted(level))
    return found


def companion_files(root: Path, image: BidsImage) -> dict[str, Path]:
    """The files that travel with ``image`` unchanged (a DWI's ``.bval`` and ``.bvec``), by
    extension: the nearest that applies by the inheritance principle."""
    found = {extension: _applicable(root, image, extension) for extension in COMPANION_EXTENSIONS}
    return {extension: paths[-1] for extension, paths in found.items() if paths}


def source_metadata(root: Path, image: BidsImage) -> dict[str, Any]:
    """The image's metadata: its sidecars merged by the inheritance principle (nearest wins)."""
    merged: dict[str, Any] = {}
    for path in _applicable(root, image, ".json"):
        merged.update(_read_json(path))
    return merged


def dataset_link(root: Path, out: Path) -> str:
    """Where the source dataset lies, as ``DatasetLinks`` wants it: a path relative to the
    derivative dataset where that lies inside the source (``../..``), else a ``file://`` URI."""
    source, derivative = root.resolve(), out.resolve()
    if derivative.is_relative_to(source):
        return Path(os.path.relpath(source, derivative)).as_posix()
    return source.as_uri()


def bids_uri(path: PurePosixPath) -> str:
    """``path`` in the source dataset as a BIDS URI: ``bids:raw:sub-01/anat/sub-01_T1w.nii.gz``."""
    return f"bids:{SOURCE_KEY}:{path.as_posix()}"


def dataset_description(root: Path, out: Path) -> dict[str, Any]:
    """The derivative dataset's ``dataset_description.json``."""
    source = require_dataset(root)
    link = dataset_link(root, out)
    origin: dict[str, str] = {"URL": link}
    if isinstance(source.get("DatasetDOI"), str):
        origin["DOI"] = source["DatasetDOI"]
    return {
        "Name": f"{source.get('Name', root.name)}: denoised by Noise2Detail",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": GENERATOR,
                "Version": __version__,
                "Description": "Noise2Detail, data-free denoising trained on each image itself, "
                "slice by slice; 4-D images volume by volume.",
            }
        ],
        "SourceDatasets": [origin],
        "DatasetLinks": {SOURCE_KEY: link},
    }


def check_derivative_folder(out: Path) -> None:
    """Refuse to write into a folder that holds another tool's dataset."""
    description = out / "dataset_description.json"
    if not description.is_file():
        return
    content = _read_json(description)
    generators = content.get("GeneratedBy")
    names = [g.get("Name") for g in generators if isinstance(g, dict)] if isinstance(generators, list) else []
    if content.get("DatasetType") != "derivative" or GENERATOR not in names:
        raise N2DInputError(f"{out}: holds a dataset not generated by {GENERATOR}; choose another --out")


def write_json(path: Path, content: Mapping[str, Any]) -> None:
    """Write ``content`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def measured_record(measured: Measured) -> dict[str, Any]:
    """What the engine measured on one 3-D volume, as JSON: :class:`Measured`'s shown fields
    (the serialised networks are left out)."""
    record: dict[str, Any] = {}
    for field in fields(measured):
        if not field.repr:
            continue
        value = getattr(measured, field.name)
        record[field.name] = dict(value) if isinstance(value, Mapping) else value
    return record


def derivative_sidecar(
    source: Mapping[str, Any],
    image: BidsImage,
    settings: N2DSettings,
    measured: list[Measured],
    device: str,
    seconds: float,
) -> dict[str, Any]:
    """The derivative image's sidecar: the source's metadata, then what BIDS asks of a derivative,
    then what N2D was asked and measured (one entry per 3-D volume)."""
    carried = {k: v for k, v in source.items() if k not in ("Sources", "RawSources", "Description")}
    return {
        **carried,
        "Description": "Denoised with Noise2Detail (self-supervised, trained on this image), "
        "slice by slice" + (", volume by volume" if len(measured) > 1 else "") + ".",
        "Sources": [bids_uri(image.path)],
        "SkullStripped": bool(source.get("SkullStripped", False)),
        "N2D": {
            "Version": __version__,
            "Settings": settings.model_dump(mode="json"),
            "Measured": [measured_record(m) for m in measured],
            "Device": device,
            "Seconds": round(seconds, 3),
        },
    }


def is_done(out: Path, image: BidsImage) -> bool:
    """Whether the image's derivative is complete: its sidecar, written last, exists."""
    return (out / image.sidecar).is_file()


def denoise_image(
    root: Path, out: Path, image: BidsImage, settings: N2DSettings, device: torch.device
) -> list[Measured]:
    """Denoise one image into the derivative dataset: the image, its companions (``.bval``,
    ``.bvec``), then its sidecar. Returns what the engine measured, one entry per 3-D volume."""
    from n2d_dicom.pipeline import denoise_nifti  # torch loads only when an image is denoised

    metadata = source_metadata(root, image)
    started = time.perf_counter()
    measured: list[Measured] = []
    denoise_nifti(root / image.path, out / image.output, settings, device, report=measured.append)
    seconds = time.perf_counter() - started
    for extension, companion in companion_files(root, image).items():
        target = out / image.output.parent / str(derivative_name(image.name).with_extension(extension))
        with atomic_path(target) as tmp:
            tmp.write_bytes(companion.read_bytes())
    sidecar = derivative_sidecar(metadata, image, settings, measured, str(device), seconds)
    write_json(out / image.sidecar, sidecar)
    return measured
