"""What identifies a DICOM instance, checked once for the reader and the node: its four UIDs and a
hash of its pixels."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from n2d_dicom.uids import uid_problem

#: The UIDs every instance must carry, valid, in the order they are checked.
IDENTIFIERS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID")
#: Pixel data elements whose value identifies an instance's image (the first one present).
PIXEL_ELEMENTS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class IdentifierProblem:
    """The first identifier missing (``value`` None) or not a valid UID (``problem`` says why)."""

    keyword: str
    value: str | None
    problem: str | None


def identifier_problem(dataset: Dataset) -> IdentifierProblem | None:
    """The first of :data:`IDENTIFIERS` missing or invalid (a multi-valued one joined by ``\\``), or None."""
    for keyword in IDENTIFIERS:
        values = element_values(dataset.get(keyword))
        if not values:
            return IdentifierProblem(keyword, None, None)
        text = "\\".join(str(value) for value in values)
        problem = uid_problem(text)
        if problem is not None:
            return IdentifierProblem(keyword, text, problem)
    return None


def element_values(value: Any) -> list[Any]:
    """An element's value as a list: empty for an empty value, one item for a single value."""
    if value is None or (isinstance(value, str | bytes) and not value.strip()):
        return []
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def pixel_hash(dataset: Dataset) -> str:
    """SHA-256 (hex) of the first pixel data element's value as stored; "" when there is none."""
    for keyword in PIXEL_ELEMENTS:
        if keyword in dataset:
            value = dataset[keyword].value
            return hashlib.sha256(value if isinstance(value, bytes) else bytes(value or b"")).hexdigest()
    return ""
