import os
import socket
import subprocess

import pytest

from scp_server.tracker import DueSeries, SeriesTracker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def tracker(tmp_path, clock):
    tracker = SeriesTracker(tmp_path / "index.sqlite3", quiet_period_s=10, max_wait_s=600, clock=clock)
    yield tracker
    tracker.close()


def test_series_is_complete_after_release_and_a_quiet_period(tracker, clock):
    tracker.instance_received("1.2.3", "assoc-1")
    tracker.instance_received("1.2.3", "assoc-1")
    clock.now += 30
    assert tracker.claim_due() == []  # association still open
    tracker.association_released("assoc-1")
    assert tracker.claim_due() == [DueSeries("1.2.3", 1)]
    assert tracker.state("1.2.3") == ("queued", 1)


def test_quiet_period_counts_from_the_last_instance(tracker, clock):
    tracker.instance_received("1.2.3", "a")
    tracker.association_released("a")
    clock.now += 9
    assert tracker.claim_due() == []
    clock.now += 1
    assert [d.series_instance_uid for d in tracker.claim_due()] == ["1.2.3"]


def test_a_series_is_claimed_exactly_once(tracker, clock):
    tracker.instance_received("1.2.3", "a")
    tracker.association_released("a")
    clock.now += 11
    assert len(tracker.claim_due()) == 1
    assert tracker.claim_due() == []


def test_series_spread_over_several_associations_waits_for_all_of_them(tracker, clock):
    tracker.instance_received("1.2.3", "a")
    tracker.instance_received("1.2.3", "b")
    tracker.association_released("a")
    clock.now += 20
    assert tracker.claim_due() == []
    tracker.association_released("b")
    assert len(tracker.claim_due()) == 1


def test_maximum_wait_completes_a_series_whose_association_never_ends(tracker, clock):
    tracker.instance_received("1.2.3", "a")
    clock.now += 599
    assert tracker.claim_due() == []
    clock.now += 1
    assert tracker.claim_due() == [DueSeries("1.2.3", 1)]


def test_late_instance_after_processing_starts_a_new_run(tracker, clock):
    tracker.instance_received("1.2.3", "a")
    tracker.association_released("a")
    clock.now += 11
    (due,) = tracker.claim_due()
    assert tracker.start(due.series_instance_uid, due.run, "w1", 60)
    tracker.instance_received("1.2.3", "b")
    assert tracker.state("1.2.3") == ("receiving", 2)
    tracker.association_released("b")
    clock.now += 11
    assert tracker.claim_due() == [DueSeries("1.2.3", 2)]
    assert not tracker.finish("1.2.3", 1, "w1")  # a stale completion of run 1 changes nothing
    assert tracker.state("1.2.3") == ("queued", 2)


def test_state_survives_a_restart(tmp_path, clock):
    first = SeriesTracker(tmp_path / "index.sqlite3", quiet_period_s=10, max_wait_s=600, clock=clock)
    first.instance_received("1.2.3", "a")
    first.association_released("a")
    first.close()
    clock.now += 11
    second = SeriesTracker(tmp_path / "index.sqlite3", quiet_period_s=10, max_wait_s=600, clock=clock)
    assert second.claim_due() == [DueSeries("1.2.3", 1)]
    second.close()


def queued_run(tracker, clock, uid="1.2.3"):
    tracker.instance_received(uid, "a")
    tracker.association_released("a")
    clock.now += 11
    (due,) = tracker.claim_due()
    return due


def test_a_queued_run_is_taken_by_one_worker_only(tracker, clock):
    due = queued_run(tracker, clock)
    assert tracker.start(due.series_instance_uid, due.run, "host:1:a", 60)
    assert not tracker.start(due.series_instance_uid, due.run, "host:2:b", 60)  # the queue's duplicate
    assert tracker.state("1.2.3") == ("processing", 1)
    assert tracker.finish("1.2.3", 1, "host:1:a")
    assert tracker.state("1.2.3") == ("done", 1)
    assert not tracker.start("1.2.3", 1, "host:2:b", 60)  # done runs are not redone


def test_an_expired_lease_is_reclaimed_and_the_late_owner_cannot_finish(tracker, clock):
    due = queued_run(tracker, clock)
    tracker.start(due.series_instance_uid, due.run, "elsewhere:1:a", 30)
    clock.now += 20
    assert tracker.renew("1.2.3", 1, "elsewhere:1:a", 30)  # lease now runs to +50
    clock.now += 29
    assert tracker.reclaim() == []
    clock.now += 2
    assert tracker.reclaim() == [DueSeries("1.2.3", 1)]
    assert tracker.state("1.2.3") == ("queued", 1)
    assert not tracker.renew("1.2.3", 1, "elsewhere:1:a", 30)
    assert tracker.start("1.2.3", 1, "elsewhere:2:b", 30)
    assert not tracker.finish("1.2.3", 1, "elsewhere:1:a")
    assert tracker.finish("1.2.3", 1, "elsewhere:2:b")


def test_a_run_held_by_a_dead_local_process_is_reclaimed_at_once(tracker, clock):
    dead = subprocess.Popen(["true"])
    dead.wait()
    due = queued_run(tracker, clock)
    tracker.start(due.series_instance_uid, due.run, f"{socket.gethostname()}:{dead.pid}:x", 600)
    assert tracker.reclaim() == [DueSeries("1.2.3", 1)]


def test_a_run_held_by_a_live_process_is_not_reclaimed_before_its_lease_ends(tracker, clock):
    due = queued_run(tracker, clock)
    tracker.start(due.series_instance_uid, due.run, f"{socket.gethostname()}:{os.getpid()}:x", 600)
    assert tracker.reclaim() == []


def test_failed_runs_keep_their_error_until_retried(tracker, clock):
    due = queued_run(tracker, clock)
    tracker.start(due.series_instance_uid, due.run, "w", 60)
    clock.now += 5
    tracker.finish("1.2.3", 1, "w", error="N2DInputError: image too small")
    assert tracker.errors() == [("1.2.3", 1, clock.now, "N2DInputError: image too small")]
    assert tracker.counts() == {"failed": 1}
    assert tracker.retry_failed("9.9") == []
    assert tracker.retry_failed() == [DueSeries("1.2.3", 1)]
    assert tracker.state("1.2.3") == ("queued", 1)


def test_finished_runs_give_their_timings_and_can_be_purged(tracker, clock):
    due = queued_run(tracker, clock)  # received at 1000, queued at 1011
    clock.now += 4
    tracker.start(due.series_instance_uid, due.run, "w", 60)
    clock.now += 10
    tracker.finish("1.2.3", 1, "w")
    (times,) = tracker.recent_runs()
    assert (times.first_received, times.queued_at, times.started_at, times.finished_at) == (
        1000,
        1011,
        1015,
        1025,
    )
    assert tracker.finished_before(1025) == []
    assert tracker.finished_before(1026) == ["1.2.3"]
    tracker.mark_purged("1.2.3")
    assert tracker.state("1.2.3") == ("purged", 1)
    tracker.instance_received("1.2.3", "late")
    assert tracker.state("1.2.3") == ("receiving", 2)


def test_runs_queued_long_ago_and_not_taken_are_listed(tracker, clock):
    tracker.instance_received("1.2.3", "assoc-1")
    tracker.instance_received("4.5.6", "assoc-1")
    tracker.association_released("assoc-1")
    clock.now += 10
    tracker.claim_due()
    clock.now += 59
    assert tracker.queued_longer_than(60) == []
    clock.now += 1
    assert tracker.start("4.5.6", 1, "host:1:a", lease_s=60)
    assert tracker.queued_longer_than(60) == [DueSeries("1.2.3", 1)]


def test_an_aborted_association_does_not_complete_the_series_after_the_quiet_period(tracker, clock):
    """Finding 11: a modality killed mid-series must not get a partial derived series."""
    tracker.instance_received("1.2.3", "a")
    tracker.association_aborted("a")
    clock.now += 30
    assert tracker.claim_due() == []
    tracker.instance_received("1.2.3", "b")  # the modality sends the series again
    tracker.association_released("b")
    clock.now += 30
    assert tracker.claim_due() == [DueSeries("1.2.3", 1)]


def test_an_aborted_series_nobody_resends_is_complete_after_the_grace_period(tmp_path, clock):
    tracker = SeriesTracker(tmp_path / "t.sqlite3", 10, 3600, clock=clock, aborted_grace_s=300)
    tracker.instance_received("1.2.3", "a")
    tracker.association_aborted("a")
    clock.now += 299
    assert tracker.claim_due() == []
    clock.now += 2
    assert tracker.claim_due() == [DueSeries("1.2.3", 1)]
    tracker.close()


def test_associations_of_a_dead_process_are_closed_as_aborted_on_start(tracker, clock):
    """Finding 1: a node killed during reception left its associations open until max_wait_s."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    tracker.instance_received("1.2.3", f"{socket.gethostname()}:{dead.pid}:abc")
    tracker.instance_received("1.2.3", f"{socket.gethostname()}:{os.getpid()}:def")
    assert tracker.close_dead_associations() == 1
    tracker.association_released(f"{socket.gethostname()}:{os.getpid()}:def")
    clock.now += 30
    assert tracker.claim_due() == [DueSeries("1.2.3", 1)]


def test_a_duplicate_after_completion_starts_no_run_and_a_changed_instance_does(tracker, clock):
    """Finding 11: re-sent identical instances must not produce a second derived series."""
    tracker.instance_received("1.2.3", "a")
    tracker.association_released("a")
    clock.now += 30
    assert tracker.claim_due() == [DueSeries("1.2.3", 1)]
    tracker.instance_received("1.2.3", "b", starts_run=False)
    tracker.association_released("b")
    clock.now += 30
    assert tracker.claim_due() == []
    assert tracker.state("1.2.3") == ("queued", 1)
    tracker.instance_received("1.2.3", "c", starts_run=True)
    tracker.association_released("c")
    clock.now += 30
    assert tracker.claim_due() == [DueSeries("1.2.3", 2)]


def test_the_plan_a_run_was_claimed_with_is_kept_with_the_run(tracker, clock):
    tracker.instance_received("1.2.3", "a")
    tracker.association_released("a")
    clock.now += 30
    tracker.claim_due()
    assert tracker.plan("1.2.3", 1) is None
    tracker.record_plan("1.2.3", 1, '{"route": "ct"}')
    assert tracker.plan("1.2.3", 1) == '{"route": "ct"}'
    assert tracker.plan("1.2.3", 2) is None


def test_an_association_open_past_max_wait_is_not_cut_while_instances_keep_coming(tracker, clock):
    """Found by an adversarial review: each max_wait_s of an open association gave a partial series."""
    tracker.instance_received("1.2.3", "a")
    for _ in range(70):  # one instance every 9 s, for longer than max_wait_s (600 s)
        clock.now += 9
        tracker.instance_received("1.2.3", "a")
        assert tracker.claim_due() == []
    clock.now += 10  # a quiet period past max_wait_s, the association still open
    assert tracker.claim_due() == [DueSeries("1.2.3", 1)]
