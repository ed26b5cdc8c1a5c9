"""Status, retry, purge and retention on real stores in a temporary spool, and the commands for them."""

import json
import subprocess
import time

import pytest
import yaml

from scp_server.config import NodeSettings
from scp_server.destinations import Destination
from scp_server.operations import apply_retention, node_status, purge, retry
from scp_server.sender import SendResult
from scp_server.spool import StoredInstance
from scp_server.stores import Stores
from scp_server.tasks import Jobs, make_queue
from tests.helpers import N2D

PACS = Destination(ae_title="PACS", host="127.0.0.1", port=104)


@pytest.fixture
def settings(tmp_path):
    return NodeSettings(spool_dir=tmp_path / "spool", allowed_calling_aets=["CT01"])


@pytest.fixture
def stores(settings):
    stores = Stores.open(settings)
    yield stores
    stores.close()


def received_and_done(stores: Stores, series: str, error: str | None = None) -> None:
    """A series with one stored instance, whose run was processed (or failed with ``error``)."""
    instance = StoredInstance(f"{series}.1", series, "1.2", "1.2.840.10008.5.1.4.1.1.2")
    stores.spool.store(b"DICM", instance, "CT01")
    tracker = stores.tracker
    tracker.instance_received(series, "a")
    tracker.association_released("a")
    tracker.quiet_period_s = 0
    (due,) = tracker.claim_due()
    assert tracker.start(series, due.run, "w", 60)
    assert tracker.finish(series, due.run, "w", error)


def derived(stores: Stores, series: str, status: int | None) -> None:
    """One derived file for ``series`` in the outbox, answered ``status`` (None: not tried yet)."""
    path = stores.spool.root / "derived" / f"9{series}" / f"9{series}.1.dcm"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"derived")
    stores.outbox.add([(f"9{series}.1", path)], PACS, series)
    if status is not None:
        stores.outbox.record([SendResult(path, f"9{series}.1", status, "said no" if status else None)], PACS)


def test_retention_deletes_delivered_series_and_keeps_undelivered_ones(stores):
    received_and_done(stores, "1.1")
    derived(stores, "1.1", 0x0000)
    received_and_done(stores, "1.2")
    derived(stores, "1.2", None)
    assert apply_retention(stores, retention_s=3600) == 0  # too recent
    time.sleep(0.01)
    assert apply_retention(stores, retention_s=0) == 1
    root = stores.spool.root
    assert not (root / "instances" / "1.1").exists() and not (root / "derived" / "91.1").exists()
    assert stores.spool.series_files("1.1") == [] and stores.tracker.state("1.1") == ("purged", 1)
    assert len(stores.spool.series_files("1.2")) == 1 and (root / "derived" / "91.2" / "91.2.1.dcm").is_file()


def test_retry_queues_failed_runs_and_refused_deliveries_again(stores, settings):
    received_and_done(stores, "1.1", error="ValueError: bad pixels")
    received_and_done(stores, "1.2")
    derived(stores, "1.2", 0xA900)
    queue = make_queue(settings)
    assert retry(stores, Jobs(queue)) == (1, 1)
    assert queue.pending_count() == 1  # the series job; deliveries are the node's outbox rounds' work
    assert stores.tracker.state("1.1") == ("queued", 1)
    assert stores.outbox.pending_count() == 1


def test_purge_deletes_quarantine_and_refused_deliveries(stores):
    quarantined = stores.spool.quarantine(b"junk", "undecodable", "CT01")
    received_and_done(stores, "1.2")
    derived(stores, "1.2", 0xA900)
    assert stores.spool.quarantine_count() == 1
    assert purge(stores, quarantine=True, refused=False, older_than_s=3600) == (0, 0)
    assert purge(stores, quarantine=True, refused=True, older_than_s=0) == (1, 1)
    assert not quarantined.exists() and stores.spool.quarantined() == []
    assert stores.spool.quarantine_count() == 0
    assert stores.outbox.counts() == {}


def test_status_reports_states_errors_and_latencies(stores, settings):
    received_and_done(stores, "1.1", error="ValueError: bad pixels")
    received_and_done(stores, "1.2")
    derived(stores, "1.2", 0xA900)
    status = node_status(stores, make_queue(settings))
    assert status.series == {"done": 1, "failed": 1}
    assert status.outbox == {"PACS@127.0.0.1:104": {"refused": 1}}
    assert [failure.subject for failure in status.last_errors] == [
        "91.2.1 -> PACS@127.0.0.1:104",
        "series 1.1 run 1",
    ]
    assert status.recent_runs.count == 1 and status.recent_runs.processing_s is not None


@pytest.mark.slow
def test_status_and_retry_commands_read_the_node_spool(stores, settings, tmp_path):
    received_and_done(stores, "1.1", error="ValueError: bad pixels")
    config = tmp_path / "node.yaml"
    config.write_text(
        yaml.safe_dump({"spool_dir": str(settings.spool_dir), "allowed_calling_aets": ["CT01"]})
    )
    shown = subprocess.run(
        [str(N2D), "status", "--config", str(config), "--json"], capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["series"] == {"failed": 1}
    summary = subprocess.run([str(N2D), "status", "--config", str(config)], capture_output=True, text=True)
    assert (
        "series: 1 failed" in summary.stdout and "series 1.1 run 1: ValueError: bad pixels" in summary.stdout
    )
    retried = subprocess.run([str(N2D), "retry", "--config", str(config)], capture_output=True, text=True)
    assert retried.stdout.strip() == "1 series run(s) queued again, 0 delivery(ies) pending again"
    assert stores.tracker.state("1.1") == ("queued", 1)


@pytest.mark.slow
def test_node_commands_refuse_a_config_without_a_spool_and_purge_without_a_target(tmp_path):
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({"spool_dir": str(tmp_path / "nowhere")}))
    shown = subprocess.run([str(N2D), "status", "--config", str(config)], capture_output=True, text=True)
    assert shown.returncode == 1 and "no spool here" in shown.stderr
    purged = subprocess.run([str(N2D), "purge", "--config", str(config)], capture_output=True, text=True)
    assert purged.returncode == 1 and "nothing to purge" in purged.stderr


def test_receive_to_delivered_counts_only_runs_that_were_delivered(stores, settings):
    """Finding 10: the latency figures included runs whose derived series was never delivered."""
    received_and_done(stores, "1.1")
    derived(stores, "1.1", None)  # pending: the destination is down
    status = node_status(stores, make_queue(settings))
    assert status.recent_runs.count == 1 and status.recent_runs.end_to_end_s is None
    derived_path = stores.spool.root / "derived" / "91.1" / "91.1.1.dcm"
    stores.outbox.record([SendResult(derived_path, "91.1.1", 0x0000)], PACS)
    assert node_status(stores, make_queue(settings)).recent_runs.end_to_end_s is not None


def test_status_shows_the_route_a_run_in_flight_was_claimed_with(stores, settings):
    instance = StoredInstance("1.3.1", "1.3", "1.2", "1.2.840.10008.5.1.4.1.1.2")
    stores.spool.store(b"DICM", instance, "CT01")
    stores.tracker.instance_received("1.3", "a")
    stores.tracker.association_released("a")
    stores.tracker.quiet_period_s = 0
    stores.tracker.claim_due()
    stores.tracker.record_plan("1.3", 1, '{"route": {"name": "ct", "n2d": {"iterations": 7}}}')
    assert stores.tracker.start("1.3", 1, "w:1:a", 60)
    (job,) = node_status(stores, make_queue(settings)).in_flight
    assert (job.route, job.n2d) == ("ct", {"iterations": 7})
