"""The daemon: builds the stages, starts their threads, ticks housekeeping, and stops them in order.

The stages, in the order data flows (each its own module; threads and hand-overs in
docs/architecture.md): :class:`~s3_uploader.discovery.Discovery` (the scanner thread; the watcher's
events become hints), :class:`~s3_uploader.scheduler.Scheduler` (the stability tracker and the
hand-over of jobs), :class:`~s3_uploader.dispatch.Dispatch` (the asyncio sender and the upload
workers), :class:`~s3_uploader.recorder.Recorder` (outcomes into the store; one file's error
contained by ``set_aside``), :class:`~s3_uploader.housekeeping.Housekeeping` (the cleanup thread).
The main thread ticks the outage's state and, in a service, the :class:`~s3_uploader.service.Service`
parts (hot reload, systemd notifications, the metrics server).

How a run ends is its :class:`~s3_uploader.runmode.RunMode`: a service runs until stopped; a
single pass (``once``) scans once and stops when nothing is left to do, after one cleanup pass.
Start-up checks and recovery are :mod:`s3_uploader.preflight`'s (shared with ``check``). Every wait
is on an event with a timeout, so a stop request is never stuck behind a sleep.
"""
from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from . import logs, preflight
from .bandwidth import limiter_from_config
from .budget import Budget, StoreLedger
from .config import Config
from .discovery import Discovery
from .destination import OwnKeys
from .dispatch import Dispatch, InFlight
from .health import HEARTBEAT_MAX_AGE, StateSnapshot
from .history import History
from .hooks import Hooks
from .housekeeping import Housekeeping
from .job import LiveSettings
from .keys import Filters, KeyMaker
from .outage import META_OUTAGE
from .preflight import StartupError
from .recorder import Recorder
from .remote import Remote
from .runmode import RunMode
from .scanner import FileStat, Reporter, Scanner
from .scheduler import Scheduler
from .service import Service
from .threads import Threads
from .store import WAITING_STATES, DatabaseClaim, Store, StoreError
from .uploader import Abandoned
from .views import Activity, HealthView, Stats
from .watcher import Hints, Watcher
from .writers import WriterProbe

__all__ = ["Daemon", "Stats", "StartupError", "RunMode"]

log = logging.getLogger(__name__)

# Shutdown (see Daemon.shutdown): what threads that were told to stop get, on top of shutdown_timeout.
INTAKE_STOP_WAIT = 2.0  # scanner, scheduler, cleanup: each looks at the stop flag at least every second
PARTS_STOP_WAIT = 1.0  # the part threads, after the workers (an abandoned part is not waited for)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def once_result(db_path: str, exit_code: int) -> int:
    """A single pass's exit code: 1 when any file found is not in S3 (or the database cannot say),
    else ``exit_code``, the run's."""
    try:
        with Store(db_path, readonly=True) as st:
            counts = st.counts()
    except StoreError as exc:
        log.error("%s", exc)
        return 1
    waiting = sum(counts[s] for s in WAITING_STATES)
    if waiting:
        log.error("%d file(s) are not in S3 (see: s3-uploader status)", waiting)
        return 1
    return exit_code


class Daemon:
    """One uploader over one watched directory and one bucket.

    Give it a :class:`Config`; ``remote`` and ``store`` default to the real ones the config names
    (tests pass a MemoryRemote). ``run()`` blocks until ``request_stop()`` (or, in a single pass,
    until the tree is done) and returns the exit code after an ordered shutdown.
    """

    def __init__(self, cfg: Config, remote: Optional[Remote] = None, store: Optional[Store] = None, *,
                 mode: RunMode = RunMode.SERVICE, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.cfg, self.mode, self.clock, self.wall = cfg, mode, clock, wall
        self.root = str(cfg.watch_root)
        self._remote, self._store = remote, store
        self.stop_event = threading.Event()  # stop intake
        # stop signals received (signal numbers), appended by the signal handler and read by the main
        # thread: a handler must not call Event.set(), whose lock the interrupted thread may hold
        self.stop_signals: List[int] = []
        self.threads = Threads(self._thread_failed)
        self._lock = threading.Lock()
        self.abandon = threading.Event()  # drain time is over: in-flight multipart uploads stop between parts
        self.wake = threading.Event()  # wakes the scheduler
        self.scan_request = threading.Event()
        self.scan_done = threading.Event()  # single pass: the one scan has finished
        self.stats = Stats()
        self.hints = Hints(on_add=self.wake.set)
        self.reporter = Reporter()
        self.candidates: "queue.Queue[FileStat]" = queue.Queue(maxsize=cfg.upload.max_pending_uploads)
        self.folder_requests: "queue.Queue[str]" = queue.Queue()
        self.inflight = InFlight()
        self.heartbeats: Dict[str, float] = {}
        self.heartbeat_max_age = HEARTBEAT_MAX_AGE
        self._claim: Optional[DatabaseClaim] = None  # one daemon per state database
        self.upload_settings = LiveSettings(lambda: self.cfg)  # what each upload reads of the live config
        self.watcher: Optional[Watcher] = None
        self.probe: Optional[WriterProbe] = None
        self.exit_code = 0
        self._store_error: Optional[str] = None
        self.use_watch_settings(cfg)
        self.keymaker = KeyMaker(cfg.s3.prefix)
        self.snapshot = StateSnapshot()
        self.history = History(lambda: self.store, self.stats, wall)  # the status page's charts
        self.hooks: Optional[Hooks] = None  # hooks and webhook (hooks.py): built by run()
        self.limiter = limiter_from_config(cfg, clock=clock, wall=wall, cancel=self.abandon, on_cancel=Abandoned)
        self.budget = Budget(StoreLedger(lambda: self.store), cfg.upload.max_bytes_per_day,
                             cfg.upload.max_bytes_per_month, wall=wall)  # data budgets (budget.py)
        # the stages, each given what it works with
        self.recorder = Recorder(
            cfg.s3.endpoint_url or "(AWS)", config=lambda: self.cfg, store=lambda: self.store, stats=self.stats,
            hints=self.hints, inflight=self.inflight, wake=self.wake, sender=lambda: self.dispatch.sender,
            has_ready=lambda: bool(self.scheduler.ready), let_go=lambda rel: self.scheduler.let_go(rel),
            mode=mode, clock=clock, wall=wall)
        self.outage = self.recorder.outage
        set_aside = self.recorder.set_aside
        self.dispatch = Dispatch(workers=cfg.upload.upload_workers, inflight=self.inflight, store=lambda: self.store,
                                 record=self.recorder.record, limiter=self.limiter, wake=self.wake,
                                 abandon=self.abandon, set_aside=set_aside, budget=self.budget)
        self.discovery = Discovery(
            self.root, live=self, candidates=self.candidates, folder_requests=self.folder_requests,
            scan_request=self.scan_request, stop=self.stop_event, wake=self.wake, scan_done=self.scan_done,
            stats=self.stats, heartbeats=self.heartbeats,
            is_inflight=self.inflight.__contains__, set_aside=set_aside, watching=lambda: self.watcher is not None,
            mode=mode, clock=clock, wall=wall)
        self.housekeeping = Housekeeping(
            self.root, config=lambda: self.cfg, store=lambda: self.store, scanner=lambda: self.scanner,
            inflight=self.inflight, stats=self.stats, stop=self.stop_event, heartbeats=self.heartbeats,
            clock=clock, wall=wall)
        self.scheduler = Scheduler(
            cfg.upload.max_pending_uploads, live=self, dispatch=self.dispatch, candidates=self.candidates,
            hints=self.hints, wake=self.wake, stop=self.stop_event, scan_request=self.scan_request,
            scan_done=self.scan_done, heartbeats=self.heartbeats, discovery=self.discovery, set_aside=set_aside,
            mode=mode, request_stop=self.request_stop, run_cleanup_pass=self.housekeeping.run_cleanup_pass,
            clock=clock, wall=wall)
        self.service = Service(self, self.snapshot)  # metrics, reload, systemd: started when mode.serves

    # -- what the stages read ---------------------------------------------------------------------
    @property
    def remote(self) -> Remote:
        assert self._remote is not None
        return self._remote

    @property
    def store(self) -> Store:
        assert self._store is not None
        return self._store

    # -- start ------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Start-up checks and recovery (:mod:`s3_uploader.preflight`); raises StartupError (one line)."""
        problem = preflight.watch_dir_problem(self.cfg.watch_root)
        if problem is not None:
            raise StartupError(problem)
        if self._store is None:
            self._claim, self._store = preflight.open_state(self.cfg, self.wall)
        if self._remote is None:
            from .remote import remote_from_config
            self._remote = remote_from_config(self.cfg)
        # the stale-multipart sweep's listing goes out beside HeadBucket: one round trip less before
        # the first upload on a distant link (what is aborted is still decided after the check)
        listing = preflight.UploadListing(self.remote, OwnKeys(self.keymaker).listing_prefix)
        try:
            down = preflight.check_access(self.cfg, self.remote, self.mode)
            self.store.set_meta(META_OUTAGE, "")  # an outage of the last run is not this one's
            if down:
                self.outage.begin(down)
            preflight.recover(self.cfg, self.store, self.remote, self.keymaker, self.filters, self.mode, self.wall,
                              listing)
        except BaseException:  # a failed start-up (before the sweep read the listing) leaves no thread behind
            listing.discard()
            raise

    def run(self) -> int:
        """Run until stopped (or, in a single pass, until done). Returns the exit code."""
        self.prepare()
        # hooks: events recorded by the store's moves from now on, delivered by their own threads
        self.hooks = Hooks(self.store, lambda: self.cfg, lambda: self.remote, clock=self.wall)
        self.store.events = self.hooks.event_log()
        if self.mode.serves:
            self.service.start_metrics()
        self.store.start()
        if self.mode.single_pass:  # no cleanup thread to do it (a run from cron must not grow the database either)
            self.housekeeping.forget_old_rows()
        self._build_senders()
        log.info("Watching %s -> s3://%s/%s (%s)", self.root, self.cfg.s3.bucket, self.cfg.s3.prefix, self.mode.value)
        self._start_threads()
        if self.mode.serves:
            self.service.start()
            self.on_tick()  # READY=1 as soon as we are watching
        try:
            while not self.stop_event.wait(0.5) and not self.stop_signals:
                self.on_tick()
        finally:
            self.shutdown()
        if self.mode.single_pass:
            self.exit_code = once_result(self.cfg.daemon.db_path, self.exit_code)
        return self.exit_code

    def _build_senders(self) -> None:
        """The uploader and the asyncio sender (obstore), the writer probe and the cleaner."""
        self.dispatch.build(self.remote, self.store, self.upload_settings,
                            max_concurrency=self.cfg.upload.max_concurrency, clock=self.clock, wall=self.wall,
                            record_many=self.recorder.record_many)
        self.probe = WriterProbe(self.root, clock=self.clock)
        preflight.say_writer_check(self.probe)
        self.housekeeping.build_cleaner(self.remote, self.probe.is_being_written, self.hints.add)

    def _start_threads(self) -> None:
        if self.cfg.watch.use_events and self.mode.serves:
            try:
                self.watcher = Watcher(self.root, self.hints, self.folder_requests.put, self.discovery.events_lost)
                self.watcher.start()
            except Exception as exc:  # inotify limits, unsupported FS: rescans still work
                log.warning("Filesystem events unavailable (%s); relying on rescans every %gs", exc,
                            self.cfg.watch.scan_interval)
                self.watcher = None
        if self.hooks is not None:  # hooks: their threads (not the daemon's: never waited for by the drain)
            self.hooks.start()
        self.threads.spawn("scanner", self.discovery.run)
        self.threads.spawn("scheduler", self.scheduler.run)
        if self.mode.serves:  # always running: cleanup may be switched on by a reload
            self.threads.spawn("cleanup", self.housekeeping.run)
        self.dispatch.start(self.threads.spawn)

    def _thread_failed(self, name: str, exc: Exception) -> None:
        """A thread's failure stops the daemon with exit code 1, said once."""
        if isinstance(exc, StoreError):
            self._store_failed(exc)
        else:
            log.error("Thread %s failed; stopping so the service manager can restart us", name, exc_info=exc)
            self.exit_code = 1
        self.request_stop()

    def _store_failed(self, exc: StoreError) -> None:
        """The database refused a write: exit 1, saying so once (every thread that writes hits it)."""
        with self._lock:
            said, self._store_error = self._store_error, str(exc)
        if said != str(exc):
            log.error("%s", exc)
        self.exit_code = 1

    # -- tick -------------------------------------------------------------------------------------
    def on_tick(self) -> None:
        """Called by the main thread twice a second: batched log lines written out, the outage's
        state, then the service parts (config reload, state snapshot, systemd notify)."""
        now = self.clock()
        logs.flush_pending()
        try:
            self.outage.tick()
            self.history.tick()
            self.service.tick(now)
        except Exception:  # a bug here must not take the uploads down with it
            log.exception("Error in the daemon's periodic housekeeping")

    def request_reload(self) -> None:
        """Re-read the config file at the next tick (SIGHUP). Only sets a flag: safe from signal handlers."""
        self.service.request_reload()

    # what reload.apply_config changes (reload.ReloadTarget)
    def use_config(self, new: Config) -> None:
        self.cfg = new

    def use_watch_settings(self, cfg: Config) -> None:
        w = cfg.watch
        self.filters = Filters(w.include, w.exclude, w.skip_hidden)
        self.scanner = Scanner(cfg.watch_root, self.filters, w.follow_symlinks, self.reporter)

    def request_rescan(self) -> None:
        self.scan_request.set()

    def wake_scheduler(self) -> None:
        self.wake.set()

    # what health, metrics and systemd notifications read (views.Observed)
    def health_view(self) -> HealthView:
        w = self.watcher
        return HealthView(stopping=self.stop_event.is_set(), threads=self.threads.alive(),
                          watcher_alive=None if w is None else w.is_alive(), root_moved=self.discovery.root_moved,
                          heartbeats=dict(self.heartbeats), max_age=self.heartbeat_max_age)

    def activity(self) -> Activity:
        return Activity(queued=self.queue_depth(), uploading=len(self.inflight), outage=self.outage.state(),
                        outages=self.outage.outages, bandwidth_limit=self.limiter.limit(),
                        concurrency=self.dispatch.concurrency())

    def queue_depth(self) -> int:
        """Files found and not yet started: in the scheduler, handed over, or waiting to be diffed."""
        return self.scheduler.held() + self.dispatch.queued() + self.candidates.qsize()

    # -- stop -------------------------------------------------------------------------------------
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

    def _second_signal(self) -> Optional[str]:
        return _signal_name(self.stop_signals[-1]) if len(self.stop_signals) >= 2 else None

    def shutdown(self) -> None:
        """Ordered, bounded shutdown. The steps run in order; each runs even if an earlier one failed,
        and the first failure sets the exit code (1) and is named in the last line:

        1. intake off: no new work; the scanner, scheduler and cleanup threads get
           :data:`INTAKE_STOP_WAIT` s to end (each looks at the stop flag at least every second);
        2. drain (:meth:`Dispatch.drain <s3_uploader.dispatch.Dispatch.drain>`): jobs not started
           are dropped (their files stay pending for the next start); uploads in flight get until
           ``shutdown_timeout`` after the stop began, or until a second stop signal; then they are
           abandoned (a multipart upload stops between parts, or stops waiting for a part in flight;
           the sender's requests are cancelled) and get ``dispatch.ABANDON_WAIT`` s;
        3. the part threads, the metrics server and the systemd notifier stop (about a second each);
        4. final commit: the minute's history row is written, the database committed and closed;
        5. the S3 client is closed.

        A thread still running at its deadline is named in one WARNING line and left behind: every
        thread the daemon starts is a daemon thread, so none can keep the process from exiting, and
        what it was doing resumes at the next start (its file's row still says so). The whole stop
        takes at most ``max(shutdown_timeout, INTAKE_STOP_WAIT) + ABANDON_WAIT + PARTS_STOP_WAIT +
        metrics.STOP_WAIT`` seconds (shutdown_timeout + 4 s when it is 2 s or more), plus the final
        commit itself. Deadlines are real time (``time.monotonic``): what the service manager measures.
        """
        started = time.monotonic()
        drain_by = started + self.cfg.daemon.shutdown_timeout
        if self.stop_signals:
            log.info("Received %s: stopping (again to skip waiting for uploads)", _signal_name(self.stop_signals[0]))
            logs.flush()
        first_error: Optional[str] = None
        steps: List[Tuple[str, Callable[[], None]]] = [
            ("stopping intake", self._stop_intake),
            ("draining uploads", lambda: self.dispatch.drain(drain_by, self.threads, self._second_signal)),
            ("stopping the part threads", self._stop_part_threads),
            ("stopping the metrics server", lambda: self.service.stop_metrics(self.threads.left)),
            ("closing the service notifier", self.service.close),
            ("writing out batched log lines", logs.flush),
            ("writing the minute's history", self.history.flush),
            ("final commit of the state database", lambda: self.store.close()),
            ("releasing the state database", lambda: self._claim.release() if self._claim is not None else None),
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
        self.threads.stopped = True
        if first_error is not None:
            self.exit_code = 1
            log.error("Stopped in %.1fs; the first shutdown error was in %s", time.monotonic() - started, first_error)
        else:
            log.info("Stopped")

    def _stop_intake(self) -> None:
        self.request_stop()
        self.service.stopping()
        by = time.monotonic() + INTAKE_STOP_WAIT
        if self.watcher is not None:
            self.watcher.stop(timeout=INTAKE_STOP_WAIT)
        intake = self.threads.named("scanner", "scheduler", "cleanup")
        if self.hooks is not None:  # hooks: running ones killed now, their events left for the next start
            self.hooks.stop()
            intake += self.hooks.threads()
        self.threads.join(intake, by, "stopping intake")

    def _stop_part_threads(self) -> None:
        if self.dispatch.uploader is not None:
            self.threads.left(self.dispatch.uploader.close(timeout=PARTS_STOP_WAIT), "stopping the part threads")

    def _close_remote(self) -> None:
        try:
            self.remote.close()
        except Exception:  # nothing is lost with it: not an error of the run
            log.debug("Error closing the S3 client", exc_info=True)

