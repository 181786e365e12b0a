"""Scheduling: the stage between discovery and upload. Decides when a found file is ready to send.

The scheduler owns the :class:`~s3_uploader.stability.Tracker` (at most ``max_pending_uploads``
files). Each turn it takes the watcher's hints and the scanner's candidates while there is room,
brings failed files back when their retry is due, checks each tracked file when due (a file is
ready once its signature has been unchanged for ``stable_seconds`` over ``stable_checks`` checks
and no process holds it open for writing), has its :class:`~s3_uploader.handover.HandOver` make
jobs of the ready files (one row read for all) and hands them, in upload order (``[upload] order``
and ``priority``, :mod:`s3_uploader.order`; discovery hands the backlog on in the same order), to
:class:`~s3_uploader.dispatch.Dispatch` (which routes each to the asyncio sender or the upload
workers). Failed files come back when their retry is due, soonest first, whatever their place. A file
unstable for long (see :meth:`Scheduler._gives_way`) yields its slot to files waiting for one,
so files that never settle cannot starve the rest; ``unsettled`` counts them for health.

Contract: a ready file enters ``inflight`` (the :class:`~s3_uploader.dispatch.InFlight` set) before
its job is made, and from then on no scan, hint or retry takes it up again; a file with nothing to
send is let go of (out of ``inflight``). One file's error in any step goes to ``set_aside``
(:meth:`Recorder.set_aside <s3_uploader.recorder.Recorder.set_aside>`, which calls
:meth:`Scheduler.let_go`) and the turn goes on; a :class:`~s3_uploader.store.StoreError`
propagates. :meth:`Scheduler.run_once` is one turn at a given clock reading (the step tests call);
:meth:`Scheduler.run` is the loop of the scheduler thread. In a single pass
(:attr:`RunMode.single_pass <s3_uploader.runmode.RunMode.single_pass>`) it runs the one cleanup
pass when nothing is left to do, then asks the daemon to stop.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
from typing import Callable, Dict, Optional

from .discovery import Discovery
from .dispatch import Dispatch
from .health import tracker_note
from .handover import HandOver
from .runmode import RunMode
from .scanner import FileStat
from .stability import Observation, Tracker, assess, unsettled_after
from .store import WAITING_STATES, display
from .version import REMOVED_STATES, is_new_version, settled
from .views import Live
from .watcher import Hints
from .writers import WriterProbe

log = logging.getLogger(__name__)

RETRY_SWEEP_INTERVAL = 1.0  # seconds between looks for failed files whose retry is due
UNSETTLED_COUNT_INTERVAL = 5.0  # seconds between counts of unsettled tracked files (a pass over the tracker)


class Scheduler:
    """The scheduler thread's work, with a tracker of ``capacity`` slots.

    Its collaborators are passed in; those the daemon replaces while it runs (the config and what
    is built from it on a reload, the store and remote opened at start, the probe built by
    ``Daemon.run``) are read through ``live`` (:class:`~s3_uploader.views.Live`) where used.
    ``dispatch`` takes the jobs (and owns ``inflight``); the queues, events and ``heartbeats`` are
    shared with the daemon's other threads. ``set_aside(rel, step, exc, scheduled=True, st=...)`` is
    the recorder's containment for one file's error; ``request_stop()`` and ``run_cleanup_pass()``
    are what a single pass calls at its end.
    """

    def __init__(self, capacity: int, *, live: Live, dispatch: Dispatch, candidates: "queue.Queue[FileStat]",
                 hints: Hints, wake: threading.Event, stop: threading.Event, scan_request: threading.Event,
                 scan_done: threading.Event, heartbeats: Dict[str, float], discovery: Discovery,
                 set_aside: Callable[..., None], mode: RunMode, request_stop: Callable[[], None],
                 run_cleanup_pass: Callable[[], object], clock: Callable[[], float], wall: Callable[[], float]):
        self.live = live
        self.dispatch = dispatch
        self.inflight = dispatch.inflight
        self.candidates = candidates
        self.hints = hints
        self.wake = wake
        self.stop = stop
        self.scan_request = scan_request
        self.scan_done = scan_done  # once mode: the single scan has finished
        self.heartbeats = heartbeats
        self.discovery = discovery
        self._set_aside = set_aside
        self.mode = mode
        self._request_stop = request_stop
        self._run_cleanup_pass = run_cleanup_pass
        self.clock = clock
        self.wall = wall
        self.tracker = Tracker(capacity)
        self.handover = HandOver(live=live, dispatch=dispatch, discovery=discovery, set_aside=set_aside)
        self.ready = self.handover.ready  # jobs not yet taken by dispatch
        # files that gave their tracker slot away (rel -> when), oldest first; at most ``capacity`` of them
        self._gave_way: "collections.OrderedDict[str, float]" = collections.OrderedDict()
        self._next_candidate: Optional[FileStat] = None  # taken from the queue, waiting for a slot
        self.unsettled_after: Optional[float] = None  # seconds; None: from stable_seconds (tests set it)
        self.unsettled = 0  # tracked files unstable for longer than that (health.tracker_note)
        self._unsettled_counted_at = float("-inf")
        self._unsettled_said = False
        self._waiting_logged: Dict[str, str] = {}
        self._next_sweep = 0.0  # clock reading of the next look for due retries
        self._once_cleaned = False  # once mode: the final cleanup pass has run
        self.finished = False  # once mode: everything is done and the stop was requested

    @property
    def probe(self) -> WriterProbe:
        probe = self.live.probe
        assert probe is not None  # built by Daemon.run before the scheduler thread starts
        return probe

    def _is_inflight(self, rel: str) -> bool:
        return rel in self.inflight

    def held(self) -> int:
        """Files in the scheduler's hands: tracked, or ready and not yet handed over (status lines)."""
        return len(self.tracker) + len(self.handover)

    def let_go(self, rel: str) -> None:
        """Forget ``rel`` entirely (set aside after an error): untracked, not resting after giving way,
        not in flight, so nothing waits for it."""
        self.tracker.remove(rel)
        self._waiting_logged.pop(rel, None)
        self._gave_way.pop(rel, None)
        self.inflight.discard(rel)

    def run(self) -> None:
        """The scheduler thread: a turn (:meth:`run_once`), then a wait on ``wake`` for as long as the
        turn allows. Returns when ``stop`` is set or, in ``once`` mode, when everything is done."""
        while not self.stop.is_set():
            now = self.clock()
            self.heartbeats["scheduler"] = now
            timeout = self.run_once(now)
            if self.finished:
                return
            self.wake.wait(timeout)
            self.wake.clear()

    def run_once(self, now: float) -> float:
        """One turn at clock reading ``now``: hints, candidates, due retries, due checks, jobs, and
        the hand-over to the sender and workers. Returns how long the loop may wait (seconds, at
        most 1) before the next turn, unless woken; 0 when the next turn should come at once."""
        self._take_hints(now)
        self._take_candidates(now)
        if now >= self._next_sweep:
            self._sweep_retries(now)
            self._next_sweep = now + RETRY_SWEEP_INTERVAL
        self._check_due(now)
        self._count_unsettled(now)
        self.handover.make_jobs()
        self.dispatch.feed(self.ready)
        if self.mode.single_pass and self.dispatch.budget_ends_pass(  # the data budget is used up (budget.py)
                self.scan_done.is_set() and not len(self.tracker) and self.candidates.empty()):
            self.finished = True
            self._request_stop()
            return 0.0
        if self.mode.single_pass and self._once_finished():
            if not self._once_cleaned:
                # the one cleanup pass of 'once'; files it queues again are uploaded before we stop
                self._once_cleaned = True
                self._run_cleanup_pass()
                return 0.0
            log.info("All files processed")
            self.finished = True
            self._request_stop()
            return 0.0
        nd = self.tracker.next_due()
        timeout = min(1.0, self._next_sweep - now, (nd - now) if nd is not None else 1.0)
        if self.ready and self.dispatch.full():
            timeout = min(timeout, 0.05)
        return max(0.0, timeout)

    def _take_hints(self, now: float) -> None:
        items, overflowed = self.hints.drain()
        if overflowed:
            self.scan_request.set()
        for rel, _urgent in items:
            try:
                self._take_hint(rel, now)
            except Exception as exc:
                self._set_aside(rel, "taking an event about", exc, scheduled=True)

    def _take_hint(self, rel: str, now: float) -> None:
        if self._is_inflight(rel):
            return
        if rel in self.tracker:
            self.tracker.add(rel, now)  # look again now: it may be complete
            return
        if rel in self._gave_way and now < self._gave_way[rel] + self.unsettled_limit():
            return  # resting after it gave way (a log still appended to): _take_back brings it in
        if self.tracker.full:
            self.scan_request.set()  # no room: the rescan will find it
            return
        st = self.live.scanner.stat_one(rel)
        if st is None:
            # nothing to send there: a waiting row (e.g. one cleanup queued again, of a file that no
            # longer matches include/exclude) must not wait for ever
            rec = self.live.store.get(rel)
            if rec is not None and rec.state in WAITING_STATES:
                self.discovery.forget_if_gone(rel)
            return
        rec = self.live.store.get(rel)
        if rec is not None and settled(rec.state, rec.signature, st.signature):
            return  # already uploaded, or failed with its retry scheduled
        if rec is not None and rec.state in REMOVED_STATES:
            st = self.live.scanner.stat_one(rel)  # after the row was read: not the file cleanup removed since
            if st is None:
                return
        key = self.live.keymaker.key_for(rel, st.mtime)
        if rec is None:
            collided = self.live.store.discover_many([(rel, key, st.size, st.mtime_ns, st.ino)],
                                                     retry_at=self.discovery.collision_retry_at())
            if collided:
                log.error("%s", collided[0].last_error)
                return
        elif is_new_version(rec.state, rec.signature, st.signature) and rec.state != "pending":
            if rec.state == "uploaded":
                log.info("File changed since it was uploaded; will upload again: %s", display(rel))
            rec = self.live.store.discover(rel, key, st.size, st.mtime_ns, st.ino,
                                           retry_at=self.discovery.collision_retry_at())
            if rec.key is None:
                log.error("%s", rec.last_error)
                return
        self.tracker.add(rel, now)
        self._check(rel, st, now)

    def _take_candidates(self, now: float) -> None:
        """Track the scanner's candidates while there is room. Candidates that need no slot (already
        tracked or in flight, resting after giving way) are taken even when the tracker is full; the
        first that needs one waits in ``_next_candidate``, which tells ``_gives_way`` a slot is wanted."""
        while len(self.handover) < self.tracker.capacity:
            f, self._next_candidate = self._next_candidate, None
            if f is None:
                try:
                    f = self.candidates.get_nowait()
                except queue.Empty:
                    break
            if self._is_inflight(f.rel) or f.rel in self.tracker:
                continue
            if f.rel in self._gave_way:
                if now < self._gave_way[f.rel] + self.unsettled_limit():
                    continue  # resting after it gave way; _take_back brings it in later
                del self._gave_way[f.rel]
            if self.tracker.full:
                self._next_candidate = f
                break
            self.tracker.add(f.rel, now)
            try:
                self._check(f.rel, f, now)
            except Exception as exc:
                self._set_aside(f.rel, "checking", exc, scheduled=True, st=f)
        self._take_back(now)

    def unsettled_limit(self) -> float:
        if self.unsettled_after is not None:
            return self.unsettled_after
        return unsettled_after(self.live.cfg.watch.stable_seconds)

    def _gives_way(self, rel: str, now: float) -> bool:
        """Whether ``rel`` (tracked, just found not ready) leaves the tracker to let others in.

        It does when the tracker is full, a file waits for a slot (the scanner's next candidate, or
        one that gave way and has rested), and it has been tracked for longer than the unsettled limit.
        It is looked at again after resting as long (``_take_back``; a rescan may also bring it
        back then): until then the slot goes to others. Without this, ``max_pending_uploads`` logs
        appended to for ever would hold every slot and no other file would ever be looked at.
        """
        if not self.tracker.full:
            return False
        limit = self.unsettled_limit()
        if now - self.tracker.since(rel) <= limit:
            return False
        if self._next_candidate is None and not self._rested(now, limit):
            return False
        self.tracker.remove(rel)
        self._log_wait(rel, "Not stable for long; letting other files go first, looking again later: %s")
        if len(self._gave_way) < self.tracker.capacity:
            self._gave_way[rel] = now
        else:  # memory stays bounded by max_pending_uploads; a rescan brings it back
            self._waiting_logged.pop(rel, None)
        # the slot goes to the file waiting for it now, before an event about this one takes it back
        waiting, self._next_candidate = self._next_candidate, None
        if waiting is not None:
            self.tracker.add(waiting.rel, now)  # due now: _check_due stats it
        else:
            self._take_back(now)
        return True

    def _rested(self, now: float, limit: float) -> bool:
        """A file that gave way (and is not tracked again meanwhile, e.g. by an event) has rested
        long enough to be looked at again."""
        while self._gave_way:
            rel, at = next(iter(self._gave_way.items()))
            if rel in self.tracker or self._is_inflight(rel):
                del self._gave_way[rel]  # back already: nothing to take back
                continue
            return at + limit <= now
        return False

    def _take_back(self, now: float) -> None:
        """Track again, oldest first, the files that gave way and have rested, while there is room."""
        limit = self.unsettled_limit()
        while not self.tracker.full and self._rested(now, limit):
            rel, _ = self._gave_way.popitem(last=False)
            if not self._is_inflight(rel):
                self.tracker.add(rel, now)  # due now: _check_due stats it (and handles it vanishing)

    def _count_unsettled(self, now: float) -> None:
        """Refresh ``unsettled`` every few seconds; say it once when the tracker fills with them."""
        if now - self._unsettled_counted_at < UNSETTLED_COUNT_INTERVAL:
            return
        self._unsettled_counted_at = now
        self.unsettled = self.tracker.unsettled(now, self.unsettled_limit())
        note = tracker_note(self)
        if note is not None and not self._unsettled_said:
            log.warning("%s", note)
        elif note is None and self._unsettled_said:
            log.info("The stability tracker is no longer full of files that do not settle")
        self._unsettled_said = note is not None

    def _sweep_retries(self, now: float) -> None:
        room = self.tracker.capacity - len(self.tracker)
        if room <= 0:
            return
        up = self.live.cfg.upload
        # no delay we set is longer than this: a row due later was scheduled by a clock since set back
        horizon = 2 * max(up.parked_retry_interval, up.retry_backoff_max) + 3600
        for rec in self.live.store.due_retries(self.wall(), room, horizon):
            if self._is_inflight(rec.rel) or rec.rel in self.tracker:
                continue
            # it was proven stable before it failed: the same signature now is enough
            self.tracker.add(rec.rel, now)
            self.tracker.reschedule(rec.rel, Observation(rec.signature, float("-inf"), 1 << 30), now)

    def _check_due(self, now: float) -> None:
        for rel in self.tracker.pop_due(now, limit=5000):
            try:
                self._check_one_due(rel, now)
            except Exception as exc:
                self._set_aside(rel, "checking", exc, scheduled=True)

    def _check_one_due(self, rel: str, now: float) -> None:
        st = self.live.scanner.stat_one(rel)
        if st is None:
            self.tracker.remove(rel)
            self._waiting_logged.pop(rel, None)
            rec = self.live.store.get(rel)
            if rec is not None and rec.state in WAITING_STATES:
                self.discovery.forget_if_gone(rel)
            return
        self._check(rel, st, now)

    def _check(self, rel: str, st: FileStat, now: float) -> None:
        """One stability check of a tracked file with a fresh stat."""
        w = self.live.cfg.watch
        prev = self.tracker.observation(rel)
        v = assess(prev, st.signature, now, w.stable_seconds, w.stable_checks)
        path = self.live.scanner.abspath(rel)
        if v.ready and self.probe.is_being_written(path, st.dev, st.ino):
            v = assess(prev, st.signature, now, w.stable_seconds, w.stable_checks, writer_open=True)
            self._log_wait(rel, "Waiting for writer to close file: %s")
        if not v.ready:
            if prev is None and rel not in self._waiting_logged:  # (not again when it comes back)
                self._log_wait(rel, "Waiting for file to stabilize: %s")
            if not self._gives_way(rel, now):
                assert v.next_check_at is not None  # set on every verdict that is not ready
                self.tracker.reschedule(rel, v.observation, v.next_check_at)
            return
        self.tracker.remove(rel)
        self._waiting_logged.pop(rel, None)
        self.inflight.add(rel)  # from now on no scan, hint or retry takes it up again
        self.handover.add(rel, st, path)

    def _log_wait(self, rel: str, message: str) -> None:
        """Say why a file waits, once per file and reason (not at every check)."""
        if self._waiting_logged.get(rel) != message:
            self._waiting_logged[rel] = message
            log.info(message, display(rel))

    def _once_finished(self) -> bool:
        if (not self.scan_done.is_set() or not self.candidates.empty() or len(self.tracker) or self.ready
                or self._gave_way or self._next_candidate is not None):
            return False
        if not self.dispatch.idle():
            return False
        # failed files wait for their retry; parked ones have had theirs
        return not self.live.store.in_states(("failed",), limit=1)
