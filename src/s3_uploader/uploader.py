"""Sending one file: open it safely, send it (one PUT or a resumable multipart upload), prove it.

The contract of :meth:`Uploader.upload`: given a file that stability declared ready with signature
``(size, mtime, inode)``, either

- return ``uploaded`` when S3 holds exactly the bytes read *and* the file still has that signature
  after the read (so what was recorded is what is in S3), or
- return ``changed`` when the file is not the one declared ready any more (it grew, shrank, was
  replaced or touched while being read): nothing is recorded as uploaded and it is checked again, or
- return ``vanished`` when it is gone, or
- return ``failed`` with a classified :class:`~s3_uploader.retry.Failure`.

How a file is opened and read safely is :mod:`s3_uploader.reading`; a multipart upload, recorded
so that a restart resumes it, is :mod:`s3_uploader.multipart`.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from typing import Any, Callable, List, Optional, Tuple

from .job import SHUTDOWN, Job, Outcome, Settings, SmallRead
from .logs import per_file
from .multipart import Abandoned, Multipart, part_size_for
from .objects import Checksum, ObjectAttributes, checksum_of
from .proof import Unconfirmed, single_put_problem
from .reading import Changed, FileBody, md5_of, open_version, read_whole, recheck, recheck_fd, recheck_path
from .remote import PutOptions, Remote
from .retry import classify
from .store import Store, StoreError
from .threads import DaemonThreads

# the names other modules take from here: one import for everything about sending a file
__all__ = ["IN_MEMORY_MAX", "SHUTDOWN", "Abandoned", "FileBody", "Job", "Outcome", "Settings", "SmallRead", "Uploader",
           "part_size_for"]

log = logging.getLogger(__name__)

# Single PUTs up to this size are read into memory (and may go by obstore); larger ones are streamed.
IN_MEMORY_MAX = 1024 * 1024


class Uploader:
    """Uploads files through a :class:`Remote`, recording multipart progress in the :class:`Store`.

    ``throttle(n)`` is called before ``n`` bytes are sent (bandwidth limit); ``abandon`` is set
    when shutdown's drain time is over: a multipart upload then stops between parts, and one
    waiting for a part in flight stops waiting (within :data:`~s3_uploader.multipart.ABANDON_POLL`) and leaves that part
    to end on its own thread; either way the upload id and the parts recorded stay for the next start.
    """

    def __init__(self, remote: Remote, store: Store, settings: Callable[[], Settings], part_workers: int = 4,
                 throttle: Optional[Callable[[int], None]] = None, abandon: Optional[threading.Event] = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self.remote = remote
        self.store = store
        self.settings = settings
        self.throttle = throttle or (lambda n: None)
        self.abandon = abandon or threading.Event()
        self.clock = clock
        self.wall = wall  # when an upload starts, for Object Lock's retain-until
        self._parts = DaemonThreads(part_workers, name="part")
        self.multipart = Multipart(remote, store, self._parts, self.throttle, self.abandon)

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
            attrs = self._attrs(job, cfg)
            if job.stat.size < cfg.multipart_threshold:
                md5, etag, checksum = self._put_single(fd, job, cfg, attrs)
            else:
                md5, etag, checksum = self.multipart.send(fd, job, cfg, attrs)
            recheck(fd, job)
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
        return self._uploaded(job, t0, md5, etag, checksum)

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
            data = read_whole(fd, job.stat.size)
            recheck_fd(fd, job)  # a file that grew, or was rewritten in place, shows here
        except Changed as exc:
            return Outcome("changed", job, reason=str(exc))
        except OSError as exc:
            return Outcome("failed", job, failure=classify(exc))
        finally:
            os.close(fd)
        return SmallRead(data, hashlib.md5(data).digest(), self._options(cfg, self._attrs(job, cfg), data), t0)

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
            recheck_path(job)
        except Changed as exc:
            return Outcome("changed", job, reason=str(exc))
        except OSError as exc:
            return Outcome("failed", job, failure=classify(exc))
        return self._uploaded(job, read.started, md5, etag)

    def _attrs(self, job: Job, cfg: Settings) -> ObjectAttributes:
        """What this file's object carries (:mod:`s3_uploader.objects`), its upload starting now."""
        return cfg.objects.attributes(job.rel, job.stat.mtime_ns, self.wall())

    @staticmethod
    def _options(cfg: Settings, attrs: ObjectAttributes, data: bytes) -> PutOptions:
        """The options of a single PUT of ``data``: the configuration's, what the object carries,
        and the checksum of ``data`` when one is asked for."""
        return cfg.put_options.for_object(attrs, checksum_of(attrs.checksum, data) if attrs.checksum else "")

    def _uploaded(self, job: Job, started: float, md5: Optional[str], etag: str, checksum: str = "") -> Outcome:
        secs = self.clock() - started
        per_file(log, "Successfully uploaded %s (%d bytes in %.3f s)", job.key, job.stat.size, secs)
        return Outcome("uploaded", job, md5=md5, etag=etag, seconds=secs, checksum=checksum or None)

    def _begin(self, job: Job, cfg: Settings) -> "int | Outcome":
        """Log the attempt and open the file: its descriptor, or the Outcome when it cannot be read."""
        per_file(log, "Uploading %s attempt %d", job.key, job.attempt)
        try:
            return open_version(job, cfg.follow_symlinks)
        except FileNotFoundError:
            return Outcome("vanished", job, reason="file vanished before it was read")
        except Changed as exc:
            return Outcome("changed", job, reason=str(exc))
        except OSError as exc:
            return Outcome("failed", job, failure=classify(exc))

    # -- single PUT -------------------------------------------------------------------------------
    def _put_single(self, fd: int, job: Job, cfg: Settings, attrs: ObjectAttributes) -> Tuple[str, str, str]:
        """Send the file as one PUT: (its MD5, the ETag to record, the checksum S3 answered it
        stores with the object, '' when none was sent or answered)."""
        size = job.stat.size
        if size <= IN_MEMORY_MAX:
            data = read_whole(fd, size)
            recheck_fd(fd, job)  # grown or rewritten while read: not sent
            digest = hashlib.md5(data).digest()
            opts = self._options(cfg, attrs, data)
            self.throttle(size)
            etag, stored = self._put(job.key, data, size, digest, opts)
        else:
            # Streamed from the file: one pass for the MD5 and any checksum (Content-MD5 must be
            # known before the first byte is sent), one to send; memory stays at one buffer per upload.
            checksum = Checksum(attrs.checksum) if attrs.checksum else None
            digest = md5_of(fd, size, each=checksum.update if checksum is not None else None)
            opts = cfg.put_options.for_object(attrs, checksum.b64() if checksum is not None else "")
            etag, stored = FileBody(fd, size, self.throttle).send(lambda b: self._put(job.key, b, size, digest, opts))
        md5 = digest.hex()
        return md5, self._prove_single(job, size, md5, etag), stored

    def _put(self, key: str, body: Any, size: int, digest: bytes, opts: PutOptions) -> Tuple[str, str]:
        """The PUT: (ETag, stored checksum); the server's answer about a checksum is read only when
        one was sent (the default, none, costs nothing)."""
        if opts.checksum:
            return self.remote.put_object_answer(key, body, size, digest, opts)
        return self.remote.put_object(key, body, size, digest, opts), ""

    def _prove_single(self, job: Job, size: int, md5: str, etag: str) -> str:
        """The ETag to record for a single PUT that S3 answered with ``etag``, once the object is
        proven; raises :class:`~s3_uploader.proof.Unconfirmed` when it is not.

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
            raise Unconfirmed(problem)
        assert info is not None
        return info.etag or etag
