"""What the daemon's parts share, and the small typed views the outside parts read it through.

:class:`Stats` is the counters (written by the stages, read by status lines, metrics and health).
Health (:mod:`s3_uploader.health`), metrics, systemd notifications and the status line never read
the daemon's attributes: they are given an :class:`Observed` (the daemon is one) and ask it for
frozen readings, :class:`HealthView` and :class:`Activity`, taken at the moment of asking.
The stages (discovery, scheduling, the hand-over) read the parts the daemon replaces while it runs
through one :class:`Live` (the daemon is one).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Protocol

from .stability import Tracker

if TYPE_CHECKING:
    from .config import Config
    from .history import History
    from .keys import Filters, KeyMaker
    from .remote import Remote
    from .scanner import Scanner
    from .store import Store
    from .uploader import Settings
    from .writers import WriterProbe


@dataclass
class Stats:
    """Counters for status lines, metrics and health. Written under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    uploaded_files: int = 0
    uploaded_bytes: int = 0
    failures: Dict[str, int] = field(default_factory=dict)
    retries: int = 0
    last_upload_at: Optional[float] = None
    last_error: Optional[str] = None
    scans: int = 0
    last_scan_at: Optional[float] = None
    upload_seconds: List[float] = field(default_factory=list)  # drained by the metrics exporter
    cleanup_files_freed: int = 0  # deleted or archived after S3 proved the object
    cleanup_bytes_freed: int = 0
    events_lost: Dict[str, int] = field(default_factory=dict)  # by reason: overflow, watch_limit
    unwatched_folders: int = 0  # folders of the last full scan that inotify does not watch

    def add(self, **kw: float) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)


@dataclass(frozen=True)
class HealthView:
    """What :func:`~s3_uploader.health.health_problem` judges, read at one moment.

    ``threads``: the daemon's own threads by name, True while alive (empty: not started yet);
    ``watcher_alive``: None without filesystem events; ``heartbeats``: the monotonic time of each
    loop's last turn; ``max_age``: how long a loop may go without one."""

    stopping: bool
    threads: Mapping[str, bool]
    watcher_alive: Optional[bool]
    root_moved: Optional[str]
    heartbeats: Mapping[str, float]
    max_age: float


@dataclass(frozen=True)
class Activity:
    """What the status line and the metrics show besides counters: files queued (found, not yet
    started), uploading now, the endpoint outage in progress (:meth:`Outage.state`, None while
    it answers), outages since start, the bandwidth limit in force (None: unlimited), and the limit on requests
    in flight (:mod:`s3_uploader.concurrency`)."""

    queued: int
    uploading: int
    outage: Optional[Dict[str, Any]]
    outages: int
    bandwidth_limit: Optional[float]
    concurrency: int = 0  # small-file requests the sender keeps in flight at most now (adaptive)


class Tracked(Protocol):
    """The stability tracker's state (the scheduler's): what ``tracker_note`` reads."""

    @property
    def tracker(self) -> Tracker: ...

    @property
    def unsettled(self) -> int: ...

    def unsettled_limit(self) -> float: ...


class Observed(Protocol):
    """A running daemon as health, metrics and systemd notifications see it."""

    stats: Stats
    clock: Callable[[], float]  # monotonic seconds
    wall: Callable[[], float]  # Unix time
    history: "History"  # the per-minute counters behind the status page's charts
    root: str  # the watched directory (its filesystem's free space is a metric)

    @property
    def store(self) -> "Store": ...

    @property
    def scheduler(self) -> Tracked: ...

    def health_view(self) -> HealthView: ...

    def activity(self) -> Activity: ...


class Live(Protocol):
    """The parts the daemon replaces while it runs, as the stages read them: the config and what a
    reload builds from it (``scanner``, ``filters``, ``upload_settings()``), the store and remote
    opened at start, the writer probe built by ``Daemon.run`` (None before). Each reading is the
    part in force at that moment, so a stage reads it where it uses it and keeps no copy."""

    @property
    def cfg(self) -> "Config": ...

    @property
    def store(self) -> "Store": ...

    @property
    def remote(self) -> "Remote": ...

    @property
    def scanner(self) -> "Scanner": ...

    @property
    def filters(self) -> "Filters": ...

    @property
    def keymaker(self) -> "KeyMaker": ...

    @property
    def probe(self) -> "Optional[WriterProbe]": ...

    def upload_settings(self) -> "Settings": ...
