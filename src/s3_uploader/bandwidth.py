"""Upload bandwidth: one token bucket shared by every upload, its rate from a limit or a timetable.

``[upload] max_bandwidth`` is a fixed limit in bytes per second; ``bandwidth_schedule`` is an
rclone-style timetable (``08:00,512KiB 19:00,off``) whose entries hold from their time of day until
the next one, and which overrides ``max_bandwidth`` when set. Before the first entry of a day the
last entry of the previous day still holds.

The uploader calls :meth:`BandwidthLimiter.throttle` with the size of each in-memory PUT body, each
part, and each 1 MiB of a streamed PUT, before sending it. A call reserves its bytes at once (every
caller is served in order, however many threads share the bucket) and then waits until the bucket
has paid for them. The wait re-reads the limit every fraction of a second, so a timetable entry
that starts, or a reload that changes the limit, applies to transfers already waiting, not only to
new ones; ``off`` releases them at once.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional, Sequence

from .config import Config, ScheduleEntry

log = logging.getLogger(__name__)

# How often a waiting caller looks at the clock and the limit again.
RECHECK_SECONDS = 0.25
# The bucket holds at most this many seconds of the rate: an idle link allows a short burst, no more.
BURST_SECONDS = 1.0


def scheduled_limit(schedule: Sequence[ScheduleEntry], minute_of_day: int) -> Optional[int]:
    """The limit (bytes per second, None = unlimited) that ``schedule`` sets at ``minute_of_day``.

    The entry in force is the last one starting at or before that minute; before the day's first
    entry, the day's last entry (carried over from the previous evening). An empty schedule: None.
    """
    if not schedule:
        return None
    current = schedule[-1]
    for entry in schedule:
        if entry.minute_of_day <= minute_of_day:
            current = entry
        else:
            break
    return current.limit


def local_minute_of_day(wall: float) -> int:
    t = time.localtime(wall)
    return t.tm_hour * 60 + t.tm_min


class Cancelled(Exception):
    """Raised by ``throttle`` when its cancel event is set (shutdown has run out of time)."""


class BandwidthLimiter:
    """A thread-safe token bucket whose rate follows ``max_bandwidth`` or a timetable.

    ``clock`` (monotonic seconds) measures refill; ``wall`` (epoch seconds) gives the time of day
    for the timetable; ``sleep`` waits (tests pass a fake that advances a fake clock). ``cancel``,
    when set, makes waiting callers raise :class:`Cancelled` instead of waiting on.
    """

    def __init__(self, max_bandwidth: int = 0, schedule: Sequence[ScheduleEntry] = (), *,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 sleep: Optional[Callable[[float], None]] = None, cancel: Optional[threading.Event] = None,
                 on_cancel: Callable[[], BaseException] = Cancelled):
        self.clock = clock
        self.wall = wall
        self.cancel = cancel or threading.Event()
        self._on_cancel = on_cancel
        self._sleep = sleep or self.cancel.wait
        self._lock = threading.Lock()
        # Two running totals: bytes reserved by callers, and bytes the bucket has paid out. A caller
        # whose reservation ends at byte N may send once ``_paid >= N``.
        self._reserved = 0.0
        self._paid = 0.0
        self._last = clock()
        self._max_bandwidth = 0
        self._schedule: tuple = ()
        self._logged_limit: Optional[int] = None  # unlimited until told otherwise
        self.configure(max_bandwidth, schedule)

    def configure(self, max_bandwidth: int, schedule: Sequence[ScheduleEntry] = ()) -> None:
        """Set a new fixed limit and timetable (on reload); callers already waiting follow it."""
        with self._lock:
            self._refill(self.clock())
            self._max_bandwidth = int(max_bandwidth or 0)
            self._schedule = tuple(schedule)

    def limit(self) -> Optional[int]:
        """The limit in force now, in bytes per second; None = unlimited."""
        if self._schedule:
            return scheduled_limit(self._schedule, local_minute_of_day(self.wall()))
        return self._max_bandwidth or None

    def _refill(self, now: float, rate: Optional[int] = -1) -> None:
        """Pay out what the elapsed time earned at ``rate`` (looked up when not given); lock held."""
        if rate == -1:
            rate = self.limit()
        elapsed = max(0.0, now - self._last)
        self._last = now
        if rate is None:
            # unlimited: every reservation is paid, and nothing is banked for later
            self._paid = max(self._paid, self._reserved)
            return
        self._paid = min(self._paid + elapsed * rate, self._reserved + rate * BURST_SECONDS)

    def throttle(self, nbytes: int) -> None:
        """Block until ``nbytes`` may be sent under the current limit (returns at once when unlimited)."""
        if nbytes <= 0:
            return
        with self._lock:
            rate = self.limit()
            self._note(rate)
            if rate is None:
                self._refill(self.clock(), None)
                return
            self._refill(self.clock(), rate)
            self._reserved += nbytes
            mark = self._reserved
        while True:
            if self.cancel.is_set():
                raise self._on_cancel()
            with self._lock:
                rate = self.limit()
                self._refill(self.clock(), rate)
                if self._paid >= mark:
                    return
                if rate is None:  # cannot happen: an unlimited refill pays everything
                    return
                wait = (mark - self._paid) / rate
            self._sleep(min(wait, RECHECK_SECONDS))

    def _note(self, rate: Optional[int]) -> None:
        """Log when the limit in force changes (a timetable entry starts, or a reload); lock held."""
        if rate != self._logged_limit:
            log.info("Upload bandwidth limit now %s", "off" if rate is None else f"{rate} bytes/s")
            self._logged_limit = rate


def limiter_from_config(cfg: Config, **kw: Any) -> BandwidthLimiter:
    """A limiter set up from ``cfg``'s ``[upload] max_bandwidth`` and ``bandwidth_schedule``."""
    return BandwidthLimiter(cfg.upload.max_bandwidth, cfg.upload.bandwidth_schedule, **kw)
