"""An outage of the S3 endpoint is a state of the daemon, not a stream of per-file warnings.

When the endpoint stops answering (connection errors, timeouts) or answers only with throttling or
5xx, every waiting file fails at every attempt: thousands of lines a minute, and the one line that
matters is lost among them. :class:`Outage` turns those failures into a state:

- ``DECLARE_AFTER`` endpoint failures in a row, with no upload succeeding in between, start an
  outage: one WARNING (the endpoint, the error, how many files wait);
- while it lasts, per-file attempts are logged at DEBUG (``failed`` returns True for them) and one
  summary WARNING is written every ``summary_every`` seconds at most (:meth:`tick`);
- the first upload that succeeds ends it: one INFO line with how long it lasted.

Failures that are not the endpoint's (a permission error, a key too long, credentials) are not an
outage: their lines are the caller's, once per file and reason. The state is kept in the store's
``meta`` table (``outage``) so that ``status``, run in another process, shows it, and counted for
metrics. Pure apart from the ``log`` and the ``on_change`` callback; the clocks are injected.
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable, Dict, Optional

from .retry import Failure

log = logging.getLogger(__name__)

ENDPOINT_KINDS = ("network", "throttled", "server")  # failures of the endpoint, not of a file
DECLARE_AFTER = 3
SUMMARY_EVERY = 300.0
META_OUTAGE = "outage"


class Outage:
    """The endpoint's state as the uploads see it. Thread-safe: workers and the sender report to it.

    ``waiting()`` counts the files not yet in S3 (read only when a line is written);
    ``on_change(state)`` is called with :meth:`state`'s dict when an outage starts or changes, and
    with None when it ends (the daemon stores it for ``status``)."""

    def __init__(self, endpoint: str, *, clock: Callable[[], float], wall: Callable[[], float],
                 waiting: Callable[[], int] = lambda: 0,
                 on_change: Callable[[Optional[Dict[str, Any]]], None] = lambda state: None,
                 declare_after: int = DECLARE_AFTER, summary_every: float = SUMMARY_EVERY):
        self.endpoint = endpoint
        self.clock = clock
        self.wall = wall
        self.waiting = waiting
        self.on_change = on_change
        self.declare_after = declare_after
        self.summary_every = summary_every
        self._lock = threading.Lock()
        self._in_a_row = 0
        self._since: Optional[float] = None  # monotonic start of the outage in force
        self._since_wall: Optional[float] = None
        self._last_error = ""
        self._summary_at = 0.0
        self._failures_during = 0
        self.outages = 0  # started since the daemon started (a metric)

    @property
    def down(self) -> bool:
        return self._since is not None

    def state(self) -> Optional[Dict[str, Any]]:
        """What ``status`` and ``/healthz`` show: None, or since (wall time), seconds, error, endpoint."""
        with self._lock:
            if self._since is None:
                return None
            return {"endpoint": self.endpoint, "since": self._since_wall, "seconds": self.clock() - self._since,
                    "error": self._last_error, "failures": self._failures_during}

    def begin(self, error: str) -> None:
        """The endpoint is known to be down already (start-up found it so, and said it): the outage
        starts now, without a line of its own."""
        with self._lock:
            self._last_error = error
            if self._since is not None:
                return
            self._since, self._since_wall = self.clock(), self.wall()
            self._summary_at = self._since
            self._failures_during = 0
            self.outages += 1
        self.on_change(self.state())

    def failed(self, failure: Failure) -> bool:
        """Report one failed attempt. Returns True when its own line belongs at DEBUG: the endpoint
        is down and this line would only repeat the outage's."""
        if failure.kind not in ENDPOINT_KINDS:
            return False
        started = False
        with self._lock:
            self._last_error = str(failure)
            self._in_a_row += 1
            if self._since is not None:
                self._failures_during += 1
                return True
            if self._in_a_row < self.declare_after:
                return False
            self._since, self._since_wall = self.clock(), self.wall()
            self._summary_at = self._since
            self._failures_during = self._in_a_row
            self.outages += 1
            started = True
        if started:
            log.warning("S3 endpoint %s is not answering (%s); %d file(s) wait and go when it answers "
                        "(per-file attempts are logged at DEBUG until then)", self.endpoint, failure,
                        self.waiting())
            self.on_change(self.state())
        return True

    def succeeded(self) -> None:
        """An upload went through: the endpoint answers. Ends an outage in force."""
        with self._lock:
            self._in_a_row = 0
            if self._since is None:
                return
            lasted = self.clock() - self._since
            failures = self._failures_during
            self._since = self._since_wall = None
        log.info("S3 endpoint %s answers again after %s (%d failed attempt(s) meanwhile); uploading the "
                 "%d waiting file(s)", self.endpoint, human_seconds(lasted), failures, self.waiting())
        self.on_change(None)

    def tick(self) -> None:
        """Called periodically: while the outage lasts, one summary line every ``summary_every``."""
        with self._lock:
            if self._since is None or self.clock() - self._summary_at < self.summary_every:
                return
            self._summary_at = self.clock()
            lasted, error, failures = self.clock() - self._since, self._last_error, self._failures_during
        log.warning("S3 endpoint %s still not answering after %s (%d failed attempt(s); last: %s); %d file(s) "
                    "wait", self.endpoint, human_seconds(lasted), failures, error, self.waiting())
        self.on_change(self.state())


def stored(raw: Optional[str]) -> Optional[Dict[str, Any]]:
    """The outage recorded in the store's meta value ``raw`` (None when there is none)."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def human_seconds(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
