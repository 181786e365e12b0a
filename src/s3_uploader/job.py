"""What the uploader is given and what it answers: one file's :class:`Job`, its :class:`Outcome`,
and the :class:`Settings` it reads of the live config (through :class:`LiveSettings`, rebuilt only
after a reload). Values only (no I/O), shared by the uploader, its :mod:`~s3_uploader.multipart`
step, the asyncio sender, the scheduler and the recorder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, NamedTuple, Optional, Tuple

from .objects import ObjectPolicy
from .remote import PutOptions
from .retry import Failure
from .scanner import FileStat

if TYPE_CHECKING:
    from .config import Config

# an upload abandoned because shutdown ran out of time (a worker between parts, or the sender)
SHUTDOWN = Failure("shutdown", "stopped by shutdown, resumes at next start")


class Job(NamedTuple):
    """One file to send: where it is, where it goes, and the signature stability approved."""

    rel: str
    path: str  # absolute path to open (already resolved inside the tree when following symlinks)
    key: str
    stat: FileStat
    attempt: int = 1
    upload_id: Optional[str] = None  # an open multipart upload to resume
    part_size: Optional[int] = None
    small: bool = False  # the daemon's asyncio sender may take it (see handover.HandOver._sendable)


class Outcome(NamedTuple):
    """How one upload ended (a NamedTuple: one per file, and cheaper to build than a dataclass)."""

    kind: str  # uploaded | changed | vanished | failed
    job: Job
    md5: Optional[str] = None
    etag: Optional[str] = None
    seconds: float = 0.0
    failure: Optional[Failure] = None
    reason: str = ""
    checksum: Optional[str] = None  # uploaded: the checksum S3 stores with the object (remote.stored_checksum)


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
    objects: ObjectPolicy = field(default_factory=ObjectPolicy)  # what each object carries

    @classmethod
    def from_config(cls, c: "Config") -> "Settings":
        """The settings config ``c`` gives."""
        return cls(c.upload.multipart_threshold, c.upload.multipart_chunksize, c.upload.max_concurrency,
                   PutOptions(c.s3.storage_class, c.s3.sse, c.s3.sse_kms_key_id), c.watch.follow_symlinks,
                   ObjectPolicy.from_config(c))


class LiveSettings:
    """The :class:`Settings` of the live config (``config()``), built again only when a reload has
    swapped in a new Config object: what the stages call for each file."""

    def __init__(self, config: Callable[[], "Config"]):
        self._config = config
        self._settings: Optional[Tuple["Config", Settings]] = None

    def __call__(self) -> Settings:
        c = self._config()
        if self._settings is not None and self._settings[0] is c:
            return self._settings[1]
        settings = Settings.from_config(c)
        self._settings = (c, settings)
        return settings
