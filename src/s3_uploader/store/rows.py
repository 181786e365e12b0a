"""The rows of the state database as Python values: a file's :class:`Record`, a multipart
:class:`Part`, what a destination change did (:class:`Rebased`), and the path encoding they share.

Paths are stored as bytes (the file system's own), so names that are not valid UTF-8 round-trip.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

from ..version import Signature


def enc(rel: str) -> bytes:
    return os.fsencode(rel)


def dec(raw: bytes) -> str:
    return os.fsdecode(raw)


def display(rel: str) -> str:
    """``rel`` safe to print: undecodable bytes shown as backslash escapes."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class Record(NamedTuple):
    """One file's row (a NamedTuple: rows are read by the thousand, and it builds four times faster
    than a frozen dataclass)."""

    rel: str
    key: Optional[str]  # None: parked because another row holds the key this file would get
    state: str
    size: int
    mtime_ns: int
    inode: int
    md5: Optional[str] = None
    etag: Optional[str] = None
    attempts: int = 0
    next_attempt_at: Optional[float] = None
    last_error: Optional[str] = None
    error_kind: Optional[str] = None
    discovered_at: float = 0.0
    updated_at: float = 0.0
    uploaded_at: Optional[float] = None
    upload_id: Optional[str] = None
    part_size: Optional[int] = None
    checksum: Optional[str] = None  # the checksum S3 answered it stores, ALGORITHM:TYPE:value (schema 6)

    @property
    def signature(self) -> Signature:
        return Signature(self.size, self.mtime_ns, self.inode)


# the columns of a Record, in its order (SELECT {COLUMNS} ... then record(row))
COLUMNS = ("path, key, state, size, mtime_ns, inode, md5, etag, attempts, next_attempt_at, last_error, "
           "error_kind, discovered_at, updated_at, uploaded_at, upload_id, part_size, checksum")


def record(row: Sequence[Any]) -> Record:
    return Record(dec(row[0]), *row[1:])


@dataclass(frozen=True)
class Part:
    number: int
    size: int
    etag: str
    md5: str


def collision_message(rel: str, key: str, holder: str, holder_state: str) -> str:
    """The one line that says why ``rel`` is parked: ``holder`` (in ``holder_state``) has ``key``."""
    gone = " (its local copy is gone: that object is its only copy)" if holder_state in ("deleted", "archived") \
        else ""
    return (f"{display(rel)} would go to S3 key {key}, which {display(holder)} already has{gone}; "
            f"parked (rename one of them)")


class Rebased(NamedTuple):
    """What a destination change (:meth:`~s3_uploader.store.upkeep.Upkeep.rebase_destination`) did:
    ``resent`` uploaded rows went back to pending, ``waiting`` rows were rebased, ``clashes``
    (rel, old key, key refused) were parked as collisions."""

    resent: int
    waiting: int
    clashes: List[Tuple[str, str, str]]


def parent(rel: str) -> str:
    """The folder of relative path ``rel`` ('' at the top of the tree)."""
    return rel.rpartition("/")[0]
