"""Walking the watched tree: which entries are candidate files, found without opening anything.

The scanner only reads folder listings and stats. It never opens a file, so FIFOs, sockets and
devices cannot block it; they are reported once and skipped. Symlinks are skipped unless
``follow_symlinks`` is set, and even then a link that resolves outside the watched tree (or back
into a folder already being walked) is reported and not followed.

A quick pass (``walk(quick=True)``) skips the folders whose entries have not changed: see
:class:`FolderMemo` for the rule and what it guarantees.
"""
from __future__ import annotations

import logging
import os
import stat as stat_mod
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Set, Tuple

from .keys import Filters
from .tree import is_quarantine_name
from .version import Signature, is_inside, mtime_ns_of

log = logging.getLogger(__name__)


class FileStat(NamedTuple):
    """What a stat says of one candidate file; ``signature`` is what stability and change compare.

    A NamedTuple: the scanner makes one per file on every rescan, and a tuple is the cheapest
    immutable record Python has (a frozen dataclass costs three times as much to build).
    """

    rel: str  # '/'-separated path relative to the watched directory
    size: int
    mtime_ns: int
    ino: int
    dev: int

    @property
    def signature(self) -> Signature:
        return Signature(self.size, self.mtime_ns, self.ino)

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9

    @classmethod
    def from_stat(cls, rel: str, st: os.stat_result) -> "FileStat":
        return cls(rel, st.st_size, mtime_ns_of(st), st.st_ino, st.st_dev)


_KIND = {stat_mod.S_IFIFO: "a FIFO", stat_mod.S_IFSOCK: "a socket", stat_mod.S_IFCHR: "a character device",
         stat_mod.S_IFBLK: "a block device"}


class Reporter:
    """Logs a skipped entry once per (path, reason), so rescans do not repeat themselves.

    Bounded: after ``limit`` distinct entries it forgets and starts over, which only means a line
    may be repeated, never that memory grows without end.
    """

    def __init__(self, limit: int = 10000):
        self._seen: Set[Tuple[str, str]] = set()
        self._limit = limit

    def __call__(self, level: int, rel: str, reason: str) -> None:
        k = (rel, reason)
        if k in self._seen:
            return
        if len(self._seen) >= self._limit:
            self._seen.clear()
        self._seen.add(k)
        log.log(level, "%s: %s", reason, rel)


# A folder's mtime must be this much older than the stat that read it before the folder may be skipped:
# a file created just after that stat, within the same timestamp tick (1-2 s on FAT and on some network
# shares, a jiffy on Linux, whose file times also lag the clock by up to one), could leave the mtime as
# it was. Such a folder is simply listed again at the next pass, when its mtime has aged.
RACY_NS = 2_000_000_000

# (rel, abs path, st_dev, st_ino) of a subfolder to walk
Subdir = Tuple[str, str, int, int]


class FolderStamp(NamedTuple):
    """A folder as its last complete listing left it: its own stat, and what the listing found."""

    stat: Tuple[int, int, int, int]  # (mtime_ns, ctime_ns, ino, dev) of the folder itself
    files: int
    subdirs: Tuple[Subdir, ...]


def _folder_stat(st: os.stat_result) -> Tuple[int, int, int, int]:
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


class FolderMemo:
    """What a quick pass may skip: the folders whose entries are the same as at a listing that left
    nothing to do in them.

    A folder is remembered after a complete listing (no entry it could not read) in which every file
    was found settled (no :meth:`unsettled` call for it while it was listed) and whose mtime was over
    ``RACY_NS`` older than that listing. A quick pass stats every folder (one stat each) and does not
    list one whose (mtime, ctime, inode, device) are unchanged: it walks the subfolders remembered.
    Creating, deleting or renaming an entry changes its folder's mtime (ext4, xfs, btrfs, tmpfs, NFS,
    and NTFS on Windows), so such a folder is listed. Editing a file in place does not: that is found
    by the event about it (a hint: the scheduler stats the file itself, which makes its folder
    :meth:`unsettled`) or, if the event was lost, at the next full pass, which lists every folder
    (``full_scan_interval``). A full pass forgets every stamp first, so stamps of folders gone are
    dropped. Thread-safe: :meth:`unsettled` is called from the scheduler's thread too.
    """

    def __init__(self, wall_ns: Callable[[], int] = time.time_ns):
        self.wall_ns = wall_ns
        self._lock = threading.Lock()
        self._stamps: Dict[str, FolderStamp] = {}
        self._listing: Dict[str, bool] = {}  # folder being listed -> still settled
        self.full_at: Optional[float] = None  # clock reading when the last complete full pass started
        self.skipped_folders = self.skipped_files = 0  # of the current (or last) pass

    def full_due(self, now: float, interval: float) -> bool:
        """Whether the pass at clock reading ``now`` must be full: none yet, ``interval`` 0, or the
        last full pass started ``interval`` or more ago."""
        return interval <= 0 or self.full_at is None or now - self.full_at >= interval

    def begin_pass(self, full: bool) -> None:
        """A pass over the whole tree starts; a full one forgets every stamp (it lists every folder)."""
        with self._lock:
            self.skipped_folders = self.skipped_files = 0
            if full:
                self._stamps.clear()

    def full_done(self, started: float) -> None:
        """A full pass that started at clock reading ``started`` walked the whole tree."""
        self.full_at = started

    def unsettled(self, rel_dir: str) -> None:
        """Something in folder ``rel_dir`` needs looking at that its own stat may not show (a file
        to upload, a file looked at by itself): list it again at the next pass."""
        with self._lock:
            self._stamps.pop(rel_dir, None)
            if rel_dir in self._listing:
                self._listing[rel_dir] = False

    def unchanged(self, rel_dir: str, st: os.stat_result) -> Optional[FolderStamp]:
        """The stamp of ``rel_dir`` if its stat ``st`` is still the one remembered, else None."""
        with self._lock:
            known = self._stamps.get(rel_dir)
            if known is None or known.stat != _folder_stat(st):
                return None
            self.skipped_folders += 1
            self.skipped_files += known.files
            return known

    def begin(self, rel_dir: str) -> None:
        """The listing of ``rel_dir`` starts: forget its stamp; it is settled until said otherwise."""
        with self._lock:
            self._stamps.pop(rel_dir, None)
            self._listing[rel_dir] = True

    def finish(self, rel_dir: str, st: os.stat_result, read_at_ns: int, files: int,
               subdirs: Tuple[Subdir, ...], complete: bool) -> None:
        """The listing of ``rel_dir`` that began with stat ``st`` taken at ``read_at_ns`` has been
        diffed: remember it if it may be skipped next time."""
        with self._lock:
            settled = self._listing.pop(rel_dir, False)
            if complete and settled and st.st_mtime_ns < read_at_ns - RACY_NS:
                self._stamps[rel_dir] = FolderStamp(_folder_stat(st), files, subdirs)


class Scanner:
    """Lists candidate files under ``root``, folder by folder.

    ``root`` is resolved once; every path followed must stay inside that real path. ``memo`` is
    what quick passes skip (a new Scanner, e.g. after a reload, starts with none: its first pass
    lists every folder).
    """

    def __init__(self, root: Path, filters: Filters, follow_symlinks: bool = False,
                 report: Optional[Callable[[int, str, str], None]] = None, memo: Optional[FolderMemo] = None):
        self.root = Path(root)
        self.real_root = os.path.realpath(self.root)
        self.filters = filters
        self.follow_symlinks = follow_symlinks
        self.report = report or Reporter()
        self.chunk = 500
        self.memo = memo or FolderMemo()
        self._prefix = os.path.join(str(self.root), "")  # root with one trailing separator

    # -- one path (for event hints) ----------------------------------------------------------
    def stat_one(self, rel: str) -> Optional[FileStat]:
        """The FileStat of ``rel`` if it is a candidate file now, else None (gone, filtered, not regular).

        A file looked at by itself (an event, a check) may have changed in a way its folder's stat
        does not show, so its folder is listed again at the next quick pass."""
        if not rel or rel.startswith("../") or not self.filters.file_allowed(rel) or \
                is_quarantine_name(rel.rsplit("/", 1)[-1]):
            return None
        path = os.path.join(self.root, *rel.split("/"))
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if stat_mod.S_ISLNK(st.st_mode):
            if not self.follow_symlinks:
                return None
            resolved = self.resolve_inside(path)
            if resolved is None:
                return None
            try:
                st = os.stat(resolved)
            except OSError:
                return None
        if not stat_mod.S_ISREG(st.st_mode):
            return None
        # every folder on the way must also be inside the tree (a folder swapped for a link is refused)
        if not self.follow_symlinks and "/" in rel:
            parent = os.path.dirname(path)
            if os.path.realpath(parent) != os.path.join(self.real_root, *rel.split("/")[:-1]):
                return None
        self.memo.unsettled(rel.rpartition("/")[0])
        return FileStat.from_stat(rel, st)

    def abspath(self, rel: str) -> str:
        if os.sep == "/":
            return self._prefix + rel  # rel is '/'-separated already: no need for os.path.join
        return os.path.join(self._prefix, *rel.split("/"))

    # -- the whole tree ----------------------------------------------------------------------
    def walk(self, start: str = "", quick: bool = False) -> Iterator[Tuple[str, List[FileStat]]]:
        """Yield ``(rel_dir, files)`` for every folder walked, depth first, from folder ``start``
        ('' is the root), at most ``chunk`` files at a time (a big folder comes in several slices).
        Folders that cannot be read are reported and skipped; the walk goes on. With ``quick``, a
        folder the memo says is unchanged is not listed: it comes as one empty slice, and its
        subfolders remembered are walked. Each folder listed in full is offered to the memo after
        its last slice has been handled.
        """
        visited: Set[Tuple[int, int]] = set()
        top = self.abspath(start) if start else str(self.root)
        if start and (any(p.startswith(".") for p in start.split("/")) and self.filters.skip_hidden
                      or self.resolve_inside(top) is None):
            return
        if start and not self.follow_symlinks and os.path.realpath(top) != os.path.join(self.real_root, *start.split("/")):
            return  # reached through a symlink
        try:
            rst = os.stat(top)
            visited.add((rst.st_dev, rst.st_ino))
        except OSError as exc:
            if not start:
                self.report(logging.ERROR, str(self.root), f"Cannot read watch directory ({exc.strerror})")
            return
        memo = self.memo
        stack: List[Tuple[str, str]] = [(start, top)]
        while stack:
            rel_dir, abs_dir = stack.pop()
            files: List[FileStat] = []
            subdirs: List[Subdir] = []
            count, complete, dst = 0, False, None
            try:
                read_at = memo.wall_ns()  # before the stat: a change after it has a later mtime
                dst = os.stat(abs_dir)
                known = memo.unchanged(rel_dir, dst) if quick else None
                if known is not None:
                    yield rel_dir, []
                    for sub in reversed(known.subdirs):
                        if (sub[2], sub[3]) not in visited:
                            visited.add((sub[2], sub[3]))
                            stack.append((sub[0], sub[1]))
                    continue
                memo.begin(rel_dir)
                complete = True
                with os.scandir(abs_dir) as it:
                    for entry in it:
                        rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                        try:
                            self._classify(entry, rel, files, subdirs, visited)
                        except OSError as exc:  # vanished between listing and stat, or unreadable
                            complete = False
                            if getattr(exc, "errno", None) not in (2,):  # ENOENT: just gone, nothing to say
                                self.report(logging.WARNING, rel, f"Cannot stat ({exc.strerror or exc})")
                        except Exception:  # a bug with one entry is that entry's: the walk goes on
                            complete = False
                            log.exception("Internal error while scanning %s (a bug; skipped, the walk goes on)", rel)
                        if len(files) >= self.chunk:
                            # a folder of a million files is handed out in slices, never held whole
                            count += len(files)
                            yield rel_dir, files
                            files = []
            except OSError as exc:
                complete = False
                self.report(logging.WARNING, rel_dir or ".", f"Cannot read folder ({exc.strerror or exc})")
            count += len(files)
            yield rel_dir, files
            if dst is not None:
                memo.finish(rel_dir, dst, read_at, count, tuple(subdirs), complete)
            stack.extend((sub[0], sub[1]) for sub in reversed(subdirs))

    def _classify(self, entry: "os.DirEntry[str]", rel: str, files: List[FileStat],
                  subdirs: List[Subdir], visited: Set[Tuple[int, int]]) -> None:
        name = entry.name
        if entry.is_file(follow_symlinks=False):
            # the walk never enters hidden folders, so only this name's own dot needs checking; a file
            # cleanup is removing (its quarantine name) is never one to upload, even with skip_hidden off
            if self.filters.name_allowed(name, rel) and not is_quarantine_name(name):
                st = entry.stat(follow_symlinks=False)
                files.append(FileStat(rel, st.st_size, mtime_ns_of(st), st.st_ino, st.st_dev))
            return
        if entry.is_symlink():
            if self.filters.skip_hidden and name.startswith("."):
                return
            if not self.follow_symlinks:
                self.report(logging.INFO, rel, "Skipping symlink (follow_symlinks = false)")
                return
            resolved = self.resolve_inside(entry.path)
            if resolved is None:
                self.report(logging.WARNING, rel, "Symlink leads outside the watched directory, not followed")
                return
            st = os.stat(resolved)
            if stat_mod.S_ISDIR(st.st_mode):
                if self.filters.dir_allowed(name) and (st.st_dev, st.st_ino) not in visited:
                    visited.add((st.st_dev, st.st_ino))
                    subdirs.append((rel, resolved, st.st_dev, st.st_ino))
                elif (st.st_dev, st.st_ino) in visited:
                    self.report(logging.WARNING, rel, "Symlink loop (folder already walked), not followed")
                return
            if stat_mod.S_ISREG(st.st_mode):
                if self.filters.file_allowed(rel):
                    files.append(FileStat.from_stat(rel, st))
                return
            self._report_special(rel, st.st_mode)
            return
        if entry.is_dir(follow_symlinks=False):
            if self.filters.dir_allowed(name):
                st = entry.stat(follow_symlinks=False)
                if (st.st_dev, st.st_ino) not in visited:
                    visited.add((st.st_dev, st.st_ino))
                    subdirs.append((rel, entry.path, st.st_dev, st.st_ino))
            return
        # neither file, folder nor link: a FIFO, socket or device. Never opened.
        if self.filters.skip_hidden and name.startswith("."):
            return
        self._report_special(rel, entry.stat(follow_symlinks=False).st_mode)

    def _report_special(self, rel: str, mode: int) -> None:
        kind = _KIND.get(stat_mod.S_IFMT(mode), "not a regular file")
        self.report(logging.WARNING, rel, f"Skipping {kind} (only regular files are uploaded)")

    def resolve_inside(self, path: str) -> Optional[str]:
        """The real path of ``path`` if it lies inside the watched tree, else None."""
        real = os.path.realpath(path)
        return real if is_inside(real, self.real_root) else None

