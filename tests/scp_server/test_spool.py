import pydicom
import pytest

from scp_server.spool import InvalidIdentifiers, Outcome, Spool, instance_of
from tests.n2d_dicom.conftest import data_file


def test_recover_indexes_files_a_crash_left_unindexed_and_drops_temporaries(tmp_path):
    source = pydicom.dcmread(data_file("CT_small.dcm"))
    instance = instance_of(source)
    spool = Spool(tmp_path)
    folder = spool.instances_dir / instance.series_instance_uid
    folder.mkdir(parents=True)
    source.save_as(folder / f"{instance.sop_instance_uid}.dcm", enforce_file_format=True)
    (folder / ".half-written.dcm.tmp").write_bytes(b"partial")
    assert spool.recover() == 1
    assert spool.contains(instance.sop_instance_uid)
    assert [p.name for p in folder.iterdir()] == [f"{instance.sop_instance_uid}.dcm"]
    assert spool.recover() == 0


def test_index_survives_reopening(tmp_path):
    source = pydicom.dcmread(data_file("MR_small.dcm"))
    spool = Spool(tmp_path)
    assert spool.store(b"DICM bytes", instance_of(source), "STORESCU")
    spool.close()
    reopened = Spool(tmp_path)
    assert reopened.contains(source.SOPInstanceUID)
    assert reopened.store(b"DICM bytes", instance_of(source), "STORESCU") is Outcome.DUPLICATE


def test_every_identifier_is_validated_the_sop_class_too():
    source = pydicom.dcmread(data_file("CT_small.dcm"))
    source.SOPClassUID = "1.2.840.abc"
    with pytest.raises(InvalidIdentifiers, match="SOPClassUID"):
        instance_of(source)


def test_recover_keeps_files_that_are_not_its_temporaries(tmp_path):
    """Finding 4: an acknowledged instance stored as `.5.6.dcm` was deleted on restart as a temporary."""
    spool = Spool(tmp_path)
    folder = spool.instances_dir / "1.2.3"
    folder.mkdir(parents=True)
    legacy = folder / ".5.6.dcm"  # SOP Instance UID .5.6, put there by hand or by another tool
    pydicom.dcmread(data_file("CT_small.dcm")).save_as(legacy, enforce_file_format=True)
    spool.recover()
    assert legacy.is_file()


def test_store_says_whether_an_instance_is_new_a_duplicate_or_changed(tmp_path):
    source = pydicom.dcmread(data_file("CT_small.dcm"))
    spool = Spool(tmp_path)
    assert spool.store(b"one", instance_of(source), "CT01") is Outcome.NEW
    assert spool.store(b"one", instance_of(source), "CT01") is Outcome.DUPLICATE
    source.PixelData = bytes(len(source.PixelData))
    assert spool.store(b"two", instance_of(source), "CT01") is Outcome.CHANGED
    assert spool.series_files(source.SeriesInstanceUID)[0].read_bytes() == b"two"


def test_a_sop_instance_uid_already_stored_in_another_series_is_refused(tmp_path):
    """Found by an adversarial review: acknowledged and silently not stored, or moved between series."""
    source = pydicom.dcmread(data_file("CT_small.dcm"))
    spool = Spool(tmp_path)
    spool.store(b"one", instance_of(source), "CT01")
    source.SeriesInstanceUID = "1.2.3.4"
    with pytest.raises(InvalidIdentifiers, match="already stored in another series"):
        spool.store(b"one", instance_of(source), "CT01")
    assert spool.series_files("1.2.3.4") == []
