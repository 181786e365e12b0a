"""Recording: the stage after the upload. Writes each upload's outcome to the database and the
counters, and decides what a failure means (the retry policy).

- uploaded: the row moves to uploaded (the sender's batch in one step, :meth:`Store.record_sent`),
  the counters and the outage (the endpoint answers) learn of it;
- changed while read: the row goes back to pending and the scheduler gets a hint;
- vanished: the row is forgotten;
- failed: :func:`~s3_uploader.retry.decide_retry` gives the delay, or parks the file; a stop
  during the upload is recorded without counting an attempt. An outage is one state with its own
  lines (:mod:`s3_uploader.outage`); any other failure gets its log line once per file and reason.

Contract: a row that has moved on meanwhile (another path recorded it, or it was discovered again)
is left as it is; one file's error while recording the sender's batch goes to :meth:`Recorder.set_aside`
and the batch goes on; a :class:`~s3_uploader.store.StoreError` propagates.

Containment (:meth:`Recorder.set_aside`, which every stage is given): an error while handling one
file (its stat, its row, its key, its job, recording its outcome) stays with that file. It is
logged once with its traceback (it is a bug), the file's row, when it has one still waiting, is
marked failed with kind ``internal`` (retried with backoff, then parked), the file leaves the
scheduler's hands, and the loop goes on with the next file. Only a StoreError (the database is
unusable, which no file can be set aside from) still ends a thread, and the daemon with it.
Files recorded for the sender leave ``inflight``; the scheduler is woken when it has work to hand.
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from .config import Config
from .dispatch import InFlight
from .views import Stats
from .outage import META_OUTAGE, Outage
from .runmode import RunMode
from .retry import Failure, decide_retry
from .scanner import FileStat
from .sender import AsyncSender
from .store import WAITING_STATES, IllegalTransition, Store, StoreError, display
from .uploader import Job, Outcome
from .watcher import Hints


log = logging.getLogger(__name__)


class Recorder:
    """Records the outcomes of uploads over ``store`` (an accessor: the daemon opens it at start).

    It owns the :class:`~s3_uploader.outage.Outage` of the endpoint named ``endpoint`` (read by
    the daemon's tick, health and metrics as ``outage``). ``sender()`` is the asyncio sender if
    any, ``has_ready()`` whether jobs wait to be handed over: in a single pass they decide when the
    scheduler is woken. ``let_go(rel)`` is the scheduler's (see :meth:`set_aside`).
    """

    def __init__(self, endpoint: str, *, config: Callable[[], Config], store: Callable[[], Store], stats: Stats,
                 hints: Hints, inflight: InFlight, wake: threading.Event,
                 sender: Callable[[], Optional[AsyncSender]], has_ready: Callable[[], bool],
                 let_go: Callable[[str], None], mode: RunMode, clock: Callable[[], float], wall: Callable[[], float]):
        self._config = config
        self._store = store
        self.stats = stats
        self.hints = hints
        self.inflight = inflight
        self.wake = wake
        self._sender = sender
        self._has_ready = has_ready
        self._let_go = let_go
        self._bugs_said: Set[Tuple[str, str]] = set()  # (rel, step) whose internal error was logged in full
        self.mode = mode
        self.wall = wall
        self._failure_logged: Dict[str, str] = {}  # rel -> failure kind last logged above DEBUG
        self.outage = Outage(endpoint, clock=clock, wall=wall, waiting=self.waiting_files,
                             on_change=self.outage_changed)

    @property
    def store(self) -> Store:
        return self._store()

    @property
    def sender(self) -> Optional[AsyncSender]:
        return self._sender()

    def record_many(self, outcomes: List[Outcome]) -> None:
        """:meth:`record` for the sender's finished jobs. Their rows are still waiting (the sender
        writes nothing when a file starts): the uploaded ones move to uploaded together, in one step
        (:meth:`Store.record_sent`); any other outcome is recorded as a worker's would be, after the
        move to uploading that the worker would have made."""
        done: List[Outcome] = []
        try:
            done = [o for o in outcomes if o.kind == "uploaded"]
            if done:
                rows = [(o.job.rel, o.job.stat.size, o.job.stat.mtime_ns, o.job.stat.ino, o.md5 or "", o.etag or "")
                        for o in done]
                moved: List[Optional[bool]]
                try:
                    moved = list(self.store.record_sent(rows))
                except StoreError:
                    raise
                except Exception:  # one file's bug must not cost the batch: each is recorded on its own
                    moved = [self._record_sent_alone(o, row) for o, row in zip(done, rows)]
                self._count_uploaded([o for o, ok in zip(done, moved) if ok])
                for o, ok in zip(done, moved):
                    if ok is False:
                        self._moved_on(o.job, "uploaded")
            for o in outcomes:
                if o.kind == "uploaded":
                    continue
                try:
                    if o.kind != "vanished":  # forget() takes a waiting row as it is
                        try:
                            self.store.start_upload(o.job.rel, o.job.stat.size, o.job.stat.mtime_ns, o.job.stat.ino)
                        except IllegalTransition:
                            self._moved_on(o.job, o.kind)
                            continue
                    self.record(o)
                except Exception as exc:
                    self.set_aside(o.job.rel, "recording the outcome of", exc)
        finally:
            self.inflight.discard(*(o.job.rel for o in outcomes))
            # The scheduler is needed to hand over more work (woken when the sender has room for a
            # whole batch, not after every file: each turn of the scheduler costs more than a file),
            # after anything but an upload (a retry to schedule), and in a single pass to see the end.
            sender = self.sender
            room = sender is None or sender.backlog() - len(outcomes) <= sender.capacity
            if (room and (self._has_ready() or self.mode.single_pass)) or len(outcomes) != len(done):
                self.wake.set()

    def _record_sent_alone(self, o: Outcome, row: Tuple[str, int, int, int, str, str]) -> Optional[bool]:
        """record_sent of one file (after its batch raised): whether it moved; None when it raised
        (then it is set aside)."""
        try:
            return self.store.record_sent([row])[0]
        except Exception as exc:
            self.set_aside(o.job.rel, "recording the upload of", exc)
            return None

    def _moved_on(self, job: Job, outcome: str) -> None:
        """A sender's job whose row no longer describes the version it sent (another path recorded
        it, or it was rediscovered meanwhile): the row stays as it is, and it decides what happens."""
        rec = self.store.get(job.rel)
        log.info("Not recording %s as %s: its row has moved on meanwhile (%s)", display(job.rel), outcome,
                 f"now {rec.state}" if rec is not None else "gone")

    def record(self, o: Outcome) -> None:
        """Write an upload's outcome to the database and the counters; schedule a retry if failed."""
        job = o.job
        if o.kind == "uploaded":
            self.store.finish_upload(job.rel, job.stat.size, job.stat.mtime_ns, job.stat.ino, o.md5, o.etag,
                                     o.checksum)
            self._count_uploaded([o])
        elif o.kind == "changed":
            log.info("File changed while it was being uploaded (%s); will upload again when stable: %s",
                     o.reason, display(job.rel))
            self.store.requeue(job.rel, job.stat.size, job.stat.mtime_ns, job.stat.ino)
            self.hints.add(job.rel)
        elif o.kind == "vanished":
            log.warning("File vanished before it was uploaded: %s", display(job.rel))
            self._failure_logged.pop(job.rel, None)
            self.store.forget(job.rel)
        else:
            self._record_failure(job, o.failure or Failure("internal", "unknown failure"))

    def _count_uploaded(self, done: List[Outcome]) -> None:
        if not done:
            return
        now = self.wall()
        self.outage.succeeded()
        if self._failure_logged:
            for o in done:
                self._failure_logged.pop(o.job.rel, None)
        with self.stats.lock:
            self.stats.uploaded_files += len(done)
            self.stats.uploaded_bytes += sum(o.job.stat.size for o in done)
            self.stats.last_upload_at = now
            self.stats.upload_seconds.extend(o.seconds for o in done)
            if len(self.stats.upload_seconds) > 10000:
                del self.stats.upload_seconds[:5000]

    def _record_failure(self, job: Job, failure: Failure) -> None:
        up = self._config().upload
        if failure.kind == "shutdown":
            self.store.fail_upload(job.rel, failure.kind, failure.message, self.wall(), park=False,
                                   count_attempt=False)
            return
        d = decide_retry(failure, job.attempt, up.max_retries, up.retry_backoff_base, up.retry_backoff_max,
                         up.parked_retry_interval, patient=self.mode.patient)
        next_at = self.wall() + d.delay if (failure.retry or not d.park) else None
        try:
            self.store.fail_upload(job.rel, failure.kind, failure.message, next_at, park=d.park)
        except IllegalTransition:
            if self.store.get(job.rel) is not None:
                raise
            # only forget() drops a waiting row: the rescan found the file gone (or no longer
            # included) while this upload was under way, so there is nothing left to retry
            log.info("Upload of %s failed (%s) after its file was found gone; nothing to retry: %s", job.key,
                     failure, display(job.rel))
            return
        with self.stats.lock:
            self.stats.failures[failure.kind] = self.stats.failures.get(failure.kind, 0) + 1
            self.stats.retries += 0 if d.park else 1
            self.stats.last_error = f"{display(job.rel)}: {failure}"
        # an outage is one state with its own lines (outage.py); any other failure gets its line once
        # per file and reason: thousands of files failing alike must not flood the log
        quiet = self.outage.failed(failure) or self._failure_logged.get(job.rel) == failure.kind
        self._failure_logged[job.rel] = failure.kind
        if d.park:
            when = f"tried again in {d.delay:.0f}s or with 's3-uploader retry'" if next_at else \
                "it will not be retried until the file changes or 's3-uploader retry'"
            log.error("Upload of %s failed (%s); parked after %d attempt(s), %s%s", job.key, failure, job.attempt, when,
                      failure.advice())
        elif quiet:
            log.debug("Upload of %s failed (%s); retry %d in %.1fs", job.key, failure, job.attempt, d.delay)
        elif failure.kind in ("auth", "no_bucket", "tls"):
            what = {"auth": "credentials/permission", "no_bucket": "bucket", "tls": "TLS trust"}[failure.kind]
            log.error("Upload of %s failed: %s problem (%s); retrying in %.0fs%s", job.key, what, failure.message,
                      d.delay, failure.advice())
        elif job.attempt > up.max_retries:  # an outage (network, throttling): waits without being parked
            log.warning("Upload of %s failed (%s); endpoint problem, not parked: retry %d in %.1fs", job.key,
                        failure, job.attempt, d.delay)
        else:
            log.warning("Upload of %s failed (%s); retry %d of %d in %.1fs", job.key, failure, job.attempt,
                        up.max_retries, d.delay)

    def waiting_files(self) -> int:
        """Files not yet in S3 (for the outage's lines; counts the rows, so only when one is written)."""
        try:
            counts = self.store.counts()
        except StoreError:
            return 0
        return sum(counts[s] for s in WAITING_STATES)

    def outage_changed(self, state: Optional[Dict[str, Any]]) -> None:
        """Keep the outage where ``status`` (another process) reads it."""
        try:
            self.store.set_meta(META_OUTAGE, json.dumps(state) if state else "")
        except StoreError:
            pass  # the threads that write rows report a broken database

    def set_aside(self, rel: str, step: str, exc: Exception, scheduled: bool = False,
                  st: Optional[FileStat] = None) -> None:
        """Called by a per-file step that raised ``exc`` while ``step`` (e.g. "checking") ``rel``.

        A StoreError is raised again: the database is unusable, which is no file's problem. Anything
        else is a bug: logged at ERROR with its traceback once per file and step (DEBUG after that),
        the file's row, if it has one still waiting, is marked failed with kind ``internal`` (retried
        with backoff like any failure, parked after ``max_retries``); a file with no row yet whose
        stat ``st`` is known gets one, parked without a key (so ``status`` shows it and ``once`` does
        not report success without it), checked again after ``parked_retry_interval``. With
        ``scheduled`` (the scheduler's steps) the file is let go of: untracked and no longer in
        flight, so nothing waits for it. Never raises anything else: the loop that called it goes on.
        """
        if isinstance(exc, StoreError):
            raise exc
        message = f"{step} the file: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        said = (rel, step) in self._bugs_said
        if not said:
            if len(self._bugs_said) >= 10000:  # bounded: a line may be said again, memory never grows
                self._bugs_said.clear()
            self._bugs_said.add((rel, step))
        log.log(logging.DEBUG if said else logging.ERROR, "Internal error while %s %s (a bug; this file is set "
                "aside and retried later, every other file goes on)", step, display(rel), exc_info=exc)
        try:
            if scheduled:
                self._let_go(rel)
            rec = self.store.get(rel)
            up = self._config().upload
            if rec is None and st is not None:
                self.store.park_new(rel, st.size, st.mtime_ns, st.ino, "internal", message,
                                    self.wall() + up.parked_retry_interval)
                return
            if rec is None or rec.state not in WAITING_STATES:
                return  # no row to mark (a done file is done; one vanished is forgotten)
            d = decide_retry(Failure("internal", message), rec.attempts + 1, up.max_retries, up.retry_backoff_base,
                             up.retry_backoff_max, up.parked_retry_interval, patient=self.mode.patient)
            self.store.fail_upload(rel, "internal", message, self.wall() + d.delay, park=d.park)
            with self.stats.lock:
                self.stats.failures["internal"] = self.stats.failures.get("internal", 0) + 1
                self.stats.last_error = f"{display(rel)}: internal: {message}"
        except StoreError:
            raise
        except Exception:  # setting it aside failed too: say so, and still let the loop go on
            log.debug("Could not record the internal error of %s", display(rel), exc_info=True)
