import pydicom

from scp_server.spool import Spool, instance_of
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
    assert not reopened.store(b"DICM bytes", instance_of(source), "STORESCU")
