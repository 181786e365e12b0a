"""Local cleanup: a local file is deleted (or archived) only once S3 proves, now, that it has it.

One module per part, the pure rules apart from the I/O:

- :func:`decide` is the pure core. Given the stored record, what a folder listing of the bucket
  shows for its key, what ``lstat`` shows of the path now, the time and the settings, it returns a
  :class:`Decision`: remove the file, hold it back (with the reason), queue it for upload again,
  or forget a row whose file is already gone. No I/O, so every rule is a unit test
  (:mod:`.decision`).
- :class:`Cleaner` is the I/O pass. ``run_pass(now)`` does one bounded pass and returns a
  :class:`PassResult` (:mod:`.status`, with what ``status`` prints of it); the daemon's cleanup
  thread only schedules it, and ``once`` calls it once. The act of removing a proven file is
  :mod:`.removal`'s; archiving across filesystems :mod:`.archive`'s; the content proof (MD5 or
  multipart digest of the bytes) :mod:`.digest`'s.

A file is removed only when all of these hold, checked in the pass itself:

1. the state database has it as ``uploaded``, with the size (and MD5/ETag) that was read;
2. S3 lists the object now with that size (and ETag, where comparable). Candidates are grouped by
   their key's folder and each folder is listed with ListObjectsV2, so a pass costs one listing
   per folder (at most ``cleanup_prefix_batch_size`` of them, for at most ``cleanup_batch_size``
   candidates), not one request per file. A row that records the checksum S3 answered at upload
   (``checksum_algorithm``) also needs one HEAD showing that checksum (:func:`checksum_decision`);
3. the file is still the one that was uploaded, proven on the object that is then removed: it is
   renamed to a hidden quarantine name in its own folder, opened once (``O_NOFOLLOW``), and that
   descriptor must show a regular file with the recorded inode, size and mtime, that no process
   holds open for writing, whose bytes hash to the recorded MD5 (or multipart ETag) where one was
   recorded; only then is it unlinked (or archived) by that name, else it gets its name back;
4. the path lies inside the watched tree: its folder is reached by descriptor from the root,
   ``O_DIRECTORY | O_NOFOLLOW`` at every step (:mod:`s3_uploader.tree`), and every rename and
   unlink is relative to that descriptor.

An object that is missing or different queues the file for upload again (a warning); a file changed
since its upload is kept and uploaded again. The database is committed before anything is removed,
and a row is marked removed only after its file is gone, so a crash at any point leaves either the
file or a confirmed object, never neither; a file left under its quarantine name by a crash is put
back or finished by the next pass (see :meth:`.removal.Removal.recover`).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from ..keys import key_folder
from ..remote import ObjectInfo, Remote, RemoteError
from ..store import WAITING_STATES, IllegalTransition, Record, Store, StoreError, display, enc
from ..store.rows import parent
from ..version import safe_rel
from .decision import (ARCHIVE_EXISTS, BUSY, CANNOT_REMOVE, CANNOT_STAT, CHECKSUM_DIFFERS, CHECKSUM_MISSING,
                       CONTENT_DIFFERS, ETAG_DIFFERS, FILE_GONE, FILE_MODIFIED, FORGET, HEAD_FAILED, HOLD, INTERNAL,
                       LIST_FAILED, NOT_DUE, NOT_REGULAR, NOT_UPLOADED, OBJECT_MISSING, OK, OPEN_FOR_WRITING,
                       OUTSIDE_TREE, REMOVE, REQUEUE, SIZE_DIFFERS, CleanupSettings, Decision, LocalState,
                       checksum_decision, decide, etag_matches, is_due, object_problem)
from .removal import META_QUARANTINE, Removal
from .status import (META_BYTES_FREED, META_FILES_FREED, META_LAST_PASS, META_REQUEUED, PassResult, cleanup_lines,
                     cleanup_status, human)

__all__ = ["ARCHIVE_EXISTS", "BUSY", "CANNOT_REMOVE", "CANNOT_STAT", "CHECKSUM_DIFFERS", "CHECKSUM_MISSING",
           "CONTENT_DIFFERS", "HEAD_FAILED", "ETAG_DIFFERS", "FILE_GONE",
           "FILE_MODIFIED", "FORGET", "HOLD", "INTERNAL", "LIST_FAILED", "META_BYTES_FREED", "META_FILES_FREED",
           "META_LAST_PASS", "META_QUARANTINE", "META_REQUEUED", "NOT_DUE", "NOT_REGULAR", "NOT_UPLOADED",
           "OBJECT_MISSING", "OK", "OPEN_FOR_WRITING", "OUTSIDE_TREE", "REMOVE", "REQUEUE", "SIZE_DIFFERS", "Cleaner",
           "CleanupSettings", "Decision", "LocalState", "PassResult", "checksum_decision", "cleanup_lines", "cleanup_status",
           "decide", "etag_matches", "is_due", "object_problem"]

log = logging.getLogger(__name__)


class Cleaner:
    """One cleanup pass at a time over the files under ``root`` that ``store`` records as uploaded.

    ``settings`` is called at the start of every pass (so a reloaded config applies at the next
    pass). Seams, with real defaults: ``free_space(path) -> (total, used, free)`` (shutil.disk_usage),
    ``is_busy(rel)`` (the daemon: an upload of it is in flight), ``is_being_written(path, dev, ino, fresh)``
    (a writer holds it open), ``on_requeue(rel)`` (the daemon: look at it now), ``stop`` (return
    between files when set).

    Removing a file is :class:`~.removal.Removal`'s (``removal``), once this pass has checked it.
    """

    def __init__(self, root: Union[str, os.PathLike], store: Store, remote: Remote, settings: Callable[[], CleanupSettings], *,
                 free_space: Callable[[str], Any] = shutil.disk_usage,
                 is_busy: Optional[Callable[[str], bool]] = None,
                 is_being_written: Optional[Callable[[str, int, int, bool], bool]] = None,
                 on_requeue: Optional[Callable[[str], None]] = None,
                 stop: Optional[threading.Event] = None):
        self.root = str(root)
        self.real_root = os.path.realpath(self.root)
        self.store = store
        self.remote = remote
        self.settings = settings
        self.free_space = free_space
        self.is_busy = is_busy or (lambda rel: False)
        self.is_being_written: Callable[[str, int, int, bool], bool] = (
            is_being_written or (lambda path, dev, ino, fresh: False))
        self.on_requeue = on_requeue or (lambda rel: None)
        self.stop = stop or threading.Event()
        self._cursor: Dict[str, Optional[Tuple[Optional[float], bytes]]] = {"age": None, "space": None}
        self._lock = threading.Lock()  # one pass at a time
        # test seam: called with (moment, rel) at "act" (checked, nothing done yet), "quarantined"
        # (renamed to its hidden name, not yet proven) and "copied" (archive copy made, source not
        # yet re-checked), so a test can change the tree at exactly those moments
        self.at: Callable[[str, str], None] = lambda moment, rel: None
        # the seams are looked up on this cleaner at each call: a test may replace one
        self.removal = Removal(self.root, store, settings, stop=self.stop, is_busy=lambda rel: self.is_busy(rel),
                               is_being_written=lambda *a: self.is_being_written(*a),
                               at=lambda moment, rel: self.at(moment, rel), requeue=self._requeue)

    # -- the pass -----------------------------------------------------------------------------------
    def run_pass(self, now: float) -> PassResult:
        """One bounded pass at wall-clock time ``now``; returns what it did. S3 and file errors of
        single files are held back and logged; StoreError propagates (the database is unusable)."""
        with self._lock:
            s = self.settings()
            res = PassResult(now, dry_run=s.dry_run, action=s.action)
            if not s.dry_run and os.path.isdir(self.root):
                self.removal.recover(s)
            if not s.enabled:
                self._cursor = {"age": None, "space": None}
                return res
            if not os.path.isdir(self.root):
                # an unmounted disk must not read as "every file already gone"
                log.warning("Cleanup: watch directory %s is not available; pass skipped", self.root)
                return res
            short = False
            if s.min_free_space:
                res.total_bytes, res.free_bytes = self._disk()
                res.floor_bytes = s.min_free_space.floor_bytes(res.total_bytes)
                short = res.free_bytes < res.floor_bytes
            if not short:
                self._cursor["space"] = None
            res.mode = "space" if short else ("age" if s.delete_after > 0 else "off")
            if res.mode != "off":
                self._pass(res, s, now)
            if short:
                res.free_bytes_after = self._disk()[1]
                self._check_still_short(res, s)
            self._record(res)
            return res

    def _pass(self, res: PassResult, s: CleanupSettings, now: float) -> None:
        mode = res.mode
        order = "mtime_ns" if mode == "space" else "uploaded_at"
        page = self.store.uploaded_page(order, self._cursor[mode], s.batch_size,
                                        uploaded_before=None if mode == "space" else now - s.delete_after)
        chosen, folders, deferred = _take_batch(page, s.prefix_batch_size)
        listings, failed = self._list(folders, chosen)
        res.folders_listed = len(folders)
        if not s.dry_run:  # where this pass may leave a quarantined file if it stops half-way
            self.removal.note_quarantine(self.removal.leftover | {parent(r.rel) for r in chosen})
        self.store.commit()  # every record acted on below (and that note) is durable before any file goes
        last: Optional[Record] = None
        stopped_early = False
        for rec in chosen:
            if self.stop.is_set() or (mode == "space" and self._enough(res, s)):
                stopped_early = True
                break
            last = rec
            res.examined += 1
            folder = key_folder(_key(rec))
            if folder in failed:
                res.hold(rec.rel, LIST_FAILED, failed[folder])
                continue
            if self.is_busy(rec.rel):
                res.hold(rec.rel, BUSY)
                continue
            try:
                local = self._local(rec.rel)
                d = decide(rec, listings[folder].get(_key(rec)), local, now, s, for_space=(mode == "space"))
                if d.action == REMOVE and rec.checksum:  # one HEAD, only for a row that records a checksum
                    d = self._checksum_proof(rec)
                self._act(rec, local, d, res, s)
            except StoreError:
                raise
            except Exception as exc:  # a bug with one candidate is that candidate's: the pass goes on
                log.exception("Cleanup: internal error with %s (a bug); keeping it, the pass goes on", display(rec.rel))
                res.hold(rec.rel, INTERNAL, f"{type(exc).__name__}: {exc}")
        # the cursor moves past what was examined; at the end of the list the next pass starts over
        at_end = not deferred and len(page) < s.batch_size and not stopped_early
        if at_end:
            self._cursor[mode] = None
        elif last is not None:
            self._cursor[mode] = _cursor_of(last, order)
        res.more = not at_end and (res.freed_files + res.requeued + res.would_free_files > 0 or deferred)
        if not s.dry_run:
            self.removal.note_quarantine(self.removal.leftover)

    def _list(self, folders: Sequence[str], chosen: Sequence[Record]) -> Tuple[Dict[str, Dict[str, ObjectInfo]],
                                                                              Dict[str, str]]:
        """List each folder once; keep only the candidates' objects. A listing stops early once
        every candidate in its folder has been seen (S3 lists in key order, but this does not
        rely on it: an object counts as missing only after a complete listing)."""
        wanted: Dict[str, set] = {f: set() for f in folders}
        for r in chosen:
            wanted[key_folder(_key(r))].add(_key(r))
        listings: Dict[str, Dict[str, ObjectInfo]] = {}
        failed: Dict[str, str] = {}
        for folder in folders:
            if self.stop.is_set():
                failed[folder] = "stopping"
                continue
            found: Dict[str, ObjectInfo] = {}
            try:
                for o in self.remote.list_folder(folder):
                    if o.key in wanted[folder]:
                        found[o.key] = o
                        if len(found) == len(wanted[folder]):
                            break
            except Exception as exc:  # one folder's failure holds its files back; the pass goes on
                reason = " ".join(str(exc).split())[:300]
                log.warning("Cleanup: cannot list s3://%s/%s (%s); its files are kept for now", self.remote.bucket,
                            folder, reason)
                failed[folder] = reason
                continue
            listings[folder] = found
        return listings, failed

    def _checksum_proof(self, rec: Record) -> Decision:
        """The proof's last step for a row that records a checksum: one HEAD asking for the object's
        stored checksum (:func:`~.decision.checksum_decision`); a failed HEAD holds the file."""
        try:
            head = self.remote.head_checksum(_key(rec))
        except RemoteError as exc:
            return Decision(HOLD, HEAD_FAILED, " ".join(str(exc).split())[:300])
        d = checksum_decision(rec, head)
        log.debug("Cleanup: HEAD of %s shows checksum %s, recorded %s: %s", _key(rec),
                  (head.checksum or "none") if head is not None else "(no object)", rec.checksum, d.reason)
        return d

    def _local(self, rel: str) -> LocalState:
        """The path of ``rel`` now, never following a symlink: not inside when the relative path
        leaves the tree or a folder on the way resolves elsewhere (as the scanner requires)."""
        if not safe_rel(rel):
            return LocalState(inside=False, exists=False, regular=False)
        path = self.abspath(rel)
        parts = rel.split("/")
        if len(parts) > 1 and os.path.realpath(os.path.dirname(path)) != os.path.join(self.real_root, *parts[:-1]):
            return LocalState(inside=False, exists=False, regular=False)
        try:
            return LocalState.from_lstat(os.lstat(path))
        except (FileNotFoundError, NotADirectoryError):
            return LocalState(exists=False, regular=False)
        except OSError as exc:
            return LocalState(exists=True, regular=False, error=exc.strerror or str(exc))

    def abspath(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/"))

    # -- acting on a decision -----------------------------------------------------------------------
    def _act(self, rec: Record, local: LocalState, d: Decision, res: PassResult, s: CleanupSettings) -> None:
        rel = rec.rel
        if d.action == HOLD:
            res.hold(rel, d.reason, d.detail)
            log.info("Cleanup: keeping %s (%s%s)", display(rel), d.reason, f": {d.detail}" if d.detail else "")
        elif d.action == REQUEUE:
            self._requeue(rec, local, d, res)
        elif d.action == FORGET:
            self._forget(rec, d, res, s)
        else:
            self._remove(rec, local, res, s)

    def _requeue(self, rec: Record, local: LocalState, d: Decision, res: PassResult) -> None:
        if d.reason == FILE_MODIFIED:
            log.info("File changed since it was uploaded; keeping it and uploading it again: %s", display(rec.rel))
        else:
            log.warning("Not deleting %s: %s (%s); uploading it again", display(rec.rel), d.reason, d.detail)
        try:
            self.store.discover(rec.rel, _key(rec), local.size, local.mtime_ns, local.inode)
        except IllegalTransition:
            return  # the daemon moved it meanwhile (found changed by a scan): it is queued already
        res.requeued += 1
        res.hold(rec.rel, d.reason, d.detail)
        self.on_requeue(rec.rel)

    def _forget(self, rec: Record, d: Decision, res: PassResult, s: CleanupSettings) -> None:
        if s.dry_run:
            return
        if d.detail:
            # S3 does not prove the upload: the row must not read "done", or the file, should it come
            # back with the same signature (moved back, a sub-mount remounted), would never be sent.
            # Dropped instead (uploaded -> pending -> gone): a returning file is a new file.
            log.warning("Local copy of %s is gone and S3 does not prove the upload (%s); forgetting it, so it "
                        "is uploaded should it come back", display(rec.rel), d.detail)
            self.store.add_error(rec.rel, "cleanup", f"local file gone and {d.detail}")
            # only the row examined: the daemon may have taken up a new file at the path meanwhile
            # (its row moved on, maybe in flight), which must keep its row
            if self.store.forget_uploaded(rec.rel, rec.size, rec.mtime_ns, rec.inode):
                res.forgotten += 1
            return
        log.info("Local copy of %s is already gone; S3 has %s", display(rec.rel), rec.key)
        try:
            self.store.mark_removed(rec.rel, "deleted", rec.signature)
            res.forgotten += 1
        except IllegalTransition:
            pass

    def _remove(self, rec: Record, local: LocalState, res: PassResult, s: CleanupSettings) -> None:
        """Hand a proven file to :meth:`~.removal.Removal.remove`, unless it is open for writing, this is
        a dry run (said, and counted), or its row or its file changed since the pass looked."""
        rel, path = rec.rel, self.abspath(rec.rel)
        if self.is_being_written(path, local.dev, local.inode, False):
            res.hold(rel, OPEN_FOR_WRITING)
            log.info("Cleanup: keeping %s (open for writing)", display(rel))
            return
        verb = "archive" if s.action == "archive" else "delete"
        if s.dry_run:
            log.info("Would %s %s (%d bytes; S3 has %s)", verb, display(rel), rec.size, rec.key)
            res.would_free_files += 1
            res.would_free_bytes += rec.size
            return
        # the row and the file must still be the ones just proven (a scan or a writer may have moved on)
        cur = self.store.get(rel)
        if cur is None or cur.state != "uploaded" or cur.signature != rec.signature:
            res.hold(rel, BUSY, "the database row changed during the pass")
            return
        again = self._local(rel)
        if again != local:
            res.hold(rel, FILE_MODIFIED, "changed during the pass")
            return
        self.removal.remove(rec, local, res, s)

    def recover(self, s: Optional[CleanupSettings] = None) -> None:
        """Finish or undo what an interrupted pass left in quarantine (run at the start of every
        pass; callable on its own at start-up): :meth:`~.removal.Removal.recover`."""
        self.removal.recover(s)

    # -- free space ---------------------------------------------------------------------------------
    def _disk(self) -> Tuple[int, int]:
        u = self.free_space(self.root)
        return int(u[0]), int(u[2])

    def _enough(self, res: PassResult, s: CleanupSettings) -> bool:
        """Whether the floor is met: measured now, or estimated from what was freed (a filesystem
        may report freed blocks late; a dry run frees nothing)."""
        assert res.free_bytes is not None and res.floor_bytes is not None
        if not s.dry_run:
            _total, free = self._disk()
            if free >= res.floor_bytes:
                return True
        return res.free_bytes + res.freed_bytes + res.would_free_bytes >= res.floor_bytes

    def _check_still_short(self, res: PassResult, s: CleanupSettings) -> None:
        if self._enough(res, s):
            return
        if self._cursor["space"] is not None:
            log.warning("Free space still below min_free_space (%s free, floor %s); continuing next pass",
                        human(self._disk()[1]), human(res.floor_bytes or 0))
            return
        counts = self.store.counts()
        res.waiting_files = sum(counts[st] for st in WAITING_STATES)
        res.disk_full_of_unuploaded = True
        log.error("Disk space low: %s free on %s, below min_free_space (%s), and no file proven in S3 is left "
                  "to delete; %d file(s) not yet in S3 are never deleted for space (held back: %d)",
                  human(self._disk()[1]), self.root, human(res.floor_bytes or 0), res.waiting_files,
                  res.held_total)

    # -- bookkeeping --------------------------------------------------------------------------------
    def _record(self, res: PassResult) -> None:
        if res.freed_files:
            self.store.add_to_meta_counter(META_FILES_FREED, res.freed_files)
            self.store.add_to_meta_counter(META_BYTES_FREED, res.freed_bytes)
        if res.requeued:
            self.store.add_to_meta_counter(META_REQUEUED, res.requeued)
        self.store.set_meta(META_LAST_PASS, json.dumps(res.to_json()))
        if res.mode != "off" or res.disk_full_of_unuploaded:
            log.info("Cleanup pass (%s%s): %d examined, %d %s (%s), %d held back%s, %d queued to upload again, "
                     "%d folder listing(s)", res.mode, ", dry run" if res.dry_run else "", res.examined,
                     res.would_free_files if res.dry_run else res.freed_files,
                     "would be freed" if res.dry_run else "freed",
                     human(res.would_free_bytes if res.dry_run else res.freed_bytes), res.held_total,
                     (" (" + ", ".join(f"{k}: {v}" for k, v in sorted(res.held.items())) + ")") if res.held else "",
                     res.requeued, res.folders_listed)


def _key(rec: Record) -> str:
    """The key of a row cleanup acts on. Cleanup takes only uploaded rows, and the files table's
    CHECK lets a row lack a key only when parked, deleted or archived."""
    assert rec.key is not None, rec.rel
    return rec.key


def _take_batch(page: Sequence[Record], max_folders: int) -> Tuple[List[Record], List[str], bool]:
    """The leading rows of ``page`` whose keys fall in at most ``max_folders`` folders, the folders
    in first-seen order, and whether rows were left for a later pass."""
    folders: List[str] = []
    seen = set()
    chosen: List[Record] = []
    for r in page:
        f = key_folder(_key(r))
        if f not in seen:
            if len(folders) >= max_folders:
                return chosen, folders, True
            seen.add(f)
            folders.append(f)
        chosen.append(r)
    return chosen, folders, False


def _cursor_of(rec: Record, order: str) -> Tuple[Optional[float], bytes]:
    return (rec.uploaded_at if order == "uploaded_at" else rec.mtime_ns), enc(rec.rel)
