"""The node's own duties beside receiving: finding work the queue lost."""

import shutil
import time
import urllib.error
import urllib.request

import pytest

from scp_server.config import NodeSettings
from scp_server.service import Node
from scp_server.tracker import DueSeries
from tests.helpers import database_full, free_port


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


def failing_then_working(real, failures: int):
    """``real``, raising SQLite's disk-full error on its first ``failures`` calls."""
    calls = {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= failures:
            raise database_full()
        return real(*args, **kwargs)

    return step


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.mark.slow
def test_a_failing_background_loop_is_reported_counted_and_recovers_by_itself(tmp_path):
    """Finding 3: SQLite's 'disk is full' ended the series poller for good while /healthz said ok."""
    settings = NodeSettings(
        spool_dir=tmp_path / "spool",
        workers=0,
        port=free_port(),
        http_port=free_port(),
        allowed_calling_aets=["CT01"],
    )
    node = Node(settings)
    node.stores.tracker.claim_due = failing_then_working(node.stores.tracker.claim_due, failures=2)
    node.start()
    try:
        healthz = f"http://127.0.0.1:{settings.http_port}/healthz"
        deadline = time.monotonic() + 20
        while not node.health.problems() and time.monotonic() < deadline:
            time.sleep(0.05)
        code, body = get(healthz)
        assert code == 503 and "series poller failing: OperationalError: database or disk is full" in body
        metrics = get(f"http://127.0.0.1:{settings.http_port}/metrics")[1]
        assert 'n2d_background_errors_total{loop="series poller"}' in metrics
        while get(healthz)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert get(healthz) == (200, "ok\n")
        node.stores.tracker.instance_received("1.2.3", "a")  # the poller works again
        node.stores.tracker.association_released("a")
        node.stores.tracker.quiet_period_s = 0
        while node.stores.tracker.state("1.2.3")[0] == "receiving" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert node.stores.tracker.state("1.2.3") == ("queued", 1)
    finally:
        node.stop()


def test_healthz_reports_a_spool_that_cannot_be_written(tmp_path):
    settings = NodeSettings(spool_dir=tmp_path / "spool", workers=0)
    node = Node(settings)
    assert node.health.problems() == []
    shutil.rmtree(settings.spool_dir)  # as good as a vanished mount
    assert node.health.problems()[0].startswith("spool not writable: No such file or directory")
    node.stores.close()
