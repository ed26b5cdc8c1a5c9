"""One identifier check and one pixel hash, for the reader and the node alike."""

import hashlib

import pydicom

from n2d_dicom.identity import IdentifierProblem, identifier_problem, pixel_hash
from tests.n2d_dicom.conftest import data_file


def test_the_first_identifier_missing_or_invalid_is_named_in_one_order():
    dataset = pydicom.dcmread(data_file("CT_small.dcm"))
    assert identifier_problem(dataset) is None
    dataset.SOPClassUID = "1.2.abc"
    del dataset.StudyInstanceUID
    assert identifier_problem(dataset) == IdentifierProblem("StudyInstanceUID", None, None)
    dataset.StudyInstanceUID = "1.2.3"
    found = identifier_problem(dataset)
    assert found is not None and (found.keyword, found.value) == ("SOPClassUID", "1.2.abc") and found.problem


def test_the_pixel_hash_is_of_the_first_pixel_element_as_stored():
    dataset = pydicom.dcmread(data_file("CT_small.dcm"))
    assert pixel_hash(dataset) == hashlib.sha256(dataset.PixelData).hexdigest()
    del dataset.PixelData
    assert pixel_hash(dataset) == ""
    dataset.FloatPixelData = b"\0" * 8
    assert pixel_hash(dataset) == hashlib.sha256(b"\0" * 8).hexdigest()
