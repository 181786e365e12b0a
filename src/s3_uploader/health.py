"""Is the daemon healthy? One rule, shared by the systemd watchdog pings and ``/healthz``.

Healthy means: the daemon is running (started, not stopping); the filesystem watcher thread is
alive when filesystem events are in use; the scanner and scheduler threads are alive and their
loops have beaten recently (a :class:`~s3_uploader.views.HealthView`'s ``heartbeats`` hold the
monotonic time of each loop's last turn; the scanner beats between folders and while it waits).
Upload workers are not timed: one large file on a slow link may legitimately take hours, and
botocore's timeouts bound a hung request.

:func:`tracker_note` is not a health problem but a remark: the stability tracker full of files
that have not become stable for long (logs appended to for ever). They give way to other files,
so nothing starves; a restart would not make them settle, so the watchdog must not act on it.

:class:`StateSnapshot` keeps the database-derived numbers (files per state, the oldest file not
yet uploaded) that status lines and metrics show, refreshed every few seconds rather than on every
look. Each refresh costs the same however many rows there are (the store keeps its counts per
state by trigger and finds the oldest waiting file by index), so a database of millions of rows
costs a daemon nothing while it is idle.
"""
from __future__ import annotations

import threading
from typing import Any, Dict, Optional

from .budget import Reading, budget_note
from .store import STATES, WAITING_STATES, Store, StoreError
from .views import HealthView, Observed, Tracked

# A loop that has not beaten for this long is wedged (the scheduler beats at least every second,
# the scanner between folders); generous, so a slow network share is not mistaken for a hang.
HEARTBEAT_MAX_AGE = 120.0
LOOPS = ("scanner", "scheduler")


def health_problem(daemon: Observed, now: Optional[float] = None, max_age: Optional[float] = None) -> Optional[str]:
    """None when ``daemon`` is healthy, else a one-line reason (what a 503 and the journal say)."""
    return judge(daemon.health_view(), daemon.clock() if now is None else now, max_age)


def judge(view: HealthView, now: float, max_age: Optional[float] = None) -> Optional[str]:
    """The rule itself, on one reading of the daemon (``now``: monotonic seconds; ``max_age``
    defaults to the view's)."""
    max_age = view.max_age if max_age is None else max_age
    if view.stopping:
        return "stopping"
    if not view.threads:
        return "starting"
    if view.root_moved:
        return f"the watch directory now resolves to {view.root_moved}, not where it did at start: restart to follow it"
    if view.watcher_alive is False:
        return "the filesystem watcher thread has stopped"
    for name in LOOPS:
        if not view.threads.get(name):
            return f"the {name} thread has stopped"
        beat = view.heartbeats.get(name)
        if beat is None:
            continue  # alive and about to beat: each loop beats first thing
        if now - beat > max_age:
            return f"the {name} loop has made no progress for {now - beat:.0f}s"
    return None


def health_note(daemon: Observed) -> Optional[str]:
    """What ``/healthz`` adds to a healthy answer: an outage of the S3 endpoint, a stability tracker
    full of files that never settle, or uploads paused by the data budget, which restarting the
    daemon would not mend (so they do not stop systemd's watchdog pings), but a monitor should see."""
    notes = [n for n in (outage_note(daemon.activity().outage), tracker_note(daemon.scheduler),
                         budget_note(_budget_reading(daemon))) if n]
    return "; ".join(notes) if notes else None


def _budget_reading(daemon: Observed) -> Optional[Reading]:
    budget = getattr(daemon, "budget", None)  # data budgets (budget.py)
    try:
        return budget.reading() if budget is not None else None  # reads the store when a new day begins
    except StoreError:  # reported by the daemon's threads; health is judged on the rest
        return None


def outage_note(state: Optional[Dict[str, Any]]) -> Optional[str]:
    """One line on an outage in progress (:meth:`Outage.state`), None without one."""
    if state is None:
        return None
    return (f"S3 endpoint {state['endpoint']} not answering for {state['seconds']:.0f}s "
            f"({state['failures']} failed attempts; last: {state['error']})")


def tracker_note(scheduler: Tracked) -> Optional[str]:
    """None unless the stability tracker is full and holds files unstable for long (the scheduler
    counts them every few seconds into ``unsettled``); then one line saying so. ``scheduler`` is the
    :class:`~s3_uploader.scheduler.Scheduler`."""
    tracker = scheduler.tracker
    n = scheduler.unsettled
    if not n or len(tracker) < tracker.capacity:
        return None
    return (f"The stability tracker is full (max_pending_uploads = {tracker.capacity}) and {n} of "
            f"{len(tracker)} tracked files have not become stable for over {scheduler.unsettled_limit():.0f}s; "
            f"they give way to files waiting behind them and are looked at again later")


class StateSnapshot:
    """Files per state and the oldest waiting file, read from the store at most every ``interval`` s."""

    def __init__(self, interval: float = 10.0):
        self.interval = interval
        self.counts: Dict[str, int] = {s: 0 for s in STATES}
        self.oldest_waiting_since: Optional[float] = None  # wall time the oldest waiting file was found
        self.taken_at: Optional[float] = None  # monotonic
        self._lock = threading.Lock()

    def refresh(self, store: Store, now: float, force: bool = False) -> None:
        """Re-read the store when the last reading is older than ``interval`` (or ``force``)."""
        with self._lock:
            if not force and self.taken_at is not None and now - self.taken_at < self.interval:
                return
            try:
                counts = store.counts()
                oldest = store.oldest_waiting()
            except StoreError:
                return  # the daemon's own threads report database trouble; keep the last numbers
            self.counts = counts
            self.oldest_waiting_since = oldest.discovered_at if oldest is not None else None
            self.taken_at = now

    @property
    def waiting(self) -> int:
        return sum(self.counts.get(s, 0) for s in WAITING_STATES)
