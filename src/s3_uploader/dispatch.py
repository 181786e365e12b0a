"""Dispatch: where a ready job goes, the upload workers that take it, and the drain at shutdown.

:class:`InFlight` is the one set of files an upload holds (from the moment the scheduler finds a
file ready until its outcome is recorded or it is let go of); every other part asks it, under its
own lock, instead of sharing a set and a lock.

:class:`Dispatch` owns the upload queue and the ``upload-N`` worker threads, and routes each ready
job, in order, to the asyncio sender (small single PUTs, no bandwidth limit in force) or to the
queue, holding back while both are full enough (twice their capacity) that handing more over would
only move the backlog out of the scheduler's sight. A job the sender will not start after all (a
limit came into force) is diverted to the workers. While a data budget is set
(:mod:`s3_uploader.budget`), every job goes to the workers, through the budget's gate: only files
that fit in what is left are handed over. :meth:`Dispatch.drain` is the shutdown's step 2: jobs
not started are dropped (their rows stay pending for the next start), the uploads in flight get
until a deadline or a second stop signal, then are abandoned.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Iterable, List, Optional, Set

from .bandwidth import BandwidthLimiter
from .budget import Budget
from .concurrency import controller_for, worker_threads
from .order import ReadyHeap
from .sender import AsyncSender
from .store import IllegalTransition, Store, display
from .threads import Threads
from .remote import Remote
from .uploader import Job, Outcome, Settings, Uploader

log = logging.getLogger(__name__)

ABANDON_WAIT = 2.0  # upload workers and the sender once abandoned (between parts, requests cancelled)
# Parts in flight across all files (connections busy with parts). A part is streamed from the file
# through one 1 MiB buffer, so multipart memory is about 16 MiB whatever multipart_chunksize is.
PART_THREADS_CAP = 16


class InFlight:
    """The files an upload holds (relative paths). Thread-safe; the only owner of the set."""

    def __init__(self, rels: Iterable[str] = ()) -> None:
        self._rels: Set[str] = set(rels)
        self._lock = threading.Lock()

    def add(self, rel: str) -> None:
        with self._lock:
            self._rels.add(rel)

    def discard(self, *rels: str) -> None:
        with self._lock:
            self._rels.difference_update(rels)

    def __contains__(self, rel: object) -> bool:
        with self._lock:
            return rel in self._rels

    def __len__(self) -> int:
        with self._lock:
            return len(self._rels)

    def __bool__(self) -> bool:
        return len(self) > 0


class Dispatch:
    """The upload queue, the upload workers and the routing of jobs to them or to the sender.

    ``store()`` and ``set_aside(rel, step, exc)`` are the daemon's (read at use: the store is opened
    at start); ``record(outcome)`` is the recorder's. :meth:`build` makes the uploader and the
    sender, :meth:`start` their threads; ``wake`` is set after each job a worker finishes, so the
    scheduler hands over more.
    """

    def __init__(self, *, workers: Optional[int], inflight: InFlight, store: Callable[[], Store],
                 record: Callable[[Outcome], None],
                 limiter: BandwidthLimiter, wake: threading.Event, abandon: threading.Event,
                 set_aside: Callable[..., None], budget: Optional[Budget] = None):
        self.upload_workers = workers  # [upload] upload_workers: None = auto (the sender's limit adapts)
        self.workers = worker_threads(workers)
        self.budget = budget  # data budgets (budget.py); None: never any
        self.inflight = inflight
        self._store = store
        self._record = record
        self.limiter = limiter
        self.wake = wake
        self._set_aside = set_aside
        self.queue: "queue.Queue[Optional[Job]]" = queue.Queue()
        self.uploader: Optional[Uploader] = None
        self.sender: Optional[AsyncSender] = None
        self.abandon = abandon  # set when drain time is over: multipart uploads stop between parts
        self._threads: List[threading.Thread] = []

    def build(self, remote: Remote, store: Store, settings: Callable[[], Settings], *, max_concurrency: int,
              clock: Callable[[], float], record_many: Callable[[List[Outcome]], None],
              wall: Callable[[], float] = time.time) -> None:
        """The uploader the workers use (its part threads: at most :data:`PART_THREADS_CAP`, at least
        one file's ``max_concurrency``), and the asyncio sender when ``remote`` has one (obstore),
        whose outcomes go to ``record_many``. Called before the scheduler starts: it asks
        :attr:`sender` whether a job can go there."""
        parts = max(max_concurrency, min(self.workers * max_concurrency, PART_THREADS_CAP))
        self.uploader = Uploader(remote, store, settings, part_workers=parts, abandon=self.abandon, clock=clock,
                                 wall=wall, throttle=self._pay)
        if hasattr(remote, "put_object_soon"):
            self.sender = AsyncSender(remote, self.uploader, record_many,
                                      controller=controller_for(self.upload_workers),
                                      allowed=self._sender_allowed, divert=self.divert)

    def start(self, spawn: Callable[[str, Callable[[], None]], threading.Thread]) -> None:
        """Start the sender's loop (if any) and ``workers`` upload workers through ``spawn(name, target)``."""
        if self.sender is not None:
            self._threads.append(spawn("sender", self.sender.run))
        for i in range(self.workers):
            self._threads.append(spawn(f"upload-{i}", self._worker_loop))

    def _pay(self, nbytes: int) -> None:
        """Before ``nbytes`` of a body are sent: wait for the bandwidth limit, then charge the budget."""
        self.limiter.throttle(nbytes)
        if self.budget is not None:
            self.budget.charge(nbytes)

    def _sender_allowed(self) -> bool:
        """The asyncio sender paces nothing and charges nothing: only while no limit or budget is in force."""
        return self.limiter.limit() is None and not (self.budget is not None and self.budget.active)

    # -- routing ---------------------------------------------------------------------------------
    def feed_limit(self) -> int:
        """Jobs the upload queue holds at most before the scheduler keeps the rest."""
        return 2 * self.workers

    def full(self) -> bool:
        """Whether the upload queue is at its feed limit (the scheduler then turns again soon)."""
        return self.queue.qsize() >= self.feed_limit()

    def feed(self, ready: ReadyHeap[Job]) -> None:
        """Hand jobs from the front of ``ready``, in order, to the sender (small, no limit in force)
        or the upload queue, until the one the next job goes to is full. With a data budget in force,
        the budget's gate decides which go (to the upload queue) and which wait in ``ready``."""
        if self.budget is not None and self.budget.active:
            self.budget.gate(ready, self._hand, self._park_too_large, self._sent_before)
            return
        sender = self.sender
        while ready:
            if sender is not None and ready[0].small and self._sender_allowed():
                if sender.backlog() >= 2 * sender.capacity or not sender.submit(ready[0]):
                    return  # full, or closed by a shutdown still reaching the scheduler: the job waits
                ready.popleft()
            else:
                if self.full():
                    return
                self.queue.put(ready.popleft())

    def _hand(self, job: Job) -> bool:
        if self.full():
            return False
        self.queue.put(job)
        return True

    def _park_too_large(self, job: Job, message: str, retry_at: float) -> None:
        """A file larger than a whole period's budget: parked (no attempt counted), said once per look."""
        log.error("Cannot upload %s: %s", display(job.rel), message)
        try:
            self._store().fail_upload(job.rel, "budget", message, retry_at, park=True, count_attempt=False)
        except IllegalTransition as exc:  # moved on meanwhile (vanished): its new state decides
            log.debug("Not parking: %s", exc)
        self.inflight.discard(job.rel)

    def _sent_before(self, job: Job) -> int:
        """Bytes an open multipart upload of ``job`` has sent already (its recorded parts)."""
        assert job.upload_id is not None
        return sum(p.size for p in self._store().parts(job.rel, job.upload_id).values())

    def budget_ends_pass(self, nothing_else: bool) -> bool:
        """A single pass: whether it ends because the budget holds the files left back (see
        :meth:`Budget.ends_pass <s3_uploader.budget.Budget.ends_pass>`)."""
        return (self.budget is not None and self.budget.active and self.queue.empty()
                and self.budget.ends_pass(nothing_else))

    def divert(self, jobs: List[Job]) -> None:
        """Jobs the sender will not start (a bandwidth limit came into force): to the upload
        workers, which pace every body through the limiter."""
        for job in jobs:
            self.queue.put(job)

    def concurrency(self) -> int:
        """Small-file requests the sender keeps in flight at most now (its controller's limit), or
        the upload workers when there is no sender."""
        return self.sender.capacity if self.sender is not None else self.workers

    def queued(self) -> int:
        """Jobs handed over and not started (status lines)."""
        return self.queue.qsize() + (self.sender.queued() if self.sender is not None else 0)

    def idle(self) -> bool:
        """Nothing queued, nothing in the sender, nothing in flight."""
        if not self.queue.empty() or (self.sender is not None and self.sender.backlog()):
            return False
        return not self.inflight

    # -- the workers -----------------------------------------------------------------------------
    def _worker_loop(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            try:
                self.process(job)
            except Exception as exc:
                self._set_aside(job.rel, "uploading", exc)
            finally:
                self.inflight.discard(job.rel)
                if self.budget is not None:
                    self.budget.release(job.rel)
                self.wake.set()

    def process(self, job: Job) -> None:
        """Upload ``job`` and record the outcome; a row that moved on meanwhile is left alone."""
        try:
            self._store().start_upload(job.rel, job.stat.size, job.stat.mtime_ns, job.stat.ino)
        except IllegalTransition as exc:
            log.debug("Not uploading: %s", exc)
            return
        assert self.uploader is not None  # build() came first
        self._record(self.uploader.upload(job))

    # -- shutdown --------------------------------------------------------------------------------
    def drain(self, drain_by: float, threads: Threads, second_signal: Callable[[], Optional[str]]) -> None:
        """Shutdown step 2. Jobs not started are dropped (their files stay pending); the workers
        and the sender get until ``drain_by`` (``time.monotonic``), or until ``second_signal()``
        names a second stop signal, to finish the uploads in flight; then those are abandoned
        and get :data:`ABANDON_WAIT` s (``threads`` joins them and names those left behind)."""
        if self.sender is not None:
            self.inflight.discard(*(job.rel for job in self.sender.close()))
        while True:
            try:
                queued = self.queue.get_nowait()
            except queue.Empty:
                break
            if queued is not None:
                self.inflight.discard(queued.rel)
        workers = [t for t in self._threads if t.name.startswith("upload-")]
        for _ in workers:
            self.queue.put(None)  # one stop sign per worker; the closed sender ends on its own
        joined = workers + [t for t in self._threads if t.name == "sender"]
        inflight = len(self.inflight)
        if inflight and second_signal() is None:
            log.info("Stopping: waiting up to %gs for %d upload(s) in flight", max(0.0, drain_by - time.monotonic()),
                     inflight)
        if not threads.join(joined, drain_by, None, give_up=lambda: second_signal() is not None):
            return
        again = second_signal()
        if again is not None:
            log.warning("Received %s again: abandoning uploads in flight (multipart uploads resume at next start)",
                        again)
        else:
            log.warning("Shutdown timeout: abandoning uploads in flight (multipart uploads resume at next start)")
        self.abandon.set()
        if self.sender is not None:
            self.sender.cancel()
        threads.join(joined, time.monotonic() + ABANDON_WAIT, "abandoning uploads in flight")
