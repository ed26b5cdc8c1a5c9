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
    tracker.mark_done(due.series_instance_uid, due.run)
    tracker.instance_received("1.2.3", "b")
    assert tracker.state("1.2.3") == ("receiving", 2)
    tracker.association_released("b")
    clock.now += 11
    assert tracker.claim_due() == [DueSeries("1.2.3", 2)]
    tracker.mark_done("1.2.3", 1)  # a stale completion of run 1 changes nothing
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
