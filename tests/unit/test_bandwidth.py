"""Bandwidth limits: the token bucket under a fake clock, the timetable, and the limit holding for real."""

from __future__ import annotations

import threading
import time

import pytest

from s3_uploader.bandwidth import BandwidthLimiter, Cancelled, scheduled_limit
from s3_uploader.config import parse_schedule


class FakeTime:
    """A monotonic clock that only moves when someone sleeps, and a wall clock tied to it."""

    def __init__(self, wall_start: float = 1_700_000_000.0):
        self.now = 1000.0
        self.wall_start = wall_start
        self.slept = []

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wall_start + (self.now - 1000.0)

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, "the limiter asked to sleep for nothing: it would spin"
        self.slept.append(seconds)
        self.now += seconds


def local_time(hour: int, minute: int) -> float:
    """Epoch seconds for a weekday at HH:MM local time."""
    return time.mktime((2026, 1, 5, hour, minute, 0, 0, 0, -1))


def test_an_unlimited_limiter_never_waits():
    t = FakeTime()
    lim = BandwidthLimiter(0, clock=t.clock, wall=t.wall, sleep=t.sleep)
    for _ in range(100):
        lim.throttle(10 * 1024 * 1024)
    assert t.slept == []
    assert lim.limit() is None


def test_a_fixed_limit_paces_bytes_to_the_rate():
    t = FakeTime()
    lim = BandwidthLimiter(1000, clock=t.clock, wall=t.wall, sleep=t.sleep)
    for _ in range(10):
        lim.throttle(1000)
    # the bucket starts empty: 10,000 bytes at 1,000 bytes/s take 10 s
    assert t.now - 1000.0 == pytest.approx(10.0)


def test_an_idle_link_allows_at_most_one_second_of_burst():
    t = FakeTime()
    lim = BandwidthLimiter(1000, clock=t.clock, wall=t.wall, sleep=t.sleep)
    t.now += 3600  # idle for an hour: only one second's worth is banked
    lim.throttle(1000)
    assert t.slept == []
    lim.throttle(5000)
    assert t.now - 4600.0 == pytest.approx(5.0)


def test_a_part_larger_than_the_bucket_waits_for_its_whole_size():
    t = FakeTime()
    lim = BandwidthLimiter(1024, clock=t.clock, wall=t.wall, sleep=t.sleep)
    lim.throttle(16 * 1024)
    assert t.now - 1000.0 == pytest.approx(16.0)
    assert max(t.slept) <= 0.25 + 1e-9, "a long wait must look at the limit again every fraction of a second"


@pytest.mark.parametrize("minute, expected", [
    (0, 2000),            # before the first entry: the previous evening's last entry still holds
    (8 * 60 - 1, 2000),
    (8 * 60, 512 * 1024),
    (12 * 60, 512 * 1024),
    (19 * 60, None),
    (21 * 60 - 1, None),
    (21 * 60, 2000),
    (23 * 60 + 59, 2000),
])
def test_the_timetable_entry_in_force_is_the_last_one_started(minute, expected):
    schedule = parse_schedule("08:00,512KiB 19:00,off 21:00,2000")
    assert scheduled_limit(schedule, minute) == expected


def test_an_empty_timetable_means_no_limit():
    assert scheduled_limit((), 600) is None


def test_a_timetable_entry_that_lifts_the_limit_releases_a_waiting_transfer():
    # 07:59 local, 1,000 bytes/s until 08:00, then off: a 1 MB part must not wait 1,000 s
    t = FakeTime(wall_start=local_time(7, 59))
    lim = BandwidthLimiter(0, parse_schedule("08:00,off 19:00,1000"), clock=t.clock, wall=t.wall, sleep=t.sleep)
    assert lim.limit() == 1000
    lim.throttle(1_000_000)
    waited = t.now - 1000.0
    assert 60.0 <= waited <= 60.5
    assert lim.limit() is None


def test_a_timetable_entry_that_sets_a_limit_slows_new_transfers():
    t = FakeTime(wall_start=local_time(7, 59))
    lim = BandwidthLimiter(0, parse_schedule("08:00,1000 19:00,off"), clock=t.clock, wall=t.wall, sleep=t.sleep)
    lim.throttle(50_000_000)
    assert t.slept == []  # off until 08:00
    t.now += 120  # 08:01
    lim.throttle(1000)
    lim.throttle(1000)
    assert t.now - 1120.0 == pytest.approx(1.0)  # one second banked, one waited


def test_the_timetable_overrides_max_bandwidth_and_reconfigure_applies_to_waiting_callers():
    t = FakeTime(wall_start=local_time(12, 0))
    lim = BandwidthLimiter(10, clock=t.clock, wall=t.wall, sleep=t.sleep)
    assert lim.limit() == 10
    lim.configure(10, parse_schedule("00:00,5000"))
    assert lim.limit() == 5000
    lim.configure(0, ())
    assert lim.limit() is None


def test_a_cancelled_limiter_stops_a_waiting_transfer():
    t = FakeTime()
    cancel = threading.Event()

    def sleep(seconds: float) -> None:
        t.sleep(seconds)
        if t.now > 1005:
            cancel.set()  # shutdown's drain time ran out while we waited

    lim = BandwidthLimiter(100, clock=t.clock, wall=t.wall, sleep=sleep, cancel=cancel)
    with pytest.raises(Cancelled):
        lim.throttle(100_000)
    assert t.now < 1006


def test_threads_sharing_a_limit_together_stay_under_it_in_real_time():
    rate = 2 * 1024 * 1024
    lim = BandwidthLimiter(rate)
    chunk, per_thread, threads = 128 * 1024, 12, 4  # 6 MiB in all
    total = chunk * per_thread * threads

    def send() -> None:
        for _ in range(per_thread):
            lim.throttle(chunk)

    t0 = time.monotonic()
    workers = [threading.Thread(target=send, name=f"bw-test-{i}") for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    elapsed = time.monotonic() - t0
    # 6 MiB at 2 MiB/s from an empty bucket is 3 s; a slow machine may take longer, never shorter
    assert elapsed >= total / rate * 0.9, f"{total} bytes went through in {elapsed:.2f}s: over the limit"
    assert elapsed < total / rate * 4, f"{elapsed:.2f}s is far slower than the limit allows"
