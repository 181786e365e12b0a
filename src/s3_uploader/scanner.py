"""Walking the watched tree: which entries are candidate files, found without opening anything.

The scanner only reads folder listings and stats. It never opens a file, so FIFOs, sockets and
devices cannot block it; they are reported once and skipped. Symlinks are skipped unless
``follow_symlinks`` is set, and even then a link that resolves outside the watched tree (or back
into a folder already being walked) is reported and not followed.
"""
from __future__ import annotations

import logging
import os
import stat as stat_mod
from pathlib import Path
from typing import Callable, Iterator, List, NamedTuple, Optional, Set, Tuple

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


class Scanner:
    """Lists candidate files under ``root``, folder by folder.

    ``root`` is resolved once; every path followed must stay inside that real path.
    """

    def __init__(self, root: Path, filters: Filters, follow_symlinks: bool = False,
                 report: Optional[Callable[[int, str, str], None]] = None):
        self.root = Path(root)
        self.real_root = os.path.realpath(self.root)
        self.filters = filters
        self.follow_symlinks = follow_symlinks
        self.report = report or Reporter()
        self.chunk = 500
        self._prefix = os.path.join(str(self.root), "")  # root with one trailing separator

    # -- one path (for event hints) ----------------------------------------------------------
    def stat_one(self, rel: str) -> Optional[FileStat]:
        """The FileStat of ``rel`` if it is a candidate file now, else None (gone, filtered, not regular)."""
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
        return FileStat.from_stat(rel, st)

    def abspath(self, rel: str) -> str:
        if os.sep == "/":
            return self._prefix + rel  # rel is '/'-separated already: no need for os.path.join
        return os.path.join(self._prefix, *rel.split("/"))

    # -- the whole tree ----------------------------------------------------------------------
    def walk(self, start: str = "") -> Iterator[Tuple[str, List[FileStat]]]:
        """Yield ``(rel_dir, files)`` for every folder walked, depth first, from folder ``start``
        ('' is the root), at most ``chunk`` files at a time (a big folder comes in several slices).
        Folders that cannot be read are reported and skipped; the walk goes on.
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
        stack: List[Tuple[str, str]] = [(start, top)]
        while stack:
            rel_dir, abs_dir = stack.pop()
            files: List[FileStat] = []
            subdirs: List[Tuple[str, str]] = []
            try:
                with os.scandir(abs_dir) as it:
                    for entry in it:
                        rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                        try:
                            self._classify(entry, rel, files, subdirs, visited)
                        except OSError as exc:  # vanished between listing and stat, or unreadable
                            if getattr(exc, "errno", None) not in (2,):  # ENOENT: just gone, nothing to say
                                self.report(logging.WARNING, rel, f"Cannot stat ({exc.strerror or exc})")
                        except Exception:  # a bug with one entry is that entry's: the walk goes on
                            log.exception("Internal error while scanning %s (a bug; skipped, the walk goes on)", rel)
                        if len(files) >= self.chunk:
                            # a folder of a million files is handed out in slices, never held whole
                            yield rel_dir, files
                            files = []
            except OSError as exc:
                self.report(logging.WARNING, rel_dir or ".", f"Cannot read folder ({exc.strerror or exc})")
            yield rel_dir, files
            stack.extend(reversed(subdirs))

    def _classify(self, entry: "os.DirEntry[str]", rel: str, files: List[FileStat],
                  subdirs: List[Tuple[str, str]], visited: Set[Tuple[int, int]]) -> None:
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
                    subdirs.append((rel, resolved))
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
                    subdirs.append((rel, entry.path))
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

