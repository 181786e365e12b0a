"""The daemon: discovery, stability, upload and bookkeeping wired together, with an ordered shutdown.

Threads, in the order data flows:

- **scanner** (:class:`~s3_uploader.discovery.Discovery`): a full rescan at start and every
  ``scan_interval`` (the guarantee), and subtree scans for folders that events report; diffs each
  folder against the database and hands new or changed files to the scheduler through a bounded
  queue (so a million new files never sit in memory).
- **watcher** (watchdog's thread): events become hints, which only shorten the wait.
- **scheduler** (:class:`~s3_uploader.scheduler.Scheduler`): owns the
  :class:`~s3_uploader.stability.Tracker` (at most ``max_pending_uploads`` files), checks each
  file when due, and hands ready files to the workers; also brings failed files back when their
  retry is due. A file unstable for long yields its slot to files waiting for one, so files that
  never settle cannot starve the rest. The daemon reads its state (``tracker``, ``ready``,
  ``unsettled``) through properties.
- **sender**: with the obstore transport, one asyncio loop that keeps up to ``upload_workers``
  small files (single PUTs of at most 1 MiB) in flight at once (see :mod:`s3_uploader.sender`).
- **upload workers** (``upload_workers`` of them): upload one file each, record the outcome; every
  file the sender does not take (streamed and multipart uploads, a bandwidth limit in force). The
  outcomes of both, and the retry policy, are the :class:`~s3_uploader.recorder.Recorder`'s.
- **store committer**: group commit of the database.
- **cleanup**: a :class:`~s3_uploader.cleanup.Cleaner` pass every ``cleanup_interval`` while
  ``[cleanup]`` is configured (read live, so a reload can switch it on or off).

``once`` mode runs the same machinery for a single scan and stops when nothing is left to do; its
one cleanup pass runs in the scheduler once the uploads are done, so a file that pass queues again
(object missing or different) is uploaded before the run ends and counts in the exit code.
Every wait is on an event with a timeout, so a stop request is never stuck behind a sleep.

Containment: an error while handling one file (its stat, its row, its key, its job, recording its
outcome) stays with that file. Each per-file step catches it (:meth:`Daemon._set_aside`): the error
is logged once with its traceback (it is a bug), the file's row, when it has one still waiting, is
marked failed with kind ``internal`` (retried with backoff, then parked), the file leaves the
scheduler's hands, and the loop goes on with the next file. Only :class:`StoreError` (the database
is unusable, which no file can be set aside from) still ends a thread, and the daemon with it.
"""
from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

from . import logs
from .bandwidth import limiter_from_config
from .cleanup import Cleaner, CleanupSettings, PassResult
from .config import Config
from .destination import OwnKeys, follow_destination
from .health import StateSnapshot
from .hooks import Hooks
from .keys import Filters, KeyMaker
from .metrics import MetricsServer, MetricsUnavailable
from .notify import SdNotify, ServiceNotifier, watchdog_interval
from .reload import Reloader, apply_to_daemon
from .remote import TLS_CODE, PutOptions, Remote, RemoteError
from .retry import Failure, classify, decide_retry
from .scanner import FileStat, Reporter, Scanner
from .stability import Tracker
from .store import DatabaseClaim, WAITING_STATES, IllegalTransition, Store, StoreError, display
from .discovery import Discovery
from .recorder import Recorder
from .scheduler import Scheduler
from .outage import META_OUTAGE
from .sender import AsyncSender
from .uploader import Abandoned, Job, Settings, Uploader
from .watcher import Hints, Watcher
from .writers import WriterProbe

log = logging.getLogger(__name__)

FORGET_INTERVAL = 3600.0  # seconds between passes that forget rows deleted or archived long ago
# Shutdown (see Daemon.shutdown): what threads that were told to stop get, on top of shutdown_timeout.
INTAKE_STOP_WAIT = 2.0  # scanner, scheduler, cleanup: each looks at the stop flag at least every second
ABANDON_WAIT = 2.0  # upload workers and the sender once abandoned (between parts, requests cancelled)
PARTS_STOP_WAIT = 1.0  # the part threads, after the workers (an abandoned part is not waited for)
STOP_POLL = 0.1  # how often shutdown's waits look for a second stop signal
# Parts in flight across all files. A part is read into memory only while it is sent, so this bounds
# multipart memory (16 x multipart_chunksize) however many upload_workers there are.
PART_THREADS_CAP = 16


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StartupError(Exception):
    """The daemon cannot start; the message is one line for the user (no traceback)."""


@dataclass
class Stats:
    """Counters for status lines, metrics and health. Written under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    started_at: float = field(default_factory=time.time)
    uploaded_files: int = 0
    uploaded_bytes: int = 0
    failures: Dict[str, int] = field(default_factory=dict)
    retries: int = 0
    changed_while_reading: int = 0
    last_upload_at: Optional[float] = None
    last_error: Optional[str] = None
    scans: int = 0
    last_scan_at: Optional[float] = None
    last_scan_seconds: float = 0.0
    last_scan_files: int = 0
    upload_seconds: List[float] = field(default_factory=list)  # drained by the metrics exporter
    cleanup_passes: int = 0
    cleanup_files_freed: int = 0  # deleted or archived after S3 proved the object
    cleanup_bytes_freed: int = 0
    cleanup_requeued: int = 0  # object missing/different or file changed: uploaded again
    cleanup_held: int = 0  # held back in the last pass (reasons: store meta 'cleanup.last_pass')
    cleanup_disk_full: bool = False  # below min_free_space with nothing proven in S3 left to delete
    last_cleanup_at: Optional[float] = None
    events_lost: Dict[str, int] = field(default_factory=dict)  # by reason: overflow, watch_limit
    unwatched_folders: int = 0  # folders of the last full scan that inotify does not watch

    def add(self, **kw: float) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)


class Daemon:
    """One uploader over one watched directory and one bucket.

    Give it a :class:`Config`; ``remote`` and ``store`` default to the real ones the config names
    (tests pass a MemoryRemote). ``run()`` blocks until ``request_stop()`` (or, in ``once`` mode,
    until the tree is done) and returns after an ordered shutdown.
    """

    def __init__(self, cfg: Config, remote: Optional[Remote] = None, store: Optional[Store] = None, *,
                 once: bool = False, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.cfg = cfg
        self.once = once
        self.clock = clock
        self.wall = wall
        self.root = str(cfg.watch_root)
        self._remote = remote
        self._store = store
        self.stop_event = threading.Event()  # stop intake
        # stop signals received (signal numbers), appended by the signal handler and read by the main
        # thread: a handler must not call Event.set(), whose lock the interrupted thread may hold
        self.stop_signals: List[int] = []
        self.left_behind: List[str] = []  # threads still running when shutdown gave up on them
        self._stopped = False  # shutdown has finished: errors of threads left behind are not news
        self.abandon = threading.Event()  # drain time is over: in-flight multipart uploads stop between parts
        self.wake = threading.Event()  # wakes the scheduler
        self.scan_request = threading.Event()
        self.stats = Stats()
        self.hints = Hints(on_add=self.wake.set)
        self.reporter = Reporter()
        cap = cfg.upload.max_pending_uploads
        self.candidates: "queue.Queue[FileStat]" = queue.Queue(maxsize=cap)
        self.folder_requests: "queue.Queue[str]" = queue.Queue()
        self.upload_q: "queue.Queue[Optional[Job]]" = queue.Queue()
        self.inflight: Set[str] = set()
        self.inflight_lock = threading.Lock()
        self.scan_done = threading.Event()  # once mode: the single scan has finished
        self.heartbeats: Dict[str, float] = {}
        self._threads: List[threading.Thread] = []
        self._endpoint_down_at_start: Optional[str] = None
        self._claim: Optional[DatabaseClaim] = None  # one daemon per state database
        self._bugs_said: Set[Tuple[str, str]] = set()  # (rel, step) whose internal error was logged in full
        # the stages, each given what it works with (see discovery.py, scheduler.py and recorder.py)
        self.discovery = Discovery(
            self.root, config=lambda: self.cfg, store=lambda: self.store, scanner=lambda: self.scanner,
            filters=lambda: self.filters, keymaker=lambda: self.keymaker, candidates=self.candidates,
            folder_requests=self.folder_requests, scan_request=self.scan_request, stop=self.stop_event,
            wake=self.wake, scan_done=self.scan_done, stats=self.stats, heartbeats=self.heartbeats,
            is_inflight=self._is_inflight, set_aside=self._set_aside, watching=lambda: self.watcher is not None,
            once=once, clock=clock, wall=wall)
        self.recorder = Recorder(
            cfg.s3.endpoint_url or "(AWS)", config=lambda: self.cfg, store=lambda: self.store, stats=self.stats,
            hints=self.hints, inflight=self.inflight, inflight_lock=self.inflight_lock, wake=self.wake,
            sender=lambda: self.sender, has_ready=lambda: bool(self.scheduler.ready), set_aside=self._set_aside,
            once=once, clock=clock, wall=wall)
        self.outage = self.recorder.outage
        self.watcher: Optional[Watcher] = None
        self.sender: Optional[AsyncSender] = None
        self.exit_code = 0
        self._store_error: Optional[str] = None
        self._apply_watch_settings(cfg)
        self.keymaker = KeyMaker(cfg.s3.prefix)
        # running it for months: hot reload, systemd notifications, metrics (set up by run())
        self.snapshot = StateSnapshot()
        self.limiter = limiter_from_config(cfg, clock=clock, wall=wall, cancel=self.abandon, on_cancel=Abandoned)
        self.scheduler = Scheduler(
            cap, config=lambda: self.cfg, store=lambda: self.store, remote=lambda: self.remote,
            scanner=lambda: self.scanner, keymaker=lambda: self.keymaker, settings=self.upload_settings,
            probe=lambda: self.probe, sender=lambda: self.sender, candidates=self.candidates, hints=self.hints,
            upload_q=self.upload_q, inflight=self.inflight, inflight_lock=self.inflight_lock, wake=self.wake,
            stop=self.stop_event, scan_request=self.scan_request, scan_done=self.scan_done,
            heartbeats=self.heartbeats, limiter=self.limiter, discovery=self.discovery, set_aside=self._set_aside,
            once=once, request_stop=self.request_stop, run_cleanup_pass=self.run_cleanup_pass, clock=clock,
            wall=wall)
        self.reloader: Optional[Reloader] = None
        self.service: Optional[ServiceNotifier] = None
        self.metrics: Optional[Any] = None
        self.hooks: Optional[Hooks] = None  # hooks and webhook (hooks.py): built by run()

    # -- settings that components read --------------------------------------------------------
    def _apply_watch_settings(self, cfg: Config) -> None:
        w = cfg.watch
        self.filters = Filters(w.include, w.exclude, w.skip_hidden)
        self.scanner = Scanner(cfg.watch_root, self.filters, w.follow_symlinks, self.reporter)

    def upload_settings(self) -> Settings:
        c = self.cfg
        cached = getattr(self, "_settings", None)
        if cached is not None and cached[0] is c:  # a reload swaps in a new Config object
            return cached[1]
        settings = Settings(c.upload.multipart_threshold, c.upload.multipart_chunksize, c.upload.max_concurrency,
                            PutOptions(c.s3.storage_class, c.s3.sse, c.s3.sse_kms_key_id), c.watch.follow_symlinks)
        self._settings = (c, settings)
        return settings

    @property
    def root_moved(self) -> Optional[str]:
        """Where the watch directory resolves now, if not where it did at start (health reads it)."""
        return self.discovery.root_moved

    # the scheduler's state, which health, status lines and tests read from the daemon
    @property
    def tracker(self) -> Tracker:
        return self.scheduler.tracker

    @property
    def ready(self) -> Deque[Job]:
        return self.scheduler.ready

    @property
    def unsettled(self) -> int:
        return self.scheduler.unsettled

    @property
    def unsettled_after(self) -> Optional[float]:
        """Seconds unstable after which a tracked file is unsettled; None: from stable_seconds (tests set it)."""
        return self.scheduler.unsettled_after

    @unsettled_after.setter
    def unsettled_after(self, seconds: Optional[float]) -> None:
        self.scheduler.unsettled_after = seconds

    def unsettled_limit(self) -> float:
        return self.scheduler.unsettled_limit()

    @property
    def remote(self) -> Remote:
        assert self._remote is not None
        return self._remote

    @property
    def store(self) -> Store:
        assert self._store is not None
        return self._store

    # -- start-up -------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Start-up checks, in the order a user would fix them; raises StartupError (one line)."""
        root = self.cfg.watch_root
        if not root.is_dir():
            if root.exists():
                raise StartupError(f"Watch directory is not a directory: {root}")
            raise StartupError(f"Watch directory does not exist: {root}")
        if not os.access(root, os.R_OK | os.X_OK):
            raise StartupError(f"Watch directory cannot be read (permission denied): {root}")
        if self._store is None:
            try:
                self._claim = DatabaseClaim(self.cfg.daemon.db_path)
                self._store = Store(self.cfg.daemon.db_path, clock=self.wall)
            except StoreError as exc:
                raise StartupError(str(exc)) from None
        if self._remote is None:
            from .remote import remote_from_config
            self._remote = remote_from_config(self.cfg)
        try:
            self.remote.check_access()
        except RemoteError as exc:
            endpoint = self.cfg.s3.endpoint_url or "(AWS)"
            if exc.code == TLS_CODE:  # the endpoint answers, and we do not trust it: say that, not "no bucket"
                raise StartupError(exc.reason) from None
            if not exc.endpoint_down:  # the bucket or the credentials are wrong; else the daemon starts anyway
                raise StartupError(f"S3 bucket {self.cfg.s3.bucket} does not exist or you don't have access "
                                   f"({exc.reason})") from None
            if self.once:
                raise StartupError(f"S3 bucket {self.cfg.s3.bucket} does not exist or you don't have access "
                                   f"(S3 endpoint {endpoint} is not answering: {exc.reason})") from None
            # a box that boots before its network, or an outage: exiting would only make the service
            # manager give up on us after a few restarts, while files pile up with nobody to send them
            log.warning("S3 endpoint %s is not answering (%s); starting anyway: files wait and go when it answers",
                        endpoint, exc.reason)
            self._endpoint_down_at_start = exc.reason
        self.store.set_meta(META_OUTAGE, "")  # an outage of the last run is not this one's
        if self._endpoint_down_at_start:
            self.outage.begin(self._endpoint_down_at_start)
        n = self.store.recover_interrupted()
        if n:
            log.info("%d upload(s) were interrupted by the last stop; they will be resumed", n)
        # after the access check (a mistyped bucket stops us before any row is rebased) and before the
        # sweep (which must see the upload ids of the destination we now send to)
        try:
            follow_destination(self.store, self.cfg, self.keymaker, self.filters)
        except StoreError as exc:
            raise StartupError(str(exc)) from None
        self.abort_stale_multipart()
        if self.once:
            self.store.retry_parked(self.wall())  # a manual run tries everything once more
        self.store.commit()

    def abort_stale_multipart(self) -> int:
        """Abort the multipart uploads to keys this host can own that no row owns; returns how many.

        They are left by a crash between CreateMultipartUpload and recording its id, or by a file
        that vanished mid-upload, and S3 bills their parts until aborted. Only keys this host can
        own are listed (:class:`~s3_uploader.destination.OwnKeys`): under the prefix up to its
        first placeholder other than ``{hostname}``, with our hostname filled in, and of our
        template's shape, so with ``prefix = cams/{hostname}/{yyyy}`` the other hosts' uploads in
        progress under ``cams/`` are left alone. When that leaves no fixed prefix (the bucket root,
        or a prefix that starts with a date), only uploads to keys our own rows go to are touched.
        A failure to list (some servers lack the API) is a warning: the lifecycle rule covers it.
        """
        own = OwnKeys(self.keymaker)
        prefix = own.listing_prefix
        owned = self.store.owned_upload_ids()
        n = 0
        try:
            for up in self.remote.list_multipart_uploads(prefix):
                if up.upload_id in owned or not (own.could_own(up.key) or self.store.has_key(up.key)):
                    continue
                self.remote.abort_multipart(up.key, up.upload_id)
                log.info("Aborted stale multipart upload of %s (upload id %s, owned by no file)", up.key,
                         up.upload_id)
                n += 1
        except Exception as exc:  # listing is an optimisation; never a reason not to start
            log.warning("Could not look for stale multipart uploads under s3://%s/%s (%s); a bucket lifecycle "
                        "rule (AbortIncompleteMultipartUpload) cleans them up", self.cfg.s3.bucket, prefix,
                        classify(exc).message)
        return n

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped (or, once, until done). Returns the exit code."""
        self.prepare()
        # hooks: events recorded by the store's moves from now on, delivered by their own threads
        self.hooks = Hooks(self.store, lambda: self.cfg, lambda: self.remote, clock=self.wall)
        self.store.events = self.hooks.event_log()
        self._start_metrics()
        self.store.start()
        if self.once:  # no cleanup thread to do it (a run from cron must not grow the database either)
            self.forget_old_rows()
        up = self.cfg.upload
        self.uploader = Uploader(self.remote, self.store, self.upload_settings,
                                 part_workers=max(up.max_concurrency, min(up.upload_workers * up.max_concurrency,
                                                                          PART_THREADS_CAP)), abandon=self.abandon,
                                 clock=self.clock, throttle=self.limiter.throttle)
        if hasattr(self.remote, "put_object_soon"):
            self.sender = AsyncSender(self.remote, self.uploader, self.recorder.record_many,
                                      capacity=up.upload_workers, allowed=lambda: self.limiter.limit() is None,
                                      divert=self._divert)
        self.probe = WriterProbe(self.root, clock=self.clock)
        self._say_writer_check()
        self.cleaner = Cleaner(self.root, self.store, self.remote, lambda: CleanupSettings.from_config(self.cfg),
                               is_busy=self._is_inflight, is_being_written=self.probe.is_being_written,
                               on_requeue=self.hints.add, stop=self.stop_event)
        try:  # a pass interrupted between its quarantine rename and the unlink: finish or undo it now,
            self.cleaner.recover()  # even if cleanup has been switched off since
        except Exception as exc:
            log.warning("Cleanup: could not look at files an interrupted pass left hidden (%s); the next pass "
                        "does", exc)
        log.info("Watching %s -> s3://%s/%s (%s)", self.root, self.cfg.s3.bucket, self.cfg.s3.prefix,
                 "once" if self.once else "daemon")
        self._start_threads()
        self._start_service()
        try:
            while not self.stop_event.wait(0.5) and not self.stop_signals:
                self.on_tick()
        finally:
            self.shutdown()
        if self.once:
            self.exit_code = self._once_result()
        return self.exit_code

    def _say_writer_check(self) -> None:
        """Say once how open writers are found, and loudly when some of them cannot be seen."""
        blind = self.probe.blind_spot()
        if blind is not None:
            log.warning("%s", blind)
        else:
            log.debug("Writer check: %s", self.probe.method())

    def on_tick(self) -> None:
        """Called by the main thread twice a second: config reload, state snapshot, systemd notify,
        batched log lines written out."""
        now = self.clock()
        logs.flush_pending()
        try:
            self.outage.tick()
            if self.reloader is not None:
                self.reloader.tick(now)
            if self.metrics is not None or self.service is not None:
                self.snapshot.refresh(self.store, now)
            if self.service is not None:
                self.service.tick(now)
        except Exception:  # a bug here must not take the uploads down with it
            log.exception("Error in the daemon's periodic housekeeping")

    def request_reload(self) -> None:
        """Re-read the config file at the next tick (SIGHUP). Only sets a flag: safe from signal handlers."""
        if self.reloader is not None:
            self.reloader.request()

    def _start_metrics(self) -> None:
        """Serve /metrics and /healthz when metrics_address is set; StartupError when it cannot."""
        address = self.cfg.daemon.metrics_address
        if not address or self.once:
            return
        try:
            self.metrics = MetricsServer(self, address, self.snapshot).start()
        except MetricsUnavailable as exc:
            raise StartupError(str(exc)) from None

    def _start_service(self) -> None:
        """Hot reload of the config file, and READY=1 / STATUS / WATCHDOG for systemd."""
        if self.once:
            return
        if self.cfg.source is not None:
            self.reloader = Reloader(self.cfg.source, lambda: self.cfg,
                                     lambda new, changed: apply_to_daemon(self, new, changed))
        client = SdNotify.from_environ()
        if client.enabled:
            self.service = ServiceNotifier(self, client, self.snapshot, watchdog_interval())
        self.on_tick()  # READY=1 as soon as we are watching

    def _start_threads(self) -> None:
        if self.cfg.watch.use_events and not self.once:
            try:
                self.watcher = Watcher(self.root, self.hints, self.folder_requests.put, self.discovery.events_lost)
                self.watcher.start()
            except Exception as exc:  # inotify limits, unsupported FS: rescans still work
                log.warning("Filesystem events unavailable (%s); relying on rescans every %gs", exc,
                            self.cfg.watch.scan_interval)
                self.watcher = None
        if self.hooks is not None:  # hooks: their threads (not the daemon's: never waited for by the drain)
            self.hooks.start()
        self._spawn("scanner", self.discovery.run)
        self._spawn("scheduler", self.scheduler.run)
        if not self.once:  # always running: cleanup may be switched on by a reload
            self._spawn("cleanup", self._cleanup_loop)
        if self.sender is not None:
            self._spawn("sender", self.sender.run)
        for i in range(self.cfg.upload.upload_workers):
            self._spawn(f"upload-{i}", self._worker_loop)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=self._guard(name, target), name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def _guard(self, name: str, target: Callable[[], None]) -> Callable[[], None]:
        """``target`` for a thread: its failure stops the daemon with exit code 1, said once. A
        thread left behind by shutdown (see :meth:`shutdown`) that fails afterwards, typically on the
        closed database, changes nothing: its work resumes at the next start."""
        def run() -> None:
            try:
                target()
            except Exception as exc:
                if self._stopped:
                    log.debug("Thread %s, left behind by shutdown, ended with %r", name, exc)
                    return
                if isinstance(exc, StoreError):
                    self._store_failed(exc)
                else:
                    log.exception("Thread %s failed; stopping so the service manager can restart us", name)
                    self.exit_code = 1
                self.request_stop()
        return run

    def _store_failed(self, exc: StoreError) -> None:
        """The database refused a write: exit 1, saying so once (every thread that writes hits it)."""
        with self.inflight_lock:
            said, self._store_error = self._store_error, str(exc)
        if said != str(exc):
            log.error("%s", exc)
        self.exit_code = 1

    def request_stop(self) -> None:
        """Stop intake; ``run()`` then drains in-flight uploads and returns. For threads; a signal
        handler calls :meth:`signal_stop` instead."""
        self.stop_event.set()
        self.wake.set()
        self.scan_request.set()

    def signal_stop(self, signum: int) -> None:
        """A stop signal (SIGTERM, SIGINT) arrived. Only records it (safe in a signal handler): the
        main thread's loop sees it within half a second and shuts down; a second one, before or
        during shutdown, ends the drain at once (uploads in flight are abandoned, see shutdown)."""
        self.stop_signals.append(signum)

    def _skip_drain(self) -> bool:
        return len(self.stop_signals) >= 2

    def shutdown(self) -> None:
        """Ordered, bounded shutdown. The steps run in order; each runs even if an earlier one failed,
        and the first failure sets the exit code (1) and is named in the last line:

        1. intake off: no new work; the scanner, scheduler and cleanup threads get
           :data:`INTAKE_STOP_WAIT` s to end (each looks at the stop flag at least every second);
        2. drain: jobs not started are dropped (their files stay pending for the next start); uploads
           in flight get until ``shutdown_timeout`` after the stop began, or until a second stop
           signal; then they are abandoned (a multipart upload stops between parts, or stops waiting
           for a part in flight; the sender's requests are cancelled) and get :data:`ABANDON_WAIT` s;
        3. the part threads, the metrics server and the systemd notifier stop (about a second each);
        4. final commit: the database is committed and closed;
        5. the S3 client is closed.

        A thread still running at its deadline is named in one WARNING line and left behind: every
        thread the daemon starts is a daemon thread, so none can keep the process from exiting, and
        what it was doing resumes at the next start (its file's row still says so). The whole stop
        takes at most ``max(shutdown_timeout, INTAKE_STOP_WAIT) + ABANDON_WAIT + PARTS_STOP_WAIT +
        metrics.STOP_WAIT`` seconds (shutdown_timeout + 4 s when it is 2 s or more), plus the final
        commit itself.
        Deadlines are real time (``time.monotonic``): what the service manager measures.
        """
        started = time.monotonic()
        drain_by = started + self.cfg.daemon.shutdown_timeout
        if self.stop_signals:
            log.info("Received %s: stopping (again to skip waiting for uploads)", _signal_name(self.stop_signals[0]))
            logs.flush()
        first_error: Optional[str] = None
        steps: List[Tuple[str, Callable[[], None]]] = [
            ("stopping intake", self._stop_intake),
            ("draining uploads", lambda: self._drain(drain_by)),
            ("stopping the part threads", self._stop_part_threads),
            ("stopping the metrics server", self._stop_metrics),
            ("closing the service notifier", self._close_service),
            ("writing out batched log lines", logs.flush),
            ("final commit of the state database", lambda: self.store.close()),
            ("releasing the state database", self._release_claim),
            ("closing the S3 client", self._close_remote),
        ]
        for what, step in steps:
            try:
                step()
            except StoreError as exc:
                self._store_failed(exc)
                first_error = first_error or f"{what}: {exc}"
            except Exception as exc:
                log.exception("Shutdown: error %s; going on with the next step", what)
                first_error = first_error or f"{what}: {exc}"
        self._stopped = True
        if first_error is not None:
            self.exit_code = 1
            log.error("Stopped in %.1fs; the first shutdown error was in %s", time.monotonic() - started, first_error)
        else:
            log.info("Stopped")

    def _stop_intake(self) -> None:
        self.request_stop()
        if self.service is not None:
            self.service.stopping()
        by = time.monotonic() + INTAKE_STOP_WAIT
        if self.watcher is not None:
            self.watcher.stop(timeout=INTAKE_STOP_WAIT)
        intake = [t for t in self._threads if t.name in ("scanner", "scheduler", "cleanup")]
        if self.hooks is not None:  # hooks: running ones killed now, their events left for the next start
            self.hooks.stop()
            intake += self.hooks.threads()
        self._join(intake, by, "stopping intake")

    def _drain(self, drain_by: float) -> None:
        # jobs queued but not started stay pending in the database: they go first at next start
        if self.sender is not None:
            for job in self.sender.close():
                with self.inflight_lock:
                    self.inflight.discard(job.rel)
        while True:
            try:
                queued = self.upload_q.get_nowait()
            except queue.Empty:
                break
            if queued is not None:
                with self.inflight_lock:
                    self.inflight.discard(queued.rel)
        workers = [t for t in self._threads if t.name.startswith("upload-")]
        for _ in workers:
            self.upload_q.put(None)  # one stop sign per worker; the closed sender ends on its own
        workers += [t for t in self._threads if t.name == "sender"]
        with self.inflight_lock:
            inflight = len(self.inflight)
        if inflight and not self._skip_drain():
            log.info("Stopping: waiting up to %gs for %d upload(s) in flight", max(0.0, drain_by - time.monotonic()),
                     inflight)
        if not self._join(workers, drain_by, None, drain=True):
            return
        if self._skip_drain():
            log.warning("Received %s again: abandoning uploads in flight (multipart uploads resume at next start)",
                        _signal_name(self.stop_signals[-1]))
        else:
            log.warning("Shutdown timeout: abandoning uploads in flight (multipart uploads resume at next start)")
        self.abandon.set()
        if self.sender is not None:
            self.sender.cancel()
        self._join(workers, time.monotonic() + ABANDON_WAIT, "abandoning uploads in flight")

    def _stop_part_threads(self) -> None:
        uploader = getattr(self, "uploader", None)
        if uploader is not None:
            self._left(uploader.close(timeout=PARTS_STOP_WAIT), "stopping the part threads")

    def _stop_metrics(self) -> None:
        if self.metrics is not None:
            self._left(self.metrics.stop(), "stopping the metrics server")

    def _close_service(self) -> None:
        if self.service is not None:
            self.service.close()

    def _release_claim(self) -> None:
        if self._claim is not None:
            self._claim.release()

    def _close_remote(self) -> None:
        try:
            self.remote.close()
        except Exception:  # nothing is lost with it: not an error of the run
            log.debug("Error closing the S3 client", exc_info=True)

    def _join(self, threads: List[threading.Thread], by: float, what: Optional[str], drain: bool = False) -> List[str]:
        """Wait for ``threads`` until ``by`` (``time.monotonic``), or with ``drain`` until a second
        stop signal; returns the names of those still alive, said in a WARNING unless ``what`` is None."""
        for t in threads:
            while t.is_alive():
                logs.flush_pending()  # the main thread's tick, which wrote batched lines out, is over
                left = by - time.monotonic()
                if left <= 0 or (drain and self._skip_drain()):
                    break
                t.join(min(left, STOP_POLL))
        alive = [t.name for t in threads if t.is_alive()]
        if what is not None:
            self._left(alive, what)
        return alive

    def _left(self, names: List[str], what: str) -> None:
        if names:
            self.left_behind += names
            log.warning("Shutdown: %s: left behind, still running: %s (daemon threads: they do not hold up the "
                        "exit; their work resumes at the next start)", what, ", ".join(names))

    def _once_result(self) -> int:
        try:
            with Store(self.cfg.daemon.db_path, readonly=True) as st:
                counts = st.counts()
        except StoreError as exc:
            log.error("%s", exc)
            return 1
        waiting = sum(counts[s] for s in WAITING_STATES)
        if waiting:
            log.error("%d file(s) are not in S3 (see: s3-uploader status)", waiting)
            return 1
        return self.exit_code

    def _is_inflight(self, rel: str) -> bool:
        with self.inflight_lock:
            return rel in self.inflight

    # -- containment: one file's error stays with that file -----------------------------------------
    def _set_aside(self, rel: str, step: str, exc: Exception, scheduled: bool = False,
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
                self.scheduler.let_go(rel)
            rec = self.store.get(rel)
            up = self.cfg.upload
            if rec is None and st is not None:
                self.store.park_new(rel, st.size, st.mtime_ns, st.ino, "internal", message,
                                    self.wall() + up.parked_retry_interval)
                return
            if rec is None or rec.state not in WAITING_STATES:
                return  # no row to mark (a done file is done; one vanished is forgotten)
            d = decide_retry(Failure("internal", message), rec.attempts + 1, up.max_retries, up.retry_backoff_base,
                             up.retry_backoff_max, up.parked_retry_interval, patient=not self.once)
            self.store.fail_upload(rel, "internal", message, self.wall() + d.delay, park=d.park)
            with self.stats.lock:
                self.stats.failures["internal"] = self.stats.failures.get("internal", 0) + 1
                self.stats.last_error = f"{display(rel)}: internal: {message}"
        except StoreError:
            raise
        except Exception:  # setting it aside failed too: say so, and still let the loop go on
            log.debug("Could not record the internal error of %s", display(rel), exc_info=True)

    # -- cleanup thread ---------------------------------------------------------------------------
    def _cleanup_loop(self) -> None:
        """Run a cleanup pass every ``cleanup_interval`` while cleanup is configured, reading the live
        config each time (a reload applies within a second); sooner while a backlog is left."""
        last: Optional[float] = None
        hurry = False
        forget_at = self.clock()  # rows deleted or archived long ago: forgotten at start, then hourly
        while not self.stop_event.is_set():
            now = self.clock()
            self.heartbeats["cleanup"] = now
            if now >= forget_at:
                self.forget_old_rows()
                forget_at = now + FORGET_INTERVAL
            c = CleanupSettings.from_config(self.cfg)
            if c.enabled and (last is None or hurry or now - last >= c.interval):
                res = self.run_cleanup_pass()
                last, hurry = self.clock(), res is not None and res.more
            self.stop_event.wait(1.0)

    def forget_old_rows(self) -> int:
        """Drop the rows of files deleted or archived more than ``forget_after`` ago (0: keep them),
        a batch per transaction; returns how many. StoreError propagates."""
        after = self.cfg.daemon.forget_after
        if not after:
            return 0
        ago = f"{after / 86400:g} day(s)" if after >= 86400 else f"{after:g}s"
        n = self.store.forget_done_all(self.wall() - after, stop=self.stop_event)
        if n:
            log.info("Forgot %d row(s) of files deleted or archived over %s ago (forget_after)", n, ago)

        def gone(rel: str) -> bool:
            return not self._is_inflight(rel) and not os.path.lexists(self.scanner.abspath(rel))
        if os.path.isdir(self.root):  # an unmounted disk must not read as "every file gone"
            m = self.store.forget_vanished_uploaded(self.wall() - after, gone, stop=self.stop_event)
            if m:
                log.info("Forgot %d row(s) of files uploaded over %s ago and since deleted by something else "
                         "(forget_after)", m, ago)
            n += m
        return n

    def run_cleanup_pass(self) -> Optional[PassResult]:
        """One cleanup pass now, if cleanup is configured; its counters go to ``stats``. A failure is
        logged and returns None (it never changes the exit code); StoreError propagates."""
        if not CleanupSettings.from_config(self.cfg).enabled:
            return None
        try:
            res = self.cleaner.run_pass(self.wall())
        except StoreError:
            raise
        except Exception:
            log.exception("Cleanup pass failed and stopped there; the next pass runs as scheduled")
            return None
        with self.stats.lock:
            self.stats.cleanup_passes += 1
            self.stats.cleanup_files_freed += res.freed_files
            self.stats.cleanup_bytes_freed += res.freed_bytes
            self.stats.cleanup_requeued += res.requeued
            self.stats.cleanup_held = res.held_total
            self.stats.cleanup_disk_full = res.disk_full_of_unuploaded
            self.stats.last_cleanup_at = res.at
        return res

    # -- upload workers ---------------------------------------------------------------------------
    def _worker_loop(self) -> None:
        while True:
            job = self.upload_q.get()
            if job is None:
                return
            try:
                self._process(job)
            except Exception as exc:
                self._set_aside(job.rel, "uploading", exc)
            finally:
                with self.inflight_lock:
                    self.inflight.discard(job.rel)
                self.wake.set()

    def _process(self, job: Job) -> None:
        try:
            self.store.start_upload(job.rel, job.stat.size, job.stat.mtime_ns, job.stat.ino)
        except IllegalTransition as exc:
            log.debug("Not uploading: %s", exc)
            return
        outcome = self.uploader.upload(job)
        self.recorder.record(outcome)

    def _divert(self, jobs: List[Job]) -> None:
        """Jobs the sender will not start (a bandwidth limit came into force): to the upload
        workers, which pace every body through the limiter."""
        for job in jobs:
            self.upload_q.put(job)

    # -- reading state for status lines ------------------------------------------------------------
    def queue_depth(self) -> int:
        sent = self.sender.queued() if self.sender is not None else 0
        return self.scheduler.held() + self.upload_q.qsize() + self.candidates.qsize() + sent


