"""Sending one file: open it safely, send it (one PUT or a resumable multipart upload), prove it.

The contract of :meth:`Uploader.upload`: given a file that stability declared ready with signature
``(size, mtime, inode)``, either

- return ``uploaded`` when S3 holds exactly the bytes read *and* the file still has that signature
  after the read (so what was recorded is what is in S3), or
- return ``changed`` when the file is not the one declared ready any more (it grew, shrank, was
  replaced or touched while being read): nothing is recorded as uploaded and it is checked again, or
- return ``vanished`` when it is gone, or
- return ``failed`` with a classified :class:`~s3_uploader.retry.Failure`.

Opening uses ``O_NONBLOCK`` (a FIFO swapped in cannot block us) and, unless symlinks are followed,
``O_NOFOLLOW`` on the file and on every folder on the way (walked by descriptor from the root);
``fstat`` of the open descriptor must show a regular file with the ready signature.
Multipart uploads record their upload id before the first part and each part as it completes, so
a restart resumes from the parts S3 already holds (checked with ListParts) instead of from zero.
"""
from __future__ import annotations

import hashlib
import logging
import os
import queue
import stat as stat_mod
import threading
import time
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Set, Tuple, TypeVar

from . import tree
from .logs import per_file
from .proof import is_md5_form, multipart_problem, single_put_problem
from .remote import PutOptions, Remote, RemoteError, multipart_etag
from .retry import Failure, classify
from .scanner import FileStat
from .version import signature_of
from .store import Part, Store, StoreError

log = logging.getLogger(__name__)
_T = TypeVar("_T")

MAX_PARTS = 10000
# How often a file waiting for its parts looks at the abandon flag (shutdown's drain time is over).
ABANDON_POLL = 0.1
# an upload abandoned because shutdown ran out of time (a worker between parts, or the sender)
SHUTDOWN = Failure("shutdown", "stopped by shutdown, resumes at next start")

_O_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


class Job(NamedTuple):
    """One file to send: where it is, where it goes, and the signature stability approved."""

    rel: str
    path: str  # absolute path to open (already resolved inside the tree when following symlinks)
    key: str
    stat: FileStat
    attempt: int = 1
    upload_id: Optional[str] = None  # an open multipart upload to resume
    part_size: Optional[int] = None
    small: bool = False  # the daemon's asyncio sender may take it (see scheduler.Scheduler._sendable)


class Outcome(NamedTuple):
    """How one upload ended (a NamedTuple: one per file, and cheaper to build than a dataclass)."""

    kind: str  # uploaded | changed | vanished | failed
    job: Job
    md5: Optional[str] = None
    etag: Optional[str] = None
    seconds: float = 0.0
    failure: Optional[Failure] = None
    reason: str = ""
    bytes_sent: int = 0


class SmallRead(NamedTuple):
    """A small file read whole for one PUT: its bytes, their MD5, the options, when it started."""

    data: bytes
    md5: bytes
    put_options: PutOptions
    started: float


@dataclass(frozen=True)
class Settings:
    """What the uploader needs of the (live) config, read once per file."""

    multipart_threshold: int
    multipart_chunksize: int
    max_concurrency: int
    put_options: PutOptions
    follow_symlinks: bool


class Abandoned(Exception):
    """Shutdown ran out of time: the upload stops between parts and resumes at the next start."""


class Changed(Exception):
    """The file is no longer the version that was declared ready."""


def _open_below(job: Job, flags: int) -> int:
    """Open ``job.path`` (the root joined with ``job.rel``) walking from the root by descriptor,
    never following a symlink below the root; a path not of that form is opened with O_NOFOLLOW."""
    native = os.path.join(*job.rel.split("/"))
    if job.path.endswith(os.sep + native):
        return tree.open_file(job.path[:-len(native) - 1] or os.sep, job.rel, flags)
    return os.open(job.path, flags | getattr(os, "O_NOFOLLOW", 0))  # pragma: no cover - not built that way


def part_size_for(size: int, chunksize: int) -> int:
    """The part size for a file: ``chunksize``, grown in whole MiB to stay within 10,000 parts."""
    if size <= chunksize * MAX_PARTS:
        return chunksize
    mib = 1024 * 1024
    need = -(-size // MAX_PARTS)
    return -(-need // mib) * mib


def _pread(fd: int, n: int, offset: int) -> bytes:
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
        return _read_exact(fd, n)


_WIN_READ_LOCK = threading.Lock()


def _read_exact(fd: int, n: int) -> bytes:
    chunks: List[bytes] = []
    while n > 0:
        b = os.read(fd, min(n, 8 * 1024 * 1024))
        if not b:
            break
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


# Single PUTs up to this size are read into memory (and may go by obstore); larger ones are streamed.
IN_MEMORY_MAX = 1024 * 1024
_BUF = 1024 * 1024


def _read_whole(fd: int, size: int) -> bytes:
    """The ``size`` bytes of a file opened at offset 0; Changed when fewer are there."""
    data = _read_exact(fd, size)
    if len(data) != size:
        raise Changed(f"size changed while it was being read ({len(data)} of {size} bytes read)")
    return data


def _md5_of(fd: int, size: int) -> bytes:
    h = hashlib.md5()
    off = 0
    while off < size:
        b = _pread(fd, min(_BUF, size - off), off)
        if not b:
            raise Changed(f"file shrank while it was being read ({off} of {size} bytes)")
        h.update(b)
        off += len(b)
    return h.digest()


class FileBody:
    """A seekable, read-only view of the first ``size`` bytes of an open file, for streaming a PUT.

    Reads go through ``pread`` a buffer at a time (the HTTP client asks for small blocks), each
    buffer is paid for with ``throttle`` before it is handed out (so a bandwidth limit paces the
    stream instead of holding it back and then bursting), and a file that turns out shorter than
    ``size`` sets ``short`` and raises instead of leaving the server waiting for missing bytes.
    The HTTP client may ``seek(0)`` to send it again on a retry.
    """

    def __init__(self, fd: int, size: int, throttle: Callable[[int], None]):
        self.fd, self.size, self.throttle = fd, size, throttle
        self.pos = 0  # what the reader has been handed
        self.short = False
        self._buf = b""
        self._buf_at = 0  # file offset of _buf[0]

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
        want = min(_BUF, self.size - self.pos)
        b = _pread(self.fd, want, self.pos)
        if len(b) != want:
            self.short = True
            raise Changed(f"file shrank while it was being read ({self.pos + len(b)} of {self.size} bytes)")
        self.throttle(want)
        self._buf, self._buf_at = b, self.pos

    def close(self) -> None:  # the uploader owns the descriptor
        pass


class DaemonThreads(Executor):
    """Up to ``size`` daemon threads that run calls (part uploads; the sender's HEADs);
    :meth:`submit` returns a ``concurrent.futures.Future`` (so ``wait()`` and asyncio's
    ``run_in_executor`` take it: an Executor, whose ``shutdown`` does nothing; :meth:`close` ends it).

    Not a ThreadPoolExecutor: the interpreter joins its threads at exit (and ``asyncio.run`` joins
    the loop's default one), so one request stuck on a slow link would hold the process long after
    shutdown gave up on it. These are daemon threads, started as needed, and :meth:`close` waits
    for them only up to a deadline.
    """

    def __init__(self, size: int, name: str):
        self.size = max(1, size)
        self.name = name
        self._q: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)  # released by a thread each time it waits for work
        self._threads: List[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        f: Future[_T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the {self.name} threads are closed")
            self._q.put((f, fn, args, kwargs))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self.size:
                t = threading.Thread(target=self._run, name=f"{self.name}-{len(self._threads)}", daemon=True)
                self._threads.append(t)
                t.start()
        return f

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            f, fn, args, kwargs = item
            if f.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # the caller decides (it waits on the Future)
                    f.set_exception(exc)
                else:
                    f.set_result(result)
            del item, f, fn, args, kwargs
            self._idle.release()

    def close(self, timeout: Optional[float] = None) -> List[str]:
        """Take no more parts; each thread ends after the parts already queued. Waits at most
        ``timeout`` seconds (None: until they end); returns the names of the threads still running."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._q.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return [t.name for t in threads if t.is_alive()]


class Uploader:
    """Uploads files through a :class:`Remote`, recording multipart progress in the :class:`Store`.

    ``throttle(n)`` is called before ``n`` bytes are sent (bandwidth limit); ``abandon`` is set
    when shutdown's drain time is over: a multipart upload then stops between parts, and one
    waiting for a part in flight stops waiting (within :data:`ABANDON_POLL`) and leaves that part
    to end on its own thread; either way the upload id and the parts recorded stay for the next start.
    """

    def __init__(self, remote: Remote, store: Store, settings: Callable[[], Settings], part_workers: int = 4,
                 throttle: Optional[Callable[[int], None]] = None, abandon: Optional[threading.Event] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.remote = remote
        self.store = store
        self.settings = settings
        self.throttle = throttle or (lambda n: None)
        self.abandon = abandon or threading.Event()
        self.clock = clock
        self._parts = DaemonThreads(part_workers, name="part")

    def close(self, timeout: Optional[float] = None) -> List[str]:
        """Stop the part threads, waiting at most ``timeout`` seconds (None: until the parts queued
        are done); returns the names of those still running (a part abandoned in flight)."""
        return self._parts.close(timeout)

    # -- one file -------------------------------------------------------------------------------
    def upload(self, job: Job) -> Outcome:
        cfg = self.settings()
        t0 = self.clock()
        fd = self._begin(job, cfg)
        if isinstance(fd, Outcome):
            return fd
        md5: Optional[str]  # None: a multipart upload found completed before the last stop
        try:
            if job.stat.size < cfg.multipart_threshold:
                md5, etag = self._put_single(fd, job, cfg)
            else:
                md5, etag = self._put_multipart(fd, job, cfg)
            self._recheck(fd, job)
        except Changed as exc:
            return Outcome("changed", job, reason=str(exc))
        except Abandoned:
            return Outcome("failed", job, failure=SHUTDOWN)
        except StoreError:
            raise
        except Exception as exc:  # classified: every failure of one file is that file's, not the daemon's
            return Outcome("failed", job, failure=classify(exc))
        finally:
            os.close(fd)
        return self._uploaded(job, t0, md5, etag)

    # -- one small file, in two halves around a PUT sent elsewhere (the asyncio sender) ---------
    def read_small(self, job: Job) -> "Outcome | SmallRead":
        """The first half of a single PUT of at most :data:`IN_MEMORY_MAX` bytes: log, open, read
        whole, hash, and check by descriptor that the bytes read are the version declared ready.
        Returns what to send, or the Outcome when there is nothing to send (same kinds as ``upload``)."""
        cfg = self.settings()
        t0 = self.clock()
        fd = self._begin(job, cfg)
        if isinstance(fd, Outcome):
            return fd
        try:
            data = _read_whole(fd, job.stat.size)
            self._recheck_fd(fd, job)  # a file that grew, or was rewritten in place, shows here
        except Changed as exc:
            return Outcome("changed", job, reason=str(exc))
        except OSError as exc:
            return Outcome("failed", job, failure=classify(exc))
        finally:
            os.close(fd)
        return SmallRead(data, hashlib.md5(data).digest(), cfg.put_options, t0)

    @staticmethod
    def proven_by_answer(read: "SmallRead", etag: str) -> bool:
        """Whether the PUT's answer alone proves the object (its ETag is the MD5 sent): then
        :meth:`settle_small` makes no request and may run on an event loop; otherwise it HEADs."""
        return etag == read.md5.hex()

    def settle_small(self, job: Job, read: "SmallRead", etag: str) -> Outcome:
        """The second half: the PUT answered with ``etag``. Uploaded when the object is proven (the
        ETag is the MD5 sent, or a HEAD proves it: see :mod:`s3_uploader.proof`) and the path still
        shows the version read; otherwise the Outcome that says why not."""
        md5 = read.md5.hex()
        try:
            etag = self._prove_single(job, job.stat.size, md5, etag)
        except Exception as exc:
            return Outcome("failed", job, failure=classify(exc))
        try:
            self._recheck_path(job)
        except Changed as exc:
            return Outcome("changed", job, reason=str(exc))
        except OSError as exc:
            return Outcome("failed", job, failure=classify(exc))
        return self._uploaded(job, read.started, md5, etag)

    def _uploaded(self, job: Job, started: float, md5: Optional[str], etag: str) -> Outcome:
        secs = self.clock() - started
        per_file(log, "Successfully uploaded %s (%d bytes in %.3f s)", job.key, job.stat.size, secs)
        return Outcome("uploaded", job, md5=md5, etag=etag, seconds=secs, bytes_sent=job.stat.size)

    def _begin(self, job: Job, cfg: Settings) -> "int | Outcome":
        """Log the attempt and open the file: its descriptor, or the Outcome when it cannot be read."""
        per_file(log, "Uploading %s attempt %d", job.key, job.attempt)
        try:
            return self._open(job, cfg)
        except FileNotFoundError:
            return Outcome("vanished", job, reason="file vanished before it was read")
        except Changed as exc:
            return Outcome("changed", job, reason=str(exc))
        except OSError as exc:
            return Outcome("failed", job, failure=classify(exc))

    def _open(self, job: Job, cfg: Settings) -> int:
        """Open the file (see the module docstring). Unless symlinks are followed, every folder on
        the way is walked by descriptor with O_NOFOLLOW (:func:`s3_uploader.tree.open_file`): a
        folder swapped for a symlink since the check cannot lead the open outside the tree."""
        try:
            if cfg.follow_symlinks:  # job.path is the real path, resolved inside the tree just now
                fd = os.open(job.path, _O_FLAGS)
            else:
                fd = _open_below(job, _O_FLAGS)
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

    def _recheck(self, fd: int, job: Job) -> None:
        """The file must still be exactly the version that was read, by descriptor and by path."""
        self._recheck_fd(fd, job)
        self._recheck_path(job)

    @staticmethod
    def _recheck_fd(fd: int, job: Job) -> None:
        st = os.fstat(fd)
        if signature_of(st) != job.stat.signature:
            raise Changed("changed while it was being read")

    @staticmethod
    def _recheck_path(job: Job) -> None:
        """The path must still lead to the version that was read (not renamed, replaced, touched)."""
        try:
            pst = os.lstat(job.path)  # one system call in the common case (not a link)
            if stat_mod.S_ISLNK(pst.st_mode):
                pst = os.stat(job.path)
        except FileNotFoundError:
            raise Changed("renamed or removed while it was being read") from None
        if signature_of(pst) != job.stat.signature:
            raise Changed("replaced while it was being read")

    # -- single PUT -------------------------------------------------------------------------------
    def _put_single(self, fd: int, job: Job, cfg: Settings) -> Tuple[str, str]:
        size = job.stat.size
        if size <= IN_MEMORY_MAX:
            data = _read_whole(fd, size)
            self._recheck_fd(fd, job)  # grown or rewritten while read: not sent
            digest = hashlib.md5(data).digest()
            self.throttle(size)
            etag = self.remote.put_object(job.key, data, size, digest, cfg.put_options)
        else:
            # Streamed from the file: one pass for the MD5 (Content-MD5 must be known before the
            # first byte is sent), one to send; memory stays at one buffer per upload.
            digest = _md5_of(fd, size)
            body = FileBody(fd, size, self.throttle)
            try:
                etag = self.remote.put_object(job.key, body, size, digest, cfg.put_options)
            except Exception:
                if body.short:
                    raise Changed("file shrank while it was being read") from None
                raise
            if body.short:
                raise Changed("file shrank while it was being read")
        md5 = digest.hex()
        return md5, self._prove_single(job, size, md5, etag)

    def _prove_single(self, job: Job, size: int, md5: str, etag: str) -> str:
        """The ETag to record for a single PUT that S3 answered with ``etag``, once the object is
        proven; raises :class:`_Unconfirmed` when it is not.

        S3 accepted the PUT, so it checked the body against what we sent with it (Content-MD5, or
        obstore's signed SHA-256) before storing it: the bytes are ours. An ETag equal to the MD5
        shows it at no cost. Any other ETag is not taken as wrong on its face (a bucket with default
        SSE-KMS answers with a non-MD5 ETag whatever we asked for): a HEAD shows the object, its
        size, and how it is encrypted, which decides whether the ETag had to be the MD5. What is
        recorded is the ETag the HEAD shows, the one a listing shows later (cleanup's proof).
        """
        if etag == md5:
            return etag
        info = self.remote.head(job.key)
        problem = single_put_problem(info, job.key, size, md5, etag)
        if problem is not None:
            raise _Unconfirmed(problem)
        assert info is not None
        return info.etag or etag

    # -- multipart --------------------------------------------------------------------------------
    def _put_multipart(self, fd: int, job: Job, cfg: Settings) -> Tuple[Optional[str], str]:
        size = job.stat.size
        part_size = part_size_for(size, cfg.multipart_chunksize)
        count = -(-size // part_size)
        try:
            upload_id, have = self._resume(job, part_size, cfg)
        except _CompletedEarlier as completed:
            log.info("Multipart upload of %s was completed before the last stop; S3 shows it (ETag %s)", job.key,
                     completed.etag)
            self.store.set_multipart(job.rel, None, None)
            return None, completed.etag
        if upload_id is None:
            upload_id = self.remote.create_multipart(job.key, cfg.put_options)
            # recorded (and committed) before any part is sent: a crash leaves an upload we own
            self.store.set_multipart(job.rel, upload_id, part_size)
            self.store.commit()
            have = {}
        else:
            log.info("Resuming multipart upload of %s: %d of %d parts already in S3", job.key, len(have), count)
        digests: Dict[int, bytes] = {n: bytes.fromhex(p.md5) for n, p in have.items()}
        etags: Dict[int, str] = {n: p.etag for n, p in have.items()}
        todo = [n for n in range(1, count + 1) if n not in have]

        def send(n: int, part_fd: int) -> None:
            # part_fd is this part's own descriptor (a dup): the file's may be closed while an
            # abandoned part is still on its thread, and a closed number can be reused for another file
            try:
                if self.abandon.is_set():
                    raise Abandoned()
                off = (n - 1) * part_size
                length = min(part_size, size - off)
                data = _pread(part_fd, length, off)
            finally:
                os.close(part_fd)
            if len(data) != length:
                raise Changed("file shrank while it was being read")
            d = hashlib.md5(data).digest()
            self.throttle(length)
            etag = self.remote.upload_part(job.key, upload_id, n, data, length, d)
            # S3 checked the part against its Content-MD5 before storing it. An ETag that is not the
            # MD5 is normal for a KMS-encrypted upload, which the object's HEAD shows only once it
            # is complete: judged there (proof.multipart_problem), not here.
            digests[n], etags[n] = d, etag or d.hex()
            self.store.add_part(job.rel, upload_id, Part(n, length, etags[n], d.hex()))

        try:
            inflight: Set[Future] = set()
            error: Optional[BaseException] = None
            for n in todo:  # at most max_concurrency parts of this file in flight
                if len(inflight) >= cfg.max_concurrency:
                    done, inflight = self._wait_parts(inflight, FIRST_COMPLETED)
                    error = _first_error(done)
                    if error is not None:
                        break
                inflight.add(self._submit_part(send, n, fd))
            done, _ = self._wait_parts(inflight, ALL_COMPLETED)  # parts in flight are recorded before deciding
            error = error or _first_error(done)
            if error is not None:
                raise error
            if self.abandon.is_set():
                raise Abandoned()
            self._recheck(fd, job)  # before complete: never publish a torn object
            parts = [(n, etags[n]) for n in range(1, count + 1)]
            etag = self.remote.complete_multipart(job.key, upload_id, parts)
        except (Changed, _Unconfirmed):
            self._abort(job, upload_id)
            raise
        except RemoteError as exc:
            if not exc.gone or len(digests) != count:
                raise
            # completed already (the answer to an earlier Complete was lost)? else the next attempt starts over
            earlier = self._completed_earlier(job, [digests[n] for n in range(1, count + 1)], cfg)
            if earlier is None:
                self.store.set_multipart(job.rel, None, None)
                raise
            etag = earlier
        expected = multipart_etag([digests[n] for n in range(1, count + 1)])
        # Always a HEAD (one request per file of hundreds of MiB): it shows the object is there with
        # its size, and the ETag a listing will show (some servers show the whole object's MD5, not
        # Complete's "-N"), which is what is recorded for cleanup to compare with.
        info = self.remote.head(job.key)
        not_md5 = [n for n in range(1, count + 1) if is_md5_form(etags[n]) and etags[n] != digests[n].hex()]
        problem = multipart_problem(info, job.key, size, expected, etag, not_md5)
        if problem is not None:
            raise _Unconfirmed(problem)
        assert info is not None
        self.store.set_multipart(job.rel, None, None)
        # the md5 recorded is the content's own multipart digest (MD5 of the parts' MD5s, "-N"), which
        # we computed from the bytes sent, whatever the server's ETag is (opaque with SSE-KMS): cleanup
        # hashes the file the same way before it removes it
        return expected, info.etag or etag or expected

    def _submit_part(self, send: Callable[[int, int], None], n: int, fd: int) -> Future:
        part_fd = os.dup(fd)
        try:
            return self._parts.submit(send, n, part_fd)
        except BaseException:
            os.close(part_fd)
            raise

    def _wait_parts(self, parts: Set[Future], return_when: str) -> Tuple[Set[Future], Set[Future]]:
        """``wait(parts, return_when)``, but raise Abandoned as soon as ``abandon`` is set while a
        part is still in flight: however slow the link, shutdown does not wait for its request."""
        while True:
            done, pending = wait(parts, timeout=ABANDON_POLL, return_when=return_when)
            if not pending or (done and return_when == FIRST_COMPLETED):
                return done, pending
            if self.abandon.is_set():
                raise Abandoned()

    def _resume(self, job: Job, part_size: int, cfg: Settings) -> Tuple[Optional[str], Dict[int, Part]]:
        """The parts of a recorded multipart upload that S3 still holds, if it can be resumed.

        Raises :class:`_CompletedEarlier` when S3 no longer knows the upload because it completed it
        (a crash came between CompleteMultipartUpload and its record), and the request's own error
        when S3 cannot be asked now: the upload and its parts are kept for the next attempt.
        """
        uid = job.upload_id
        if not uid:
            return None, {}
        if job.part_size != part_size:
            self._abort(job, uid)
            return None, {}
        recorded = self.store.parts(job.rel, uid)
        try:
            remote_parts = self.remote.list_parts(job.key, uid)
        except RemoteError as exc:
            if not exc.gone:
                raise  # throttled, unreachable...: never a reason to throw the parts sent away
            count = -(-job.stat.size // part_size)
            if set(recorded) == set(range(1, count + 1)):
                etag = self._completed_earlier(job, [bytes.fromhex(recorded[n].md5) for n in range(1, count + 1)],
                                               cfg)
                if etag is not None:
                    raise _CompletedEarlier(etag) from None
            log.info("Cannot resume multipart upload of %s (%s); starting over", job.key, classify(exc).message)
            self.store.set_multipart(job.rel, None, None)
            return None, {}
        have = {n: p for n, p in recorded.items()
                if n in remote_parts and remote_parts[n] == (p.size, p.etag)}
        return uid, have

    def _completed_earlier(self, job: Job, digests: List[bytes], cfg: Settings) -> Optional[str]:
        """The ETag of ``job.key`` if S3 holds exactly these parts as the object (size and multipart
        ETag of the parts' MD5s, all read from this version of the file), else None."""
        if not cfg.put_options.etag_is_md5:
            return None
        expected = multipart_etag(digests)
        try:
            info = self.remote.head(job.key)
        except Exception:  # cannot tell now: the caller starts over, which is always safe
            return None
        if info is not None and info.size == job.stat.size and info.etag == expected:
            return expected
        return None

    def _abort(self, job: Job, upload_id: str) -> None:
        try:
            self.remote.abort_multipart(job.key, upload_id)
        except Exception as exc:
            log.warning("Could not abort multipart upload of %s (%s); it will be aborted at next start",
                        job.key, classify(exc).message)
            return
        self.store.set_multipart(job.rel, None, None)


class _CompletedEarlier(Exception):
    """S3 completed the upload before the last stop; ``etag`` is the object's."""

    def __init__(self, etag: str):
        super().__init__(etag)
        self.etag = etag


class _Unconfirmed(RemoteError):
    """S3 does not show what was sent: a server failure, retried."""

    def __init__(self, problem: str):
        super().__init__(problem, "Unconfirmed", "server")


def _first_error(done: Iterable[Future]) -> Optional[BaseException]:
    for f in done:
        if f.exception() is not None:
            return f.exception()
    return None
