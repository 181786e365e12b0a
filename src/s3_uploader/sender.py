"""Small files at speed: one asyncio loop keeps many single PUTs in flight through obstore.

A 4 KiB file costs almost nothing to send; what costs is everything around the request. With one
thread per upload, sixteen threads take turns on one interpreter lock and much of the CPU goes to
handing it over. Here one thread runs an event loop: obstore's requests run on its own (Rust)
runtime and answer through a callback on the loop (no coroutine or Task per file), so the loop
keeps up to ``capacity`` requests in flight while the Python work per file (open, read, hash,
recheck) runs back to back. ``capacity`` is a :class:`~s3_uploader.concurrency.Controller`'s limit,
which follows the link (``upload_workers = auto``) or is pinned; the bodies in flight also stay
under :data:`~s3_uploader.concurrency.MEMORY_CAP` bytes whatever the limit. Nothing is written to
the database when a file starts (its row stays waiting while the request is in flight: see the
one-step move in :mod:`s3_uploader.store`); the rows of every file finished in one turn of the loop
are written together.

The contract is the uploader's, split around the request: :meth:`Uploader.read_small` before it and
:meth:`Uploader.settle_small` after it, so a file sent here is read, proven, rechecked and recorded
exactly as one sent by an upload worker. An answer whose ETag is not the MD5 (a bucket with
default SSE-KMS answers so) is proven by a HEAD, which blocks: it runs on one of the sender's own
daemon threads (:class:`~s3_uploader.threads.DaemonThreads`) while the file keeps its slot. The
daemon decides which jobs come here (single PUTs read into memory, keys obstore keeps byte for
byte, no ``sse = aws:kms`` configured, no bandwidth limit in force: the limiter blocks, and the loop
must not); everything else goes to the upload workers.

Stopping: :meth:`AsyncSender.close` takes no new work and hands back the jobs not yet started
(they stay pending in the database); requests in flight finish and are recorded; :meth:`cancel`
(shutdown's time is up) abandons them, recorded as stopped by shutdown, to be sent at next start.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import threading
from typing import Any, Callable, Deque, Dict, List, Optional

from .concurrency import MEMORY_CAP, START, Controller
from .retry import classify
from .threads import DaemonThreads
from .uploader import SHUTDOWN, Job, Outcome, SmallRead, Uploader

log = logging.getLogger(__name__)

RECORD_BATCH = 16  # answers recorded together (one call of finish)
RECORD_DELAY = 0.05  # seconds an answer waits at most to be recorded (the store's commit interval)


class AsyncSender:
    """Sends small files through ``remote.put_object_soon`` on one event loop.

    ``finish(outcomes)`` records finished jobs, on the loop's thread, several at a time: when
    :data:`RECORD_BATCH` have answered, when every request in flight has, or :data:`RECORD_DELAY`
    after the first unrecorded answer (each call costs more than a row). While ``allowed()`` is
    false (a bandwidth limit came into force), queued jobs are not started here but handed to
    ``divert(jobs)`` (the upload workers, which wait for the limiter).

    How many requests are in flight at most is ``controller.limit`` (a fixed ``capacity`` when no
    controller is given); the sender tells the controller each answer, failure and turn.
    """

    def __init__(self, remote: Any, uploader: Uploader, finish: Callable[[List[Outcome]], None],
                 capacity: Optional[int] = None, allowed: Callable[[], bool] = lambda: True,
                 divert: Optional[Callable[[List[Job]], None]] = None, controller: Optional[Controller] = None,
                 memory_cap: int = MEMORY_CAP):
        self.remote = remote
        self.uploader = uploader
        if controller is None:
            n = max(1, capacity or START)
            controller = Controller(start=n, low=n, high=n)
        self.controller = controller
        self.memory_cap = memory_cap
        self._bytes = 0  # bodies of the requests started and not answered (the memory bound)
        self._finish = finish
        self._allowed = allowed
        self._divert = divert
        self._lock = threading.Lock()
        self._queue: Deque[Job] = collections.deque()
        self._running = 0
        self._closing = False
        self._notified = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._wakeup: Optional[asyncio.Event] = None
        # token -> the request's handle (anything with cancel()); None while it is being started
        self._inflight: Dict[int, Any] = {}
        self._tokens = itertools.count()
        heads = min(controller.high, max(controller.low, START))  # each HEAD holds a boto3 connection
        self._heads = DaemonThreads(heads, name="sender-head")  # HEADs that prove an answer
        self._outcomes: List[Outcome] = []  # answered, not yet recorded
        self._record_by = 0.0  # loop time by which they are

    @property
    def capacity(self) -> int:
        """Requests in flight at most, now (the controller's limit)."""
        return self.controller.limit

    # -- from other threads ----------------------------------------------------------------------
    def submit(self, job: Job) -> bool:
        """Queue ``job``; it starts as soon as fewer than ``capacity`` requests are in flight.
        Returns False, taking nothing, once :meth:`close` has been called (shutdown): the caller
        keeps the job, whose row stays pending for the next start."""
        with self._lock:
            if self._closing:
                return False
            self._queue.append(job)
            self._notify_locked()
            return True

    def backlog(self) -> int:
        """Jobs queued or in flight."""
        with self._lock:
            return len(self._queue) + self._running

    def queued(self) -> int:
        """Jobs waiting for a free slot."""
        with self._lock:
            return len(self._queue)

    def close(self) -> List[Job]:
        """Take no more jobs; return those queued but not started. Requests in flight go on."""
        with self._lock:
            self._closing = True
            dropped = list(self._queue)
            self._queue.clear()
            self._notify_locked()
        return dropped

    def cancel(self) -> None:
        """Abandon the requests in flight (shutdown ran out of time)."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._cancel_all)
        except RuntimeError:  # the loop has already finished
            pass

    def _notify_locked(self) -> None:
        # one wake-up per turn of the loop, however many jobs arrive: each costs a write to a pipe
        if self._loop is not None and not self._notified:
            self._notified = True
            try:
                self._loop.call_soon_threadsafe(self._wake)
            except RuntimeError:
                pass

    # -- the loop's thread -------------------------------------------------------------------------
    def run(self) -> None:
        """The loop; returns once closed and every request in flight has been recorded."""
        try:
            asyncio.run(self._main())
        finally:
            self._heads.close(timeout=0)  # a HEAD abandoned in flight ends on its own daemon thread

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _cancel_all(self) -> None:
        for handle in list(self._inflight.values()):
            if handle is not None:
                handle.cancel()

    async def _main(self) -> None:
        self._wakeup = asyncio.Event()
        with self._lock:
            self._loop = asyncio.get_running_loop()
        while True:
            if self._divert is not None and self._queue and not self._allowed():
                with self._lock:
                    diverted = list(self._queue)
                    self._queue.clear()
                self._divert(diverted)
            with self._lock:
                self._notified = False
                # answered files no longer hold a slot, even before they are recorded
                n = max(0, min(self.capacity - self._running + len(self._outcomes), len(self._queue)))
                batch = self._take(n)
                self._running += len(batch)
                # jobs left waiting by the limit (not by the memory bound) say it holds the rate back
                waiting = len(batch) == n and bool(self._queue)
                idle = self._closing and self._running == 0
            if idle:
                return
            for job in batch:
                self._start(job)
            self.controller.step(self._loop.time(), waiting)
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._outcomes and (len(self._outcomes) >= min(RECORD_BATCH, self._running) or self._closing
                                   or self._loop.time() >= self._record_by):
                outcomes, self._outcomes = self._outcomes, []
                try:
                    self._finish(outcomes)
                except BaseException:
                    await self._drain()
                    raise
                finally:
                    with self._lock:
                        self._running -= len(outcomes)

    def _take(self, n: int) -> List[Job]:
        """Up to ``n`` jobs from the queue's front whose bodies fit under the memory cap (always
        one when nothing is in flight, so a file near the cap is not starved). Under the lock."""
        batch: List[Job] = []
        while len(batch) < n and self._queue:
            size = self._queue[0].stat.size
            if self._bytes + size > self.memory_cap and (self._bytes or batch):
                break
            self._bytes += size
            batch.append(self._queue.popleft())
        return batch

    async def _drain(self) -> None:
        """Recording failed (the database refused a write): the loop is about to end with that
        error. Start nothing more and wait for the requests in flight to answer first (their files
        stay waiting in the database and are sent again at next start): the loop must not close
        while obstore's runtime still holds requests that will answer on it."""
        with self._lock:
            self._closing = True
        assert self._wakeup is not None
        while self._inflight:
            self._wakeup.clear()
            await self._wakeup.wait()
        self._outcomes.clear()

    # Each file is a read, a request started on obstore's runtime, and a callback when it answers:
    # no coroutine or Task per file (they cost more event-loop turns than the request itself).
    def _start(self, job: Job) -> None:
        token = -1
        try:
            read = self.uploader.read_small(job)
            if isinstance(read, Outcome):
                self._done(read)
                return
            token = next(self._tokens)
            self._inflight[token] = None
            assert self._loop is not None
            handle = self.remote.put_object_soon(job.key, read.data, read.md5, read.put_options,
                                                 functools.partial(self._sent, token, job, read, self._loop.time()))
            if token in self._inflight:  # not answered at once
                self._inflight[token] = handle
        except Exception as exc:  # a failure of one file is that file's, never the loop's
            self._inflight.pop(token, None)
            log.exception("Unexpected error uploading %s", job.key)
            self._done(Outcome("failed", job, failure=classify(exc)))

    def _sent(self, token: int, job: Job, read: SmallRead, started: float, etag: Optional[str],
              exc: Optional[BaseException]) -> None:
        self._inflight.pop(token, None)
        assert self._loop is not None
        now = self._loop.time()
        if exc is not None:
            if isinstance(exc, asyncio.CancelledError):
                failure = SHUTDOWN
            else:
                failure = classify(exc)
                self.controller.on_failure(now, failure.kind)  # throttled, network: fewer in flight
            self._done(Outcome("failed", job, failure=failure))
            return
        # answered: a sample of the link for the controller, whatever the proof then takes
        self.controller.on_answer(now, now - started, len(read.data))
        if not self.uploader.proven_by_answer(read, etag or ""):
            # not the MD5 (a bucket with default SSE-KMS answers so): the proof is a HEAD, which
            # blocks, so it runs on a worker thread; the file keeps its slot and its place in
            # _inflight (a stop waits for it, a cancel abandons it) until the HEAD answers
            # daemon threads, not the loop's default executor: asyncio.run and the interpreter's
            # exit would both wait for a HEAD that shutdown abandoned
            head = self._loop.run_in_executor(self._heads, self.uploader.settle_small, job, read, etag or "")
            self._inflight[token] = head
            head.add_done_callback(functools.partial(self._proven, token, job))
            return
        self._done(self._settle(job, read, etag or ""))

    def _proven(self, token: int, job: Job, head: "asyncio.Future[Outcome]") -> None:
        self._inflight.pop(token, None)
        if head.cancelled():
            outcome = Outcome("failed", job, failure=SHUTDOWN)
        elif (exc := head.exception()) is not None:
            outcome = self._failed(job, exc)
        else:
            outcome = head.result()
        self._done(outcome)

    def _settle(self, job: Job, read: SmallRead, etag: str) -> Outcome:
        try:
            return self.uploader.settle_small(job, read, etag)
        except Exception as e:  # as in _start: this file's failure only
            return self._failed(job, e)

    @staticmethod
    def _failed(job: Job, exc: BaseException) -> Outcome:
        log.error("Unexpected error uploading %s", job.key, exc_info=exc)
        return Outcome("failed", job, failure=classify(exc))

    def _done(self, outcome: Outcome) -> None:
        self._bytes -= outcome.job.stat.size  # the loop's thread alone counts bytes (_take, here)
        self._outcomes.append(outcome)
        assert self._wakeup is not None and self._loop is not None
        if len(self._outcomes) == 1:  # the first of a batch: recorded at the latest RECORD_DELAY from now
            self._record_by = self._loop.time() + RECORD_DELAY
            self._loop.call_at(self._record_by, self._wakeup.set)
        self._wakeup.set()
