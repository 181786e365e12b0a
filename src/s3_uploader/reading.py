"""Reading one version of a file safely: open it below the tree, check it is the version declared
ready, read or stream its bytes, and check again that it did not change while it was read.

Opening uses ``O_NONBLOCK`` (a FIFO swapped in cannot block us) and, unless symlinks are followed,
``O_NOFOLLOW`` on the file and on every folder on the way (walked by descriptor from the root);
``fstat`` of the open descriptor must show a regular file with the ready signature. A file that is
not that version any more raises :class:`Changed`.
"""
from __future__ import annotations

import hashlib
import os
import stat as stat_mod
import threading
from typing import Callable, List, Optional, TypeVar

from . import tree
from .job import Job
from .remote import multipart_etag
from .version import signature_of

T = TypeVar("T")

O_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


class Changed(Exception):
    """The file is no longer the version that was declared ready."""


def _open_below(job: Job, flags: int) -> int:
    """Open ``job.path`` (the root joined with ``job.rel``) walking from the root by descriptor,
    never following a symlink below the root; a path not of that form is opened with O_NOFOLLOW."""
    native = os.path.join(*job.rel.split("/"))
    if job.path.endswith(os.sep + native):
        return tree.open_file(job.path[:-len(native) - 1] or os.sep, job.rel, flags)
    return os.open(job.path, flags | getattr(os, "O_NOFOLLOW", 0))  # pragma: no cover - not built that way


def open_version(job: Job, follow_symlinks: bool) -> int:
    """Open the file ``job`` names, and check by descriptor that it is the version declared ready:
    a regular file with ``job.stat``'s signature (else :class:`Changed`). Unless symlinks are followed, every folder on
    the way is walked by descriptor with O_NOFOLLOW (:func:`s3_uploader.tree.open_file`): a
    folder swapped for a symlink since the check cannot lead the open outside the tree."""
    try:
        if follow_symlinks:  # job.path is the real path, resolved inside the tree just now
            fd = os.open(job.path, O_FLAGS)
        else:
            fd = _open_below(job, O_FLAGS)
    except tree.OutsideTree:
        raise Changed("a folder on the way was replaced by a symlink") from None
    except OSError as exc:
        if getattr(exc, "errno", None) == 40:  # ELOOP: became a symlink
            raise Changed("the file was replaced by a symlink") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            raise Changed("no longer a regular file")
        if signature_of(st) != job.stat.signature:
            raise Changed("changed after it was found stable")
    except BaseException:
        os.close(fd)
        raise
    return fd


def recheck(fd: int, job: Job) -> None:
    """The file must still be exactly the version that was read, by descriptor and by path."""
    recheck_fd(fd, job)
    recheck_path(job)


def recheck_fd(fd: int, job: Job) -> None:
    """The descriptor must still show the version declared ready (not grown, rewritten, touched)."""
    st = os.fstat(fd)
    if signature_of(st) != job.stat.signature:
        raise Changed("changed while it was being read")


def recheck_path(job: Job) -> None:
    """The path must still lead to the version that was read (not renamed, replaced, touched)."""
    try:
        pst = os.lstat(job.path)  # one system call in the common case (not a link)
        if stat_mod.S_ISLNK(pst.st_mode):
            pst = os.stat(job.path)
    except FileNotFoundError:
        raise Changed("renamed or removed while it was being read") from None
    if signature_of(pst) != job.stat.signature:
        raise Changed("replaced while it was being read")


def pread(fd: int, n: int, offset: int) -> bytes:
    """Up to ``n`` bytes at ``offset`` (fewer only at the end of the file), without moving a shared offset."""
    if hasattr(os, "pread"):
        chunks: List[bytes] = []
        while n > 0:
            b = os.pread(fd, n, offset)
            if not b:
                break
            chunks.append(b)
            n -= len(b)
            offset += len(b)
        return b"".join(chunks)
    with _WIN_READ_LOCK:  # pragma: no cover - Windows has no pread
        os.lseek(fd, offset, os.SEEK_SET)
        return read_exact(fd, n)


_WIN_READ_LOCK = threading.Lock()


def read_exact(fd: int, n: int) -> bytes:
    """Up to ``n`` bytes from the descriptor's offset (fewer only at the end of the file)."""
    chunks: List[bytes] = []
    while n > 0:
        b = os.read(fd, min(n, 8 * 1024 * 1024))
        if not b:
            break
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


BUF = 1024 * 1024  # bytes read at a time when hashing or streaming


def read_whole(fd: int, size: int) -> bytes:
    """The ``size`` bytes of a file opened at offset 0; Changed when fewer are there."""
    data = read_exact(fd, size)
    if len(data) != size:
        raise Changed(f"size changed while it was being read ({len(data)} of {size} bytes read)")
    return data


def md5_of(fd: int, size: int, offset: int = 0, each: Optional[Callable[[bytes], object]] = None) -> bytes:
    """The MD5 of ``size`` bytes from ``offset``, giving ``each`` the same bytes in the same pass
    (a checksum's ``update``, a copy); Changed when fewer are there."""
    h = hashlib.md5()
    off, end = offset, offset + size
    while off < end:
        b = pread(fd, min(BUF, end - off), off)
        if not b:
            raise Changed(f"file shrank while it was being read ({off - offset} of {size} bytes)")
        h.update(b)
        if each is not None:
            each(b)
        off += len(b)
    return h.digest()


def content_digest(fd: int, size: int, part: Optional[int], each: Optional[Callable[[bytes], object]] = None) -> str:
    """What S3 records for the first ``size`` bytes behind ``fd`` sent as one PUT (``part`` None: their
    MD5, hex) or as a multipart upload of ``part``-byte parts (the MD5 of the parts' MD5s, "-N"),
    giving ``each`` every buffer read, in order; Changed when fewer are there."""
    if part is None:
        return md5_of(fd, size, 0, each).hex()
    return multipart_etag([md5_of(fd, min(part, size - off), off, each) for off in range(0, size, part)])


class FileBody:
    """A seekable, read-only view of ``size`` bytes of an open file from ``offset`` (a whole file
    sent as one PUT, or one part of a multipart upload), for streaming a request's body.

    Reads go through ``pread`` a buffer at a time (the HTTP client asks for small blocks), each
    buffer is paid for with ``throttle`` before it is handed out (so a bandwidth limit paces the
    stream instead of holding it back and then bursting), and a file that turns out shorter than
    ``offset + size`` sets ``short`` and raises instead of leaving the server waiting for missing
    bytes. Positions are the view's own (0 is ``offset`` in the file); the HTTP client may
    ``seek(0)`` to send it again on a retry. Memory: one buffer of :data:`BUF` bytes, however
    large the body.
    """

    def __init__(self, fd: int, size: int, throttle: Callable[[int], None], offset: int = 0):
        self.fd, self.size, self.throttle, self.offset = fd, size, throttle, offset
        self.pos = 0  # what the reader has been handed
        self.short = False
        self._buf = b""
        self._buf_at = 0  # file offset of _buf[0]

    def send(self, request: Callable[["FileBody"], T]) -> T:
        """``request(self)``: the request that streams this body, with a file that shrank under it
        (``short``) raised as :class:`Changed`, whether the request then failed or not."""
        try:
            answer = request(self)
        except Exception:
            if self.short:
                raise Changed("file shrank while it was being read") from None
            raise
        if self.short:
            raise Changed("file shrank while it was being read")
        return answer

    def __len__(self) -> int:
        return self.size - self.pos

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, min(self.size, base + offset))
        return self.pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.pos >= self.size:
            return b""
        if n is None or n < 0:
            n = self.size - self.pos
        chunks: List[bytes] = []
        while n > 0 and self.pos < self.size:
            rel = self.pos - self._buf_at
            if not (0 <= rel < len(self._buf)):
                self._fill()
                rel = 0
            out = self._buf[rel:rel + n]
            self.pos += len(out)
            n -= len(out)
            chunks.append(out)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _fill(self) -> None:
        want = min(BUF, self.size - self.pos)
        b = pread(self.fd, want, self.offset + self.pos)
        if len(b) != want:
            self.short = True
            raise Changed(f"file shrank while it was being read ({self.offset + self.pos + len(b)} of "
                          f"{self.offset + self.size} bytes)")
        self.throttle(want)
        self._buf, self._buf_at = b, self.pos

    def close(self) -> None:  # the uploader owns the descriptor
        pass
