"""The header checks a DICOM file passes before it is denoised, each refusal in words a user can act on.

A derived copy of a file with a malformed pixel description, identifier, rescale, window or
label value would carry the same broken value, so such a file is refused (:class:`Unusable`)
rather than written; :mod:`n2d_dicom.dicom_read` lists it with the reason and goes on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pydicom.datadict import dictionary_description
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from n2d_dicom.identity import element_values, identifier_problem
from n2d_dicom.uids import printable

#: The Photometric Interpretations denoised: one sample per pixel, grayscale.
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")


#: Defined colour terms of Photometric Interpretation: valid, but not images this denoiser reads.
COLOUR = (
    "RGB",
    "ARGB",
    "CMYK",
    "HSV",
    "PALETTE COLOR",
    "XYB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_ICT",
    "YBR_PARTIAL_420",
    "YBR_PARTIAL_422",
    "YBR_RCT",
)


#: Bits Allocated of the grayscale images read (1-bit objects are segmentations and overlays).
BITS_ALLOCATED = (8, 16, 32)


#: Largest decoded object read, in bytes: more is a broken header, not an image to denoise.
MAX_PIXEL_BYTES = 2**32


#: Largest Series Number read: the derived series adds up to 100000 and must stay a valid IS.
MAX_SERIES_NUMBER = 2**31 - 1 - 100_000


class Unusable(Exception):
    """Internal: why a file cannot be denoised, and whether it may be forwarded unchanged."""

    def __init__(self, reason: str, forwardable: bool = False) -> None:
        super().__init__(reason)
        self.forwardable = forwardable


def check_identifiers(dataset: Dataset) -> None:
    found = identifier_problem(dataset)
    if found is None:
        return
    if found.value is None:
        raise Unusable(f"no {attribute_name(found.keyword)}")
    raise Unusable(
        f"{attribute_name(found.keyword)} '{printable(found.value)}' is not a valid UID ({found.problem})"
    )


def check_pixel_description(dataset: Dataset) -> tuple[int, int, int]:
    """Rows, columns and frames, once the attributes that describe the pixel data make sense."""
    photometric = element_values(dataset.get("PhotometricInterpretation"))
    name = attribute_name("PhotometricInterpretation")
    if "PhotometricInterpretation" not in dataset:
        raise Unusable(f"no {name}")
    if not photometric:
        raise Unusable(f"{name} is empty")
    if len(photometric) != 1:
        raise Unusable(f"{name} has {len(photometric)} values, 1 expected")
    term = str(photometric[0]).strip()
    if term not in GRAYSCALE:
        if term in COLOUR:
            raise Unusable(f"{term} images are not denoised (grayscale only)")
        raise Unusable(f"{name} '{printable(term)}' is not a defined term")
    samples = integer_value(dataset, "SamplesPerPixel", required=False)
    if samples is not None and samples != 1:
        raise Unusable(f"{attribute_name('SamplesPerPixel')} is {samples}; grayscale images have 1")
    rows = integer_value(dataset, "Rows", low=1, high=65535)
    columns = integer_value(dataset, "Columns", low=1, high=65535)
    bits = integer_value(dataset, "BitsAllocated")
    if bits not in BITS_ALLOCATED:
        raise Unusable(f"{attribute_name('BitsAllocated')} is {bits}; images of 8, 16 or 32 bits are read")
    integer_value(dataset, "BitsStored", low=1, high=bits)
    integer_value(dataset, "PixelRepresentation", low=0, high=1)
    frames = integer_value(dataset, "NumberOfFrames", required=False, low=1) or 1
    assert rows is not None and columns is not None
    expected = rows * columns * frames * bits // 8
    if expected > MAX_PIXEL_BYTES:
        raise Unusable(
            f"Rows {rows}, Columns {columns}, Number of Frames {frames} and Bits Allocated {bits} "
            f"make {expected} bytes of pixels, more than the {MAX_PIXEL_BYTES} read"
        )
    syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    if syntax is not None and not UID(str(syntax)).is_compressed:
        actual = len(dataset.PixelData)
        if actual not in (expected, expected + 1):  # one byte of padding to an even length
            raise Unusable(
                f"Pixel Data holds {actual} bytes, but Rows {rows}, Columns {columns}, "
                f"Number of Frames {frames} and Bits Allocated {bits} make {expected}"
            )
    return rows, columns, frames


def check_values(item: Dataset, where: str) -> None:
    """Spacing, thickness, rescale and window values of one dataset or functional group item."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = decimal_values(item, keyword, 2, where)  # 0\\0 is written for 'unknown' by some CR units
        if spacing is not None and min(spacing) < 0:
            raise Unusable(
                f"{attribute_name(keyword)}{where} is {shown(spacing)}; spacings cannot be negative"
            )
    thickness = decimal_values(item, "SliceThickness", 1, where)
    if thickness is not None and thickness[0] < 0:
        raise Unusable(
            f"{attribute_name('SliceThickness')}{where} is {shown(thickness)}; it cannot be negative"
        )
    slope = decimal_values(item, "RescaleSlope", 1, where)
    if slope is not None and slope[0] == 0:
        raise Unusable(f"{attribute_name('RescaleSlope')}{where} is 0; every pixel would mean the same value")
    decimal_values(item, "RescaleIntercept", 1, where)
    centers = decimal_values(item, "WindowCenter", None, where) or []
    widths = decimal_values(item, "WindowWidth", None, where) or []
    if any(width <= 0 for width in widths):
        raise Unusable(f"{attribute_name('WindowWidth')}{where} is {shown(widths)}; widths are positive")
    if len(centers) != len(widths):
        raise Unusable(
            f"{attribute_name('WindowCenter')}{where} has {len(centers)} value(s) "
            f"but {attribute_name('WindowWidth')} has {len(widths)}"
        )


def check_integer_labels(dataset: Dataset) -> None:
    """Instance Number (the fallback slice order) and Series Number (numbers the derived series)."""
    integer_value(dataset, "InstanceNumber", required=False)
    integer_value(dataset, "SeriesNumber", required=False, low=-(2**31), high=MAX_SERIES_NUMBER)


def integer_value(
    item: Dataset,
    keyword: str,
    *,
    required: bool = True,
    low: int | None = None,
    high: int | None = None,
) -> int | None:
    """One integer value of ``keyword`` within bounds; ``None`` where optional and absent or empty."""
    name = attribute_name(keyword)
    if keyword not in item:
        if required:
            raise Unusable(f"no {name}")
        return None
    values = element_values(item[keyword].value)
    if not values:
        if required:
            raise Unusable(f"{name} is empty")
        return None
    if len(values) != 1:
        raise Unusable(f"{name} has {len(values)} values, 1 expected")
    try:
        number = int(values[0])
        if number != float(values[0]):
            raise ValueError
    except (TypeError, ValueError):
        raise Unusable(f"{name} is not an integer: '{printable(str(values[0]))}'") from None
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f"at least {low}" if high is None else f"{low} to {high}"
        raise Unusable(f"{name} is {number}; {bounds} expected")
    return number


def decimal_values(item: Dataset, keyword: str, count: int | None, where: str) -> list[float] | None:
    """The finite numbers of ``keyword`` (``count`` of them where given); ``None`` if absent or empty."""
    if keyword not in item:
        return None
    values = element_values(item[keyword].value)
    if not values:
        return None
    name = attribute_name(keyword)
    if count is not None and len(values) != count:
        raise Unusable(f"{name}{where} has {len(values)} value(s), {count} expected")
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise Unusable(f"{name}{where} is not numeric: '{printable(shown(values))}'") from None
    if not all(math.isfinite(n) for n in numbers):
        raise Unusable(f"{name}{where} is not a finite number: '{printable(shown(values))}'")
    return numbers


def shown(values: Sequence[Any]) -> str:
    return "\\".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def attribute_name(keyword: str) -> str:
    """An attribute's name as the standard writes it (``Image Position (Patient)``)."""
    return dictionary_description(keyword)


def attribute_label(tag: BaseTag | int) -> str:
    """An attribute's name and tag, for notes on any attribute (private ones included)."""
    tag = Tag(tag)
    try:
        name = dictionary_description(tag)
    except KeyError:
        name = "private attribute" if tag.is_private else "unknown attribute"
    return f"{name} ({tag.group:04X},{tag.element:04X})"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return printable(text.splitlines()[0] if text else type(exc).__name__, 160)
