"""Discovery: the first stage of the data flow. Finds the files to upload and hands them on.

A rescan at start and every ``scan_interval`` (the guarantee: whatever events missed, the
next rescan finds), and subtree scans of the folders that events report (a folder created or moved
in raised no events for its files). Each folder's listing is diffed against the database: new
files get a row (pending) and changed ones are discovered again (the store decides their key);
both go to the scheduler through the bounded ``candidates`` queue, so a million new files never sit
in memory. A rescan (full or quick) records the rows of every folder first and hands the files on
afterwards, in upload order (:mod:`s3_uploader.order`: the ``priority`` patterns, then by mtime,
``order`` oldest or newest first), paging through the pending rows in the database (the backlog,
which may be far larger than the queue; :meth:`Discovery.feed_backlog`), so the order holds over
every file waiting, not over the files one listing found; each is stat'ed afresh when handed on. A
subtree scan (a folder an event reported) hands its new files on at once. A rescan is full at
start, when one is requested (events lost, no room for a hint, a reload) and every
``full_scan_interval``; the others are quick: they skip the folders whose entries
are unchanged since a listing that found all their files settled (``scanner.FolderMemo`` says what
that guarantees). After every rescan, waiting rows whose file is gone (or no longer included, or no longer
a regular file) are forgotten, the watch count is checked against the folders walked, and a watch
directory whose symlink was retargeted is said once (ERROR) and turns health red (``root_moved``).

Contract: discovery never uploads, never deletes a local file and never touches a row in flight
(``is_inflight``); a file's error while it is scanned goes to ``set_aside`` (the recorder's
containment) and the scan goes on; a :class:`~s3_uploader.store.StoreError` propagates.
:meth:`Discovery.full_scan` is one pass (the step tests call); :meth:`Discovery.run` is the loop
of the scanner thread.
"""
from __future__ import annotations

import logging
import os
import queue
import stat as stat_mod
import threading
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

from .order import Order, order_of
from .views import Live, Stats
from .runmode import RunMode
from .scanner import FileStat
from .store import Store, dec, display
from .version import REMOVED_STATES, settled
from .watcher import WATCH_LIMIT, inotify_watches, watch_limit


log = logging.getLogger(__name__)

FEED_PAGE = 500  # backlog rows read at once: each page is one short read, nothing is held between pages

# A file at the path of a row in these states is always a new file, even with the row's signature:
# cleanup removed the proven one first, and a file created at once can get its inode back within
# the same timestamp tick (same size, mtime and inode). It is looked at again after the row is read:
# a listing or stat taken before cleanup removed the proven file must not bring that file's row back
# (as pending, to be forgotten when found gone: the row that holds its key, whose object is its only copy)


class Discovery:
    """The scanner thread's work over the tree at ``root``.

    Its collaborators are passed in; those the daemon replaces while it runs (the config and what
    is built from it on a reload, the store opened at start) are read through ``live``
    (:class:`~s3_uploader.views.Live`) where used. ``set_aside(rel, step, exc, st=...)`` is the
    recorder's containment for one file's error; ``is_inflight(rel)`` says whether an upload holds
    the file; ``watching()`` whether filesystem events are on (the watch count is checked only then).
    """

    def __init__(self, root: str, *, live: Live, candidates: "queue.Queue[FileStat]",
                 folder_requests: "queue.Queue[str]", scan_request: threading.Event, stop: threading.Event,
                 wake: threading.Event, scan_done: threading.Event, stats: Stats, heartbeats: Dict[str, float],
                 is_inflight: Callable[[str], bool], set_aside: Callable[..., None], watching: Callable[[], bool],
                 mode: RunMode, clock: Callable[[], float], wall: Callable[[], float]):
        self.root = root
        self.live = live
        self.candidates = candidates
        self.folder_requests = folder_requests
        self.scan_request = scan_request
        self.stop = stop
        self.wake = wake
        self.scan_done = scan_done  # once mode: the single scan has finished
        self.stats = stats
        self.heartbeats = heartbeats
        self._is_inflight = is_inflight
        self._set_aside = set_aside
        self._watching = watching
        self.mode = mode
        self.clock = clock
        self.wall = wall
        self._lost_warned_at = float("-inf")
        self.root_moved: Optional[str] = None  # where the watch directory resolves now, if not where it did
        self._ranked: Optional[Tuple[Store, Order]] = None  # the store's rows ranked by this order's priority
        # a feed of the backlog left off for folder scans, or a folder scan's files not all handed on
        # (the queue full): the backlog is fed again once the folders asked for are scanned
        self._feed_due = False

    def run(self) -> None:
        """The scanner thread: a scan now and every ``scan_interval`` (sooner when one is
        requested), the folders events report in between; in a single pass one scan, then
        ``scan_done``. A scan is full when requested or ``full_scan_interval`` is due, else
        quick. Returns when ``stop`` is set."""
        requested = True  # the first scan lists every folder
        while not self.stop.is_set():
            self.heartbeats["scanner"] = self.clock()
            full = requested or self.live.scanner.memo.full_due(self.clock(), self.live.cfg.watch.full_scan_interval)
            self.full_scan(quick=not full)
            if self.mode.single_pass:
                self.scan_done.set()
                self.wake.set()
                return
            deadline = self.clock() + self.live.cfg.watch.scan_interval
            while not self.stop.is_set():
                self.heartbeats["scanner"] = self.clock()
                self._scan_requested_folders()
                if self._feed_due and self.folder_requests.empty():
                    self._feed_due = False
                    self.feed_backlog()
                left = deadline - self.clock()
                if left <= 0 or self.scan_request.is_set():
                    requested = self.scan_request.is_set()
                    self.scan_request.clear()
                    break
                self.scan_request.wait(min(left, 1.0))

    def _scan_requested_folders(self) -> None:
        seen: Set[str] = set()
        while not self.stop.is_set():
            try:
                rel_dir = self.folder_requests.get_nowait()
            except queue.Empty:
                return
            if rel_dir not in seen:
                seen.add(rel_dir)
                self.scan_folder(rel_dir)

    def full_scan(self, quick: bool = False) -> int:
        """One pass over the whole tree; returns the number of candidate files found. ``quick``: the
        folders the scanner's memo says are unchanged are not listed again."""
        t0, wall0, cpu0 = self.clock(), self.wall(), time.thread_time()
        files = found = folders = 0
        last_dir = None
        self._check_root_target()
        self._use_priority()
        scanner = self.live.scanner  # a reload may swap it: this pass is one scanner's
        scanner.memo.begin_pass(full=not quick)
        for rel_dir, listing in scanner.walk(quick=quick):
            if self.stop.is_set():
                return found
            if rel_dir != last_dir:  # a big folder comes in several slices, one after another
                folders += 1
                last_dir = rel_dir
            files += len(listing)
            found += self.diff_folder(rel_dir, listing, hand_on=False)
            self.heartbeats["scanner"] = self.clock()
        if not self.stop.is_set():
            if not quick:
                scanner.memo.full_done(t0)
            self._sweep_vanished(wall0)
            self._check_watches(folders)
        secs, cpu = self.clock() - t0, time.thread_time() - cpu0
        skipped = scanner.memo.skipped_folders
        files += scanner.memo.skipped_files  # at rest in the folders not listed again
        with self.stats.lock:
            self.stats.scans += 1
            self.stats.last_scan_at = self.wall()
        # the scan's own CPU (this thread's): what each periodic rescan costs the box
        log.debug("Scan: %d files, %d to upload, %.2fs (%.3fs CPU); %s: %d folders, %d not listed again",
                  files, found, secs, cpu, "quick" if quick else "full", folders, skipped)
        if not self.stop.is_set():
            self.feed_backlog()
        return found

    def _use_priority(self) -> None:
        """At the first scan, and at the first after a reload changed ``priority``: rank rows by the
        ``priority`` in force from now on, and rank the waiting rows again by it (this start's config
        may differ from the last run's; rows an event recorded before this scan have the default
        rank). One statement, before the walk records rows."""
        up = self.live.cfg.upload
        order, store = order_of(up.order, up.priority), self.live.store
        if self._ranked is not None and self._ranked[0] is store and self._ranked[1].priority == order.priority:
            return
        self._ranked = (store, order)
        changed = store.rerank(order.rank, order.lowest)
        if changed:
            log.info("Upload priority: %d waiting file(s) ranked again", changed)

    def feed_backlog(self) -> int:
        """Hand every pending row's file to the scheduler in upload order (:mod:`s3_uploader.order`),
        a page of :data:`FEED_PAGE` rows at a time, each stat'ed afresh (the scheduler's first look
        at it: a file is never found ready on a signature read earlier). Blocks while the bounded
        queue is full, as the walk did, so memory holds one page and the queue whatever the backlog.
        Skips files in flight; a file gone or no longer a candidate is left to the sweep. Stops when
        a reload changes the order (the reload's rescan hands the backlog on again in the new one: a
        pass over a large backlog on a slow link may last hours). Returns how many files were
        handed on."""
        up = self.live.cfg.upload
        order = order_of(up.order, up.priority)

        def reordered() -> bool:
            now = self.live.cfg.upload
            return order_of(now.order, now.priority) is not order

        def folders_wait() -> bool:
            # a folder created while the queue stays full (uploads paused by a data budget, a slow
            # link) must still be listed and its files recorded, not wait behind the whole backlog;
            # a single pass has no folder requests, and must hand every file on
            return not self.mode.single_pass and not self.folder_requests.empty()

        def leave() -> bool:
            return reordered() or folders_wait()

        after: Optional[Tuple[int, int, bytes]] = None
        fed = 0
        while not self.stop.is_set() and not leave():
            page = self.live.store.backlog_page(order.newest, after, FEED_PAGE)
            if not page:
                break
            after = page[-1]
            batch: List[FileStat] = []
            for _, _, raw in page:
                rel = dec(raw)
                if self._is_inflight(rel):
                    continue
                try:
                    f = self.live.scanner.stat_one(rel)
                except Exception as exc:
                    self._set_aside(rel, "scanning", exc)
                    continue
                if f is not None:
                    batch.append(f)
            fed += self._hand_on(batch, leave)
            self.heartbeats["scanner"] = self.clock()
        if folders_wait() and not self.stop.is_set() and not reordered():
            self._feed_due = True  # from the start again once they are scanned (what was handed on is skipped)
        return fed

    def _check_root_target(self) -> None:
        """The watch directory (or a folder above it) may be a symlink, resolved once at start: every
        inside-the-tree check compares with that. Retargeted while we run, nothing below it would
        be found any more, silently; so say so (ERROR, once) and turn health red (``root_moved``):
        a restart follows it, and systemd's watchdog restarts us."""
        now = os.path.realpath(self.root)
        moved = None if now == self.live.scanner.real_root else now
        if moved is not None and moved != self.root_moved:
            log.error("Watch directory %s now resolves to %s (it was %s at start): its files are not found until "
                      "the daemon restarts; restart it", self.root, now, self.live.scanner.real_root)
        elif moved is None and self.root_moved is not None:
            log.info("Watch directory %s resolves to %s again", self.root, now)
        self.root_moved = moved

    def events_lost(self, reason: str) -> None:
        """Watchdog's thread heard the kernel drop events (an inotify queue overflow): rescan the
        whole tree now. One WARNING a minute at most; every notice counts in the metric."""
        now = self.clock()
        self.scan_request.set()
        with self.stats.lock:
            self.stats.events_lost[reason] = self.stats.events_lost.get(reason, 0) + 1
            quiet = now - self._lost_warned_at < 60.0
            if not quiet:
                self._lost_warned_at = now
        if not quiet:
            log.warning("Filesystem events were lost (inotify queue overflow); rescanning the whole tree now. "
                        "If this happens often, raise fs.inotify.max_queued_events (now %s)",
                        _read_sysctl("/proc/sys/fs/inotify/max_queued_events"))

    def _check_watches(self, folders: int) -> None:
        """After a full scan: are all ``folders`` it walked watched? watchdog skips a folder it cannot
        watch (the per-user watch limit, permissions) without a word, so count what the kernel
        holds. Says so once when folders go unwatched (and again if more do), with the sysctl."""
        if not self._watching():
            return
        held = inotify_watches()
        if held is None:
            return
        missing = max(0, folders - held)
        with self.stats.lock:
            before, self.stats.unwatched_folders = self.stats.unwatched_folders, missing
            if missing > before:
                self.stats.events_lost[WATCH_LIMIT] = self.stats.events_lost.get(WATCH_LIMIT, 0) + 1
        if missing > before:
            limit = watch_limit()
            log.warning("Filesystem events: %d of %d folders could not be watched (inotify watch limit "
                        "fs.inotify.max_user_watches = %s reached, no permission, or reached through a "
                        "symlink); changes there are found by the rescan every %gs. Raise the limit: "
                        "sysctl -w fs.inotify.max_user_watches=%d",
                        missing, folders, limit if limit is not None else "?", self.live.cfg.watch.scan_interval,
                        max(2 * (limit or 0), 4 * folders, 524288))
        elif before and not missing:
            log.info("Filesystem events: every folder is watched again (%d)", folders)

    def scan_folder(self, rel_dir: str) -> None:
        """Scan one folder's subtree (a folder created or moved in: its files raised no events)."""
        for d, listing in self.live.scanner.walk(rel_dir):
            if self.stop.is_set():
                return
            self.diff_folder(d, listing)

    def diff_folder(self, rel_dir: str, listing: List[FileStat], hand_on: bool = True) -> int:
        """Compare a slice of one folder's files with the database; record what needs uploading and
        (``hand_on``) queue it for the scheduler now. Returns how many need uploading.

        Rows whose file is gone are found by ``_sweep_vanished`` after the full scan, so a folder
        never has to be held whole. A rescan passes ``hand_on=False``: its files are handed on after
        the walk, in upload order (:meth:`feed_backlog`).
        """
        known = self.live.store.signatures_of([f.rel for f in listing])
        new_rows: List[Tuple[str, str, int, int, int]] = []
        todo: List[FileStat] = []
        at_rest = 0  # files already accounted for: a folder of only those may be skipped by quick scans
        for f in listing:
            rec = known.pop(f.rel, None)
            try:
                if rec is None:
                    new_rows.append((f.rel, self.live.keymaker.key_for(f.rel, f.mtime), f.size, f.mtime_ns, f.ino))
                    todo.append(f)
                    continue
                state, sig = rec[0], rec[1:]
                if state in ("pending", "uploading") and sig == f.signature:
                    todo.append(f)
                    continue
                if settled(state, sig, f.signature):
                    at_rest += 1
                    continue  # done, or failed/parked with its retry scheduled
                if self._is_inflight(f.rel):
                    continue  # the upload's own re-check catches the change
                if state in REMOVED_STATES:
                    fresh = self.live.scanner.stat_one(f.rel)  # looked at after the row was read
                    if fresh is None:
                        continue  # the listing saw the file cleanup has removed since: its row stays
                    f = fresh
                if state == "uploaded":
                    log.info("File changed since it was uploaded; will upload again: %s", display(f.rel))
                # a new version of a file in S3 takes the key of its own mtime; a waiting row keeps
                # its key (the store decides which)
                key = self.live.keymaker.key_for(f.rel, f.mtime)
                r = self.live.store.discover(f.rel, key, f.size, f.mtime_ns, f.ino, retry_at=self.collision_retry_at())
                if r.key is None:
                    log.error("%s", r.last_error)
                    continue
                todo.append(f)
            except Exception as exc:
                self._set_aside(f.rel, "scanning", exc, st=f)
        if at_rest < len(listing):
            self.live.scanner.memo.unsettled(rel_dir)
        if new_rows:
            try:
                collided = self.live.store.discover_many(new_rows, retry_at=self.collision_retry_at())
            except Exception as exc:  # not one file's: the slice is set aside, the next rescan tries it again
                self._set_aside(rel_dir or ".", "recording the new files of folder", exc)
                new = {r[0] for r in new_rows}
                collided, todo = [], [f for f in todo if f.rel not in new]
            if collided:
                for r in collided:
                    log.error("%s", r.last_error)
                parked = {r.rel for r in collided}
                todo = [f for f in todo if f.rel not in parked]
        if hand_on:
            # rows recorded: when the queue stays full, the backlog's feed hands the rest on later, in
            # order, and the next folder asked for is not held up behind it
            if self._hand_on(todo, abandon=lambda: not self.mode.single_pass) < len(todo):
                self._feed_due = True
        return len(todo)

    def _hand_on(self, todo: List[FileStat], abandon: Callable[[], bool] = lambda: False) -> int:
        """Queue ``todo`` for the scheduler, waiting (interruptibly) while the queue is full; then
        wake it. Stops early when ``abandon()`` says so (asked while it waits). Returns how many
        were queued."""
        queued = 0
        for f in todo:
            while not self.stop.is_set():
                try:
                    self.candidates.put_nowait(f)
                    queued += 1
                    break
                except queue.Full:
                    self.wake.set()  # the scheduler drains the queue
                try:
                    self.candidates.put(f, timeout=0.5)
                    queued += 1
                    break
                except queue.Full:
                    self.heartbeats["scanner"] = self.clock()
                    if abandon():
                        break
            if self.stop.is_set() or abandon():
                break
        if todo:
            self.wake.set()  # once per slice, not per file
        return queued

    def _sweep_vanished(self, scan_started: float) -> None:
        """Rows still waiting whose file is gone or no longer included (e.g. its folder was removed)."""
        after = b""
        while not self.stop.is_set():
            rows = self.live.store.waiting_page(after=after, limit=500)
            if not rows:
                return
            after = rows[-1][0]
            for raw, discovered_at in rows:
                rel = os.fsdecode(raw)
                if discovered_at >= scan_started or self._is_inflight(rel):
                    continue
                try:
                    self.forget_if_gone(rel)
                except Exception as exc:
                    self._set_aside(rel, "looking for the vanished file", exc)

    def forget_if_gone(self, rel: str) -> None:
        """Forget the waiting row of ``rel`` when there is no file to send at its path any more: it no
        longer matches include/exclude, it is gone, or something that is not a regular file (a FIFO,
        a socket, a folder, a symlink not followed) took its place, so no scan will ever bring that
        row up to date. A path that cannot be looked at now (e.g. a folder without permission) keeps
        its row."""
        if not self.live.filters.file_allowed(rel):
            log.info("File no longer matches include/exclude; not uploading: %s", display(rel))
            self.live.store.forget(rel)
            return
        path = self.live.scanner.abspath(rel)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            log.warning("File vanished before it was uploaded: %s", display(rel))
            self.live.store.forget(rel)
            return
        except OSError:
            return
        if stat_mod.S_ISREG(st.st_mode) or \
                (stat_mod.S_ISLNK(st.st_mode) and self.live.scanner.stat_one(rel) is not None):
            return
        log.warning("File was replaced by something that is not a regular file before it was uploaded; not "
                    "uploading: %s", display(rel))
        self.live.store.forget(rel)

    def collision_retry_at(self) -> float:
        """When a file parked for a collision is checked again: like any parked file (the other
        file may be renamed or gone by then)."""
        return self.wall() + self.live.cfg.upload.parked_retry_interval


def _read_sysctl(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return "?"
