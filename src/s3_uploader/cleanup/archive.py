"""Archiving instead of deleting: a proven file moved to ``archive_directory`` under its relative
path, never over a file there, and on another filesystem copied, verified and fsynced first, so at
every moment its bytes exist under the watched tree, in the archive, or both.
"""
from __future__ import annotations

import logging
import os
import stat as stat_mod
import sys
import threading
from typing import Callable

from .. import tree
from ..store import Record
from .decision import ARCHIVE_EXISTS, CONTENT_DIFFERS, FILE_MODIFIED, CleanupSettings, Keep, LocalState
from .digest import copy_fd, recorded_digest, same_content

PARTIAL_SUFFIX = ".s3-uploader-partial"  # an archive copy not yet complete


def archive(folder: tree.Folder, qname: str, fd: int, st: os.stat_result, rec: Record, s: CleanupSettings,
            stop: threading.Event, at: Callable[[str, str], None]) -> str:
    """Put the proven file (``qname`` in ``folder``, open as ``fd``) at ``archive_directory/rel``
    without ever replacing a file there; the caller then removes it from the tree. Returns the
    destination. Raises :class:`Keep` when it is not put there (nothing of the tree was removed).

    On one filesystem: a hard link, checked to be the same inode, then the unlink. Across
    filesystems: a copy read from ``fd`` into a temporary name, fsynced, its MD5 compared with the
    recorded one (when one is recorded), the source re-checked by descriptor and by name after
    the copy, the copy linked into place; only then may the source go. Every folder created on the
    way and the destination folder are fsynced before the source is removed. At every moment the
    bytes exist under the watched tree, in the archive, or both.
    """
    dirs, name = tree.split_rel(rec.rel)
    dest_path = os.path.join(s.archive_directory, *rec.rel.split("/"))
    with tree.open_folder(s.archive_directory, dirs, create=True) as dest:
        try:
            there = dest.lstat(name)
        except FileNotFoundError:
            there = None
        if there is not None:
            if not same_content(fd, st, dest, name, there):
                raise Keep(ARCHIVE_EXISTS, "a different file is already there", level=logging.WARNING)
            # an earlier pass put it there and stopped before removing the original
        elif not _link_into(folder, qname, dest, name, st):
            _copy_into(fd, st, rec, dest, name, s, folder, qname, stop, at)
        dest.fsync()
    return dest_path


def _link_into(folder: tree.Folder, qname: str, dest: tree.Folder, name: str, st: os.stat_result) -> bool:
    """Hard-link the quarantined file as ``name`` in ``dest``; False when links cannot be made
    there (another filesystem, or none supported). Never replaces: FileExistsError is a Keep."""
    try:
        if folder.fd is not None and dest.fd is not None:
            os.link(qname, name, src_dir_fd=folder.fd, dst_dir_fd=dest.fd, follow_symlinks=False)
        else:
            os.link(os.path.join(folder.path, qname), os.path.join(dest.path, name))
    except FileExistsError:
        raise Keep(ARCHIVE_EXISTS, "a different file is already there", level=logging.WARNING) from None
    except OSError:
        return False
    linked = dest.lstat(name)
    if (linked.st_dev, linked.st_ino) != (st.st_dev, st.st_ino):  # the quarantine name was swapped
        dest.unlink(name)
        raise Keep(FILE_MODIFIED, "changed during the pass")
    return True


def _copy_into(fd: int, st: os.stat_result, rec: Record, dest: tree.Folder, name: str, s: CleanupSettings,
               folder: tree.Folder, qname: str, stop: threading.Event, at: Callable[[str, str], None]) -> None:
    """Copy the file open as ``fd`` to ``name`` in ``dest`` by way of a temporary name: its digest
    checked against the recorded one, the source re-checked by descriptor and by name after the
    copy, then linked into place without replacing anything (:class:`Keep` otherwise)."""
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
            digest = copy_fd(fd, out, st.st_size, rec, s.multipart_chunksize, stop)
            if sys.platform != "win32":  # no fchmod there
                os.fchmod(out, stat_mod.S_IMODE(st.st_mode))
            if os.utime in os.supports_fd:
                os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.fsync(out)
        finally:
            os.close(out)
        if os.name == "nt":
            os.utime(os.path.join(dest.path, tmp), ns=(st.st_atime_ns, st.st_mtime_ns))
        want = recorded_digest(rec, st.st_size, s.multipart_chunksize)
        if digest is None:
            raise Keep(FILE_MODIFIED, "changed while it was copied to the archive")
        if want is not None and digest != want[0]:
            raise Keep(CONTENT_DIFFERS, f"the archive copy's MD5 is {digest}, {want[0]} was uploaded",
                       requeue=LocalState.from_lstat(st))
        at("copied", rec.rel)
        after = os.fstat(fd)
        try:
            named = folder.lstat(qname)
        except FileNotFoundError:
            named = None
        sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        if (after.st_ino, after.st_size, after.st_mtime_ns) != sig or named is None or \
                (named.st_ino, named.st_size, named.st_mtime_ns) != sig:
            raise Keep(FILE_MODIFIED, "changed while it was copied to the archive",
                       requeue=LocalState.from_lstat(after), level=logging.INFO)
        try:
            tree.move_noreplace(dest, tmp, dest, name)
        except FileExistsError:
            raise Keep(ARCHIVE_EXISTS, "a different file is already there", level=logging.WARNING) from None
    except BaseException:
        try:
            dest.unlink(tmp)
        except OSError:
            pass
        raise
