"""How many small-file requests to keep in flight: a limit that follows the link.

Over a link with a round-trip time, files/s is about (requests in flight) / (time each takes), so
the number in flight that wins on loopback (64) loses at 40 ms, and the one that wins at 40 ms costs
memory and server CPU for nothing on loopback. :class:`Controller` finds it while the daemon runs,
from what the sender sees: each answer's latency and size, each failure's kind, and whether jobs
were waiting for a slot (the limit, not the work handed over, was what held the rate).

It is a hill climb on measured throughput, with TCP's reflexes for trouble (our own; the shape is
that of TCP slow start and AIMD, with the "did it help?" test of a gradient controller):

- **Windows.** Answers are counted over a window of :data:`WINDOW_LATENCIES` mean latencies (at
  least :data:`MIN_WINDOW` s and :data:`MIN_SAMPLES` answers, at most :data:`MAX_WINDOW` s). After
  every change of the limit, answers for one mean latency are not counted: the pipe is filling or
  draining, and its rate belongs to neither limit; nor does the very first window's (connections
  being made, the process starting), which only gives the first latency. A window in which jobs waited for a slot less
  than :data:`BUSY_SHARE` of the time, or in which fewer than :data:`FILLED` of the slots were in
  use on average (Little's law: rate × latency), says nothing about the limit (the work handed
  over, or our CPU, held the rate) and changes nothing.
- **Slow start.** From :data:`START`, once two windows in a row agree (within :data:`AGREE`: while
  the process starts, the rate climbs whatever the limit), the limit doubles after each window whose files/s or bytes/s
  beat the last accepted window's by at least a quarter of the step (×2 must gain 25%): on a
  round-trip-bound link a doubling nearly doubles the rate. The first step that does not pay in two
  windows in a row (one short window on a busy box can read 15% low) is taken back and the
  controller is **settled**: it cannot grow without bound where throughput has
  stopped growing. By Little's law (in flight = rate × latency) "the rate grew by a quarter of the
  step" is also "latency grew by less than the step": growth that only queues is refused.
- **Probes.** Settled, it tries ×:data:`PROBE_STEP` every :data:`PROBE_EVERY` s (the link may have
  changed); kept, and tried again next window, while it pays.
- **Trouble.** A throttling answer (503 SlowDown, 429: :data:`THROTTLED`) halves the limit; a
  network failure or timeout (:data:`NETWORK`) takes a quarter off. At most once per window (a
  burst of 64 SlowDowns is one signal, not 64), then no probe for :data:`COOLDOWN_WINDOWS` windows.
- **Bounds.** Always within ``[low, high]`` (auto: :data:`LOW`..:data:`HIGH`); the memory bound is
  the sender's: the bodies it holds in flight stay under :data:`MEMORY_CAP` bytes whatever the limit
  (a 1 MiB body each: 128 of them; 4 KiB bodies: all 512).

``upload_workers = N`` pins the limit: a Controller with ``low == high == N`` never moves.
The controller does no I/O and keeps no clock: every call is given ``now`` (seconds, monotonic), so
tests drive it with synthetic samples. Not thread-safe: the sender's loop thread alone calls it.
"""
from __future__ import annotations

import logging
import math
from typing import NamedTuple, Optional

log = logging.getLogger(__name__)

LOW = 4  # auto: fewest requests in flight
HIGH = 512  # auto: most requests in flight
START = 64  # auto: where it starts (the fixed default before it adapted)
MEMORY_CAP = 128 * 1024 * 1024  # bytes of bodies the sender holds in flight at most (see module docstring)

MIN_WINDOW = 0.25  # seconds a measuring window lasts at least
MAX_WINDOW = 5.0  # ...and at most (then judged with whatever it has, if it has MIN_SAMPLES)
WINDOW_LATENCIES = 4  # ...otherwise this many mean latencies
MIN_SAMPLES = 32  # answers a window needs before it is judged
BUSY_SHARE = 0.8  # share of a window during which jobs waited for a slot, for the window to count
FILLED = 0.5  # ...and the share of the limit in use on average (rate x latency), for it to count
AGREE = 0.2  # before the first step: two windows at the start whose files/s are this close (±20%)
STEADY_TRIES = 4  # ...or this many windows, on a box too noisy for two to agree
GAIN = 0.25  # a step of ×f must raise throughput by GAIN × (f - 1) to be kept
PROBE_STEP = 1.25  # settled: the size of a probe
PROBE_EVERY = 20.0  # settled: seconds between probes
COOLDOWN_WINDOWS = 2  # windows after a back-off before probing again
THROTTLED = 0.5  # the limit's factor on a throttling answer
NETWORK = 0.75  # ...on a network failure or timeout

TROUBLE = {"throttled": THROTTLED, "network": NETWORK}  # failure kind (retry.Failure.kind) -> factor


AUTO_WORKERS = 64  # auto: upload worker threads (large files, bandwidth-limited ones, transport = boto3)


def controller_for(upload_workers: Optional[int], now: float = 0.0) -> Controller:
    """The controller ``[upload] upload_workers`` asks for: adaptive from :data:`START` within
    :data:`LOW`..:data:`HIGH` for ``auto`` (None), pinned at N for a number."""
    if upload_workers is None:
        return Controller(now=now)
    return Controller(start=upload_workers, low=upload_workers, high=upload_workers, now=now)


def worker_threads(upload_workers: Optional[int]) -> int:
    """Upload worker threads for ``[upload] upload_workers``: N, or :data:`AUTO_WORKERS` for auto."""
    return AUTO_WORKERS if upload_workers is None else upload_workers


def pool_size(upload_workers: Optional[int], max_concurrency: int) -> int:
    """HTTP connections a remote keeps for ``upload_workers``: one per request that can be in
    flight (every worker's parts, or every small file the controller may keep in flight), and a few
    for HEADs and listings."""
    most = HIGH if upload_workers is None else upload_workers
    return max(worker_threads(upload_workers) * max_concurrency, most) + 4


class Window(NamedTuple):
    """What one judged window measured (the last one is kept for tests, status and logs)."""

    limit: int
    files_per_s: float
    bytes_per_s: float
    latency: float  # mean seconds per answer
    busy: float  # share of the window during which jobs waited for a slot


class Controller:
    """The limit on small-file requests in flight; see the module docstring.

    ``limit`` is read by the sender before each start. The sender reports each answer with
    :meth:`on_answer`, each failure with :meth:`on_failure`, and calls :meth:`step` once per turn of
    its loop with whether jobs are waiting for a slot; :meth:`step` returns the new limit when it
    changes (None otherwise).
    """

    def __init__(self, *, start: int = START, low: int = LOW, high: int = HIGH, now: float = 0.0):
        if not 1 <= low <= high:
            raise ValueError(f"bounds must satisfy 1 <= low <= high (got {low}, {high})")
        self.low, self.high = low, high
        self.limit = min(high, max(low, start))
        self.pinned = low == high
        self.phase = "start"  # start (doubling) | probe (trying ×PROBE_STEP) | settled
        self.last: Optional[Window] = None  # the last window judged
        self._base: Optional[Window] = None  # the last window accepted: what a step must beat
        self._base_limit = self.limit
        self._latency = 0.0  # mean latency of the last window with answers (0: none yet)
        self._next_probe = math.inf
        self._cooldown = 0  # windows still to wait after a back-off
        self._strikes = 0  # slow start: windows in a row in which a doubling did not pay
        self._warm = False  # whether the first window (start-up, not the limit) has been seen
        self._steady = False  # slow start: whether two windows at the start agreed (then it may step)
        self._steady_tries = 0
        self._calm_from = now  # no new back-off before this
        self._waiting = False  # jobs waited for a slot at the last turn
        # the window being counted (reset by _open)
        self._counting_from = self._turn_at = now
        self._files = self._bytes = 0
        self._latency_sum = self._busy = 0.0

    # -- what the sender reports ------------------------------------------------------------------
    def on_answer(self, now: float, latency: float, nbytes: int) -> None:
        """A request answered ``latency`` seconds after it started, with ``nbytes`` of body."""
        if now >= self._counting_from:
            self._files += 1
            self._bytes += nbytes
            self._latency_sum += latency

    def on_failure(self, now: float, kind: str) -> Optional[int]:
        """A request failed with a :class:`~s3_uploader.retry.Failure` of ``kind``. Throttling and
        network failures back off (once per window); returns the new limit when it changes."""
        factor = TROUBLE.get(kind)
        if factor is None or self.pinned or now < self._calm_from:
            return None
        new = max(self.low, int(self.limit * factor))
        self._base, self._base_limit = None, new  # the rate must be measured again at the new limit
        self.phase, self._cooldown, self._next_probe, self._strikes = "settled", COOLDOWN_WINDOWS, math.inf, 0
        self._calm_from = now + self._window_length()
        return self._set(now, new, f"{kind} answer")

    def step(self, now: float, waiting: bool) -> Optional[int]:
        """One turn of the sender's loop: ``waiting`` is whether jobs are queued for a slot (the
        limit holds them back). Closes the window when due and judges it; returns the new limit
        when it changes."""
        if self._waiting and now > self._counting_from:
            self._busy += now - max(self._turn_at, self._counting_from)
        self._turn_at, self._waiting = now, waiting
        if self.pinned or now - self._counting_from < self._window_length():
            return None
        if self._files < MIN_SAMPLES and now - self._counting_from < MAX_WINDOW:
            return None
        return self._judge(now)

    # -- the decision -----------------------------------------------------------------------------
    def _judge(self, now: float) -> Optional[int]:
        span = now - self._counting_from
        if self._files == 0:  # nothing answered in a whole window: nothing to learn
            self._open(now, settle=False)
            return None
        w = Window(self.limit, self._files / span, self._bytes / span, self._latency_sum / self._files,
                   min(1.0, self._busy / span))
        self.last, self._latency = w, w.latency
        self._open(now, settle=False)
        if not self._warm:  # the first window holds the start: connections made, the pipe filling
            self._warm = True
            return None
        # Not held by the limit: jobs did not wait for a slot, or they did but fewer than half the
        # slots were in use (Little's law: in flight = rate x latency; the sender could not start
        # them faster, our CPU is the limit). Nothing to learn about the limit.
        if w.busy < BUSY_SHARE or w.files_per_s * w.latency < FILLED * self.limit:
            return None
        if self._base is None:  # the first window at this limit since a change of course
            self._base, self._base_limit = w, self.limit
            return None if self.phase == "start" else self._settled(now)
        if self.phase == "start" and not self._steady:
            # Before the first step, two windows in a row at the start must agree: while the process
            # starts (a scan, the first files read) the rate climbs whatever the limit, and a
            # doubling measured then would be credited with it.
            agree = abs(w.files_per_s / max(self._base.files_per_s, 1e-9) - 1) <= AGREE
            self._base, self._steady_tries = w, self._steady_tries + 1
            if not agree and self._steady_tries < STEADY_TRIES:
                return None
            self._steady = True
            return self._set(now, self.limit * 2, "slow start")
        if self.phase in ("start", "probe"):
            step = self.limit / self._base_limit
            gain = max(w.files_per_s / max(self._base.files_per_s, 1e-9),
                       w.bytes_per_s / max(self._base.bytes_per_s, 1e-9))
            if step > 1 and gain >= 1 + GAIN * (step - 1):
                self._base, self._base_limit, self._strikes = w, self.limit, 0
                grow = 2.0 if self.phase == "start" else PROBE_STEP
                if self.limit < self.high:
                    return self._set(now, math.ceil(self.limit * grow), f"{gain:.2f}x the rate")
                self.phase, self._next_probe = "settled", now + PROBE_EVERY
                return None
            if self.phase == "start" and self._strikes == 0:
                self._strikes = 1  # one short window is noisy: slow start measures a doubling twice
                return None
            self.phase, self._next_probe, self._strikes = "settled", now + PROBE_EVERY, 0
            return self._set(now, self._base_limit, f"only {gain:.2f}x the rate")
        self._base = w  # settled: keep the reference fresh
        return self._settled(now)

    def _settled(self, now: float) -> Optional[int]:
        self.phase = "settled"
        if self._cooldown > 0:
            self._cooldown -= 1
            if self._cooldown == 0:
                self._next_probe = now  # recover: probe from the next window on
            return None
        if now >= self._next_probe and self.limit < self.high:
            self.phase, self._base_limit = "probe", self.limit
            return self._set(now, math.ceil(self.limit * PROBE_STEP), "probe")
        if self._next_probe == math.inf:
            self._next_probe = now + PROBE_EVERY
        return None

    # -- windows ----------------------------------------------------------------------------------
    def _set(self, now: float, limit: int, why: str) -> Optional[int]:
        limit = min(self.high, max(self.low, limit))
        if limit == self.limit:
            return None
        log.debug("concurrency: %d -> %d requests in flight (%s)", self.limit, limit, why)
        self.limit = limit
        self._open(now, settle=True)
        return limit

    def _open(self, now: float, settle: bool) -> None:
        """A new window from ``now`` (after one mean latency when the limit just changed)."""
        self._counting_from = now + (self._latency if settle else 0.0)
        self._turn_at = now
        self._files = self._bytes = 0
        self._latency_sum = self._busy = 0.0

    def _window_length(self) -> float:
        return min(MAX_WINDOW, max(MIN_WINDOW, WINDOW_LATENCIES * self._latency))
