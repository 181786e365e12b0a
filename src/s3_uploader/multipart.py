"""Sending one file as a resumable multipart upload (:class:`Multipart`, the uploader's step for
files of ``multipart_threshold`` bytes or more).

The upload id is recorded (and committed) before the first part, and each part as it completes, so
a restart resumes from the parts S3 still holds (checked with ListParts) instead of from zero. At
most ``max_concurrency`` parts of one file are in flight, on the shared part threads; the object is
completed only once the file is checked again, and proven by a HEAD (:mod:`s3_uploader.proof`).
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, wait
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple

from .job import Job, Settings
from .objects import Checksum, ObjectAttributes
from .proof import Unconfirmed, is_md5_form, multipart_problem
from .reading import Changed, FileBody, md5_of, recheck
from .remote import Remote, RemoteError, multipart_etag
from .retry import classify
from .store import Part, Store
from .threads import DaemonThreads

log = logging.getLogger(__name__)

MAX_PARTS = 10000
# How often a file waiting for its parts looks at the abandon flag (shutdown's drain time is over).
ABANDON_POLL = 0.1


class Abandoned(Exception):
    """Shutdown ran out of time: the upload stops between parts and resumes at the next start."""


def part_size_for(size: int, chunksize: int) -> int:
    """The part size for a file: ``chunksize``, grown in whole MiB to stay within 10,000 parts."""
    if size <= chunksize * MAX_PARTS:
        return chunksize
    mib = 1024 * 1024
    need = -(-size // MAX_PARTS)
    return -(-need // mib) * mib


class Multipart:
    """Multipart uploads through ``remote``, recorded in ``store``; parts run on ``parts``.

    ``throttle(n)`` is paid before each part is sent; when ``abandon`` is set (shutdown's drain
    time is over) the upload stops between parts, and one waiting for a part in flight stops
    waiting within :data:`ABANDON_POLL`, leaving that part to end on its own thread."""

    def __init__(self, remote: Remote, store: Store, parts: DaemonThreads, throttle: Callable[[int], None],
                 abandon: threading.Event):
        self.remote = remote
        self.store = store
        self._parts = parts
        self.throttle = throttle
        self.abandon = abandon

    def send(self, fd: int, job: Job, cfg: Settings, attrs: ObjectAttributes) -> Tuple[Optional[str], str, str]:
        """Send the file open at ``fd`` (the version ``job`` names) as a multipart upload carrying
        ``attrs`` (given to CreateMultipartUpload; each part sends its checksum when one is asked
        for), resuming the one recorded when S3 still holds its parts. Returns the content's
        multipart digest, the ETag to record and the checksum S3 shows it stores with the object (read
        by the HEAD that proves it, only when one is asked for; '' when none), or ``(None, etag, '')``
        when S3 shows the upload completed before the last stop. Raises :class:`~s3_uploader.reading.Changed`,
        :class:`Abandoned`, :class:`Unconfirmed` or the remote's error; the upload id and the parts
        recorded stay for the next attempt unless the file changed, or the server refuses a resumed
        upload as it is (then it is aborted and the next attempt starts over)."""
        size = job.stat.size
        part_size = part_size_for(size, cfg.multipart_chunksize)
        count = -(-size // part_size)
        try:
            upload_id, have = self._resume(job, part_size, cfg)
        except _CompletedEarlier as completed:
            log.info("Multipart upload of %s was completed before the last stop; S3 shows it (ETag %s)", job.key,
                     completed.etag)
            self.store.set_multipart(job.rel, None, None)
            return None, completed.etag, ""
        resumed = upload_id is not None
        if upload_id is None:
            upload_id = self.remote.create_multipart(job.key, cfg.put_options.for_object(attrs))
            # recorded (and committed) before any part is sent: a crash leaves an upload we own
            self.store.set_multipart(job.rel, upload_id, part_size)
            self.store.commit()
            have = {}
        else:
            log.info("Resuming multipart upload of %s: %d of %d parts already in S3", job.key, len(have), count)
        digests: Dict[int, bytes] = {n: bytes.fromhex(p.md5) for n, p in have.items()}
        etags: Dict[int, str] = {n: p.etag for n, p in have.items()}
        algorithm = attrs.checksum  # each part's checksum goes with it, and all of them at Complete
        checksums: Dict[int, str] = {}
        todo = [n for n in range(1, count + 1) if n not in have]

        def send_part(n: int, part_fd: int) -> None:
            # part_fd is this part's own descriptor (a dup): the file's may be closed while an
            # abandoned part is still on its thread, and a closed number can be reused for another file
            try:
                if self.abandon.is_set():
                    raise Abandoned()
                off = (n - 1) * part_size
                length = min(part_size, size - off)
                # Streamed from the file, never held whole: one pass for the MD5 (and checksum) the
                # request carries ahead of its body, one to send. A part in flight costs one read
                # buffer, not part_size bytes, and while it hashes the other parts keep the link busy.
                ck = Checksum(algorithm) if algorithm else None
                d = md5_of(part_fd, length, off, ck.update if ck is not None else None)
                checksum = (algorithm, ck.b64()) if ck is not None else None
                body = FileBody(part_fd, length, self.throttle, off)  # paces each buffer through the limit
                etag = body.send(lambda b: self.remote.upload_part(job.key, upload_id, n, b, length, d, checksum))
            finally:
                os.close(part_fd)
            if checksum is not None:
                checksums[n] = checksum[1]
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
                inflight.add(self._submit_part(send_part, n, fd))
            done, _ = self._wait_parts(inflight, ALL_COMPLETED)  # parts in flight are recorded before deciding
            error = error or _first_error(done)
            if error is not None:
                raise error
            if self.abandon.is_set():
                raise Abandoned()
            if algorithm:
                _checksums_sent(fd, part_size, have, algorithm, checksums)
            recheck(fd, job)  # before complete: never publish a torn object
            parts = [(n, etags[n]) for n in range(1, count + 1)]
            etag = self.remote.complete_multipart(job.key, upload_id, parts,
                                                  (algorithm, checksums) if algorithm else None)
        except (Changed, Unconfirmed):
            self._abort(job, upload_id)
            raise
        except RemoteError as exc:
            if resumed and exc.code in _REFUSED:
                # an upload from before the stop that the server no longer takes as it is (created
                # with another checksum_algorithm, say): the next attempt starts it over
                self._abort(job, upload_id)
                raise
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
        info = self.remote.head_checksum(job.key) if algorithm else self.remote.head(job.key)
        not_md5 = [n for n in range(1, count + 1) if is_md5_form(etags[n]) and etags[n] != digests[n].hex()]
        problem = multipart_problem(info, job.key, size, expected, etag, not_md5)
        if problem is not None:
            raise Unconfirmed(problem)
        assert info is not None
        self.store.set_multipart(job.rel, None, None)
        # the md5 recorded is the content's own multipart digest (MD5 of the parts' MD5s, "-N"), which
        # we computed from the bytes sent, whatever the server's ETag is (opaque with SSE-KMS): cleanup
        # hashes the file the same way before it removes it
        return expected, info.etag or etag or expected, info.checksum

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


# what the server answers to a request the upload does not take as it is
_REFUSED = ("InvalidRequest", "InvalidPart", "BadDigest", "InvalidArgument")


def _checksums_sent(fd: int, part_size: int, have: Dict[int, Part], algorithm: str,
                    checksums: Dict[int, str]) -> None:
    """The checksums of the parts sent before the stop (S3 needs every part's at Complete; the
    store keeps their MD5s, not these), computed from the file again; a part whose MD5 is not the
    one recorded means the file changed."""
    for n, p in have.items():
        ck = Checksum(algorithm)
        if md5_of(fd, p.size, (n - 1) * part_size, ck.update).hex() != p.md5:
            raise Changed("changed while it was being read (a part sent before the stop differs)")
        checksums[n] = ck.b64()


class _CompletedEarlier(Exception):
    """S3 completed the upload before the last stop; ``etag`` is the object's."""

    def __init__(self, etag: str):
        super().__init__(etag)
        self.etag = etag


def _first_error(done: Iterable[Future]) -> Optional[BaseException]:
    for f in done:
        if f.exception() is not None:
            return f.exception()
    return None

