"""The node's C-STORE/C-ECHO SCP, talked to over loopback by real peers (pynetdicom and dcmtk)."""

import contextlib
import subprocess
import sys
from pathlib import Path

import pydicom
import pynetdicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, RTDoseStorage, Verification

from scp_server.config import NodeSettings
from scp_server.scp import start_scp
from scp_server.spool import Spool
from tests.helpers import CALLER, dcmtk, free_port
from tests.n2d_dicom.conftest import data_file, write_ct_series
from tests.scp_server.raw_dicom import answer_type, raw_associate, raw_store


@pytest.fixture
def node(tmp_path):
    """A running SCP on a free loopback port, with its spool; stopped after the test."""
    settings = NodeSettings(port=free_port(), allowed_calling_aets=[CALLER], spool_dir=tmp_path / "spool")
    spool = Spool(settings.spool_dir)
    server = start_scp(settings, spool)
    yield settings, spool
    server.shutdown()
    spool.close()


@contextlib.contextmanager
def started_with_hook(settings: NodeSettings, spool: Spool, on_stored):
    """A second SCP on the same spool, whose ``on_stored`` hook the test hears; yields its port."""
    port = free_port()
    server = start_scp(settings.model_copy(update={"port": port}), spool, on_stored)
    try:
        yield port
    finally:
        server.shutdown()


def associate(settings: NodeSettings, calling: str = CALLER, called: str | None = None):
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(MRImageStorage)
    return ae.associate("127.0.0.1", settings.port, ae_title=called or settings.ae_title)


def store(settings: NodeSettings, *datasets_or_paths) -> list[int]:
    assoc = associate(settings)
    assert assoc.is_established
    statuses = [assoc.send_c_store(item).Status for item in datasets_or_paths]
    assoc.release()
    return statuses


def run_dcmtk(tool: str, settings: NodeSettings, *args: str, calling: str = CALLER):
    command = [
        dcmtk(tool),
        "-aet",
        calling,
        "-aec",
        settings.ae_title,
        "127.0.0.1",
        str(settings.port),
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_pynetdicom_store_is_acknowledged_once_on_disk_and_indexed(node):
    settings, spool = node
    source = pydicom.dcmread(data_file("CT_small.dcm"))
    assert store(settings, source) == [0x0000]
    (path,) = spool.series_files(source.SeriesInstanceUID)
    stored = pydicom.dcmread(path)
    assert stored.SOPInstanceUID == source.SOPInstanceUID
    assert stored.PixelData == source.PixelData


@pytest.mark.slow
def test_dcmtk_storescu_sends_a_multi_slice_series(node, tmp_path):
    settings, spool = node
    folder = tmp_path / "series"
    folder.mkdir()
    paths = write_ct_series(folder, [0.0, 2.5, 5.0, 7.5])
    result = run_dcmtk("storescu", settings, *map(str, paths))
    assert result.returncode == 0, result.stderr
    uid = pydicom.dcmread(paths[0]).SeriesInstanceUID
    assert len(spool.series_files(uid)) == 4


@pytest.mark.slow
def test_dcmtk_echoscu_is_answered(node):
    settings, _ = node
    assert run_dcmtk("echoscu", settings).returncode == 0


@pytest.mark.slow
def test_unknown_calling_ae_is_rejected(node):
    settings, _ = node
    assert run_dcmtk("echoscu", settings, calling="INTRUDER").returncode != 0
    assert answer_type(settings.port, calling="INTRUDER") == 0x03  # A-ASSOCIATE-RJ


def test_wrong_called_ae_is_rejected(node):
    settings, _ = node
    assert answer_type(settings.port, called="SOMEONE_ELSE") == 0x03


def test_duplicate_instances_are_acknowledged_and_stored_once(node):
    settings, spool = node
    source = pydicom.dcmread(data_file("CT_small.dcm"))
    assert store(settings, source, source) == [0x0000, 0x0000]
    assert len(spool.series_files(source.SeriesInstanceUID)) == 1


def test_instance_without_series_uid_is_refused_and_quarantined(node):
    settings, spool = node
    source = pydicom.dcmread(data_file("CT_small.dcm"))
    del source.SeriesInstanceUID
    assert store(settings, source) == [0xC211]
    ((path, reason),) = spool.quarantined()
    assert reason == "missing SeriesInstanceUID" and path.is_file()


def test_undecodable_dataset_is_refused_and_quarantined(node, tmp_path, monkeypatch):
    settings, spool = node
    # Send the file's bytes as they are (pynetdicom's documented option), as a faulty peer would.
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    good = tmp_path / "good.dcm"
    pydicom.dcmread(data_file("CT_small.dcm")).save_as(good, enforce_file_format=True)
    raw = good.read_bytes()
    sop_uid = raw.index(b"\x08\x00\x18\x00UI")  # (0008,0018) SOP Instance UID, explicit VR
    end = sop_uid + 8 + int.from_bytes(raw[sop_uid + 6 : sop_uid + 8], "little")
    # A sequence of undefined length whose items are garbage: the peer can still read the
    # identifiers at the front, the node cannot decode the dataset.
    garbage = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + bytes(range(1, 9)) * 3
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(raw[:end] + garbage)
    assert store(settings, broken) == [0xC210]
    ((path, reason),) = spool.quarantined()
    assert reason.startswith("cannot decode dataset") and path.read_bytes().endswith(garbage)


@pytest.mark.slow
def test_full_disk_answers_out_of_resources_and_leaves_nothing_half_written(tmp_path):
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount_point)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root) to fill a disk for real")
    spool = Spool(mount_point)
    try:
        settings = NodeSettings(port=free_port(), allowed_calling_aets=[CALLER], spool_dir=mount_point)
        server = start_scp(settings, spool)
        try:
            big = pydicom.dcmread(data_file("MR_small.dcm"))
            statuses = []
            for number in range(40):  # 8 kB each: the 200 kB disk fills up part way
                big.SOPInstanceUID = f"1.2.826.0.1.3680043.10.999.{number}"
                statuses.extend(store(settings, big))
        finally:
            server.shutdown()
        assert statuses[0] == 0x0000 and 0xA700 in statuses
        stored = [p for p in (mount_point / "instances").rglob("*") if p.is_file()]
        assert not [p for p in stored if p.name.startswith(".")]  # no temporary leftovers
        for path in stored:
            pydicom.dcmread(path)  # every kept file is whole
        assert len(stored) == statuses.count(0x0000)
    finally:
        spool.close()
        subprocess.run(["umount", str(mount_point)], check=False)


def test_peer_aborting_mid_series_leaves_only_whole_instances(node, tmp_path):
    settings, spool = node
    folder = tmp_path / "series"
    folder.mkdir()
    paths = write_ct_series(folder, [0.0, 1.0, 2.0])
    assoc = associate(settings)
    assert assoc.send_c_store(pydicom.dcmread(paths[0])).Status == 0x0000
    assoc.abort()
    uid = pydicom.dcmread(paths[0]).SeriesInstanceUID
    (path,) = spool.series_files(uid)
    assert pydicom.dcmread(path).SOPInstanceUID == pydicom.dcmread(paths[0]).SOPInstanceUID
    assert not [p for p in spool.instances_dir.rglob(".*")]


def test_start_refuses_an_empty_list_of_allowed_callers(tmp_path):
    with pytest.raises(ValueError, match="allowed_calling_aets is empty"):
        start_scp(NodeSettings(port=free_port(), spool_dir=tmp_path), Spool(tmp_path))


def test_tls_node_answers_tls_peers_and_not_plain_ones(tmp_path, certificate):
    import ssl

    from scp_server.config import TLSSettings

    cert, key = certificate
    settings = NodeSettings(
        port=free_port(),
        allowed_calling_aets=[CALLER],
        spool_dir=tmp_path / "spool",
        tls=TLSSettings(certificate=cert, private_key=key),
        network_timeout_s=5,
    )
    spool = Spool(settings.spool_dir)
    server = start_scp(settings, spool)
    try:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        ae = AE(ae_title=CALLER)
        ae.acse_timeout = ae.network_timeout = 5
        ae.add_requested_context(Verification)
        secure = ae.associate(
            "127.0.0.1", settings.port, ae_title=settings.ae_title, tls_args=(client, "127.0.0.1")
        )
        assert secure.is_established
        assert secure.send_c_echo().Status == 0x0000
        secure.release()
        plain = ae.associate("127.0.0.1", settings.port, ae_title=settings.ae_title)
        assert not plain.is_established
    finally:
        server.shutdown()
        spool.close()


@pytest.mark.parametrize(
    ("networks", "accepted"), [(["10.0.0.0/8"], False), (["10.0.0.0/8", "127.0.0.0/8"], True)]
)
def test_only_allowed_source_networks_may_connect(tmp_path, networks, accepted):
    settings = NodeSettings(
        port=free_port(),
        allowed_calling_aets=[CALLER],
        allowed_source_networks=networks,
        spool_dir=tmp_path / "spool",
        network_timeout_s=5,
    )
    spool = Spool(settings.spool_dir)
    server = start_scp(settings, spool)
    try:
        assoc = associate(settings)
        assert assoc.is_established == accepted
        if accepted:
            assert assoc.send_c_echo().Status == 0x0000
            assoc.release()
    finally:
        server.shutdown()
        spool.close()


INVALID_UIDS = {
    "dot-dot series": ("SeriesInstanceUID", ".."),
    "leading-dot SOP instance": ("SOPInstanceUID", ".5.6"),
    "path in study": ("StudyInstanceUID", "../../etc/passwd"),
    "250 characters": ("SOPInstanceUID", "1." + "2" * 248),
    "300 characters": ("SeriesInstanceUID", "1." + "3" * 298),
    "empty component": ("SOPInstanceUID", "1.2..3"),
    "trailing dot": ("SeriesInstanceUID", "1.2.3."),
    "letters": ("SOPInstanceUID", "1.2.840.abc"),
    "newline": ("SOPInstanceUID", "1.2.3\n4"),
}


def lax_store(settings: NodeSettings, *datasets: pydicom.Dataset, folder: Path) -> list[int | None]:
    """Send ``datasets`` with :mod:`tests.peers.lax_storescu` (no UID checks on the sending side)."""
    files = []
    for index, dataset in enumerate(datasets):
        files.append(folder / f"{index}.dcm")
        dataset.save_as(files[-1], enforce_file_format=True)
    sent = subprocess.run(
        [sys.executable, "-m", "tests.peers.lax_storescu", str(settings.port), CALLER, settings.ae_title]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[2],
    )
    assert sent.returncode == 0, sent.stderr
    return [None if line == "none" else int(line, 16) for line in sent.stdout.split()]


@pytest.mark.slow
@pytest.mark.parametrize("keyword, uid", INVALID_UIDS.values(), ids=INVALID_UIDS.keys())
def test_an_invalid_uid_is_refused_with_c211_and_quarantined_never_stored(node, keyword, uid, tmp_path):
    """Findings 4 and 5: invalid UIDs were stored (even as dot-files and outside the spool) or got 0xA700."""
    settings, spool = node
    source = pydicom.dcmread(data_file("CT_small.dcm"))
    source.SOPInstanceUID = "1.2.826.0.1.3680043.10.511.77.1"
    setattr(source, keyword, uid)
    assert lax_store(settings, source, folder=tmp_path) == [0xC211]
    ((path, reason),) = spool.quarantined()
    assert keyword in reason and path.is_file()
    assert not any(p.is_file() for p in spool.instances_dir.rglob("*"))
    assert sorted(p.name for p in settings.spool_dir.iterdir()) == [
        "index.sqlite3",
        "index.sqlite3-shm",
        "index.sqlite3-wal",
        "instances",
        "quarantine",
    ]


def test_a_uid_with_leading_zeros_is_accepted_as_many_modalities_write_them(node):
    settings, spool = node
    source = pydicom.dcmread(data_file("CT_small.dcm"))
    source.SOPInstanceUID = "1.2.840.0123.5"
    assert store(settings, source) == [0x0000]
    assert spool.contains("1.2.840.0123.5")


def test_an_identical_copy_is_a_duplicate_and_changed_pixels_replace_the_stored_file(node):
    """Finding 11: the spool tells a re-send from a corrected instance."""
    settings, spool = node
    seen: list[str] = []
    source = pydicom.dcmread(data_file("CT_small.dcm"))
    with started_with_hook(
        settings, spool, lambda series, assoc, outcome: seen.append(outcome.value)
    ) as port:
        changed = pydicom.dcmread(data_file("CT_small.dcm"))
        changed.PixelData = bytes(len(changed.PixelData))
        assert store(settings.model_copy(update={"port": port}), source, source, changed) == [0, 0, 0]
    assert seen == ["new", "duplicate", "changed"]
    (path,) = spool.series_files(source.SeriesInstanceUID)
    assert pydicom.dcmread(path).PixelData == changed.PixelData


@pytest.mark.slow
def test_objects_that_are_not_images_are_accepted_only_where_they_can_be_forwarded(tmp_path):
    """Finding 16: the node forwards objects it does not denoise where forward_unmatched says so."""
    dose = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    viewer = {"ae_title": "VIEWER", "host": "127.0.0.1", "port": 104}
    for forward, accepted in (([], False), ([viewer], True)):
        settings = NodeSettings(
            port=free_port(),
            allowed_calling_aets=[CALLER],
            spool_dir=tmp_path / str(accepted),
            forward_unmatched=forward,
        )
        spool = Spool(settings.spool_dir)
        server = start_scp(settings, spool)
        try:
            ae = AE(ae_title=CALLER)
            ae.add_requested_context(RTDoseStorage)
            assoc = ae.associate("127.0.0.1", settings.port, ae_title=settings.ae_title)
            assert assoc.is_established is accepted  # no presentation context: no association
            if accepted:
                assert assoc.send_c_store(dose).Status == 0x0000
                assert spool.contains(dose.SOPInstanceUID)
                assoc.release()
        finally:
            server.shutdown()
            spool.close()


def test_deflated_transfer_syntax_is_not_accepted(node):
    """pynetdicom inflates it with no bound: 2 MB on the wire became 2 GiB in the node's memory."""
    settings, _ = node
    ae = AE(ae_title=CALLER)
    ae.add_requested_context(CTImageStorage, [DeflatedExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", settings.port, ae_title=settings.ae_title)
    assert not assoc.is_established


def test_a_dataset_that_is_not_the_instance_the_request_announced_is_refused(node):
    """Found by an adversarial review: the peer believed instance X stored when Y was."""
    settings, spool = node
    source = pydicom.dcmread(data_file("CT_small.dcm"))
    sock = raw_associate(settings.port)
    try:
        assert raw_store(sock, source, 1, announced="1.2.3.4.5") == 0xC211
    finally:
        sock.close()
    assert not spool.contains(source.SOPInstanceUID)
    ((_, reason),) = spool.quarantined()
    assert "differs from the request's Affected SOP Instance UID 1.2.3.4.5" in reason


@pytest.mark.parametrize("keyword", ["SeriesDescription", "PatientName"])
def test_a_text_element_too_long_for_its_vr_sent_as_un_is_refused_at_reception(node, keyword, tmp_path):
    """Round 3, finding 5: a 5 MB Series Description sent with VR UN was stored with 0x0000, and then
    its run failed with a traceback in the error field (the derived object cannot carry it)."""
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import DataElement

    settings, spool = node
    dataset = pydicom.dcmread(data_file("CT_small.dcm"))
    tag = tag_for_keyword(keyword)
    dataset.pop(tag, None)
    dataset.add(DataElement(tag, "UN", b"A" * (1024 * 1024 + 1)))
    assert store(settings, dataset) == [0xA900]
    assert not spool.contains(dataset.SOPInstanceUID)
    ((path, reason),) = spool.quarantined()
    assert keyword in reason and "1048577 bytes" in reason and path.is_file()


def test_uncompressed_pixel_data_cut_short_is_refused_at_reception(node):
    """Found by the fuzzing campaign: Pixel Data of 2000 of 32768 bytes was acknowledged with 0x0000,
    and the run that denoised the series could not read it."""
    settings, spool = node
    dataset = pydicom.dcmread(data_file("CT_small.dcm"))
    dataset.PixelData = dataset.PixelData[:2000]
    assert store(settings, dataset) == [0xA900]
    assert not spool.contains(dataset.SOPInstanceUID)
    ((_, reason),) = spool.quarantined()
    assert reason == "Pixel Data of 2000 bytes, 32768 expected from the image attributes"


def test_an_element_too_long_for_its_vr_is_judged_by_its_bytes_not_its_characters(node):
    """Found by an adversarial review: 30,000 CJK characters in UTF-8 (90,000 bytes) passed as 30,000."""
    settings, spool = node
    dataset = pydicom.dcmread(data_file("CT_small.dcm"))
    dataset.SpecificCharacterSet = "ISO_IR 192"
    dataset.SeriesDescription = "\u6f22" * 30000
    ae = AE(ae_title=CALLER)
    ae.add_requested_context(CTImageStorage, ImplicitVRLittleEndian)  # lengths of 4 bytes: no UN
    assoc = ae.associate("127.0.0.1", settings.port, ae_title=settings.ae_title)
    assert assoc.is_established
    assert assoc.send_c_store(dataset).Status == 0xA900
    assoc.release()
    ((_, reason),) = spool.quarantined()
    assert reason == "SeriesDescription of 90000 bytes, longer than its VR LO allows (65535)"
