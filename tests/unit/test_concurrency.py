"""The concurrency controller on synthetic links: a clock the test moves and answers it makes up.

A link here is a round-trip time and the number of requests it can serve at once (``room``): with
``limit`` in flight it answers min(limit, room) / rtt files a second, each after
rtt x max(1, limit / room) (what is over the room queues). ``noise`` scales each tick's answers by
a seeded random factor, as a shared box's speed wanders.
"""
from __future__ import annotations

import random
from typing import List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3_uploader import concurrency
from s3_uploader.concurrency import HIGH, LOW, PROBE_EVERY, START, Controller, controller_for, pool_size, worker_threads

TICK = 0.01  # seconds between the simulated sender's turns


def drive(c: Controller, seconds: float, rtt: float, room: float, *, t0: float = 0.0, waiting: bool = True,
          noise: float = 0.0, seed: int = 1, size: int = 4096) -> Tuple[float, List[Tuple[float, int]]]:
    """Run ``c`` over the link for ``seconds`` from ``t0``; returns the end time and (time, limit)
    at every tick."""
    rng = random.Random(seed)
    owed = 0.0
    t = t0
    trace: List[Tuple[float, int]] = []
    while t < t0 + seconds:
        t += TICK
        rate = min(c.limit, room) / rtt
        owed += rate * TICK * (1 + noise * (2 * rng.random() - 1))
        latency = rtt * max(1.0, c.limit / room)
        while owed >= 1:
            owed -= 1
            c.on_answer(t, latency, size)
        c.step(t, waiting)
        trace.append((t, c.limit))
    return t, trace


def test_on_a_round_trip_bound_link_it_grows_from_the_start_to_the_top_within_seconds():
    c = Controller()
    assert c.limit == START == 64
    _, trace = drive(c, 6.0, rtt=0.04, room=10_000)
    assert c.limit == HIGH == 512
    reached = next(t for t, limit in trace if limit == HIGH)
    assert reached < 4.0, f"took {reached:.1f} s"


def test_where_more_in_flight_stops_paying_it_settles_and_does_not_grow_without_bound():
    c = Controller()
    _, trace = drive(c, 120.0, rtt=0.04, room=200)
    # 64 -> 128 -> 256 pay (2x, 1.56x); 512 does not (1.0x) and is taken back; probes (x1.25) do not pay
    assert c.limit == 256 and c.phase == "settled"
    later = [limit for t, limit in trace if t > 10]
    assert max(later) <= 320  # at most a probe above it
    assert sum(later) / len(later) < 270


def test_where_more_in_flight_never_pays_it_stays_where_it_started():
    c = Controller()
    drive(c, 60.0, rtt=0.002, room=32)  # loopback and a busy CPU: the rate is flat from 32 on
    assert c.limit == START


def test_a_wandering_rate_does_not_walk_the_limit_away_from_where_it_pays():
    c = Controller()
    _, trace = drive(c, 300.0, rtt=0.002, room=32, noise=0.10, seed=7)
    later = [limit for t, limit in trace if t > 10]
    assert max(later) <= 2 * START and sum(later) / len(later) < 1.3 * START


def test_jobs_that_never_wait_for_a_slot_say_nothing_and_the_limit_stays():
    c = Controller()
    drive(c, 30.0, rtt=0.04, room=10_000, waiting=False)  # the work handed over, not the limit, holds the rate
    assert c.limit == START and c.last is not None and c.last.busy == 0.0


def test_throttling_halves_the_limit_once_per_window_then_it_recovers():
    c = Controller()
    t, _ = drive(c, 6.0, rtt=0.04, room=10_000)
    assert c.limit == 512
    assert c.on_failure(t, "throttled") == 256
    for _ in range(50):  # the rest of the burst: the same signal
        assert c.on_failure(t + 0.001, "throttled") is None
    assert c.limit == 256
    assert c.on_failure(t + 0.002, "invalid") is None  # not a sign of load
    t, trace = drive(c, 20.0, rtt=0.04, room=10_000, t0=t)
    assert c.limit == 512
    back = next(tt for tt, limit in trace if limit == 512)
    assert back - trace[0][0] < 10.0


def test_a_network_failure_takes_a_quarter_off_and_back_off_stops_at_the_floor():
    c = Controller()
    assert c.on_failure(1.0, "network") == 48
    t = 1.0
    for _ in range(20):
        t += 10.0
        c.on_failure(t, "throttled")
    assert c.limit == LOW


def test_while_the_server_throttles_above_a_rate_the_limit_stays_below_it():
    c = Controller()
    t = 0.0
    trace: List[int] = []
    for _ in range(60):
        t, _ = drive(c, 0.5, rtt=0.04, room=10_000, t0=t)
        if c.limit > 150:  # the endpoint answers SlowDown above 150 in flight
            c.on_failure(t, "throttled")
        trace.append(c.limit)
    assert max(trace[10:]) <= 250 and min(trace[10:]) >= 64


def test_a_pinned_limit_never_moves():
    c = controller_for(128)
    assert c.pinned and c.limit == 128
    drive(c, 10.0, rtt=0.04, room=10_000)
    assert c.on_failure(20.0, "throttled") is None
    assert c.limit == 128


def test_auto_and_a_number_size_the_threads_and_the_connection_pool():
    assert controller_for(None).limit == START and not controller_for(None).pinned
    assert worker_threads(None) == 64 and worker_threads(8) == 8
    assert pool_size(None, 4) == HIGH + 4  # every small file the controller may keep in flight
    assert pool_size(8, 4) == 36
    with pytest.raises(ValueError):
        Controller(low=10, high=5)


_EVENT = st.one_of(
    st.tuples(st.just("answers"), st.floats(0.0, 2.0), st.floats(0.001, 0.5), st.booleans()),
    st.tuples(st.just("failure"), st.floats(0.0, 2.0), st.sampled_from(["throttled", "network", "server"]),
              st.booleans()),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_EVENT, max_size=60), st.integers(1, 64), st.integers(0, 600))
def test_whatever_happens_the_limit_stays_within_its_bounds(events, low, extra):
    high = low + extra
    c = Controller(start=START, low=low, high=high)
    t = 0.0
    for kind, dt, what, waiting in events:
        t += dt
        if kind == "answers":
            for _ in range(40):
                c.on_answer(t, what, 4096)
        else:
            c.on_failure(t, what)
        new: Optional[int] = c.step(t, waiting)
        assert low <= c.limit <= high and (new is None or new == c.limit)


def test_probes_come_no_more_often_than_every_probe_interval_once_settled():
    assert PROBE_EVERY >= 10  # a probe costs a window above the best: rare enough to be free
    c = Controller()
    t, trace = drive(c, 10.0, rtt=0.04, room=200)
    assert c.phase == "settled"
    _, trace = drive(c, 3 * PROBE_EVERY, rtt=0.04, room=200, t0=t)
    ups = sum(1 for (_, a), (_, b) in zip(trace, trace[1:]) if b > a)
    assert 1 <= ups <= 4


def test_limit_changes_are_logged_at_debug_only(caplog):
    caplog.set_level("DEBUG", logger=concurrency.__name__)
    c = Controller()
    drive(c, 3.0, rtt=0.04, room=10_000)
    records = [r for r in caplog.records if r.name == concurrency.__name__]
    assert records and all(r.levelname == "DEBUG" for r in records)
    assert "64 -> 128 requests in flight" in records[0].getMessage()


def test_the_slow_first_window_of_the_start_does_not_make_the_first_doubling_look_paid_for():
    c = Controller()
    t, _ = drive(c, 1.0, rtt=0.5, room=10)  # start-up: connections being made, the process warming up
    drive(c, 60.0, rtt=0.002, room=32, t0=t)  # then a link where more than 32 never pays
    assert c.limit == START


def test_a_rate_that_climbs_while_the_process_starts_is_not_credited_to_a_doubling():
    # loopback and our own CPU: the rate is what the CPU gives (climbing from 300 to 1,500 files/s
    # over the first 2 s, while the scan and the first reads run), whatever the limit; what is in
    # flight waits in our process (latency = limit / rate)
    c = Controller()
    t, owed = 0.0, 0.0
    trace: List[int] = []
    while t < 30.0:
        t += TICK
        rate = min(c.limit / 0.001, 300 + 1200 * min(1.0, t / 2.0))
        owed += rate * TICK
        while owed >= 1:
            owed -= 1
            c.on_answer(t, c.limit / rate, 4096)
        c.step(t, True)
        trace.append(c.limit)
    assert c.limit == START
    assert max(trace) <= 2 * START  # a doubling tried once the rate held still, and taken back
