"""Local cleanup: a local file is deleted (or archived) only once S3 proves, now, that it has it.

Two halves, kept apart:

- :func:`decide` is the pure core. Given the stored record, what a folder listing of the bucket
  shows for its key, what ``lstat`` shows of the path now, the time and the settings, it returns a
  :class:`Decision`: remove the file, hold it back (with the reason), queue it for upload again,
  or forget a row whose file is already gone. No I/O, so every rule is a unit test.
- :class:`Cleaner` is the I/O pass. ``run_pass(now)`` does one bounded pass and returns a
  :class:`PassResult`; the daemon's cleanup thread only schedules it, and ``once`` calls it once.

A file is removed only when all of these hold, checked in the pass itself:

1. the state database has it as ``uploaded``, with the size (and MD5/ETag) that was read;
2. S3 lists the object now with that size (and ETag, where comparable). Candidates are grouped by
   their key's folder and each folder is listed with ListObjectsV2, so a pass costs one listing
   per folder (at most ``cleanup_prefix_batch_size`` of them, for at most ``cleanup_batch_size``
   candidates), not one request per file;
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
back or finished by the next pass (see :meth:`Cleaner.recover`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat as stat_mod
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from . import tree
from .config import FreeSpace
from .keys import key_folder
from .remote import ObjectInfo, Remote, clean_etag, multipart_etag
from .version import Signature, mtime_ns_of, safe_rel, signature_of
from .store import WAITING_STATES, IllegalTransition, Record, Store, StoreError, display, enc
from .uploader import part_size_for

log = logging.getLogger(__name__)

# Actions of a Decision.
REMOVE = "remove"  # delete or archive the local copy
HOLD = "hold"  # keep it; look again in a later pass
REQUEUE = "requeue"  # keep it and upload it again
FORGET = "forget"  # the local file is already gone: mark the row removed

# Reasons. Held-back counts in ``status`` are keyed by these.
OK = "proven in S3"
NOT_UPLOADED = "not uploaded"
NOT_DUE = "not yet due"
OBJECT_MISSING = "object missing"
SIZE_DIFFERS = "size differs"
ETAG_DIFFERS = "etag differs"
FILE_MODIFIED = "file modified"
NOT_REGULAR = "not a regular file"
OUTSIDE_TREE = "outside tree"
FILE_GONE = "file gone"
BUSY = "upload in progress"
OPEN_FOR_WRITING = "open for writing"
LIST_FAILED = "S3 listing failed"
ARCHIVE_EXISTS = "archive destination exists"
CANNOT_REMOVE = "cannot remove"
CANNOT_STAT = "cannot stat"
CONTENT_DIFFERS = "content differs"  # same signature, other bytes than the MD5 recorded at upload
INTERNAL = "internal error"  # a bug while handling this candidate (logged with its traceback)

META_FILES_FREED = "cleanup.files_freed"
META_BYTES_FREED = "cleanup.bytes_freed"
META_REQUEUED = "cleanup.requeued"
META_LAST_PASS = "cleanup.last_pass"
# folders where a quarantined file may be left (a pass in progress, or a name taken): a JSON list
# written (and committed) before the first rename of a pass, and looked through by the next pass
META_QUARANTINE = "cleanup.quarantine_folders"
PARTIAL_SUFFIX = ".s3-uploader-partial"  # an archive copy not yet complete
HELD_EXAMPLES = 20  # held files named in the last pass's record (the counts cover all of them)


@dataclass(frozen=True)
class CleanupSettings:
    """The ``[cleanup]`` keys a pass reads; built afresh from the live config at every pass."""

    delete_after: float = 0.0  # seconds; 0 = never by age
    min_free_space: FreeSpace = FreeSpace()
    batch_size: int = 1000
    prefix_batch_size: int = 100
    remove_empty_dirs: bool = True
    dry_run: bool = False
    action: str = "delete"  # or "archive"
    archive_directory: str = ""
    interval: float = 300.0
    multipart_chunksize: int = 16 * 1024 * 1024  # [upload]: to recompute a multipart ETag from the file

    @property
    def enabled(self) -> bool:
        """Whether cleanup has anything to do: an age limit or a free-space floor."""
        return self.delete_after > 0 or bool(self.min_free_space)

    @classmethod
    def from_config(cls, cfg: Any) -> "CleanupSettings":
        c = cfg.cleanup
        return cls(delete_after=c.delete_after or 0.0, min_free_space=c.min_free_space or FreeSpace(),
                   batch_size=c.cleanup_batch_size, prefix_batch_size=c.cleanup_prefix_batch_size,
                   remove_empty_dirs=c.remove_empty_dirs, dry_run=c.cleanup_dry_run, action=c.cleanup_action,
                   archive_directory=c.archive_directory, interval=c.cleanup_interval,
                   multipart_chunksize=cfg.upload.multipart_chunksize)


@dataclass(frozen=True)
class LocalState:
    """What the pass saw at a file's path: whether the path is inside the tree, and its lstat."""

    inside: bool = True
    exists: bool = True
    regular: bool = True
    size: int = 0
    mtime_ns: int = 0
    inode: int = 0
    dev: int = 0
    error: str = ""  # lstat failed for another reason than absence (e.g. permission denied)

    @property
    def signature(self) -> Signature:
        return Signature(self.size, self.mtime_ns, self.inode)

    @classmethod
    def from_lstat(cls, st: os.stat_result) -> "LocalState":
        return cls(True, True, stat_mod.S_ISREG(st.st_mode), st.st_size, mtime_ns_of(st), st.st_ino, st.st_dev)


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str
    detail: str = ""


def is_due(record: Record, now: float, delete_after: float) -> bool:
    """Whether ``delete_after`` has passed since the upload was confirmed (never when it is 0)."""
    return delete_after > 0 and record.uploaded_at is not None and record.uploaded_at + delete_after <= now


def etag_matches(record: Record, listed_etag: str) -> Optional[bool]:
    """Whether the listed ETag proves the recorded upload: True, False, or None when there is
    nothing to compare (the server lists no ETag, or the row records none: then the size decides).

    The upload was proven when it was recorded (see :mod:`s3_uploader.proof`), and the row holds
    the ETag S3 showed for the object then (for a multipart upload and wherever a HEAD was made,
    the HEAD's: what a listing shows). The same ETag listed now proves the same object is still
    there, whatever kind of ETag it is: an MD5, a KMS-encrypted object's opaque value, ``md5-N``,
    or the whole object's MD5 that rclone shows for a multipart object. The recorded MD5 of a
    single PUT proves it too. Anything else is False, never "size alone": an object rewritten with
    the same size must not let a file go (it is uploaded again, which records the ETag the server
    shows; a row recorded before this rule with Complete's ``md5-N``, on a server that lists the
    whole object's MD5, is thus uploaded once more, then proven).
    """
    listed = clean_etag(listed_etag)
    stored = clean_etag(record.etag)
    md5 = (record.md5 or "").lower()
    if not listed or not (stored or md5):
        return None
    return listed == stored or listed == md5


def object_problem(record: Record, listed: Optional[ObjectInfo]) -> Optional[Tuple[str, str]]:
    """Why the listed object does not prove the record, as (reason, detail); None when it does."""
    if listed is None:
        return OBJECT_MISSING, f"s3 key {record.key} is not in the bucket"
    if listed.size != record.size:
        return SIZE_DIFFERS, f"S3 has {listed.size} bytes at {record.key}, {record.size} were uploaded"
    if etag_matches(record, listed.etag) is False:
        return ETAG_DIFFERS, (f"S3's ETag for {record.key} is {clean_etag(listed.etag)}, "
                              f"uploaded {clean_etag(record.etag) or record.md5}")
    return None


def decide(record: Record, listed: Optional[ObjectInfo], local: LocalState, now: float,
           settings: CleanupSettings, *, for_space: bool = False) -> Decision:
    """The whole rule for one file. ``listed`` is the object the folder listing shows for the
    record's key (None when the complete listing does not have it); ``local`` is the path now.
    ``for_space`` means free space is below ``min_free_space``, so ``delete_after`` does not apply.
    """
    if record.state != "uploaded":
        return Decision(HOLD, NOT_UPLOADED, f"state is {record.state}")
    if not for_space and not is_due(record, now, settings.delete_after):
        return Decision(HOLD, NOT_DUE)
    if not local.inside:
        return Decision(HOLD, OUTSIDE_TREE, "a folder on the way is a symlink or the path leaves the tree")
    if local.error:
        return Decision(HOLD, CANNOT_STAT, local.error)
    problem = object_problem(record, listed)
    if not local.exists:
        return Decision(FORGET, FILE_GONE, problem[1] if problem else "")
    if not local.regular:
        return Decision(HOLD, NOT_REGULAR, "the path is now a symlink, folder or special file")
    if local.signature != record.signature:
        return Decision(REQUEUE, FILE_MODIFIED, "size, mtime or inode changed since the upload")
    if problem is not None:
        return Decision(REQUEUE, *problem)
    return Decision(REMOVE, OK)


@dataclass
class PassResult:
    """What one pass did; saved (as JSON) for ``status`` and added to the daemon's counters."""

    at: float
    mode: str = "off"  # "age", "space" or "off"
    dry_run: bool = False
    action: str = "delete"
    examined: int = 0
    folders_listed: int = 0
    freed_files: int = 0
    freed_bytes: int = 0
    would_free_files: int = 0
    would_free_bytes: int = 0
    requeued: int = 0
    forgotten: int = 0
    held: Dict[str, int] = field(default_factory=dict)
    held_examples: List[Dict[str, str]] = field(default_factory=list)
    more: bool = False  # candidates are left that a prompt next pass can take
    total_bytes: Optional[int] = None
    free_bytes: Optional[int] = None  # at the start of the pass
    free_bytes_after: Optional[int] = None
    floor_bytes: Optional[int] = None
    disk_full_of_unuploaded: bool = False
    waiting_files: int = 0

    def hold(self, rel: str, reason: str, detail: str = "") -> None:
        self.held[reason] = self.held.get(reason, 0) + 1
        if len(self.held_examples) < HELD_EXAMPLES:
            self.held_examples.append({"path": display(rel), "reason": reason, "detail": detail})

    @property
    def held_total(self) -> int:
        return sum(self.held.values())

    def to_json(self) -> Dict[str, Any]:
        d = dict(self.__dict__)
        d["held_total"] = self.held_total
        return d


class Cleaner:
    """One cleanup pass at a time over the files under ``root`` that ``store`` records as uploaded.

    ``settings`` is called at the start of every pass (so a reloaded config applies at the next
    pass). Seams, with real defaults: ``free_space(path) -> (total, used, free)`` (shutil.disk_usage),
    ``is_busy(rel)`` (the daemon: an upload of it is in flight), ``is_being_written(path, dev, ino, fresh)``
    (a writer holds it open), ``on_requeue(rel)`` (the daemon: look at it now), ``stop`` (return
    between files when set).

    Removing a file (see :meth:`_remove`): the folder is reached by descriptor from the root without
    following a symlink (:mod:`s3_uploader.tree`), the file is renamed to a hidden quarantine name in
    its own folder, proven there through one descriptor, then unlinked (or archived) by that name;
    when it is not the proven version it gets its name back (never over a file that took the name).
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
        self._leftover: set = set()  # folders where a quarantined file is left (see _recover)
        # test seam: called with (moment, rel) at "act" (checked, nothing done yet), "quarantined"
        # (renamed to its hidden name, not yet proven) and "copied" (archive copy made, source not
        # yet re-checked), so a test can change the tree at exactly those moments
        self.at: Callable[[str, str], None] = lambda moment, rel: None

    # -- the pass -----------------------------------------------------------------------------------
    def run_pass(self, now: float) -> PassResult:
        """One bounded pass at wall-clock time ``now``; returns what it did. S3 and file errors of
        single files are held back and logged; StoreError propagates (the database is unusable)."""
        with self._lock:
            s = self.settings()
            res = PassResult(now, dry_run=s.dry_run, action=s.action)
            if not s.dry_run and os.path.isdir(self.root):
                self.recover(s)
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
            self._note_quarantine(self._leftover | {_parent(r.rel) for r in chosen})
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
            self._note_quarantine(self._leftover)

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
        self.at("act", rel)
        dirs, name = _split(rel)
        try:
            folder = tree.open_folder(self.root, dirs)
        except tree.OutsideTree:
            res.hold(rel, OUTSIDE_TREE, "a folder on the way became a symlink during the pass")
            log.warning("Cleanup: keeping %s: a folder on the way became a symlink or a file", display(rel))
            return
        except OSError as exc:
            res.hold(rel, FILE_MODIFIED if isinstance(exc, FileNotFoundError) else CANNOT_REMOVE,
                     "its folder is gone" if isinstance(exc, FileNotFoundError) else (exc.strerror or str(exc)))
            return
        with folder:
            qname = tree.quarantine_name(name)
            try:
                # from here on the name holds nothing of ours: a writer that recreates or replaces the
                # file now makes a new file, which this pass never touches
                folder.rename(name, qname)
            except OSError as exc:
                gone = isinstance(exc, FileNotFoundError)
                res.hold(rel, FILE_MODIFIED if gone else CANNOT_REMOVE,
                         "gone during the pass" if gone else (exc.strerror or str(exc)))
                if not gone:
                    log.warning("Cleanup: cannot %s %s (%s)", verb, display(rel), exc.strerror or exc)
                return
            self.at("quarantined", rel)
            try:
                dest = self._finish(folder, qname, name, rec, local.dev, s)
            except _Keep as keep:
                self._put_back(folder, qname, name, rel)
                if keep.requeue is not None and self._named(folder, name, keep.requeue):
                    self._requeue(rec, keep.requeue, Decision(REQUEUE, keep.reason, keep.detail), res)
                else:
                    res.hold(rel, keep.reason, keep.detail)
                    log.log(keep.level, "Cleanup: keeping %s (%s%s)", display(rel), keep.reason,
                            f": {keep.detail}" if keep.detail else "")
                return
            except OSError as exc:
                self._put_back(folder, qname, name, rel)
                res.hold(rel, CANNOT_REMOVE, exc.strerror or str(exc))
                log.warning("Cleanup: cannot %s %s (%s)", verb, display(rel), exc.strerror or exc)
                return
            except Exception:  # a bug: the file gets its name back before the pass says so (run_pass's loop)
                self._put_back(folder, qname, name, rel)
                raise
        # the file is gone (or archived) only now that S3 holds it; a crash here leaves the row
        # 'uploaded' and the next pass finds the file gone and the object present
        try:
            self.store.mark_removed(rel, "archived" if dest else "deleted", rec.signature)
        except IllegalTransition:
            # a new file took the name meanwhile and the daemon recorded it (the row is that file's
            # now, to be uploaded to its key): the proven one is removed all the same
            log.info("Cleanup: %s's row has moved on to a new file at its path; that file is kept", display(rel))
        res.freed_files += 1
        res.freed_bytes += rec.size
        if dest:
            log.info("Archived %s (%d bytes; S3 has %s)", display(rel), rec.size, rec.key)
        else:
            log.info("Deleted local copy of %s (%d bytes; S3 has %s)", display(rel), rec.size, rec.key)
        if s.remove_empty_dirs:
            self._remove_empty_parents(rel)

    def _finish(self, folder: tree.Folder, qname: str, name: str, rec: Record, dev: Optional[int],
                s: CleanupSettings) -> Optional[str]:
        """Prove that the file now at ``qname`` is the version S3 holds, then delete or archive it.
        Returns the archive destination, or None when deleted. Raises :class:`_Keep` (nothing was
        removed) when it is not that version, is open for writing, or the archive holds another file.

        The proof is made on one open descriptor of the quarantined file: ``fstat`` (a regular file
        with the recorded inode, size and mtime, on the device seen at the check) and, where a digest
        was recorded, the MD5 of its bytes read through that same descriptor (see :func:`_content_problem`).
        """
        try:
            fd = folder.open(qname, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError as exc:
            raise _Keep(FILE_MODIFIED, f"changed during the pass ({exc.strerror or exc})") from None
        try:
            st = os.fstat(fd)
            if not stat_mod.S_ISREG(st.st_mode):
                raise _Keep(NOT_REGULAR, "changed during the pass")
            now = LocalState.from_lstat(st)
            if now.signature != rec.signature or (dev and st.st_dev != dev):
                raise _Keep(FILE_MODIFIED, "changed during the pass", requeue=now, level=logging.INFO)
            if self.is_being_written(os.path.join(folder.path, qname), st.st_dev, st.st_ino, True):
                raise _Keep(OPEN_FOR_WRITING, "", level=logging.INFO)
            problem = _content_problem(fd, rec, s.multipart_chunksize, self.stop)
            if problem is not None:
                raise _Keep(CONTENT_DIFFERS, problem, requeue=now)
            if s.action == "archive":
                return self._archive(folder, qname, fd, st, rec, s)
            self._unlink_proven(folder, qname, rec)
            return None
        finally:
            os.close(fd)

    def _unlink_proven(self, folder: tree.Folder, qname: str, rec: Record) -> None:
        """Unlink the quarantined file, if its row still records what was proven: uploaded, with the
        signature and ETag of ``rec``, and no upload of the path in flight. Checked under the
        store's lock, so no row moves between the check and the unlink: while the file was being
        hashed (seconds, for a large clip) a new file may have appeared at the freed name and been
        recorded, even sent, to the same key; then this one is kept (raises :class:`_Keep`)."""
        with self.store.locked():
            cur = self.store.get(rec.rel)
            if (cur is None or cur.state != "uploaded" or cur.signature != rec.signature or cur.etag != rec.etag
                    or self.is_busy(rec.rel)):
                raise _Keep(BUSY, "another file took its name and its row meanwhile", level=logging.WARNING)
            folder.unlink(qname)

    def _put_back(self, folder: tree.Folder, qname: str, name: str, rel: str) -> None:
        """Give the quarantined file its name back, never over a file that took the name meanwhile;
        then it stays under ``qname`` (a WARNING), and every later pass tries again."""
        try:
            folder.rename_noreplace(qname, name)
            return
        except FileExistsError:
            why = "another file took its name meanwhile"
        except OSError as exc:
            why = exc.strerror or str(exc)
        self._leftover.add(_parent(rel))
        log.warning("Cleanup: kept %s as %s (%s); it is looked at again at every pass",
                    display(rel), os.path.join(folder.path, qname), why)

    @staticmethod
    def _named(folder: tree.Folder, name: str, local: LocalState) -> bool:
        """Whether ``name`` in ``folder`` is now the file described by ``local``."""
        try:
            st = folder.lstat(name)
        except OSError:
            return False
        return signature_of(st) == local.signature

    def _archive(self, folder: tree.Folder, qname: str, fd: int, st: os.stat_result, rec: Record,
                 s: CleanupSettings) -> str:
        """Move the proven file (``qname`` in ``folder``, open as ``fd``) to ``archive_directory/rel``
        without ever replacing a file there, then remove it from the tree. Returns the destination.

        On one filesystem: a hard link, checked to be the same inode, then the unlink. Across
        filesystems: a copy read from ``fd`` into a temporary name, fsynced, its MD5 compared with the
        recorded one (when one is recorded), the source re-checked by descriptor and by name after
        the copy, the copy linked into place; only then the source goes. Every folder created on the
        way and the destination folder are fsynced before the source is removed. At every moment the
        bytes exist under the watched tree, in the archive, or both.
        """
        dirs, name = _split(rec.rel)
        dest_path = os.path.join(s.archive_directory, *rec.rel.split("/"))
        with tree.open_folder(s.archive_directory, dirs, create=True) as dest:
            try:
                there = dest.lstat(name)
            except FileNotFoundError:
                there = None
            if there is not None:
                if not _same_content(fd, st, dest, name, there):
                    raise _Keep(ARCHIVE_EXISTS, "a different file is already there", level=logging.WARNING)
                # an earlier pass put it there and stopped before removing the original
            elif not self._link_into(folder, qname, dest, name, st):
                self._copy_into(fd, st, rec, dest, name, s, folder, qname)
            dest.fsync()
        self._unlink_proven(folder, qname, rec)
        return dest_path

    @staticmethod
    def _link_into(folder: tree.Folder, qname: str, dest: tree.Folder, name: str, st: os.stat_result) -> bool:
        """Hard-link the quarantined file as ``name`` in ``dest``; False when links cannot be made
        there (another filesystem, or none supported). Never replaces: FileExistsError is a _Keep."""
        try:
            if folder.fd is not None and dest.fd is not None:
                os.link(qname, name, src_dir_fd=folder.fd, dst_dir_fd=dest.fd, follow_symlinks=False)
            else:
                os.link(os.path.join(folder.path, qname), os.path.join(dest.path, name))
        except FileExistsError:
            raise _Keep(ARCHIVE_EXISTS, "a different file is already there", level=logging.WARNING) from None
        except OSError:
            return False
        linked = dest.lstat(name)
        if (linked.st_dev, linked.st_ino) != (st.st_dev, st.st_ino):  # the quarantine name was swapped
            dest.unlink(name)
            raise _Keep(FILE_MODIFIED, "changed during the pass")
        return True

    def _copy_into(self, fd: int, st: os.stat_result, rec: Record, dest: tree.Folder, name: str,
                   s: CleanupSettings, folder: tree.Folder, qname: str) -> None:
        tmp = name + PARTIAL_SUFFIX
        if len(os.fsencode(tmp)) > tree.NAME_MAX:
            tmp = tree.quarantine_name("")
        try:
            dest.unlink(tmp)  # a copy an earlier pass left unfinished: ours, never published
        except FileNotFoundError:
            pass
        out = dest.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                digest = _copy_fd(fd, out, st.st_size, rec, s.multipart_chunksize, self.stop)
                if sys.platform != "win32":  # no fchmod there
                    os.fchmod(out, stat_mod.S_IMODE(st.st_mode))
                if os.utime in os.supports_fd:
                    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
                os.fsync(out)
            finally:
                os.close(out)
            if os.name == "nt":
                os.utime(os.path.join(dest.path, tmp), ns=(st.st_atime_ns, st.st_mtime_ns))
            want = _recorded_digest(rec, st.st_size, s.multipart_chunksize)
            if digest is None:
                raise _Keep(FILE_MODIFIED, "changed while it was copied to the archive")
            if want is not None and digest != want[0]:
                raise _Keep(CONTENT_DIFFERS, f"the archive copy's MD5 is {digest}, {want[0]} was uploaded",
                            requeue=LocalState.from_lstat(st))
            self.at("copied", rec.rel)
            after = os.fstat(fd)
            try:
                named = folder.lstat(qname)
            except FileNotFoundError:
                named = None
            sig = (st.st_ino, st.st_size, st.st_mtime_ns)
            if (after.st_ino, after.st_size, after.st_mtime_ns) != sig or named is None or \
                    (named.st_ino, named.st_size, named.st_mtime_ns) != sig:
                raise _Keep(FILE_MODIFIED, "changed while it was copied to the archive",
                            requeue=LocalState.from_lstat(after), level=logging.INFO)
            try:
                tree.move_noreplace(dest, tmp, dest, name)
            except FileExistsError:
                raise _Keep(ARCHIVE_EXISTS, "a different file is already there", level=logging.WARNING) from None
        except BaseException:
            try:
                dest.unlink(tmp)
            except OSError:
                pass
            raise

    def _remove_empty_parents(self, rel: str) -> None:
        """Remove the folders that holding ``rel`` left empty, deepest first; never the root. Each is
        removed by name in its parent, reached by descriptor: never a folder outside the tree."""
        parts = rel.split("/")[:-1]
        while parts:
            try:
                with tree.open_folder(self.root, parts[:-1]) as parent:
                    parent.rmdir(parts[-1])
            except OSError:
                return  # not empty (or not ours to remove): the folders above are not empty either
            log.info("Removed empty folder %s", display("/".join(parts)))
            parts.pop()

    # -- quarantined files left by an interrupted pass ------------------------------------------------
    def recover(self, s: Optional[CleanupSettings] = None) -> None:
        """Finish or undo what an interrupted pass left in quarantine (run at the start of every
        pass; callable on its own at start-up). Cheap when nothing is left: one meta read."""
        s = s or self.settings()
        raw = self.store.meta(META_QUARANTINE)
        try:
            folders = json.loads(raw) if raw else []
        except ValueError:
            folders = []
        self._leftover = set()
        if folders:
            self._recover(folders, s)
            self._note_quarantine(self._leftover)

    def _note_quarantine(self, folders: "set") -> None:
        value = json.dumps(sorted(folders))
        if (self.store.meta(META_QUARANTINE) or "[]") != value:
            self.store.set_meta(META_QUARANTINE, value)

    def _recover(self, folders: Sequence[str], s: CleanupSettings) -> None:
        """Look in ``folders`` for files a pass renamed to a quarantine name and did not finish
        (a crash, or a name taken): each gets its name back when it is free (the next pass proves it
        again); when the name is taken, a file whose row still records it as uploaded (so the pass
        had proven it) is finished, and any other is kept under its hidden name with a WARNING.
        Folders where something is left stay in ``_leftover`` for the next pass."""
        for rel_dir in folders:
            if self.stop.is_set():
                self._leftover.add(rel_dir)
                continue
            try:
                folder = tree.open_folder(self.root, rel_dir.split("/") if rel_dir else [])
            except FileNotFoundError:
                continue  # the folder is gone, and with it anything quarantined in it
            except OSError as exc:
                log.warning("Cleanup: cannot look for interrupted removals in %s (%s)", display(rel_dir) or ".",
                            exc.strerror or exc)
                self._leftover.add(rel_dir)
                continue
            with folder:
                for qname in folder.listdir():
                    if tree.is_quarantine_name(qname):
                        self._recover_one(folder, rel_dir, qname, s)

    def _recover_one(self, folder: tree.Folder, rel_dir: str, qname: str, s: CleanupSettings) -> None:
        try:
            st = folder.lstat(qname)
        except FileNotFoundError:
            return
        if not stat_mod.S_ISREG(st.st_mode):
            return
        sig = signature_of(st)
        name = tree.original_name(qname)
        if name is None:  # a name too long to embed: the row in this folder with its signature
            name = next((r.rel.rsplit("/", 1)[-1] for r in self.store.in_dir(rel_dir).values()
                         if r.signature == sig), None)
            if name is None:
                self._leftover.add(rel_dir)
                log.warning("Cleanup: %s was left by an interrupted removal and matches no file; kept",
                            os.path.join(folder.path, qname))
                return
        rel = f"{rel_dir}/{name}" if rel_dir else name
        try:
            there = folder.lstat(name)
        except FileNotFoundError:
            there = None
        if there is not None and (there.st_dev, there.st_ino) == (st.st_dev, st.st_ino):
            folder.unlink(qname)  # a put-back by link + unlink that stopped half-way
            return
        if there is None:
            try:
                folder.rename_noreplace(qname, name)
                log.info("Cleanup: put %s back after an interrupted removal", display(rel))
                return
            except OSError:
                pass
        rec = self.store.get(rel)
        if rec is not None and rec.state == "uploaded" and rec.signature == sig:
            try:
                dest = self._finish(folder, qname, name, rec, None, s)
            except (_Keep, OSError) as exc:
                self._leftover.add(rel_dir)
                log.warning("Cleanup: kept %s as %s (%s)", display(rel), os.path.join(folder.path, qname), exc)
                return
            try:
                self.store.mark_removed(rel, "archived" if dest else "deleted", rec.signature)
            except IllegalTransition:
                pass  # a newer file's row: its own
            log.info("Cleanup: finished the interrupted removal of %s (S3 has %s)", display(rel), rec.key)
            return
        self._leftover.add(rel_dir)
        log.warning("Cleanup: kept %s as %s: it was being removed when another file took its name, and the "
                    "database no longer records it as uploaded; rename it to upload it", display(rel),
                    os.path.join(folder.path, qname))

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
                        _human(self._disk()[1]), _human(res.floor_bytes or 0))
            return
        counts = self.store.counts()
        res.waiting_files = sum(counts[st] for st in WAITING_STATES)
        res.disk_full_of_unuploaded = True
        log.error("Disk space low: %s free on %s, below min_free_space (%s), and no file proven in S3 is left "
                  "to delete; %d file(s) not yet in S3 are never deleted for space (held back: %d)",
                  _human(self._disk()[1]), self.root, _human(res.floor_bytes or 0), res.waiting_files,
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
                     _human(res.would_free_bytes if res.dry_run else res.freed_bytes), res.held_total,
                     (" (" + ", ".join(f"{k}: {v}" for k, v in sorted(res.held.items())) + ")") if res.held else "",
                     res.requeued, res.folders_listed)


def cleanup_status(store: Store) -> Dict[str, Any]:
    """What ``status`` shows of cleanup: totals so far and the last pass (None before the first)."""
    raw = store.meta(META_LAST_PASS)
    try:
        last = json.loads(raw) if raw else None
    except ValueError:
        last = None
    return {
        "files_freed": int(store.meta(META_FILES_FREED, "0") or 0),
        "bytes_freed": int(store.meta(META_BYTES_FREED, "0") or 0),
        "requeued": int(store.meta(META_REQUEUED, "0") or 0),
        "last_pass": last,
    }


def cleanup_lines(c: Dict[str, Any]) -> List[str]:
    """The text ``status`` prints for :func:`cleanup_status`'s data (nothing before a first pass)."""
    last = c.get("last_pass")
    if not last and not c["files_freed"]:
        return []
    lines = [f"Cleanup: {c['files_freed']:,} file(s), {_human(c['bytes_freed'])} freed so far; "
             f"{c['requeued']:,} queued to upload again (object missing or different, or file changed)"]
    if last:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["at"]))
        if last.get("dry_run"):
            done = f"would free {last['would_free_files']} file(s), {_human(last['would_free_bytes'])} (dry run)"
        else:
            done = f"freed {last['freed_files']} file(s), {_human(last['freed_bytes'])}"
        lines.append(f"  last pass {when} ({last['mode']}): examined {last['examined']}, {done}, "
                     f"held back {last['held_total']}")
        for reason, n in sorted(last.get("held", {}).items()):
            lines.append(f"    held back, {reason}: {n}")
        for h in last.get("held_examples", [])[:10]:
            lines.append(f"      {h['path']}: {h['reason']}" + (f" ({h['detail']})" if h.get("detail") else ""))
        if last.get("disk_full_of_unuploaded"):
            free = last.get("free_bytes_after", last["free_bytes"]) or 0
            lines.append(f"  WARNING: free space {_human(free)} is below min_free_space "
                         f"({_human(last['floor_bytes'] or 0)}) and nothing proven in S3 is left to delete: "
                         f"{last['waiting_files']} file(s) are waiting for upload and are never deleted for space")
    return lines


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


def _split(rel: str) -> Tuple[List[str], str]:
    parts = rel.split("/")
    return parts[:-1], parts[-1]


def _parent(rel: str) -> str:
    return rel.rsplit("/", 1)[0] if "/" in rel else ""


class _Keep(Exception):
    """The quarantined file is not removed: it goes back to its name and is held (or, with
    ``requeue``, the LocalState of what is there, queued to upload again)."""

    def __init__(self, reason: str, detail: str = "", requeue: Optional[LocalState] = None,
                 level: int = logging.WARNING):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail, self.requeue, self.level = reason, detail, requeue, level


_BUF = 1024 * 1024


def _recorded_digest(rec: Record, size: int, chunksize: int) -> Optional[Tuple[str, Optional[int]]]:
    """What the bytes of the uploaded version hash to, as (hex digest, part size): the MD5 recorded by
    a single PUT (part size None), or a multipart upload's digest (MD5 of the parts' MD5s, "-N":
    recorded as its md5; rows recorded before that have it as their ETag) when this file's size and
    the configured chunk size give its part count (the part size is not recorded). None: nothing to
    compare (then the signature alone decides, as before)."""
    md5 = (rec.md5 or "").lower()
    if md5 and "-" not in md5:
        return md5, None
    etag = md5 or clean_etag(rec.etag)
    if "-" in etag:
        try:
            count = int(etag.rsplit("-", 1)[1])
        except ValueError:
            return None
        part = part_size_for(size, chunksize)
        if size > 0 and -(-size // part) == count:
            return etag, part
    return None


def _digest(fd: int, size: int, part: Optional[int], stop: threading.Event, out: Optional[int] = None) -> Optional[str]:
    """The MD5 (``part`` None) or multipart ETag of the first ``size`` bytes read through ``fd``,
    copied to ``out`` too when given. None when the file is shorter; _Keep when ``stop`` is set."""
    whole = hashlib.md5()
    parts: List[bytes] = []
    cur = hashlib.md5()
    in_part = off = 0
    while off < size:
        if stop.is_set():
            raise _Keep(BUSY, "stopping")
        n = min(_BUF, size - off, (part - in_part) if part else _BUF)
        b = _pread(fd, n, off)
        if not b:
            return None
        if out is not None:
            view = memoryview(b)
            while view:
                view = view[os.write(out, view):]
        (cur if part else whole).update(b)
        off += len(b)
        in_part += len(b)
        if part and in_part == part:
            parts.append(cur.digest())
            cur, in_part = hashlib.md5(), 0
    if part:
        if in_part:
            parts.append(cur.digest())
        return multipart_etag(parts)
    return whole.hexdigest()


def _read_at(fd: int, n: int, off: int) -> bytes:  # pragma: no cover - Windows has no pread
    os.lseek(fd, off, os.SEEK_SET)
    return os.read(fd, n)


_pread = getattr(os, "pread", _read_at)


def _content_problem(fd: int, rec: Record, chunksize: int, stop: threading.Event) -> Optional[str]:
    """Why the bytes behind ``fd`` are not the ones uploaded, or None when they are (or cannot be
    compared: no digest recorded). Closes the gap the signature leaves (no st_dev, no ctime: a
    reused inode, or a rewrite that restored size and mtime, would pass it)."""
    want = _recorded_digest(rec, rec.size, chunksize)
    if want is None:
        return None
    got = _digest(fd, rec.size, want[1], stop)
    if got is None:
        return "shorter than recorded"
    if got != want[0]:
        return f"its bytes hash to {got}, {want[0]} was uploaded"
    return None


def _copy_fd(fd: int, out: int, size: int, rec: Record, chunksize: int, stop: threading.Event) -> Optional[str]:
    """Copy ``size`` bytes from ``fd`` to ``out``; returns the digest (kind as recorded) of what was copied."""
    want = _recorded_digest(rec, size, chunksize)
    return _digest(fd, size, want[1] if want else None, stop, out)


def _same_content(fd: int, st: os.stat_result, folder: tree.Folder, name: str, there: os.stat_result) -> bool:
    """Whether ``name`` in ``folder`` (lstat ``there``) is the file open as ``fd`` or a regular file
    with the same bytes."""
    if (there.st_dev, there.st_ino) == (st.st_dev, st.st_ino):
        return True
    if not stat_mod.S_ISREG(there.st_mode) or there.st_size != st.st_size:
        return False
    other = folder.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        off = 0
        while off < st.st_size:
            a, b = _pread(fd, _BUF, off), _pread(other, _BUF, off)
            if a != b or not a:
                return False
            off += len(a)
        return True
    finally:
        os.close(other)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
