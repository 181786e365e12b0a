"""The act of cleanup: a proven file renamed to a hidden quarantine name in its own folder, proven
there through one descriptor, then unlinked (or archived) by that name; when it is not the proven
version it gets its name back, never over a file that took the name. Every folder is reached by
descriptor from the root without following a symlink (:mod:`s3_uploader.tree`).

A file left under its quarantine name by a crash is put back or finished by the next pass
(:meth:`Removal.recover`): the folders where one may be are noted in the database first.
"""
from __future__ import annotations

import json
import logging
import os
import stat as stat_mod
import threading
from typing import Callable, Optional, Sequence, Set

from .. import tree
from ..store import IllegalTransition, Record, Store, display
from ..store.rows import parent
from ..version import signature_of
from .archive import archive
from .decision import (BUSY, CANNOT_REMOVE, CONTENT_DIFFERS, FILE_MODIFIED, NOT_REGULAR, OPEN_FOR_WRITING,
                       OUTSIDE_TREE, REQUEUE, CleanupSettings, Decision, Keep, LocalState)
from .digest import content_problem
from .status import PassResult

log = logging.getLogger(__name__)

# folders where a quarantined file may be left (a pass in progress, or a name taken): a JSON list
# written (and committed) before the first rename of a pass, and looked through by the next pass
META_QUARANTINE = "cleanup.quarantine_folders"


class Removal:
    """Removes proven files under ``root`` and finishes what an interrupted pass left. The seams are
    the :class:`~s3_uploader.cleanup.Cleaner`'s (see there), passed as callables so that a seam
    replaced on the cleaner applies here too; ``requeue(rec, local, decision, res)`` queues a file
    found changed for upload again."""

    def __init__(self, root: str, store: Store, settings: Callable[[], CleanupSettings], *,
                 stop: threading.Event, is_busy: Callable[[str], bool],
                 is_being_written: Callable[[str, int, int, bool], bool], at: Callable[[str, str], None],
                 requeue: Callable[[Record, LocalState, Decision, PassResult], None]):
        self.root = root
        self.store = store
        self.settings = settings
        self.stop = stop
        self.is_busy = is_busy
        self.is_being_written = is_being_written
        self.at = at
        self.requeue = requeue
        self.leftover: Set[str] = set()  # folders where a quarantined file is left (see _recover)

    def remove(self, rec: Record, local: LocalState, res: PassResult, s: CleanupSettings) -> None:
        """Delete or archive the file of ``rec``, which the pass has just proven (in S3, and ``local``
        at its path), recording what happened in ``res``; the row is marked removed once the file
        is gone. Whatever is found not to be that file is kept (held, or queued again)."""
        rel = rec.rel
        verb = "archive" if s.action == "archive" else "delete"
        self.at("act", rel)
        dirs, name = tree.split_rel(rel)
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
            except Keep as keep:
                self._put_back(folder, qname, name, rel)
                if keep.requeue is not None and self._named(folder, name, keep.requeue):
                    self.requeue(rec, keep.requeue, Decision(REQUEUE, keep.reason, keep.detail), res)
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
        Returns the archive destination, or None when deleted. Raises :class:`Keep` (nothing was
        removed) when it is not that version, is open for writing, or the archive holds another file.

        The proof is made on one open descriptor of the quarantined file: ``fstat`` (a regular file
        with the recorded inode, size and mtime, on the device seen at the check) and, where a digest
        was recorded, the MD5 of its bytes read through that same descriptor
        (:func:`~.digest.content_problem`).
        """
        try:
            fd = folder.open(qname, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError as exc:
            raise Keep(FILE_MODIFIED, f"changed during the pass ({exc.strerror or exc})") from None
        try:
            st = os.fstat(fd)
            if not stat_mod.S_ISREG(st.st_mode):
                raise Keep(NOT_REGULAR, "changed during the pass")
            now = LocalState.from_lstat(st)
            if now.signature != rec.signature or (dev and st.st_dev != dev):
                raise Keep(FILE_MODIFIED, "changed during the pass", requeue=now, level=logging.INFO)
            if self.is_being_written(os.path.join(folder.path, qname), st.st_dev, st.st_ino, True):
                raise Keep(OPEN_FOR_WRITING, "", level=logging.INFO)
            problem = content_problem(fd, rec, s.multipart_chunksize, self.stop)
            if problem is not None:
                raise Keep(CONTENT_DIFFERS, problem, requeue=now)
            dest = archive(folder, qname, fd, st, rec, s, self.stop, self.at) if s.action == "archive" else None
            self._unlink_proven(folder, qname, rec)
            return dest
        finally:
            os.close(fd)

    def _unlink_proven(self, folder: tree.Folder, qname: str, rec: Record) -> None:
        """Unlink the quarantined file, if its row still records what was proven: uploaded, with the
        signature and ETag of ``rec``, and no upload of the path in flight. Checked under the
        store's lock, so no row moves between the check and the unlink: while the file was being
        hashed (seconds, for a large clip) a new file may have appeared at the freed name and been
        recorded, even sent, to the same key; then this one is kept (raises :class:`Keep`)."""
        with self.store.locked():
            cur = self.store.get(rec.rel)
            if (cur is None or cur.state != "uploaded" or cur.signature != rec.signature or cur.etag != rec.etag
                    or self.is_busy(rec.rel)):
                raise Keep(BUSY, "another file took its name and its row meanwhile", level=logging.WARNING)
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
        self.leftover.add(parent(rel))
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

    def recover(self, s: Optional[CleanupSettings] = None) -> None:
        """Finish or undo what an interrupted pass left in quarantine (run at the start of every
        pass; callable on its own at start-up). Cheap when nothing is left: one meta read."""
        s = s or self.settings()
        raw = self.store.meta(META_QUARANTINE)
        try:
            folders = json.loads(raw) if raw else []
        except ValueError:
            folders = []
        self.leftover = set()
        if folders:
            self._recover(folders, s)
            self.note_quarantine(self.leftover)

    def note_quarantine(self, folders: Set[str]) -> None:
        """Record ``folders`` as where a quarantined file may be left (only when that changes)."""
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
                self.leftover.add(rel_dir)
                continue
            try:
                folder = tree.open_folder(self.root, rel_dir.split("/") if rel_dir else [])
            except FileNotFoundError:
                continue  # the folder is gone, and with it anything quarantined in it
            except OSError as exc:
                log.warning("Cleanup: cannot look for interrupted removals in %s (%s)", display(rel_dir) or ".",
                            exc.strerror or exc)
                self.leftover.add(rel_dir)
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
                self.leftover.add(rel_dir)
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
            except (Keep, OSError) as exc:
                self.leftover.add(rel_dir)
                log.warning("Cleanup: kept %s as %s (%s)", display(rel), os.path.join(folder.path, qname), exc)
                return
            try:
                self.store.mark_removed(rel, "archived" if dest else "deleted", rec.signature)
            except IllegalTransition:
                pass  # a newer file's row: its own
            log.info("Cleanup: finished the interrupted removal of %s (S3 has %s)", display(rel), rec.key)
            return
        self.leftover.add(rel_dir)
        log.warning("Cleanup: kept %s as %s: it was being removed when another file took its name, and the "
                    "database no longer records it as uploaded; rename it to upload it", display(rel),
                    os.path.join(folder.path, qname))
