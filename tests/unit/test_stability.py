"""The pure stability decision and the bounded tracker, driven by an injected clock."""
from __future__ import annotations

from s3_uploader.stability import MIN_CHECK_INTERVAL, Tracker, assess, check_interval, unsettled_after

SIG = (100, 1_000_000_000, 42)


def test_a_file_is_ready_only_after_stable_seconds_over_the_required_checks():
    v1 = assess(None, SIG, now=0.0, stable_seconds=10, stable_checks=3)
    assert not v1.ready and v1.changed and v1.next_check_at == 5.0
    v2 = assess(v1.observation, SIG, now=5.0, stable_seconds=10, stable_checks=3)
    assert not v2.ready and v2.next_check_at == 10.0
    v3 = assess(v2.observation, SIG, now=10.0, stable_seconds=10, stable_checks=3)
    assert v3.ready and v3.next_check_at is None


def test_a_change_restarts_the_clock():
    v1 = assess(None, SIG, 0.0, 10, 2)
    grown = (200, SIG[1] + 1, SIG[2])
    v2 = assess(v1.observation, grown, 10.0, 10, 2)
    assert not v2.ready and v2.changed and v2.observation.since == 10.0
    v3 = assess(v2.observation, grown, 20.0, 10, 2)
    assert v3.ready


def test_a_replaced_file_with_same_size_and_mtime_is_a_change():
    v1 = assess(None, SIG, 0.0, 1, 2)
    v2 = assess(v1.observation, (SIG[0], SIG[1], 43), 1.0, 1, 2)
    assert v2.changed and not v2.ready


def test_enough_checks_are_not_enough_before_stable_seconds():
    obs = assess(None, SIG, 0.0, 30, 2).observation
    v = assess(obs, SIG, 1.0, 30, 2)  # e.g. an event poked an early check
    assert not v.ready and v.next_check_at == 30.0


def test_zero_stability_with_one_check_is_ready_at_once():
    assert assess(None, SIG, 0.0, 0, 1).ready


def test_an_open_writer_holds_the_file_and_restarts_the_count():
    obs = assess(None, SIG, 0.0, 0, 1).observation
    v = assess(obs, SIG, 1.0, 0, 1, writer_open=True)
    assert not v.ready and v.writer_open and v.observation.checks == 1 and v.next_check_at >= 2.0


def test_check_interval_never_drops_below_the_minimum():
    assert check_interval(0, 5) == MIN_CHECK_INTERVAL
    assert check_interval(10, 2) == 10 and check_interval(10, 3) == 5


def test_tracker_is_bounded_and_hands_out_due_files_in_time_order():
    t = Tracker(capacity=2)
    assert t.add("a", 5.0) and t.add("b", 1.0)
    assert not t.add("c", 0.0) and t.full
    assert t.pop_due(0.5) == []
    assert t.pop_due(1.0) == ["b"]
    assert t.next_due() == 5.0
    assert t.add("a", 0.5)  # re-adding a tracked file makes it due sooner
    assert t.pop_due(0.6) == ["a"]
    t.remove("a")
    t.remove("b")
    assert len(t) == 0 and t.add("c", 0.0)


def test_the_tracker_knows_how_long_each_file_has_been_tracked_and_counts_the_unsettled():
    t = Tracker(3)
    t.add("a", 10.0)
    t.add("b", 50.0)
    t.add("a", 5.0)  # made due sooner: still tracked since it was first due
    assert t.since("a") == 10.0
    assert t.unsettled(100.0, older_than=60.0) == 1
    t.remove("a")
    assert t.unsettled(100.0, older_than=60.0) == 0
    assert unsettled_after(0) == 60.0 and unsettled_after(30) == 120.0
