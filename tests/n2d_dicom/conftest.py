"""DICOM test data: real files shipped by pydicom and pydicom-data, and series built from them."""

from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid


def data_file(name: str) -> Path:
    """A test file from pydicom or pydicom-data (never downloaded)."""
    path = get_testdata_file(name, download=False)
    assert path, f"{name} missing: pip install pydicom-data"
    return Path(path)


def write_ct_series(folder: Path, positions, *, orientation=None, series_uid=None) -> list[Path]:
    """A multi-slice CT series from CT_small.dcm: one file per position, names unrelated to order."""
    series_uid = series_uid or generate_uid()
    source = pydicom.dcmread(data_file("CT_small.dcm"))
    x, y = float(source.ImagePositionPatient[0]), float(source.ImagePositionPatient[1])
    base = source.pixel_array
    paths = []
    for number, z in enumerate(positions):
        ds = source.copy()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = len(positions) - number  # reversed on purpose
        ds.ImagePositionPatient = [x, y, z]
        ds.ImageOrientationPatient = list(orientation or [1, 0, 0, 0, 1, 0])
        ds.PixelData = (base + number).astype(base.dtype).tobytes()
        path = folder / f"{ds.SOPInstanceUID[-12:]}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
