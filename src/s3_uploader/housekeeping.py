"""The cleanup thread: a :class:`~s3_uploader.cleanup.Cleaner` pass every ``cleanup_interval``
while ``[cleanup]`` is configured (read live, so a reload can switch it on or off), and the hourly
forgetting of rows of files deleted or archived long ago (``forget_after``).

A single pass has no cleanup thread: its scheduler runs one :meth:`Housekeeping.run_cleanup_pass`
at its end, and the daemon forgets old rows once at its start.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Callable, Dict, Optional

from .cleanup import Cleaner, CleanupSettings, PassResult
from .config import Config
from .dispatch import InFlight
from .remote import Remote
from .scanner import Scanner
from .store import Store, StoreError
from .views import Stats

log = logging.getLogger(__name__)

FORGET_INTERVAL = 3600.0  # seconds between passes that forget rows deleted or archived long ago


class Housekeeping:
    """Cleanup passes and forgetting old rows. ``config``, ``store`` and ``scanner`` are accessors
    (the daemon opens the store at start and rebuilds the scanner on a reload); the cleaner is
    built by :meth:`build_cleaner` at start; ``inflight`` says which files an upload holds."""

    def __init__(self, root: str, *, config: Callable[[], Config], store: Callable[[], Store],
                 scanner: Callable[[], Scanner], inflight: InFlight, stats: Stats, stop: threading.Event,
                 heartbeats: Dict[str, float], clock: Callable[[], float], wall: Callable[[], float]):
        self.root = root
        self._config = config
        self._store = store
        self._scanner = scanner
        self.inflight = inflight
        self.stats = stats
        self.stop = stop
        self.heartbeats = heartbeats
        self.clock = clock
        self.wall = wall
        self.cleaner: Optional[Cleaner] = None

    def build_cleaner(self, remote: Remote, is_being_written: Callable[..., bool],
                      on_requeue: Callable[[str], None]) -> None:
        """Build the cleaner, and finish or undo a pass a stop interrupted between its quarantine
        rename and the unlink (even if cleanup has been switched off since); a failure to look is a
        warning: the next pass does."""
        self.cleaner = Cleaner(self.root, self._store(), remote, lambda: CleanupSettings.from_config(self._config()),
                               is_busy=self.inflight.__contains__, is_being_written=is_being_written,
                               on_requeue=on_requeue, stop=self.stop)
        try:
            self.cleaner.recover()
        except Exception as exc:
            log.warning("Cleanup: could not look at files an interrupted pass left hidden (%s); the next pass "
                        "does", exc)

    def run(self) -> None:
        """The cleanup thread: a pass every ``cleanup_interval`` while cleanup is configured, reading
        the live config each time (a reload applies within a second); sooner while a backlog is left."""
        last: Optional[float] = None
        hurry = False
        forget_at = self.clock()  # rows deleted or archived long ago: forgotten at start, then hourly
        while not self.stop.is_set():
            now = self.clock()
            self.heartbeats["cleanup"] = now
            if now >= forget_at:
                self.forget_old_rows()
                forget_at = now + FORGET_INTERVAL
            c = CleanupSettings.from_config(self._config())
            if c.enabled and (last is None or hurry or now - last >= c.interval):
                res = self.run_cleanup_pass()
                last, hurry = self.clock(), res is not None and res.more
            self.stop.wait(1.0)

    def forget_old_rows(self) -> int:
        """Drop the rows of files deleted or archived more than ``forget_after`` ago (0: keep them),
        a batch per transaction; returns how many. StoreError propagates."""
        after = self._config().daemon.forget_after
        if not after:
            return 0
        store = self._store()
        ago = f"{after / 86400:g} day(s)" if after >= 86400 else f"{after:g}s"
        n = store.forget_done_all(self.wall() - after, stop=self.stop)
        if n:
            log.info("Forgot %d row(s) of files deleted or archived over %s ago (forget_after)", n, ago)

        def gone(rel: str) -> bool:
            return rel not in self.inflight and not os.path.lexists(self._scanner().abspath(rel))
        if os.path.isdir(self.root):  # an unmounted disk must not read as "every file gone"
            m = store.forget_vanished_uploaded(self.wall() - after, gone, stop=self.stop)
            if m:
                log.info("Forgot %d row(s) of files uploaded over %s ago and since deleted by something else "
                         "(forget_after)", m, ago)
            n += m
        return n

    def run_cleanup_pass(self) -> Optional[PassResult]:
        """One cleanup pass now, if cleanup is configured; its counters go to ``stats``. A failure is
        logged and returns None (it never changes the exit code); StoreError propagates."""
        if self.cleaner is None or not CleanupSettings.from_config(self._config()).enabled:
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
