"""The node's own duties beside receiving: finding work the queue lost."""

import time

import pytest

from scp_server.config import NodeSettings
from scp_server.service import Node
from scp_server.tracker import DueSeries


@pytest.fixture
def node(tmp_path):
    node = Node(NodeSettings(spool_dir=tmp_path / "spool", workers=0, job_lease_s=0.2))
    yield node
    node.stores.close()


def queued_series(node, uid):
    tracker = node.stores.tracker
    tracker.quiet_period_s = 0
    tracker.instance_received(uid, "assoc-1")
    tracker.association_released("assoc-1")
    return tracker.claim_due()


def test_a_queued_run_whose_job_left_the_queue_unstarted_is_queued_again(node):
    # As if a worker took the job from the real (SQLite) queue and died before starting the run.
    assert queued_series(node, "1.2.3") == [DueSeries("1.2.3", 1)]
    assert node.requeue_lost_jobs() == []  # queued just now: not yet suspicious
    time.sleep(0.3)
    assert node.requeue_lost_jobs() == [DueSeries("1.2.3", 1)]
    assert node.jobs.waiting_runs() == {("1.2.3", 1)}
    assert node.requeue_lost_jobs() == []  # its job is waiting now: not queued twice
    assert node.jobs.queue.pending_count() == 1


def test_a_run_waiting_behind_others_is_left_alone(node):
    queued_series(node, "4.5.6")
    node.jobs.process_series("4.5.6", 1)
    time.sleep(0.3)
    assert node.requeue_lost_jobs() == []
    assert node.jobs.queue.pending_count() == 1
