"""The content proof of cleanup: what a file's bytes hash to, read through one open descriptor,
compared with the digest recorded at upload (a single PUT's MD5, or a multipart upload's MD5 of
its parts' MD5s, "-N"), and the copy to the archive that hashes what it copies.
"""
from __future__ import annotations

import hashlib
import os
import stat as stat_mod
import threading
from typing import List, Optional, Tuple

from .. import tree
from ..remote import clean_etag, multipart_etag
from ..store import Record
from ..uploader import part_size_for
from .decision import BUSY, Keep

BUF = 1024 * 1024


def recorded_digest(rec: Record, size: int, chunksize: int) -> Optional[Tuple[str, Optional[int]]]:
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


def digest(fd: int, size: int, part: Optional[int], stop: threading.Event, out: Optional[int] = None) -> Optional[str]:
    """The MD5 (``part`` None) or multipart ETag of the first ``size`` bytes read through ``fd``,
    copied to ``out`` too when given. None when the file is shorter; _Keep when ``stop`` is set."""
    whole = hashlib.md5()
    parts: List[bytes] = []
    cur = hashlib.md5()
    in_part = off = 0
    while off < size:
        if stop.is_set():
            raise Keep(BUSY, "stopping")
        n = min(BUF, size - off, (part - in_part) if part else BUF)
        b = pread(fd, n, off)
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


pread = getattr(os, "pread", _read_at)


def content_problem(fd: int, rec: Record, chunksize: int, stop: threading.Event) -> Optional[str]:
    """Why the bytes behind ``fd`` are not the ones uploaded, or None when they are (or cannot be
    compared: no digest recorded). Closes the gap the signature leaves (no st_dev, no ctime: a
    reused inode, or a rewrite that restored size and mtime, would pass it)."""
    want = recorded_digest(rec, rec.size, chunksize)
    if want is None:
        return None
    got = digest(fd, rec.size, want[1], stop)
    if got is None:
        return "shorter than recorded"
    if got != want[0]:
        return f"its bytes hash to {got}, {want[0]} was uploaded"
    return None


def copy_fd(fd: int, out: int, size: int, rec: Record, chunksize: int, stop: threading.Event) -> Optional[str]:
    """Copy ``size`` bytes from ``fd`` to ``out``; returns the digest (kind as recorded) of what was copied."""
    want = recorded_digest(rec, size, chunksize)
    return digest(fd, size, want[1] if want else None, stop, out)


def same_content(fd: int, st: os.stat_result, folder: tree.Folder, name: str, there: os.stat_result) -> bool:
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
            a, b = pread(fd, BUF, off), pread(other, BUF, off)
            if a != b or not a:
                return False
            off += len(a)
        return True
    finally:
        os.close(other)
