"""Cleanup's pure decision core: given the stored record, what a folder listing of the bucket shows
for its key, what ``lstat`` shows of the path now, the time and the settings, :func:`decide`
returns a :class:`Decision`: remove the file, hold it back (with the reason), queue it for upload
again, or forget a row whose file is already gone. No I/O, so every rule is a unit test.

The reasons named here are what ``status`` counts held-back files by.
"""
from __future__ import annotations

import logging
import os
import stat as stat_mod
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from ..config import FreeSpace
from ..remote import ObjectInfo, clean_etag, same_checksum
from ..store import Record
from ..version import Signature, mtime_ns_of

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
CHECKSUM_DIFFERS = "checksum differs"  # S3 stores another checksum than it answered at upload
CHECKSUM_MISSING = "checksum not shown"  # S3 answered one at upload and shows none now
HEAD_FAILED = "S3 HEAD failed"  # asking for the stored checksum failed: look again next pass
CONTENT_DIFFERS = "content differs"  # same signature, other bytes than the MD5 recorded at upload
INTERNAL = "internal error"  # a bug while handling this candidate (logged with its traceback)


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


def checksum_decision(record: Record, head: Optional[ObjectInfo]) -> Decision:
    """The last step of the proof of a row that records a checksum (S3 answered at upload that it
    stores it), once :func:`decide` said remove: ``head`` is the object's HEAD asking for its stored
    checksum (``Remote.head_checksum``). Remove only when it shows the same checksum.

    Another checksum, or an object gone or of another size since the listing, means the object at
    the key is not the one uploaded: the file is uploaded again (as for another ETag). No checksum
    shown, where the server answered one at upload, proves nothing either way (a server or a proxy
    that stopped showing it, or an object replaced without one): the file is held, never removed
    on the listing alone, and ``status`` counts it under :data:`CHECKSUM_MISSING`.
    """
    assert record.checksum
    if head is None or head.size != record.size:
        problem = object_problem(record, head)
        assert problem is not None
        return Decision(REQUEUE, *problem)
    if not head.checksum:
        return Decision(HOLD, CHECKSUM_MISSING, f"S3 shows no checksum for {record.key}; it answered "
                                                f"{record.checksum} at upload")
    if not same_checksum(record.checksum, head.checksum):
        return Decision(REQUEUE, CHECKSUM_DIFFERS, f"S3 stores {head.checksum} for {record.key}, "
                                                   f"{record.checksum} at upload")
    return Decision(REMOVE, OK)


class Keep(Exception):
    """A file is not removed after all, found so by the act itself: it goes back to its name and is
    held for ``reason`` (or, with ``requeue``, the LocalState of what is there, queued to upload
    again); ``level`` is the level its log line is written at."""

    def __init__(self, reason: str, detail: str = "", requeue: Optional[LocalState] = None,
                 level: int = logging.WARNING):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail, self.requeue, self.level = reason, detail, requeue, level
